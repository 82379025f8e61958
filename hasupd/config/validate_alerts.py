"""The parts of an alert channel in ``hasupd.yaml`` beyond email: apprise, sendmail, pagerduty, filters.

A channel has exactly one transport (``email``, ``apprise``, ``sendmail`` or ``pagerduty``); more ways
to be told are more channels. ``min_level`` and ``events`` filter which alerts reach it.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode

from hasupd.config.model import ALERT_LEVELS, PagerDutyChannel, SendmailChannel
from hasupd.config.nodes import (
    Converter,
    Ctx,
    join,
    mapping_items,
    record,
    seq_of,
    to_abs_path,
    to_duration,
    to_str,
)

TRANSPORTS = ("email", "apprise", "sendmail", "pagerduty")
_APPRISE_URL = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")


def to_address(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return an email address, bare or with a display name ("Ops <ops@example.org>")."""
    value = to_str(ctx, node, path)
    if value is None:
        return None
    from email.utils import parseaddr  # noqa: PLC0415  (the email package: only with an address)

    address = parseaddr(value)[1]
    local, _, domain = address.rpartition("@")
    if not local or not domain or any(c.isspace() for c in address):
        ctx.error(node, path, f"invalid email address {value!r}")
        return None
    return value


def _to_apprise_url(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return an Apprise URL ("ntfy://host/topic"); only its shape is checked here (the URL may hold a
    token, so it is never repeated in an error)."""
    value = to_str(ctx, node, path)
    if value is not None and not _APPRISE_URL.match(value):
        ctx.error(node, path, "expected an Apprise URL such as ntfy://host/topic or json://host:port/path")
        return None
    return value


def _to_http_url(ctx: Ctx, node: Node, path: str) -> str | None:
    value = to_str(ctx, node, path)
    if value is None:
        return None
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:  # "http://[::1" and the like: an error of the file, not of check-config
        parts = urllib.parse.urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        ctx.error(node, path, f"expected an http:// or https:// URL, got {value!r}")
        return None
    return value


def _to_level(ctx: Ctx, node: Node, path: str) -> str | None:
    value = to_str(ctx, node, path)
    if value is not None and value not in ALERT_LEVELS:
        ctx.error(node, path, f"invalid value {value!r}: expected one of {', '.join(ALERT_LEVELS)}")
        return None
    return value


def _to_event_name(ctx: Ctx, node: Node, path: str) -> str | None:
    value = to_str(ctx, node, path)
    if value is not None and not _EVENT_NAME.match(value):
        ctx.error(node, path, f"expected an event name such as service.failed, got {value!r}")
        return None
    return value


CHANNEL_FIELDS: dict[str, Converter] = {
    "apprise": seq_of(_to_apprise_url, "a list of Apprise URLs", nonempty=True),
    "sendmail": record(
        SendmailChannel,
        {
            "from": to_address,
            "to": seq_of(to_address, "a list of email addresses", nonempty=True),
            "path": to_abs_path,
            "timeout_sec": to_duration(positive=True),
        },
        required=("from", "to"),
        renames={"from": "from_addr"},
    ),
    "pagerduty": record(
        PagerDutyChannel,
        {"routing_key_file": to_abs_path, "url": _to_http_url, "timeout_sec": to_duration(positive=True)},
        required=("routing_key_file",),
    ),
    "timeout_sec": to_duration(positive=True),
    "min_level": _to_level,
    "events": seq_of(_to_event_name, "a list of event names", nonempty=True),
}


def one_transport(convert: Converter) -> Converter:
    """Return ``convert`` (of the ``alerts:`` mapping) that also reports a channel with no transport or
    with more than one, at the channel's mapping."""

    def checked(ctx: Ctx, node: Node, path: str) -> Any:
        before = ctx.count
        value = convert(ctx, node, path)
        if not isinstance(node, MappingNode):
            return value
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or not isinstance(value_node, MappingNode):
                continue
            given = [t for t in TRANSPORTS if t in mapping_items(value_node)]
            if len(given) != 1:
                what = "none" if not given else " and ".join(given)
                ctx.error(
                    value_node,
                    join(path, str(key_node.value)),
                    f"a channel needs exactly one of {', '.join(TRANSPORTS)} (got {what})",
                )
        return value if ctx.count == before else None

    return checked
