from django.db import migrations, models


def backfill(apps, schema_editor):
    """Jobs recorded before: their workload name, except where two already share one (kept empty)."""
    from backends import workload_name

    Job = apps.get_model("jobs", "Job")
    taken = set()
    for job in Job.objects.select_related("site").order_by("id").iterator():
        name = workload_name(job.backend, job.site.name, job.job_id)
        if (job.site_id, name) in taken:
            continue
        taken.add((job.site_id, name))
        Job.objects.filter(pk=job.pk).update(workload=name)


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0004_auditentry_site"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="workload",
            field=models.CharField(blank=True, max_length=255, null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="job",
            constraint=models.UniqueConstraint(fields=("site", "workload"), name="job_workload_unique_per_site"),
        ),
    ]
