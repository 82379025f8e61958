"""``hasupd.yaml`` -> ``DaemonConfig``: daemon settings, alert channels, backup repositories, roles."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from hasupd.config.model import (
    AccessConfig,
    AlertChannel,
    DaemonConfig,
    EmailChannel,
    LogConfig,
    LogFormat,
    LogTarget,
    MetricsConfig,
    RepositoryConfig,
    SmtpConfig,
    TlsMode,
)
from hasupd.config.nodes import (
    NAME_PATTERN,
    Converter,
    Ctx,
    Document,
    describe,
    is_name,
    join,
    mapping_items,
    read_mapping,
    record,
    seq_of,
    to_abs_path,
    to_bool,
    to_duration,
    to_enum,
    to_int,
    to_listen,
    to_nonempty_str,
)
from hasupd.config.validate_alerts import CHANNEL_FIELDS, one_transport
from hasupd.config.validate_alerts import to_address as _to_address
from hasupd.config.validate_fleet import to_fleet
from hasupd.config.validate_rules import RULES_KEY, to_rules
from hasupd.config.validate_web import to_web

_SMTP = record(
    SmtpConfig,
    {
        "host": to_nonempty_str,
        "port": to_int(minimum=1, maximum=65535),
        "tls": to_enum(TlsMode),
        "username": to_nonempty_str,
        "password_file": to_abs_path,
        "ca_file": to_abs_path,
        "timeout_sec": to_duration(positive=True),
    },
)


def _to_smtp(ctx: Ctx, node: Node, path: str) -> SmtpConfig | None:
    """Return the SMTP settings; username and password_file come together or not at all."""
    smtp: SmtpConfig | None = _SMTP(ctx, node, path)
    if smtp is not None and (smtp.username is None) != (smtp.password_file is None):
        given, missing = (
            ("username", "password_file") if smtp.password_file is None else ("password_file", "username")
        )
        ctx.error(node, join(path, missing), f"required key is missing ({given} is given)")
        return None
    return smtp


def named_records(
    cls: Callable[..., Any], fields: Mapping[str, Converter], required: tuple[str, ...], what: str
) -> Converter:
    """Return a converter from ``{NAME: {...}}`` to a tuple of ``cls(name=NAME, ...)`` sorted by name."""

    def convert(ctx: Ctx, node: Node, path: str) -> tuple[Any, ...] | None:
        if not isinstance(node, MappingNode):
            ctx.error(node, path, f"expected a mapping of names to {what}, got {describe(node)}")
            return None
        before = ctx.count
        items = []
        for key_node, value_node in node.value:
            name = str(key_node.value) if isinstance(key_node, ScalarNode) else ""
            if not is_name(name):
                ctx.error(key_node, join(path, name), f"invalid name {name!r}: names match {NAME_PATTERN}")
                continue
            items.append(
                record(cls, fields, required, defaults={"name": name})(ctx, value_node, join(path, name))
            )
        return tuple(sorted(items, key=lambda item: str(item.name))) if ctx.count == before else None

    return convert


_CHANNELS = one_transport(
    named_records(
        AlertChannel,
        {
            "email": record(
                EmailChannel,
                {
                    "smtp": _to_smtp,
                    "from": _to_address,
                    "to": seq_of(_to_address, "a list of email addresses", nonempty=True),
                },
                required=("from", "to"),
                renames={"from": "from_addr"},
                defaults={"smtp": SmtpConfig()},
            ),
            "coalesce_sec": to_duration(),
            "on_crash": to_bool,
            **CHANNEL_FIELDS,
        },
        required=(),
        what="alert channels",
    )
)
_REPOSITORIES = named_records(
    RepositoryConfig,
    {"url": to_nonempty_str, "password_file": to_abs_path, "environment_file": to_abs_path},
    required=("url", "password_file"),
    what="restic repositories",
)


def _to_alerts(ctx: Ctx, node: Node, path: str) -> tuple[Any, ...] | None:
    """Return ``(channels, rules)``: every key of ``alerts:`` names a channel, except ``rules``."""
    if not isinstance(node, MappingNode):
        _CHANNELS(ctx, node, path)  # reports it
        return None
    ctx.saw(path, (RULES_KEY,))  # a reserved name among the channels' free names
    rules_pairs = [(k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == RULES_KEY]
    channels_node = MappingNode(
        node.tag,
        [(k, v) for k, v in node.value if not (isinstance(k, ScalarNode) and k.value == RULES_KEY)],
        node.start_mark,
        node.end_mark,
    )
    before = ctx.count
    channels = _CHANNELS(ctx, channels_node, path)
    rules = tuple(r for _, v in rules_pairs for r in (to_rules(ctx, v, join(path, RULES_KEY)) or ()))
    return (channels, rules) if ctx.count == before else None


def _to_backups(ctx: Ctx, node: Node, path: str) -> tuple[RepositoryConfig, ...] | None:
    values = read_mapping(ctx, node, path, {"repositories": _REPOSITORIES})
    return None if values is None else values.get("repositories", ())


_GROUPS = seq_of(to_nonempty_str, "a list of group names")
DAEMON_FIELDS: dict[str, Converter] = {
    "state_dir": to_abs_path,
    "runtime_dir": to_abs_path,
    "log": record(LogConfig, {"target": to_enum(LogTarget), "format": to_enum(LogFormat)}),
    "metrics": record(MetricsConfig, {"listen": to_listen(unix=False)}),
    "access": record(
        AccessConfig,
        {"read": _GROUPS, "operate": _GROUPS, "admin": _GROUPS, "socket_group": to_nonempty_str},
    ),
    "alerts": _to_alerts,
    "backups": _to_backups,
    "fleet": to_fleet,
    "web": to_web,
}


def _declared(root: Node, *keys: str) -> frozenset[str] | None:
    """Return the names declared as the keys of the mapping at ``keys`` (empty when the path is absent),
    or None when the path is there but is not a mapping (its problem is reported)."""
    node = root
    for key in keys:
        items = mapping_items(node)
        if key not in items:
            return frozenset() if isinstance(node, MappingNode) else None
        node = items[key][1]
    if not isinstance(node, MappingNode):
        return None
    return frozenset(name for name in mapping_items(node) if is_name(name))


def validate_daemon(
    ctx: Ctx, doc: Document | None
) -> tuple[DaemonConfig, frozenset[str] | None, frozenset[str] | None]:
    """Return the daemon settings of ``doc`` (None: no hasupd.yaml, all defaults), the declared alert
    channel names and the declared repository names; report every problem through ``ctx``.

    The name sets are None when they cannot be known because the file is broken; references to them
    are then not checked, since the broken file is already reported.
    """
    if doc is None or (doc.parsed and doc.node is None):
        return DaemonConfig(), frozenset(), frozenset()
    if doc.node is None:
        return DaemonConfig(), None, None
    before = ctx.count
    values = read_mapping(ctx, doc.node, "", DAEMON_FIELDS)
    if values is None:
        return DaemonConfig(), None, None
    channels = _declared(doc.node, "alerts")
    if channels is not None:
        channels = channels - {RULES_KEY}
    repositories = _declared(doc.node, "backups", "repositories")
    if ctx.count != before:
        return DaemonConfig(), channels, repositories
    if "backups" in values:
        values["repositories"] = values.pop("backups")
    if "alerts" in values:
        values["alerts"], values["rules"] = values["alerts"]
    return DaemonConfig(**values), channels, repositories
