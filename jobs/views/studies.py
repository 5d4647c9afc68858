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

from jobs import forms, selectors
from jobs.services import catalog, study_files
from jobs.services.audit import audit_request
from jobs.services.study_preview import study_data_preview
from jobs.views.common import get_site, render_page


@login_required
@require_http_methods(["GET", "POST"])
def studies(request, site):
    site = get_site(request, site)
    form = forms.StudyForm(request.POST or None, backend=site.backend)
    if request.method == "POST":
        site = get_site(request, site.name, "admin")
        if form.is_valid():
            try:
                with transaction.atomic():
                    study = catalog.study_create(site=site, actor=request.user, **form.cleaned_data)
                    audit_request(request, "study.create", f"site:{site.name}/study:{study.name}",
                                  {"changes": form.cleaned_data}, site=site)
            except ValidationError as exc:
                forms.errors_to_form(form, forms.validation_errors(exc), forms.StudyForm.FIELD_MAP)
            else:
                messages.success(request, f"Study {study.name} added.")
                return redirect("study-detail", site=site.name, study=study.name)
    return render_page(request, "jobs/studies.html", {"studies": selectors.site_studies(site), "form": form},
                       site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def study_detail(request, site, study):
    site = get_site(request, site)
    study = get_object_or_404(selectors.site_studies(site), name=study)
    study_form = forms.StudyForm(initial={f: getattr(study, f) for f in forms.StudyForm.base_fields}, backend=site.backend)
    dataset_form = forms.DatasetForm()
    if request.method == "POST":
        get_site(request, site.name, "admin")
        if request.POST.get("action") == "dataset":
            dataset_form = forms.DatasetForm(request.POST)
            if dataset_form.is_valid():
                try:
                    with transaction.atomic():
                        catalog.dataset_create(study=study, **dataset_form.cleaned_data)
                        audit_request(request, "dataset.create", f"site:{site.name}/study:{study.name}/dataset:"
                                      f"{dataset_form.cleaned_data['name']}", {"changes": dataset_form.cleaned_data},
                                      site=site)
                except ValidationError as exc:
                    forms.errors_to_form(dataset_form, forms.validation_errors(exc))
                else:
                    messages.success(request, f"Dataset {dataset_form.cleaned_data['name']} added.")
                    return redirect("study-detail", site=site.name, study=study.name)
        else:
            study_form = forms.StudyForm(request.POST, backend=site.backend)
            if study_form.is_valid():
                try:
                    with transaction.atomic():
                        audit_request(request, "study.update", f"site:{site.name}/study:{study.name}",
                                      {"changes": study_form.cleaned_data}, site=site)
                        study = catalog.study_update(study=study, actor=request.user, **study_form.cleaned_data)
                except ValidationError as exc:
                    study.refresh_from_db()
                    forms.errors_to_form(study_form, forms.validation_errors(exc), forms.StudyForm.FIELD_MAP)
                else:
                    messages.success(request, "Study saved.")
                    return redirect("study-detail", site=site.name, study=study.name)
    return render_page(request, "jobs/study_detail.html", {"study": study, "study_form": study_form,
                                                            "dataset_form": dataset_form}, site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def study_delete(request, site, study):
    site = get_site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    if request.method == "POST":
        with transaction.atomic():
            catalog.study_delete(study=study)
            audit_request(request, "study.delete", f"site:{site.name}/study:{study.name}", site=site)
        messages.success(request, f"Study {study.name} deleted.")
        return redirect("studies", site=site.name)
    return render_page(request, "jobs/confirm.html", {
        "title": f"Delete study {study.name}?", "body": f"Its {study.datasets.count()} dataset(s) are removed too.",
        "cancel": reverse("study-detail", args=[site.name, study.name]), "button": "Delete study"},
        site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def dataset_edit(request, site, study, dataset):
    site = get_site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    dataset = get_object_or_404(study.datasets.all(), name=dataset)
    form = forms.DatasetForm(request.POST or None, initial={"name": dataset.name, "source": dataset.source,
                                                            "mode": dataset.mode})
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                audit_request(request, "dataset.update", f"site:{site.name}/study:{study.name}/dataset:{dataset.name}",
                              {"changes": form.cleaned_data}, site=site)
                catalog.dataset_update(dataset=dataset, **form.cleaned_data)
        except ValidationError as exc:
            forms.errors_to_form(form, forms.validation_errors(exc))
        else:
            messages.success(request, "Dataset saved.")
            return redirect("study-detail", site=site.name, study=study.name)
    return render_page(request, "jobs/dataset_edit.html", {"study": study, "dataset": dataset, "form": form},
                       site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def dataset_delete(request, site, study, dataset):
    site = get_site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    dataset = get_object_or_404(study.datasets.all(), name=dataset)
    if request.method == "POST":
        with transaction.atomic():
            catalog.dataset_delete(dataset=dataset)
            audit_request(request, "dataset.delete", f"site:{site.name}/study:{study.name}/dataset:{dataset.name}",
                          site=site)
        messages.success(request, f"Dataset {dataset.name} deleted.")
        return redirect("study-detail", site=site.name, study=study.name)
    return render_page(request, "jobs/confirm.html", {
        "title": f"Delete dataset {study.name}/{dataset.name}?", "body": "Jobs launched later no longer mount it.",
        "cancel": reverse("study-detail", args=[site.name, study.name]), "button": "Delete dataset"},
        site=site, section="studies")


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
