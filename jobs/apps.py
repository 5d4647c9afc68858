from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "FLARE Launcher"

    def ready(self):
        from django.db.backends.signals import connection_created

        from launcher_site.startup import protect_database_files

        connection_created.connect(protect_database_files, dispatch_uid="launcher-protect-db-files")
