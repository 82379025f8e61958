"""``web:`` in hasupd.yaml -> ``WebConfig``: the dashboard's address, TLS and credential.

The rule that matters: a dashboard reachable from beyond loopback shows everything hasupd knows, so it
must be served over TLS and behind a credential. Both are required at load time (``check-config``, start,
reload), reported at the ``web.listen`` value like any other config error.
"""

from __future__ import annotations

import ipaddress

from yaml.nodes import Node

from hasupd.config.model import WebConfig, WebTls
from hasupd.config.nodes import Ctx, join, mapping_items, record, to_abs_path, to_listen

_TLS = record(WebTls, {"cert_file": to_abs_path, "key_file": to_abs_path}, required=("cert_file", "key_file"))
_WEB = record(
    WebConfig,
    {"listen": to_listen(unix=False), "tls": _TLS, "token_file": to_abs_path, "password_file": to_abs_path},
    required=("listen",),
)


def is_loopback(host: str) -> bool:
    """Return True if ``host`` (an address or name from a listen value) only reaches this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (every address): it may resolve to anything


def to_web(ctx: Ctx, node: Node, path: str) -> WebConfig | None:
    """Return the dashboard settings; beyond loopback, refuse them without TLS and a credential."""
    web: WebConfig | None = _WEB(ctx, node, path)
    if web is None:
        return None
    items = mapping_items(node)
    if web.token_file is not None and web.password_file is not None:
        ctx.error(
            items["password_file"][0],
            join(path, "password_file"),
            "give token_file or password_file, not both",
        )
        return None
    host = web.listen.rpartition(":")[0]
    if is_loopback(host):
        return web
    missing = []
    if web.tls is None:
        missing.append("tls (cert_file, key_file)")
    if web.token_file is None and web.password_file is None:
        missing.append("a credential (token_file or password_file)")
    if missing:
        ctx.error(
            items["listen"][1],
            join(path, "listen"),
            f"{web.listen} is reachable beyond loopback: the dashboard then needs " + " and ".join(missing),
        )
        return None
    return web
