"""/api/v1/ routes. The async long poll comes before the router so it owns .../wait/."""

from django.urls import path
from rest_framework.routers import DefaultRouter

import jobs.api.schema  # noqa: F401  (registers the token auth scheme with drf-spectacular)
from jobs.api.jobs import JobViewSet
from jobs.api.sites import DatasetViewSet, SiteViewSet, StudyViewSet
from jobs.api.study_files import StudyDataView, StudyRuntimeView
from jobs.api.wait import job_wait

NAME = r"(?P<site>[A-Za-z0-9][A-Za-z0-9._-]{0,62})"

router = DefaultRouter()
router.register("sites", SiteViewSet, basename="site")
router.register("jobs", JobViewSet, basename="job")

collection = {"get": "list", "post": "create"}
member = {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}

urlpatterns = [
    path("jobs/<int:pk>/wait/", job_wait, name="job-wait"),
    path("sites/<str:site>/studies/", StudyViewSet.as_view(collection), name="study-list"),
    path("sites/<str:site>/studies/<str:study>/", StudyViewSet.as_view(member), name="study-detail"),
    path("sites/<str:site>/studies/<str:study>/datasets/", DatasetViewSet.as_view(collection), name="dataset-list"),
    path("sites/<str:site>/studies/<str:study>/datasets/<str:dataset>/", DatasetViewSet.as_view(member),
         name="dataset-detail"),
    path("sites/<str:site>/study-data/", StudyDataView.as_view(), name="study-data"),
    path("sites/<str:site>/study-runtime/", StudyRuntimeView.as_view(), name="study-runtime"),
    *router.urls,
]
