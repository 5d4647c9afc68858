"""Studies and their datasets, and the study_data.yaml import/export."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from backends.base import BackendError
from jobs import forms, selectors
from jobs.forms_checks import apply_form
from jobs.services import catalog, study_files
from jobs.services.audit import audit_request
from jobs.services.study_preview import study_data_preview
from jobs.views.common import get_site, render_page
from jobs.views.confirm import confirm_page, confirmed


@login_required
@require_http_methods(["GET", "POST"])
def studies(request, site):
    site = get_site(request, site)
    form = forms.StudyForm(request.POST or None, backend=site.backend)
    if request.method == "POST":
        site = get_site(request, site.name, "admin")

        def create():
            values = form.values()
            study = catalog.study_create(site=site, actor=request.user, **values)
            audit_request(request, "study.create", f"site:{site.name}/study:{study.name}", {"changes": values},
                          site=site)
            return study

        study = apply_form(form, create, field_map=forms.StudyForm.FIELD_MAP)
        if study:
            messages.success(request, f"Study {study.name} added.")
            return redirect("study-detail", site=site.name, study=study.name)
    return render_page(request, "jobs/studies.html", {"studies": selectors.site_studies(site), "form": form},
                       site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def study_detail(request, site, study):
    site = get_site(request, site)
    study = get_object_or_404(selectors.site_studies(site), name=study)
    initial = {f: getattr(study, f) for f in forms.StudyForm.base_fields}
    # Two forms on one page: their own id prefixes (the posted names stay as they are).
    study_form = forms.StudyForm(initial=initial, backend=site.backend, auto_id="study-%s")
    dataset_form = forms.DatasetForm(auto_id="dataset-%s")
    if request.method == "POST":
        get_site(request, site.name, "admin")
        if request.POST.get("action") == "dataset":
            dataset_form = forms.DatasetForm(request.POST, auto_id="dataset-%s")
            checked = _source_checked(dataset_form, site)

            def add():
                values = dataset_form.values()
                catalog.dataset_create(study=study, checked=checked, **values)
                audit_request(request, "dataset.create", f"site:{site.name}/study:{study.name}/dataset:"
                              f"{values['name']}", {"changes": values}, site=site)
                return values["name"]

            name = apply_form(dataset_form, add)
            if name:
                messages.success(request, f"Dataset {name} added.")
                return redirect("study-detail", site=site.name, study=study.name)
        else:
            study_form = forms.StudyForm(request.POST, initial=initial, backend=site.backend, auto_id="study-%s")

            def save():
                values = study_form.values()
                audit_request(request, "study.update", f"site:{site.name}/study:{study.name}",
                              {"changes": values}, site=site)
                return catalog.study_update(study=study, actor=request.user, **values)

            saved = apply_form(study_form, save, field_map=forms.StudyForm.FIELD_MAP)
            if saved:
                messages.success(request, "Study saved.")
                return redirect("study-detail", site=site.name, study=saved.name)
            study.refresh_from_db()  # the service changed the instance before refusing
    return render_page(request, "jobs/study_detail.html", {"study": study, "study_form": study_form,
                                                            "dataset_form": dataset_form}, site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def study_delete(request, site, study):
    site = get_site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    if confirmed(request):
        with transaction.atomic():
            catalog.study_delete(study=study)
            audit_request(request, "study.delete", f"site:{site.name}/study:{study.name}", site=site)
        messages.success(request, f"Study {study.name} deleted.")
        return redirect("studies", site=site.name)
    datasets = study.datasets.count()
    return confirm_page(request, title=f"Delete study {study.name}?", consequences=[
        f"Its {datasets} dataset(s) are removed too. Jobs launched later for study {study.name} still run, but "
        "without its datasets, image and environment (their timeline notes the study is not configured)."],
        button="Delete study",
        cancel=reverse("study-detail", args=[site.name, study.name]), site=site, section="studies",
        refused=request.method == "POST")


@login_required
@require_http_methods(["GET", "POST"])
def dataset_edit(request, site, study, dataset):
    site = get_site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    dataset = get_object_or_404(study.datasets.all(), name=dataset)
    form = forms.DatasetForm(request.POST or None, initial={"name": dataset.name, "source": dataset.source,
                                                            "mode": dataset.mode})
    if request.method == "POST":
        checked = _source_checked(form, site)

        def save():
            values = form.values()
            audit_request(request, "dataset.update", f"site:{site.name}/study:{study.name}/dataset:{dataset.name}",
                          {"changes": values}, site=site)
            return catalog.dataset_update(dataset=dataset, checked=checked, **values)

        if apply_form(form, save):
            messages.success(request, "Dataset saved.")
            return redirect("study-detail", site=site.name, study=study.name)
        dataset.refresh_from_db()
    return render_page(request, "jobs/dataset_edit.html", {"study": study, "dataset": dataset, "form": form},
                       site=site, section="studies")


def _source_checked(form, site) -> dict[str, str | None]:
    """The form's source checked where the site's data is (a worker), before apply_form's transaction.
    No answer is the source's inline error: nothing is saved, and the dry run asks nobody again."""
    form.is_valid()
    source = form.values().get("source") or ""
    try:
        return catalog.dataset_sources_check(site, [source])
    except BackendError as exc:
        return {source: f"Could not check this source: {exc}."}


