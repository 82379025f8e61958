"""``services.d/NAME.yaml`` -> ``ServiceConfig``: keys, types, values and the checks against the host
(executables, users, groups). References to other files are checked in ``validate``."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any
from urllib.parse import urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hasupd.config.model import (
    ContainerEngine,
    ContainerSpec,
    ErrorsConfig,
    HealthProbe,
    HeartbeatFile,
    Limits,
    ProbeKind,
    RecoveryAction,
    RecoveryKind,
    ServiceConfig,
    SocketSpec,
    StartLimit,
)
from hasupd.config.nodes import (
    Converter,
    Ctx,
    Document,
    describe,
    is_null,
    join,
    mapping_items,
    read_mapping,
    record,
    seq_of,
    to_abs_path,
    to_argv,
    to_bool,
    to_duration,
    to_enum,
    to_int,
    to_listen,
    to_name,
    to_nonempty_str,
    to_positive_number,
    to_signal,
    to_size,
    to_str,
)
from hasupd.config.validate_backups import to_schedule
from hasupd.config.validate_fleet import to_placement
from hasupd.config.validate_process import (
    LIMIT_FIELDS,
    PROCESS_FIELDS,
    check_not_container,
    to_group_name,
)
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.users import UnknownIdentity, lookup_user
from hasupd.states import OutputMode, RestartMode, ServiceType

# systemd's default PATH for services (and hasupd's, when a service sets none).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFAULTS = ServiceConfig(name="-")
# Bounds on counts (see README, "Bounds of a config file"): far above any real use, low enough that a
# typo is caught before it becomes a billion processes or a start limit that never trips.
MAX_INSTANCES = 1000
MAX_BURST = 1_000_000  # a huge burst is how one says "never give up"
MAX_PROBE_FAILURES = 1000
MAX_CPU_PERCENT = 100_000.0  # 1000 CPUs


def _to_user(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return a user name or a numeric uid that the user database holds (see ``hasupd.host.users``)."""
    value = to_nonempty_str(ctx, node, path)
    if value is None:
        return None
    try:
        lookup_user(value)
    except UnknownIdentity as error:
        ctx.error(node, path, str(error))
        return None
    return value


def _to_environment(ctx: Ctx, node: Node, path: str) -> tuple[tuple[str, str], ...] | None:
    """Return sorted (name, value) pairs; scalar values are taken as written ("8080", "true")."""
    if not isinstance(node, MappingNode):
        ctx.error(node, path, f"expected a mapping of variable names to strings, got {describe(node)}")
        return None
    before = ctx.count
    pairs: dict[str, str] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, ScalarNode) else ""
        if not _ENV_NAME.fullmatch(key):
            ctx.error(key_node, join(path, key), f"invalid environment variable name {key!r}")
        elif isinstance(value_node, ScalarNode) and not is_null(value_node):
            pairs[key] = value_node.value
        else:
            ctx.error(value_node, join(path, key), f"expected a string, got {describe(value_node)}")
    return tuple(sorted(pairs.items())) if ctx.count == before else None


