"""study_data_preview: what importing a study_data.yaml would change, before anything changes.

Parsing and applying belong to jobs.services.study_files (shared with the API); this module only
compares the parsed file with the site's datasets, and dry-runs the import inside a transaction
that is always rolled back, so the preview shows the catalog's own errors (source outside the
allowed roots, missing path...) with the same messages the real import would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction

from jobs.models import Site
from jobs.services import study_files


@dataclass(frozen=True)
class DatasetChange:
    study: str
    dataset: str
    change: str  # "added" | "changed" | "removed" | "unchanged"
    old: dict | None = None
    new: dict | None = None


@dataclass
class StudyDataPreview:
    changes: list[DatasetChange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    new_studies: list[str] = field(default_factory=list)

    def count(self, change: str) -> int:
        return sum(1 for c in self.changes if c.change == change)

    @property
    def summary(self) -> dict[str, int]:
        return {kind: self.count(kind) for kind in ("added", "changed", "removed", "unchanged")}

    @property
    def applicable(self) -> bool:
        return not self.errors


class _DryRun(Exception):
    pass


def study_data_preview(*, site: Site, text: str) -> StudyDataPreview:
    """Compare the file with the site. Raises study_files.StudyFileError when the file itself is
    invalid (the message names the study/dataset as NVFlare's loader does)."""
    wanted = study_files.study_data_parse(text)
    current = study_files.study_data_export(site)
    preview = StudyDataPreview(new_studies=sorted(set(wanted) - set(current)))
    for study in sorted(set(wanted) | set(current)):
        old_sets, new_sets = current.get(study, {}), wanted.get(study, {})
        for name in sorted(set(old_sets) | set(new_sets)):
            old, new = old_sets.get(name), new_sets.get(name)
            if old is None:
                kind = "added"
            elif new is None:
                kind = "removed"
            else:
                kind = "unchanged" if _same(old, new) else "changed"
            preview.changes.append(DatasetChange(study=study, dataset=name, change=kind, old=old, new=new))
    try:
        with transaction.atomic():
            study_files.study_data_replace(site, text)
            raise _DryRun
    except _DryRun:
        pass
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
        preview.errors = [f"{key}: {message}" if key and key != "__all__" else message
                          for key, messages in errors.items() for message in messages]
    return preview


def _same(old: dict, new: dict) -> bool:
    return old.get("source") == new.get("source") and old.get("mode", "ro") == new.get("mode", "ro")
