"""FLARE Launcher client for NVIDIA FLARE: a job launcher that asks a FLARE Launcher service (REST)
to run each job, instead of talking to Docker or Kubernetes from the FL parent process.

    from flare_launcher_client import FlareLauncherJobLauncher

Importing this package never imports nvflare or Django. When nvflare is installed, the classes
subclass its JobLauncherSpec / JobHandleSpec (built on first access); otherwise they have the same
shape (duck-typed), which is all the launcher protocol needs.
"""

from flare_launcher_client.client import (
    ConfigurationError,
    FlareLauncherClient,
    LauncherError,
)

__all__ = ["ConfigurationError", "FlareLauncherClient", "FlareLauncherJobHandle", "FlareLauncherJobLauncher",
           "LauncherError"]


def __getattr__(name: str):
    if name in ("FlareLauncherJobLauncher", "FlareLauncherJobHandle"):
        from flare_launcher_client import launcher

        return launcher.launcher_class() if name == "FlareLauncherJobLauncher" else launcher.handle_class()
    raise AttributeError(f"module 'flare_launcher_client' has no attribute {name!r}")
