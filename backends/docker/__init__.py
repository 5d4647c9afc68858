"""The Docker backend (launch-semantics.md §3): one container per NVFlare job on the site's Docker host.

Modules, by seam: config.py (site settings), specs.py, mounts.py, binds.py and prepare.py (spec
building), client.py (the engine client), observe.py (daemon state -> Observation), watch.py (the
event feed, given the client) and backend.py (DockerBackend).
"""

from backends.docker.backend import DockerBackend
from backends.docker.config import DockerSiteConfig

__all__ = ["DockerBackend", "DockerSiteConfig"]
