"""Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
for a study's pod_template, as a pure function on plain dicts (no API server, no Django).

`pod_violations(pod, level)` lists every control the manifest breaks at `level`, each as
"<path>: <reason>", the path starting with `prefix` (e.g. `pod_template.spec.volumes[0].hostPath`).

Two modes:
- `require_set=True` is the standard read literally, for a whole pod: the restricted profile's
  "must be set" controls (runAsNonRoot, seccompProfile, allowPrivilegeEscalation: false,
  capabilities.drop: [ALL]) fail when the field is absent.
- `require_set=False` judges only what the manifest sets: fields left out are filled by the
  launcher's own pod and the site's staff-owned `security_context`, so absence is no violation.

`template_violations()` is how the launcher checks a study's pod_template, at save and at launch:
the standard with `require_set=False`, plus, below "privileged", what the standard allows but a
template must not bring in because it reaches beyond the job: another service account
(`serviceAccountName`), a pinned `nodeName`, and any Secret (volumes, projected sources, env
`secretKeyRef`, `envFrom.secretRef`): the namespace holds other jobs' credential Secrets and the
sites' startup kits, and only the launcher mounts Secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LEVELS = ("restricted", "baseline", "privileged")
DEFAULT_LEVEL = "restricted"

BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
RESTRICTED_VOLUME_TYPES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
})
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
})
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
SECRETS_ARE_THE_LAUNCHERS = "only the launcher mounts Secrets (other jobs' credentials live in the namespace)"
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def check_level(value: Any) -> str:
    if value not in LEVELS:
        raise ValueError(f"must be one of {', '.join(LEVELS)}")
    return value


def pod_violations(pod: Any, level: str = DEFAULT_LEVEL, *, prefix: str = "pod_template",
                   require_set: bool = True) -> list[str]:
    """Every control `pod` breaks at `level` ("restricted", "baseline" or "privileged")."""
    check_level(level)
    if level == "privileged":
        return []
    if not isinstance(pod, Mapping):
        return [f"{prefix}: must be a Pod manifest mapping"]
    out: list[str] = []
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    if not isinstance(spec, Mapping) or not isinstance(meta, Mapping):
        return [f"{prefix}: metadata and spec must be mappings"]
    sp = f"{prefix}.spec"
    restricted = level == "restricted"

    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"{sp}.{key}: host namespaces are not allowed")
    for i, volume in enumerate(_list(spec.get("volumes"))):
        vp = f"{sp}.volumes[{i}]"
        if not isinstance(volume, Mapping):
            continue
        if "hostPath" in volume:
            out.append(f"{vp}.hostPath: hostPath volumes are not allowed")
        elif restricted:
            for key in volume:
                if key != "name" and key not in RESTRICTED_VOLUME_TYPES:
                    out.append(f"{vp}.{key}: volume type not allowed (only {', '.join(sorted(RESTRICTED_VOLUME_TYPES))})")
    for key, value in (meta.get("annotations") or {}).items():
        if str(key).startswith(APPARMOR_ANNOTATION) and not (
                value == "runtime/default" or str(value).startswith("localhost/")):
            out.append(f"{prefix}.metadata.annotations.{key}: AppArmor profile must be runtime/default or localhost/*")

    pod_sc = spec.get("securityContext") or {}
    pod_sc = pod_sc if isinstance(pod_sc, Mapping) else {}
    psp = f"{sp}.securityContext"
    out += _common_context(pod_sc, psp, restricted)
    for i, sysctl in enumerate(_list(pod_sc.get("sysctls"))):
        name = sysctl.get("name") if isinstance(sysctl, Mapping) else None
        if name not in SAFE_SYSCTLS:
            out.append(f"{psp}.sysctls[{i}].name: sysctl {name!r} is not in the safe set")

    containers = [(f"{sp}.{kind}[{i}]", c) for kind in CONTAINER_LISTS
                  for i, c in enumerate(_list(spec.get(kind))) if isinstance(c, Mapping)]
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = _seccomp_type(pod_sc) in ("RuntimeDefault", "Localhost")
    for cp, container in containers:
        sc = container.get("securityContext") or {}
        sc = sc if isinstance(sc, Mapping) else {}
        scp = f"{cp}.securityContext"
        out += _common_context(sc, scp, restricted)
        if sc.get("privileged"):
            out.append(f"{scp}.privileged: privileged containers are not allowed")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{scp}.procMount: must be Default")
        for j, port in enumerate(_list(container.get("ports"))):
            if isinstance(port, Mapping) and port.get("hostPort"):
                out.append(f"{cp}.ports[{j}].hostPort: host ports are not allowed")
        caps = sc.get("capabilities") or {}
        caps = caps if isinstance(caps, Mapping) else {}
        allowed = RESTRICTED_CAPABILITIES if restricted else BASELINE_CAPABILITIES
        for j, cap in enumerate(_list(caps.get("add"))):
            if cap not in allowed:
                out.append(f"{scp}.capabilities.add[{j}]: capability {cap!r} is not allowed at level {level}")
        if not restricted:
            continue
        ape = sc.get("allowPrivilegeEscalation")
        if ape is True or (require_set and ape is not False):
            out.append(f"{scp}.allowPrivilegeEscalation: must be false")
        if require_set and "ALL" not in _list(caps.get("drop")):
            out.append(f"{scp}.capabilities.drop: must include ALL")
        if require_set and sc.get("runAsNonRoot") is not True and not (pod_non_root and "runAsNonRoot" not in sc):
            out.append(f"{scp}.runAsNonRoot: must be true (here or in the pod securityContext)")
        if require_set and _seccomp_type(sc) is None and not pod_seccomp:
            out.append(f"{scp}.seccompProfile.type: must be RuntimeDefault or Localhost (here or in the pod securityContext)")
    return out


def template_violations(template: Any, level: str = DEFAULT_LEVEL, *, prefix: str = "pod_template") -> list[str]:
    """A study pod_template at the site's `level`: the standard on what it sets, plus the launcher's
    own rules (module docstring) below "privileged"."""
    out = pod_violations(template, level, prefix=prefix, require_set=False)
    if level == "privileged" or not isinstance(template, Mapping) or not isinstance(template.get("spec") or {}, Mapping):
        return out
    spec = template.get("spec") or {}
    sp = f"{prefix}.spec"
    for key in ("serviceAccountName", "serviceAccount"):
        if spec.get(key) not in (None, "", "default"):
            out.append(f"{sp}.{key}: only platform staff may run jobs under another service account")
    if spec.get("nodeName"):
        out.append(f"{sp}.nodeName: pods are placed by the scheduler, not pinned to a node")
    for i, volume in enumerate(_list(spec.get("volumes"))):
        if not isinstance(volume, Mapping):
            continue
        if "secret" in volume:
            out.append(f"{sp}.volumes[{i}].secret: {SECRETS_ARE_THE_LAUNCHERS}")
        sources = volume.get("projected", {}).get("sources") if isinstance(volume.get("projected"), Mapping) else None
        for j, source in enumerate(_list(sources)):
            if isinstance(source, Mapping) and "secret" in source:
                out.append(f"{sp}.volumes[{i}].projected.sources[{j}].secret: {SECRETS_ARE_THE_LAUNCHERS}")
    for kind in CONTAINER_LISTS:
        for i, container in enumerate(_list(spec.get(kind))):
            if not isinstance(container, Mapping):
                continue
            cp = f"{sp}.{kind}[{i}]"
            for j, env in enumerate(_list(container.get("env"))):
                value_from = env.get("valueFrom") if isinstance(env, Mapping) else None
                if isinstance(value_from, Mapping) and "secretKeyRef" in value_from:
                    out.append(f"{cp}.env[{j}].valueFrom.secretKeyRef: {SECRETS_ARE_THE_LAUNCHERS}")
            for j, source in enumerate(_list(container.get("envFrom"))):
                if isinstance(source, Mapping) and "secretRef" in source:
                    out.append(f"{cp}.envFrom[{j}].secretRef: {SECRETS_ARE_THE_LAUNCHERS}")
    return out


def _common_context(sc: Mapping[str, Any], path: str, restricted: bool) -> list[str]:
    """Controls shared by the pod and container securityContext."""
    out = []
    windows = sc.get("windowsOptions") or {}
    if isinstance(windows, Mapping) and windows.get("hostProcess"):
        out.append(f"{path}.windowsOptions.hostProcess: Windows host processes are not allowed")
    seccomp = _seccomp_type(sc)
    if seccomp == "Unconfined" or (restricted and seccomp not in (None, "RuntimeDefault", "Localhost")):
        out.append(f"{path}.seccompProfile.type: must be RuntimeDefault or Localhost")
    apparmor = sc.get("appArmorProfile") or {}
    if isinstance(apparmor, Mapping) and apparmor.get("type") not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"{path}.appArmorProfile.type: must be RuntimeDefault or Localhost")
    selinux = sc.get("seLinuxOptions") or {}
    if isinstance(selinux, Mapping):
        if selinux.get("type", "") not in SELINUX_TYPES:
            out.append(f"{path}.seLinuxOptions.type: SELinux type {selinux.get('type')!r} is not allowed")
        for key in ("user", "role"):
            if selinux.get(key):
                out.append(f"{path}.seLinuxOptions.{key}: must not be set")
    if restricted:
        if sc.get("runAsNonRoot") is False:
            out.append(f"{path}.runAsNonRoot: must not be false")
        if sc.get("runAsUser") == 0:
            out.append(f"{path}.runAsUser: must not be 0 (root)")
    return out


def _seccomp_type(sc: Mapping[str, Any]) -> str | None:
    profile = sc.get("seccompProfile")
    return profile.get("type") if isinstance(profile, Mapping) else None


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []
