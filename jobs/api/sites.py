"""Sites, studies and datasets. Every write is one catalog service call plus one audit entry."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from jobs.api import access
from jobs.api.base import ApiMixin
from jobs.api.schema import error_response
from jobs.api.serializers import (
    CheckResultSerializer,
    DatasetInputSerializer,
    DatasetSerializer,
    SiteInputSerializer,
    SiteSerializer,
    SiteTestInputSerializer,
    StudyInputSerializer,
    StudySerializer,
    reject_unknown,
)
from jobs.models import Dataset, Site, Study
from jobs.services import catalog, site_checks
from jobs.services.connection_check import site_check_connection


def _validated(serializer_class, request, *, partial: bool = False) -> dict:
    reject_unknown(serializer_class, request.data)
    serializer = serializer_class(data=request.data, partial=partial)
    serializer.is_valid(raise_exception=True)
    data = dict(serializer.validated_data)
    if partial:  # only what was sent, not the serializer's defaults
        data = {k: v for k, v in data.items() if k in request.data}
    return data


def _with_warnings(data, warnings: list[str]) -> dict:
    """A saved site's representation, plus what could not be checked (site_checks: never a refusal)."""
    return {**data, "warnings": warnings} if warnings else data


@extend_schema_view(
    list=extend_schema(responses=SiteSerializer(many=True)),
    retrieve=extend_schema(responses=SiteSerializer),
    create=extend_schema(request=SiteInputSerializer, responses={201: SiteSerializer}),
    partial_update=extend_schema(request=SiteInputSerializer(partial=True), responses={
        200: SiteSerializer, 403: error_response(403, "A site admin changed a staff-only setting: "
                                                      '{"detail": "Only platform staff may change: ..."}')}),
    destroy=extend_schema(responses={204: None, 403: error_response(403, "Only platform staff delete sites."),
                                     409: error_response(409, "The site has jobs in flight.")}),
)
class SiteViewSet(ApiMixin, viewsets.ViewSet):
    """Sites the caller can see. Staff create, rename and delete sites and own every host-level
    setting; site admins may change only what jobs.services.policy leaves them (403 otherwise)."""

    lookup_field = "name"
    lookup_value_regex = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"

    def list(self, request):
        sites = access.sites_for(request).order_by("name")
        return Response(SiteSerializer(sites, many=True, context={"request": request}).data)

    def retrieve(self, request, name=None):
        site = access.site_for(request, name)
        return Response(SiteSerializer(site, context={"request": request}).data)

    def create(self, request):
        access.require_user(request)
        if not request.user.is_staff:
            raise exceptions.PermissionDenied("Only staff may create sites.")
        data = _validated(SiteInputSerializer, request)
        # The engine's checks first, on the validated unsaved site: a transaction open while the
        # engine answers would hold SQLite's write lock. 400 naming each setting, or warnings.
        warnings = site_checks.check_site_save(catalog.site_create(save=False, **data), actor=request.user)
        with transaction.atomic():
            site = catalog.site_create(**data)
            self.audit("site.create", f"site:{site.name}", {"changes": data})
        return Response(_with_warnings(SiteSerializer(site, context={"request": request}).data, warnings),
                        status=status.HTTP_201_CREATED)

    def partial_update(self, request, name=None):
        site = access.site_for(request, name, role="admin")
        data = _validated(SiteInputSerializer, request, partial=True)
        before = site_checks.snapshot(site)
        unsaved = catalog.site_update(site=site, actor=request.user, save=False, **data)  # 400/403 as a save
        warnings = site_checks.check_site_save(unsaved, actor=request.user, before=before)  # outside the transaction
        with transaction.atomic():
            site = catalog.site_update(site=site, actor=request.user, **data)
            detail = {"changes": data, **({"renamed_from": name} if site.name != name else {})}
            self.audit("site.update", f"site:{site.name}", detail)
        return Response(_with_warnings(SiteSerializer(site, context={"request": request}).data, warnings))

    def destroy(self, request, name=None):
        site = access.site_for(request, name, role="admin")
        with transaction.atomic():  # SiteBusy (409) and StaffOnly (403) are answered in jobs.api.errors
            catalog.site_delete(site=site, actor=request.user)
            self.audit("site.delete", f"site:{name}")
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=SiteTestInputSerializer, responses=CheckResultSerializer(many=True))
    @action(detail=True, methods=["post"])
    def test(self, request, name=None):
        """Run the backend's connection checks (daemon, network, workspace...) and of the given
        datasets (default: all of the site's datasets)."""
        site = access.site_for(request, name, role="admin")
        data = _validated(SiteTestInputSerializer, request)
        results = site_check_connection(site, data.get("datasets"))  # bounded: deadline, 2 at once per process
        return Response(CheckResultSerializer(results, many=True).data)


