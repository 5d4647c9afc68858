from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0011_webhooks"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="usage",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
    ]
