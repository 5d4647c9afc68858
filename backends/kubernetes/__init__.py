"""The Kubernetes backend (launch-semantics.md §4): each NVFlare job is one bare Pod.

Modules, by seam: config.py (site settings), prepare.py, manifests.py and pod_security.py (spec
building), api.py (the engine client), pending.py (observation: §4.8 and pod clocks), watch.py (the
change streams, given the client) and backend.py (KubernetesBackend).
"""

from backends.kubernetes.backend import KubernetesBackend
from backends.kubernetes.config import KubernetesSiteConfig

__all__ = ["KubernetesBackend", "KubernetesSiteConfig"]
