"""NVFlare's rules for turning job meta and JOB_PROCESS_ARGS into a command line, shared by every
backend (launch-semantics.md §1-§2). Pure functions; errors are InvalidJobSpec naming the field."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

from backends.base import InvalidJobSpec

# Upstream submission accepts this for job ids; NVFlare jobs are uuid4 strings in practice.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
JOB_ID_MAX_LENGTH = 128
# Study and dataset names, everywhere in NVFlare.
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
NAME_RULE = "1-63 characters: lower-case letters, digits, '_' and '-', starting and ending with a letter or digit"

MODES = ("process", "docker", "k8s", "slurm")
ROLES = ("client", "server")

# JobProcessArgs names in the order each role renders them as flags.
CLIENT_ARG_ORDER = (
    "workspace", "startup_dir", "job_id", "client_name", "parent_url", "parent_conn_sec",
    "target", "scheme", "startup_config_file",
)
SERVER_ARG_ORDER = (
    "workspace", "startup_config_file", "app_root", "job_id", "parent_url", "parent_conn_sec",
    "root_url", "service_host", "service_port",
)
KNOWN_ARGS = frozenset(
    {"exe_module", "workspace", "startup_dir", "app_root", "auth_token", "auth_signature", "ssid",
     "job_id", "client_name", "root_url", "parent_url", "parent_conn_sec", "service_host",
     "service_port", "target", "scheme", "startup_config_file", "restore_snapshot", "options",
     # Not NVFlare's JobProcessArgs: a Kubernetes job's workspace-transfer credentials, which the
     # client component (flare_launcher_client.workspace_transfer) adds; never rendered as flags.
     "workspace_transfer_token", "workspace_owner_fqcn"}
)
# NVFlare 2.9's job modules (client_executor.py / server_engine.py build exe_module as ("-m", these)).
JOB_MODULES = {
    "client": "nvflare.private.fed.app.client.worker_process",
    "server": "nvflare.private.fed.app.server.runner_process",
}
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
MODULE_MAX_LENGTH = 200
# The flag NVFlare's parent uses for each rendered arg (client_executor.py, server_engine.py).
ROLE_FLAGS = {
    "client": {"workspace": "-m", "startup_dir": "-w", "job_id": "-n", "client_name": "-c", "parent_url": "-p",
               "parent_conn_sec": "--parent_conn_sec", "target": "-g", "scheme": "-scheme",
               "startup_config_file": "-s"},
    "server": {"workspace": "-m", "startup_config_file": "-s", "app_root": "-r", "job_id": "-n", "parent_url": "-p",
               "parent_conn_sec": "--parent_conn_sec", "root_url": "-u", "service_host": "--host",
               "service_port": "--port"},
}
# Credentials never go into argv: they travel as these environment variables (JobProcessEnv).
CREDENTIAL_ENV = {
    "auth_token": "NVFLARE_JOB_AUTH_TOKEN",
    "auth_signature": "NVFLARE_JOB_TOKEN_SIGNATURE",
    "ssid": "NVFLARE_JOB_SSID",
}

# The FL parent's WorkspaceTransferManager registration of a Kubernetes job (launch-semantics.md
# §4.5): sealed and never stored like the credentials above; only the Kubernetes backend uses them.
WORKSPACE_TRANSFER_ENV = {
    "workspace_transfer_token": "NVFL_WORKSPACE_TRANSFER_TOKEN",
    "workspace_owner_fqcn": "NVFL_WORKSPACE_OWNER_FQCN",
}

DEFAULT_PYTHON_PATH = "/usr/local/bin/python"


def check_job_id(job_id: Any, field: str = "job_id") -> str:
    if not isinstance(job_id, str) or not job_id:
        raise InvalidJobSpec(field, "a job id is required")
    if len(job_id) > JOB_ID_MAX_LENGTH:
        raise InvalidJobSpec(field, f"must be at most {JOB_ID_MAX_LENGTH} characters")
    if not JOB_ID_RE.fullmatch(job_id):
        raise InvalidJobSpec(field, "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'")
    return job_id


def check_name(name: Any, field: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidJobSpec(field, f"invalid name {name!r}: {NAME_RULE}")
    return name


def resolve_launcher_spec(job_meta: Mapping[str, Any], site: str, mode: str) -> dict[str, Any]:
    """§1.1: `{**launcher_spec.default[mode], **launcher_spec[site][mode]}`, else the legacy
    `resource_spec[site][mode]`. Stricter than NVFlare: a top-level key that looks like `default`
    is refused instead of warned about, and the shape is checked."""
    launcher_spec = job_meta.get("launcher_spec") or {}
    if not isinstance(launcher_spec, Mapping):
        raise InvalidJobSpec("job_meta.launcher_spec", "must be a mapping of site name -> {mode: {...}}")
    for key, block in launcher_spec.items():
        path = f"job_meta.launcher_spec.{key}"
        if not isinstance(block, Mapping):
            raise InvalidJobSpec(path, "must be a mapping of mode -> options")
        for mode_name, options in block.items():
            if mode_name not in MODES:
                raise InvalidJobSpec(f"{path}.{mode_name}", f"unknown mode; expected one of {', '.join(MODES)}")
            if options is not None and not isinstance(options, Mapping):
                raise InvalidJobSpec(f"{path}.{mode_name}", "must be a mapping of options")
        if key != "default" and (key.startswith("default") or "default".startswith(key)) and block:
            raise InvalidJobSpec(path, "looks like a misspelled 'default' (the only reserved key); rename it")

    default_block = (launcher_spec.get("default") or {}).get(mode) or {}
    site_block = launcher_spec.get(site) or {}
    if default_block or mode in site_block:
        return {**default_block, **(site_block.get(mode) or {})}

    resource_spec = job_meta.get("resource_spec") or {}
    if isinstance(resource_spec, Mapping):
        legacy = resource_spec.get(site)
        if isinstance(legacy, Mapping) and any(m in legacy for m in MODES):
            options = legacy.get(mode) or {}
            if not isinstance(options, Mapping):
                raise InvalidJobSpec(f"job_meta.resource_spec.{site}.{mode}", "must be a mapping of options")
            return dict(options)
    return {}


PORTABLE_KEYS = ("num_of_gpus", "num_of_cpus", "memory")
MEMORY_RE = re.compile(r"^([1-9][0-9]*)(Mi|Gi|Ti)$")
MEMORY_UNITS = {"Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def portable_resources(job_meta: Mapping[str, Any], site: str) -> dict[str, Any]:
    """§1.2: the portable keys (`num_of_gpus`, `num_of_cpus`, `memory`) that apply to `site`,
    validated. A legacy nested site block (one with mode keys) contributes none."""
    resource_spec = job_meta.get("resource_spec") or {}
    if not isinstance(resource_spec, Mapping):
        raise InvalidJobSpec("job_meta.resource_spec", "must be a mapping")
    defaults = resource_spec.get("@default") or {}
    if not isinstance(defaults, Mapping):
        raise InvalidJobSpec("job_meta.resource_spec.@default", "must be a mapping")
    for key in defaults:
        if key not in PORTABLE_KEYS:
            raise InvalidJobSpec(f"job_meta.resource_spec.@default.{key}", f"only {', '.join(PORTABLE_KEYS)} are allowed here")
    site_block = resource_spec.get(site) or {}
    if not isinstance(site_block, Mapping):
        raise InvalidJobSpec(f"job_meta.resource_spec.{site}", "must be a mapping")
    if any(m in site_block for m in MODES):
        flat = dict(site_block.get("process") or {}) if defaults else {}
    else:
        flat = dict(site_block)
    merged = {**defaults, **flat}
    result: dict[str, Any] = {}
    for key in PORTABLE_KEYS:
        if key not in merged:
            continue
        value = merged[key]
        path = f"job_meta.resource_spec.{site}.{key}"
        if key == "num_of_gpus":
            result[key] = check_int(value, path, minimum=0)
        elif key == "num_of_cpus":
            result[key] = check_int(value, path, minimum=1)
        else:
            if not isinstance(value, str) or not MEMORY_RE.fullmatch(value):
                raise InvalidJobSpec(path, "must be a size such as '512Mi', '4Gi' or '1Ti'")
            result[key] = value
    return result


def memory_bytes(value: str) -> int:
    number, unit = MEMORY_RE.fullmatch(value).groups()  # type: ignore[union-attr]
    return int(number) * MEMORY_UNITS[unit]


def check_int(value: Any, field: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJobSpec(field, f"must be an integer >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise InvalidJobSpec(field, f"must be an integer >= {minimum}, got {value}")
    return value


def check_python_path(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidJobSpec(field, "must be a non-blank string")
    return value


def check_image(value: Any, field: str) -> str | None:
    """`""`/None mean "no image"; anything else must be a string (§1.3, strict for every backend)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidJobSpec(field, f"must be a string, got {type(value).__name__}")
    if value != value.strip() or not value:
        raise InvalidJobSpec(field, "must not contain surrounding whitespace")
    return value


