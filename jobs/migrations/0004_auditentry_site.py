from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0003_job_site_finished_index'),
    ]

    operations = [
        migrations.AddField(
            model_name='auditentry',
            name='site',
            field=models.ForeignKey(blank=True, db_index=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                    related_name='+', to='jobs.site'),
        ),
    ]
