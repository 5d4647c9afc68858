# Written by hand (makemigrations' shape): the whole output of a job (jobs.services.job_logs).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0009_site_health'),
    ]

    operations = [
        migrations.CreateModel(
            name='JobLog',
            fields=[
                ('job', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True,
                                             related_name='full_log', serialize=False, to='jobs.job')),
                ('text', models.TextField()),
                ('size', models.BigIntegerField(default=0)),
                ('cut', models.BigIntegerField(default=0)),
                ('saved_at', models.DateTimeField(auto_now=True)),
            ],
        ),
    ]
