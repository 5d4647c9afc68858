from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0005_job_workload"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="request",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
    ]