def resolve_image(job_image: str | None, study_image: str | None, *, job_id: str, site: str) -> str:
    """Image precedence: the job's launcher spec, then the study's `container.image`, else an error."""
    image = job_image or study_image
    if not image:
        raise InvalidJobSpec(
            "job_meta.launcher_spec",
            f"no job image was specified for job {job_id} on site {site}: set one in "
            f"launcher_spec['{site}'][mode]['image'], launcher_spec['default'][mode]['image'], "
            "the legacy resource_spec, or the study's container.image",
        )
    return image


def normalise_job_args(job_args: Mapping[str, Any], role: str = "client") -> dict[str, tuple[str, Any]]:
    """JOB_PROCESS_ARGS as given over JSON: name -> [flag, value]. Unknown names are refused; an arg
    rendered into argv must carry NVFlare's flag for it (ROLE_FLAGS) and a value that cannot inject
    a flag or break the command line; exe_module must be `["-m", <dotted module name>]`."""
    if not isinstance(job_args, Mapping):
        raise InvalidJobSpec("job_args", "must be a mapping of arg name -> [flag, value]")
    flags = ROLE_FLAGS.get(role, ROLE_FLAGS["client"])
    result: dict[str, tuple[str, Any]] = {}
    for name, pair in job_args.items():
        path = f"job_args.{name}"
        if name not in KNOWN_ARGS:
            raise InvalidJobSpec(path, f"unknown job process arg; expected one of {', '.join(sorted(KNOWN_ARGS))}")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[0], str):
            raise InvalidJobSpec(path, "must be a [flag, value] pair")
        flag, value = pair
        if value is not None and not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InvalidJobSpec(path, "value must be a string, a number or null")
        if isinstance(value, str) and "\0" in value:
            raise InvalidJobSpec(path, "value must not contain a NUL byte")
        if name == "options":
            option_items(flag, value, path)
        if name in flags:
            if flag != flags[name]:
                raise InvalidJobSpec(path,
                                     f"a {role} job passes {name} with NVFlare's flag {flags[name]!r}, not {flag!r}")
            check_arg_value(value, path)
        result[name] = (flag, value)
    if "exe_module" not in result or not result["exe_module"][1]:
        raise InvalidJobSpec("job_args.exe_module", "JOB_PROCESS_ARGS must name the module to run (exe_module)")
    flag, module = result["exe_module"]
    if flag != "-m":
        raise InvalidJobSpec("job_args.exe_module", f"must be ['-m', <module>], not {flag!r}")
    check_module(module, "job_args.exe_module")
    return result