def _to_environment_file(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return an absolute path, kept with its leading "-" (optional file, as in systemd)."""
    value = to_str(ctx, node, path)
    if value is not None and not value.removeprefix("-").startswith("/"):
        ctx.error(node, path, f"expected an absolute path (with an optional leading '-'), got {value!r}")
        return None
    return value


def _to_fd_name(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return a LISTEN_FDNAMES entry: 1..255 printable ASCII characters, no ':'."""
    value = to_str(ctx, node, path)
    if value is not None and not (
        0 < len(value) <= 255 and value.isascii() and value.isprintable() and ":" not in value
    ):
        ctx.error(node, path, f"invalid socket name {value!r}: 1 to 255 printable ASCII characters, no ':'")
        return None
    return value


def _to_url(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return an http:// or https:// URL with a host."""
    value = to_str(ctx, node, path)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        valid = False
    if not valid:
        ctx.error(node, path, f"invalid URL {value!r}: expected http://host[:port]/path or https://...")
        return None
    return value


def _to_regex(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return a regular expression that Python's ``re`` compiles."""
    value = to_nonempty_str(ctx, node, path)
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as error:
        ctx.error(node, path, f"invalid regular expression {value!r}: {error}")
        return None
    return value


_PROBE_KINDS = tuple(kind.value for kind in ProbeKind)
_PROBE_FIELDS: dict[str, Converter] = {
    ProbeKind.HTTP: _to_url,
    ProbeKind.TCP: to_listen(unix=False),
    ProbeKind.EXEC: to_argv,
    "interval_sec": to_duration(positive=True),
    "timeout_sec": to_duration(positive=True),
    "failures": to_int(minimum=1, maximum=MAX_PROBE_FAILURES),
    "start_period_sec": to_duration(),
}


def _exactly_one(ctx: Ctx, node: Node, path: str, choices: tuple[str, ...], what: str) -> str | None:
    """Return the one key of ``choices`` present in mapping ``node``; report none or several."""
    present = [(key, key_node) for key, (key_node, _) in mapping_items(node).items() if key in choices]
    if not present:
        ctx.error(node, path, f"{what} needs one of {', '.join(choices)}")
        return None
    for key, key_node in present[1:]:
        ctx.error(key_node, join(path, key), f"{what} takes only one of {', '.join(choices)}")
    return present[0][0] if len(present) == 1 else None


def _to_probe(ctx: Ctx, node: Node, path: str) -> HealthProbe | None:
    """Return a probe from {http: URL} / {tcp: "host:port"} / {exec: argv} plus its timing keys."""
    before = ctx.count
    values = read_mapping(ctx, node, path, _PROBE_FIELDS)
    if values is None:
        return None
    kind = _exactly_one(ctx, node, path, _PROBE_KINDS, "a health probe")
    if kind is None or ctx.count != before:
        return None
    target = values.pop(kind)
    if kind == ProbeKind.EXEC:
        return HealthProbe(kind=ProbeKind.EXEC, argv=target, **values)
    return HealthProbe(kind=ProbeKind(kind), target=target, **values)


_RECOVERY_HELP = "expected rollback_config, {exec: [argv]} or {restore: JOB}"
_RECOVERY_FIELDS: dict[str, Converter] = {RecoveryKind.EXEC: to_argv, RecoveryKind.RESTORE: to_name}


def _to_recovery(ctx: Ctx, node: Node, path: str) -> RecoveryAction | None:
    """Return an on_failure action: the string rollback_config, {exec: argv} or {restore: JOB}."""
    if isinstance(node, ScalarNode) and node.value == RecoveryKind.ROLLBACK_CONFIG:
        return RecoveryAction(kind=RecoveryKind.ROLLBACK_CONFIG)
    if not isinstance(node, MappingNode):
        shown = repr(node.value) if isinstance(node, ScalarNode) else describe(node)
        ctx.error(node, path, f"invalid recovery action {shown}: {_RECOVERY_HELP}")
        return None
    before = ctx.count
    values = read_mapping(ctx, node, path, _RECOVERY_FIELDS)
    kind = _exactly_one(ctx, node, path, tuple(_RECOVERY_FIELDS), "a recovery action")
    if values is None or kind is None or ctx.count != before:
        return None
    if kind == RecoveryKind.EXEC:
        return RecoveryAction(kind=RecoveryKind.EXEC, argv=values[kind])
    return RecoveryAction(kind=RecoveryKind.RESTORE, job=values[kind])


SERVICE_FIELDS: dict[str, Converter] = {
    "description": to_str,
    "command": to_argv,
    "type": to_enum(ServiceType),
    "user": _to_user,
    "group": to_group_name,
    "working_directory": to_abs_path,
    "environment": _to_environment,
    "environment_files": seq_of(_to_environment_file, "a list of absolute paths"),
    "after": seq_of(to_name, "a list of service names"),
    "instances": to_int(minimum=1, maximum=MAX_INSTANCES),
    "sockets": seq_of(
        record(SocketSpec, {"listen": to_listen(unix=True), "name": _to_fd_name}, required=("listen",)),
        "a list of sockets such as {listen: '127.0.0.1:8080'}",
    ),
    "restart": to_enum(RestartMode),
    "restart_sec": to_duration(),
    "restart_max_delay_sec": to_duration(),
    "start_limit": record(
        StartLimit,
        {"burst": to_int(minimum=1, maximum=MAX_BURST), "interval_sec": to_duration(positive=True)},
    ),
    "timeout_start_sec": to_duration(positive=True),
    "timeout_stop_sec": to_duration(positive=True),
    "kill_signal": to_signal,
    "watchdog_sec": to_duration(positive=True),
    "heartbeat_file": record(
        HeartbeatFile, {"path": to_abs_path, "max_age_sec": to_duration(positive=True)}, required=("path",)
    ),
    "health": seq_of(_to_probe, "a list of probes such as {tcp: '127.0.0.1:5432'}"),
    "limits": record(
        Limits,
        {
            "memory": to_size,
            "cpu_percent": to_positive_number(MAX_CPU_PERCENT),
            "cpu_window_sec": to_duration(positive=True),
            **LIMIT_FIELDS,
        },
    ),
    "output": to_enum(OutputMode),
    "container": record(
        ContainerSpec,
        {
            "engine": to_enum(ContainerEngine),
            "image": to_nonempty_str,
            "args": seq_of(to_str, "a list of strings"),
            "options": seq_of(to_str, "a list of strings"),
        },
        required=("image",),
    ),
    "on_failure": seq_of(_to_recovery, "a list of recovery actions"),
    "alerts": seq_of(to_name, "a list of alert channel names"),
    "placement": to_placement,
    "errors": record(ErrorsConfig, {"match": seq_of(_to_regex, "a list of regular expressions")}),
    "reload_signal": to_signal,
    "reload_command": to_argv,
    "schedule": to_schedule,
    "persistent": to_bool,
    "randomized_delay_sec": to_duration(),
    **PROCESS_FIELDS,
    "supplementary_groups": seq_of(to_group_name, "a list of group names or ids"),
    "no_new_privileges": to_bool,
}


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _check_restart_delays(ctx: Ctx, values: dict[str, Any], present: dict[str, tuple[Node, Node]]) -> None:
    """Report restart_max_delay_sec < restart_sec (either may come from the defaults)."""
    keys = ("restart_sec", "restart_max_delay_sec")
    if any(key in present and key not in values for key in keys):
        return  # already reported
    first = values.get("restart_sec", _DEFAULTS.restart_sec)
    most = values.get("restart_max_delay_sec", _DEFAULTS.restart_max_delay_sec)
    if most >= first:
        return
    if "restart_max_delay_sec" in present:
        node = present["restart_max_delay_sec"][1]
        ctx.error(node, "restart_max_delay_sec", f"must be >= restart_sec ({_seconds(first)})")
    else:
        ctx.error(
            present["restart_sec"][1],
            "restart_sec",
            f"larger than restart_max_delay_sec ({_seconds(most)} by default); set restart_max_delay_sec too",
        )


def _check_reload_and_timer(ctx: Ctx, values: dict[str, Any], present: dict[str, tuple[Node, Node]]) -> None:
    """Report reload_signal with reload_command, a schedule on a service that is not a oneshot, and
    persistent or randomized_delay_sec without a schedule."""
    if "reload_signal" in present and "reload_command" in present:
        ctx.error(
            present["reload_command"][0], "reload_command", "reload_signal and reload_command are exclusive"
        )
    if "schedule" in present and values.get("type", _DEFAULTS.type) is not ServiceType.ONESHOT:
        ctx.error(
            present["schedule"][0], "schedule", "a schedule needs type: oneshot (a timer runs to its end)"
        )
    for key in ("persistent", "randomized_delay_sec"):
        if key in present and "schedule" not in present:
            ctx.error(present[key][0], key, f"{key} needs schedule:")


def _check_executable(ctx: Ctx, values: dict[str, Any], node: Node, environment_given: bool) -> None:
    """Report a command[0] that is not an executable file (a bare name is looked up on the PATH)."""
    if environment_given and "environment" not in values:
        return  # the PATH to search is unknown; the environment's problem is reported
    item, path = (node.value[0], "command.0") if isinstance(node, SequenceNode) else (node, "command")
    program = values["command"][0].replace("{instance}", "0")
    if "/" in program:
        if not program.startswith("/"):
            ctx.error(item, path, f"relative path {program!r}: use an absolute path or a name on the PATH")
        elif not os.path.isfile(program):
            ctx.error(item, path, f"executable {program!r} not found")
        elif not os.access(program, os.X_OK):
            ctx.error(item, path, f"{program!r} is not executable")
        return
    search = dict(values.get("environment", ())).get("PATH", DEFAULT_PATH)
    if shutil.which(program, path=search) is None:
        ctx.error(item, path, f"executable {program!r} not found on PATH {search}")


def validate_service(ctx: Ctx, doc: Document) -> ServiceConfig | None:
    """Return the service of ``doc``, or None after reporting every problem in it through ``ctx``."""
    if doc.node is None:
        if doc.parsed:
            ctx.error(None, "", "empty service file: command or container is required")
        return None
    before = ctx.count
    values = read_mapping(ctx, doc.node, "", SERVICE_FIELDS)
    if values is None:
        return None
    present = mapping_items(doc.node)
    if "command" not in present and "container" not in present:
        ctx.error(doc.node, "", "command or container is required")
    elif "command" in present and "container" in present:
        ctx.error(present["container"][0], "container", "command and container are mutually exclusive")
    elif "command" in values:
        _check_executable(ctx, values, present["command"][1], "environment" in present)
    if "container" in present:
        check_not_container(ctx, present)
    _check_restart_delays(ctx, values, present)
    _check_reload_and_timer(ctx, values, present)
    if ctx.count != before:
        return None
    return ServiceConfig(name=doc.name, source=doc.path, **values)
