"""/api/v1/ routes. The async long poll comes before the router so it owns .../wait/.

Each path parameter matches only what its view accepts (a job id is 1-18 digits, a site name is
the site-name rule, study and dataset names NVFlare's name rule): anything else is the API's JSON
404 before a view or a query runs, and the schema's path parameters carry the same patterns."""

from django.urls import re_path
from rest_framework.routers import DefaultRouter

import jobs.api.schema  # noqa: F401  (registers the token auth scheme with drf-spectacular)
from jobs.api.filters import NAME_PATTERN, SITE_NAME_PATTERN
from jobs.api.jobs import JobViewSet
from jobs.api.sites import DatasetViewSet, SiteViewSet, StudyViewSet
from jobs.api.study_files import StudyDataView, StudyRuntimeView
from jobs.api.wait import job_wait


def _group(name: str, pattern: str) -> str:
    return f"(?P<{name}>{pattern.strip('^$')})"


JOB_PK = _group("pk", r"[0-9]{1,18}")
SITE = _group("site", SITE_NAME_PATTERN)
STUDY = _group("study", NAME_PATTERN)
DATASET = _group("dataset", NAME_PATTERN)


router = DefaultRouter()
router.register("sites", SiteViewSet, basename="site")
router.register("jobs", JobViewSet, basename="job")

collection = {"get": "list", "post": "create"}
member = {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}

urlpatterns = [
    re_path(rf"^jobs/{JOB_PK}/wait/$", job_wait, name="job-wait"),
    re_path(rf"^sites/{SITE}/studies/$", StudyViewSet.as_view(collection), name="study-list"),
    re_path(rf"^sites/{SITE}/studies/{STUDY}/$", StudyViewSet.as_view(member), name="study-detail"),
    re_path(rf"^sites/{SITE}/studies/{STUDY}/datasets/$", DatasetViewSet.as_view(collection), name="dataset-list"),
    re_path(rf"^sites/{SITE}/studies/{STUDY}/datasets/{DATASET}/$", DatasetViewSet.as_view(member),
            name="dataset-detail"),
    re_path(rf"^sites/{SITE}/study-data/$", StudyDataView.as_view(), name="study-data"),
    re_path(rf"^sites/{SITE}/study-runtime/$", StudyRuntimeView.as_view(), name="study-runtime"),
    *router.urls,
]