def check_module(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > MODULE_MAX_LENGTH or not MODULE_RE.fullmatch(value):
        raise InvalidJobSpec(field, f"must be a dotted Python module name such as {JOB_MODULES['client']!r}")
    return value


def check_arg_value(value: Any, field: str) -> None:
    """A value rendered right after its flag: no NUL or line break, and nothing argparse would take
    for another flag (a leading '-')."""
    text = "" if value is None else str(value)
    if "\0" in text or "\n" in text or "\r" in text:
        raise InvalidJobSpec(field, "value must not contain NUL or line-break characters")
    if text.startswith("-"):
        raise InvalidJobSpec(field, "value must not start with '-' (it would be read as another flag)")


def render_command(
    python_path: str, role: str, args: Mapping[str, tuple[str, Any]], set_options: tuple[str, ...] = ()
) -> list[str]:
    """§2: `[python, -u, -m, module, flag, value, ...]` then `--set item...`. The `--set` items are the
    `options` arg as NVFlare's process launcher renders it (option_items: it holds the parent's
    `args.set` items plus `print_conf=True`), else `set_options` (the parent's `args.set`, which is
    all NVFlare's Docker and K8s launchers pass). Credentials and exe_module are never rendered as
    flags; a None value drops its flag. Every rendered flag and
    value is checked again here (NVFlare's flag for the role, no flag injection), whoever built `args`."""
    order = SERVER_ARG_ORDER if role == "server" else CLIENT_ARG_ORDER
    flags = ROLE_FLAGS["server" if role == "server" else "client"]
    exe_flag, module = args["exe_module"]
    if exe_flag != "-m":
        raise InvalidJobSpec("job_args.exe_module", f"must be ['-m', <module>], not {exe_flag!r}")
    argv = [python_path, "-u", "-m", check_module(module, "job_args.exe_module")]
    for name in order:
        if name in args:
            flag, value = args[name]
            if flag != flags[name]:
                raise InvalidJobSpec(f"job_args.{name}",
                                     f"a {role} job passes {name} with NVFlare's flag {flags[name]!r}, not {flag!r}")
            check_arg_value(value, f"job_args.{name}")
            if value is not None:
                argv += [flag, str(value)]
    items = option_items(*args["options"]) if "options" in args else check_set_options(set_options)
    if items:
        argv += ["--set", *items]
    return argv


def option_items(flag: Any, value: Any, field: str = "job_args.options") -> tuple[str, ...]:
    """The `options` JOB_PROCESS_ARGS entry, `("--set", " k=v k2=v2 print_conf=True")`, as NVFlare's
    process launcher runs it: the parent joins its `args.set` items and its own (`print_conf=True`,
    the server's `restore_snapshot=...`) into one string, which generate_*_command() renders after
    the flag and shlex.split(command, comments=True) cuts into argv items. The items are then checked
    as set options (key=value, no leading '-', no NUL or line break)."""
    if flag != "--set":
        raise InvalidJobSpec(field, f"NVFlare passes options with the flag '--set', not {flag!r}")
    if value is None:
        return ()
    if not isinstance(value, str):
        raise InvalidJobSpec(field, "value must be a string of space-separated key=value items")
    if "\0" in value or "\n" in value or "\r" in value:
        raise InvalidJobSpec(field, "value must not contain NUL or line-break characters")
    try:
        items = shlex.split(value, comments=True)
    except ValueError as exc:  # an unclosed quote: NVFlare's launcher would fail to start the job
        raise InvalidJobSpec(field, f"cannot be split into items as NVFlare does: {exc}") from None
    try:
        return check_set_options(items)
    except InvalidJobSpec as exc:
        raise InvalidJobSpec(field, exc.reason) from None


def job_command(
    override: Any, python_path: str, role: str, args: Mapping[str, tuple[str, Any]], set_options: tuple[str, ...] = ()
) -> list[str]:
    """The argv a job runs: NVFlare's command (render_command), or the launcher's declared override
    (JobRequest.command: the whole argv, as given) when there is one. `args` and `set_options` are
    validated either way, so an override never skips a check the NVFlare command gets."""
    rendered = render_command(python_path, role, args, set_options)
    return list(check_command(override)) if override is not None else rendered


def check_command(value: Any, field: str = "command") -> tuple[str, ...]:
    """A command override: a non-empty list of strings, argv[0] non-blank, nothing holding a NUL."""
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidJobSpec(field, "must be a non-empty list of strings (the whole argv)")
    if not value[0].strip():
        raise InvalidJobSpec(field, "argv[0] must name the program to run")
    if any("\0" in v for v in value):
        raise InvalidJobSpec(field, "must not contain a NUL byte")
    return tuple(value)


def credential_env(args: Mapping[str, tuple[str, Any]]) -> dict[str, str]:
    """Bootstrap credentials as NVFLARE_JOB_* env vars; empty values are skipped so the job fails loudly."""
    return {env: str(args[name][1]) for name, env in CREDENTIAL_ENV.items() if name in args and args[name][1]}


def check_set_options(value: Any) -> tuple[str, ...]:
    """The parent's `--set` items (NVFlare passes e.g. `print_conf=True`): KEY=VALUE strings that
    cannot inject a flag (leading '-') or break the command line (NUL, line breaks)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise InvalidJobSpec("set_options", "must be a list of non-empty strings such as 'key=value'")
    for i, item in enumerate(value):
        if "=" not in item or item.startswith(("-", "=")):
            raise InvalidJobSpec("set_options", f"item {i} must be 'key=value' with a key not starting with '-'")
        if "\0" in item or "\n" in item or "\r" in item:
            raise InvalidJobSpec("set_options", f"item {i} must not contain NUL or line-break characters")
    return tuple(value)
