"""Server-rendered pages, one module per concern. Thin: authorise, read through selectors, write
through one service call. Access rules live in jobs/views/common.py.

The names below are what jobs/urls.py routes to.
"""

from jobs.views.history import site_history
from jobs.views.home import home
from jobs.views.jobs import (
    job_detail,
    job_launch,
    job_logs_download,
    job_terminate,
    job_timeline,
    site_counts,
    site_overview,
    site_switch,
)
from jobs.views.sites import (
    site_check,
    site_create,
    site_delete,
    site_probe_run,
    site_settings,
)
from jobs.views.studies import (
    dataset_delete,
    dataset_edit,
    studies,
    study_data_export,
    study_data_import,
    study_delete,
    study_detail,
)
from jobs.views.tokens import site_tokens, token_revoke_view, user_tokens

__all__ = [
    "dataset_delete", "dataset_edit", "home", "job_detail", "job_launch", "job_logs_download", "job_terminate",
    "job_timeline", "site_check", "site_counts", "site_create", "site_delete", "site_history", "site_overview",
    "site_probe_run", "site_settings", "site_switch", "site_tokens", "studies", "study_data_export", "study_data_import",
    "study_delete", "study_detail", "token_revoke_view", "user_tokens",
]
