from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0007_study_secrets"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="progress",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
    ]
