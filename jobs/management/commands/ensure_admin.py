"""`manage.py ensure_admin`: make sure the admin account exists (used by `make run`)."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the LAUNCHER_ADMIN_USER superuser if missing (password from LAUNCHER_ADMIN_PASSWORD or generated)."

    def handle(self, *args, **options):
        User = get_user_model()
        username = settings.LAUNCHER_ADMIN_USER
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"admin account {username!r} exists")
            return
        password = settings.LAUNCHER_ADMIN_PASSWORD or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, password=password, email="")
        if settings.LAUNCHER_ADMIN_PASSWORD:
            self.stdout.write(f"created admin account {username!r} with LAUNCHER_ADMIN_PASSWORD")
        else:
            self.stdout.write(f"created admin account {username!r} with password: {password}\n"
                              "(shown once; change it in the admin or set LAUNCHER_ADMIN_PASSWORD)")