@extend_schema_view(
    list=extend_schema(responses=StudySerializer(many=True)),
    retrieve=extend_schema(responses=StudySerializer),
    create=extend_schema(request=StudyInputSerializer, responses={201: StudySerializer}),
    partial_update=extend_schema(request=StudyInputSerializer(partial=True), responses=StudySerializer),
    destroy=extend_schema(responses={204: None}),
)
class StudyViewSet(ApiMixin, viewsets.ViewSet):
    """A site's studies (NVFlare's study runtime entries). Members read; site admins write."""

    lookup_field = "study"

    def _study(self, site: Site, name: str) -> Study:
        study = site.studies.prefetch_related("datasets").filter(name=name).first()
        if study is None:
            raise exceptions.NotFound(f"No study named {name!r} on site {site.name}.")
        return study

    def list(self, request, site=None):
        site = access.site_for(request, site)
        return Response(StudySerializer(site.studies.prefetch_related("datasets"), many=True).data)

    def retrieve(self, request, site=None, study=None):
        site = access.site_for(request, site)
        return Response(StudySerializer(self._study(site, study)).data)

    def create(self, request, site=None):
        site = access.site_for(request, site, role="admin")
        data = _validated(StudyInputSerializer, request)
        with transaction.atomic():
            study = catalog.study_create(site=site, actor=request.user, **data)
            self.audit("study.create", f"site:{site.name}/study:{study.name}", {"changes": data})
        return Response(StudySerializer(study).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, site=None, study=None):
        site = access.site_for(request, site, role="admin")
        current = self._study(site, study)
        data = _validated(StudyInputSerializer, request, partial=True)
        with transaction.atomic():
            updated = catalog.study_update(study=current, actor=request.user, **data)
            self.audit("study.update", f"site:{site.name}/study:{study}", {"changes": data})
        return Response(StudySerializer(updated).data)

    def destroy(self, request, site=None, study=None):
        site = access.site_for(request, site, role="admin")
        with transaction.atomic():
            catalog.study_delete(study=self._study(site, study))
            self.audit("study.delete", f"site:{site.name}/study:{study}")
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(responses=DatasetSerializer(many=True)),
    retrieve=extend_schema(responses=DatasetSerializer),
    create=extend_schema(request=DatasetInputSerializer, responses={201: DatasetSerializer}),
    partial_update=extend_schema(request=DatasetInputSerializer(partial=True), responses=DatasetSerializer),
    destroy=extend_schema(responses={204: None}),
)
class DatasetViewSet(ApiMixin, viewsets.ViewSet):
    """A study's datasets, mounted into its jobs at /data/<study>/<dataset>."""

    lookup_field = "dataset"

    def _study(self, request, site: str, study: str, role: str) -> Study:
        site_obj = access.site_for(request, site, role=role)
        found = Study.objects.filter(site=site_obj, name=study).select_related("site").first()
        if found is None:
            raise exceptions.NotFound(f"No study named {study!r} on site {site_obj.name}.")
        return found

    def _dataset(self, study: Study, name: str) -> Dataset:
        dataset = study.datasets.filter(name=name).select_related("study__site").first()
        if dataset is None:
            raise exceptions.NotFound(f"No dataset named {name!r} in study {study.name}.")
        return dataset

    def list(self, request, site=None, study=None):
        return Response(DatasetSerializer(self._study(request, site, study, "viewer").datasets.all(), many=True).data)

    def retrieve(self, request, site=None, study=None, dataset=None):
        return Response(DatasetSerializer(self._dataset(self._study(request, site, study, "viewer"), dataset)).data)

    def create(self, request, site=None, study=None):
        study_obj = self._study(request, site, study, "admin")
        data = _validated(DatasetInputSerializer, request)
        # The source's filesystem check first, where the data is (a worker: 503 when none answers),
        # outside the transaction: awaited inside it, SQLite's write lock would wait too.
        checked = catalog.dataset_sources_check(study_obj.site, [data["source"]])
        with transaction.atomic():
            dataset = catalog.dataset_create(study=study_obj, checked=checked, **data)
            self.audit("dataset.create", f"site:{site}/study:{study}/dataset:{dataset.name}", {"changes": data})
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, site=None, study=None, dataset=None):
        current = self._dataset(self._study(request, site, study, "admin"), dataset)
        data = _validated(DatasetInputSerializer, request, partial=True)
        checked = catalog.dataset_sources_check(current.study.site, [data.get("source", current.source)])
        with transaction.atomic():
            updated = catalog.dataset_update(dataset=current, checked=checked, **data)
            self.audit("dataset.update", f"site:{site}/study:{study}/dataset:{dataset}", {"changes": data})
        return Response(DatasetSerializer(updated).data)

    def destroy(self, request, site=None, study=None, dataset=None):
        current = self._dataset(self._study(request, site, study, "admin"), dataset)
        with transaction.atomic():
            catalog.dataset_delete(dataset=current)
            self.audit("dataset.delete", f"site:{site}/study:{study}/dataset:{dataset}")
        return Response(status=status.HTTP_204_NO_CONTENT)
