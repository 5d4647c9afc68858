"""The process backend's site settings (`Site.process`), validated; see backends.process.

Who a job runs as and what it may run are the site's, never the submitter's: `user` ("uid:gid",
default the workspace owner), `allow_root` (uid/gid 0 only when true) and `allowed_modules` (job
modules allowed besides NVFlare's own client and server modules).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from backends import nvflare
from backends.base import InvalidJobSpec

USER_RE = re.compile(r"^([0-9]{1,10}):([0-9]{1,10})$")
SETTINGS = ("workspace", "default_python_path", "default_job_env", "user", "allow_root", "allowed_modules")


@dataclass(frozen=True, kw_only=True)
class ProcessSiteConfig:
    workspace: str = ""  # host directory holding startup/, local/ and one directory per job
    default_python_path: str = sys.executable
    default_job_env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""  # "uid:gid" the job runs as; "" -> the owner of the workspace directory
    allow_root: bool = False  # staff-only: permit uid/gid 0
    allowed_modules: tuple[str, ...] = ()  # staff-only: job modules allowed besides NVFlare's own

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessSiteConfig:
        data = dict(data or {})
        unknown = set(data) - set(SETTINGS)
        if unknown:
            raise InvalidJobSpec(f"process.{sorted(unknown)[0]}", "unknown setting")
        workspace = data.get("workspace", "")
        if not isinstance(workspace, str) or (workspace and not os.path.isabs(workspace)):
            raise InvalidJobSpec("process.workspace", "must be an absolute directory path")
        python_path = nvflare.check_python_path(
            data.get("default_python_path") or sys.executable, "process.default_python_path"
        )
        env = data.get("default_job_env") or {}
        if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidJobSpec("process.default_job_env", "must be a mapping of NAME -> string value")
        check_env(env, "process.default_job_env")
        user = data.get("user") or ""
        if not isinstance(user, str) or (user and not USER_RE.fullmatch(user)):
            raise InvalidJobSpec("process.user", "must be 'uid:gid' in numbers, e.g. '1000:1000'")
        allow_root = data.get("allow_root", False)
        if not isinstance(allow_root, bool):
            raise InvalidJobSpec("process.allow_root", "must be true or false")
        modules = data.get("allowed_modules") or []
        if not isinstance(modules, (list, tuple)):
            raise InvalidJobSpec("process.allowed_modules", "must be a list of dotted module names")
        for module in modules:
            nvflare.check_module(module, "process.allowed_modules")
        return cls(workspace=workspace, default_python_path=python_path, default_job_env=dict(env), user=user,
                   allow_root=allow_root, allowed_modules=tuple(modules))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["allowed_modules"] = list(self.allowed_modules)
        return data

    def check_module(self, module: str, role: str) -> None:
        """Only NVFlare's job module for the role, or one staff allowed for this site (any role)."""
        if module == nvflare.JOB_MODULES.get(role) or module in self.allowed_modules:
            return
        raise InvalidJobSpec(
            "job_args.exe_module",
            f"module {module!r} may not run on this site: a {role} job runs {nvflare.JOB_MODULES.get(role)!r}; "
            "staff may allow others in process.allowed_modules",
        )

    def job_user(self) -> tuple[int, int]:
        """(uid, gid) a job runs as: `process.user`, else the workspace owner. Root only when allowed;
        a dashboard that is not root can run jobs only as itself."""
        ws = self.workspace
        if self.user:
            uid, gid = (int(part) for part in USER_RE.fullmatch(self.user).groups())  # type: ignore[union-attr]
            source = f"process.user {self.user!r}"
        else:
            owned = ws  # a workspace not created yet: whoever owns the directory it will be made in
            while not os.path.exists(owned) and os.path.dirname(owned) != owned:
                owned = os.path.dirname(owned)
            try:
                st = os.stat(owned)
            except OSError as exc:
                raise InvalidJobSpec("process.user", f"not set, and the workspace {ws} cannot be read to use its "
                                                     f"owner instead ({exc.strerror})") from None
            uid, gid = st.st_uid, st.st_gid
            source = f"the owner {uid}:{gid} of {owned} (process.user is not set)"
        if (uid == 0 or gid == 0) and not self.allow_root:
            raise InvalidJobSpec("process.user", f"jobs would run as root ({source}): set process.user to an "
                                                 "unprivileged 'uid:gid' (or, staff only, process.allow_root)")
        euid, egid = os.geteuid(), os.getegid()
        if euid != 0 and (uid, gid) != (euid, egid):
            raise InvalidJobSpec("process.user", f"jobs would run as {uid}:{gid} ({source}), but the dashboard "
                                                 f"runs as {euid}:{egid}, not root, and cannot switch user")
        return uid, gid


def check_env(env: Mapping[str, str], field_name: str) -> None:
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidJobSpec(f"{field_name}.{key}",
                                 "names must be non-empty without '=' and nothing may hold a NUL byte")