@login_required
@require_http_methods(["GET", "POST"])
def dataset_delete(request, site, study, dataset):
    site = get_site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    dataset = get_object_or_404(study.datasets.all(), name=dataset)
    if confirmed(request):
        with transaction.atomic():
            catalog.dataset_delete(dataset=dataset)
            audit_request(request, "dataset.delete", f"site:{site.name}/study:{study.name}/dataset:{dataset.name}",
                          site=site)
        messages.success(request, f"Dataset {dataset.name} deleted.")
        return redirect("study-detail", site=site.name, study=study.name)
    return confirm_page(request, title=f"Delete dataset {study.name}/{dataset.name}?", consequences=[
        f"Jobs of study {study.name} launched later no longer mount /data/{study.name}/{dataset.name}; running "
        "jobs keep what they mounted."], button="Delete dataset",
        cancel=reverse("study-detail", args=[site.name, study.name]), site=site, section="studies",
        refused=request.method == "POST")


@login_required
@require_http_methods(["GET", "POST"])
def study_data_import(request, site):
    site = get_site(request, site, "admin")
    form = forms.StudyDataImportForm(request.POST or None, request.FILES or None)
    preview = None
    if request.method == "POST" and form.is_valid():
        text = form.cleaned_data["text"]
        try:
            if request.POST.get("action") == "apply":
                with transaction.atomic():
                    parsed = study_files.study_data_replace(site, text)
                    audit_request(request, "study_data.replace", f"site:{site.name}", {"studies": sorted(parsed)},
                                  site=site)
                messages.success(request, "study_data.yaml imported.")
                return redirect("studies", site=site.name)
            preview = study_data_preview(site=site, text=text)
        except study_files.StudyFileError as exc:
            form.add_error("text", str(exc))
        except BackendError as exc:  # the dataset sources' check found no worker: nothing imported
            form.add_error("text", f"Could not check the dataset sources: {exc}.")
        except ValidationError as exc:
            for key, errors in forms.validation_errors(exc).items():
                for error in errors:
                    form.add_error("text", f"{key}: {error}")
        form = forms.StudyDataImportForm(initial={"text": text}) if preview else form
    return render_page(request, "jobs/study_import.html", {"form": form, "preview": preview}, site=site,
                       section="studies")


@login_required
@require_GET
def study_data_export(request, site):
    site = get_site(request, site)
    response = HttpResponse(study_files.study_data_dump(site), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{site.name}-study_data.yaml"'
    return response
