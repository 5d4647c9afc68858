from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0006_job_request"),
    ]

    operations = [
        migrations.AddField(
            model_name="study",
            name="secret_env",
            field=models.JSONField(blank=True, default=dict, help_text="NAME -> {source, key}."),
        ),
        migrations.AddField(
            model_name="study",
            name="secret_mounts",
            field=models.JSONField(blank=True, default=dict, help_text="name -> {source, mount_path, mode, items}."),
        ),
    ]
