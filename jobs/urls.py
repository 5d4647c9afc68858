from django.urls import path

from jobs import views
from jobs.views.audit import audit_log
from jobs.views.home import home
from jobs.views.members import member_remove, site_members
from jobs.views.relaunch import job_relaunch
from jobs.views.webhooks import site_webhooks, webhook_remove, webhook_test

urlpatterns = [
    path("", home, name="overview"),
    path("go/", views.site_switch, name="site-switch"),
    path("tokens/", views.user_tokens, name="user-tokens"),
    path("audit/", audit_log, name="audit"),
    path("tokens/<int:pk>/revoke/", views.token_revoke_view, name="token-revoke"),
    path("sites/new/", views.site_create, name="site-create"),
    path("sites/<str:site>/", views.site_overview, name="site-overview"),
    path("sites/<str:site>/counts/", views.site_counts, name="site-counts"),
    path("sites/<str:site>/launch/", views.job_launch, name="job-launch"),
    path("sites/<str:site>/history/", views.site_history, name="site-history"),
    path("sites/<str:site>/settings/", views.site_settings, name="site-settings"),
    path("sites/<str:site>/settings/check/", views.site_check, name="site-check"),
    path("sites/<str:site>/settings/probe/", views.site_probe_run, name="site-probe"),
    path("sites/<str:site>/delete/", views.site_delete, name="site-delete"),
    path("sites/<str:site>/tokens/", views.site_tokens, name="site-tokens"),
    path("sites/<str:site>/members/", site_members, name="site-members"),
    path("sites/<str:site>/members/<int:pk>/remove/", member_remove, name="site-member-remove"),
    path("sites/<str:site>/webhooks/", site_webhooks, name="site-webhooks"),
    path("sites/<str:site>/webhooks/<int:pk>/test/", webhook_test, name="site-webhook-test"),
    path("sites/<str:site>/webhooks/<int:pk>/remove/", webhook_remove, name="site-webhook-remove"),
    path("sites/<str:site>/studies/", views.studies, name="studies"),
    path("sites/<str:site>/study-data/import/", views.study_data_import, name="study-import"),
    path("sites/<str:site>/study_data.yaml", views.study_data_export, name="study-export"),
    path("sites/<str:site>/studies/<str:study>/", views.study_detail, name="study-detail"),
    path("sites/<str:site>/studies/<str:study>/delete/", views.study_delete, name="study-delete"),
    path("sites/<str:site>/studies/<str:study>/datasets/<str:dataset>/", views.dataset_edit, name="dataset-edit"),
    path("sites/<str:site>/studies/<str:study>/datasets/<str:dataset>/delete/", views.dataset_delete,
         name="dataset-delete"),
    path("jobs/<int:pk>/", views.job_detail, name="job-detail"),
    path("jobs/<int:pk>/timeline/", views.job_timeline, name="job-timeline"),
    path("jobs/<int:pk>/logs.txt", views.job_logs_download, name="job-logs"),
    path("jobs/<int:pk>/terminate/", views.job_terminate, name="job-terminate"),
    path("jobs/<int:pk>/relaunch/", job_relaunch, name="job-relaunch"),
]
