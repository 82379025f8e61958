"""``fleet:`` in hasupd.yaml and ``placement:`` in a service file -> ``FleetConfig`` / ``Placement``."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from yaml.nodes import Node

from hasupd.config.fleet_timing import election_allowance, min_ttl_for_election, rides_out_election
from hasupd.config.model import EtcdConfig, FleetConfig, Placement
from hasupd.config.nodes import (
    Ctx,
    is_name,
    join,
    mapping_items,
    read_mapping,
    record,
    seq_of,
    to_abs_path,
    to_bool,
    to_duration,
    to_int,
    to_name,
    to_nonempty_str,
    to_str,
)

# etcd refuses leases shorter than its minimum TTL (about 2 s with the default election timeout); a
# shorter one would also leave no room between the local fencing deadline and the lease's expiry.
MIN_LEASE_TTL_SEC = 2.0
MAX_REPLICAS = 1000


def _to_endpoint(ctx: Ctx, node: Node, path: str) -> str | None:
    """Return an etcd client URL ``http(s)://host:port`` (no path: the gateway paths are fixed)."""
    value = to_str(ctx, node, path)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        ctx.error(node, path, f"invalid etcd endpoint {value!r}: {exc}")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        ctx.error(node, path, f"invalid etcd endpoint {value!r}: expected http(s)://HOST:PORT")
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        ctx.error(node, path, f"invalid etcd endpoint {value!r}: no path, query or fragment allowed")
        return None
    return value.rstrip("/")


_ETCD = record(
    EtcdConfig,
    {
        "endpoints": seq_of(
            _to_endpoint, "a list of etcd URLs such as 'https://10.0.0.1:2379'", nonempty=True
        ),
        "ca_file": to_abs_path,
        "cert_file": to_abs_path,
        "key_file": to_abs_path,
        "username": to_nonempty_str,
        "password_file": to_abs_path,
        "election_timeout_sec": to_duration(positive=True),
    },
    required=("endpoints",),
)


def _together(ctx: Ctx, node: Node, path: str, first: str, second: str) -> bool:
    """Report ``first`` given without ``second`` or the other way round; return True when they agree."""
    present = mapping_items(node)
    if (first in present) == (second in present):
        return True
    given, missing = (first, second) if first in present else (second, first)
    ctx.error(node, join(path, missing), f"required key is missing ({given} is given)")
    return False


def _to_etcd(ctx: Ctx, node: Node, path: str) -> EtcdConfig | None:
    """Return the etcd connection; cert/key and username/password_file come in pairs."""
    before = ctx.count
    etcd: EtcdConfig | None = _ETCD(ctx, node, path)
    if etcd is None:
        return None
    _together(ctx, node, path, "cert_file", "key_file")
    _together(ctx, node, path, "username", "password_file")
    if any(e.startswith("https:") for e in etcd.endpoints) != all(
        e.startswith("https:") for e in etcd.endpoints
    ):
        ctx.error(mapping_items(node)["endpoints"][1], join(path, "endpoints"), "mixes http and https")
    tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if getattr(etcd, k) is not None]
    if tls_keys and not etcd.endpoints[0].startswith("https:"):
        key = tls_keys[0]
        ctx.error(mapping_items(node)[key][0], join(path, key), "TLS files given for http:// endpoints")
    return etcd if ctx.count == before else None


def _to_host_name(ctx: Ctx, node: Node, path: str) -> str | None:
    return to_name(ctx, node, path)


def to_fleet(ctx: Ctx, node: Node, path: str) -> FleetConfig | None:
    """Return the ``fleet:`` settings of hasupd.yaml; the host name defaults to this machine's."""
    before = ctx.count
    values = read_mapping(
        ctx,
        node,
        path,
        {
            "etcd": _to_etcd,
            "cluster": to_name,
            "host": _to_host_name,
            "lease_ttl_sec": to_duration(positive=True),
        },
        required=("etcd", "cluster"),
    )
    if values is None or ctx.count != before:
        return None
    ttl = values.get("lease_ttl_sec", FleetConfig.lease_ttl_sec)
    if ttl < MIN_LEASE_TTL_SEC:
        ctx.error(
            mapping_items(node)["lease_ttl_sec"][1],
            join(path, "lease_ttl_sec"),
            f"must be at least {MIN_LEASE_TTL_SEC:g}s (etcd's minimum lease TTL)",
        )
        return None
    if ttl != int(ttl):
        ctx.error(
            mapping_items(node)["lease_ttl_sec"][1],
            join(path, "lease_ttl_sec"),
            f"must be whole seconds (etcd's leases are), got {ttl:g}s",
        )
        return None
    election = values["etcd"].election_timeout_sec
    if election is not None and not rides_out_election(ttl, 0.0, election):
        ctx.error(
            mapping_items(node)["lease_ttl_sec"][1] if "lease_ttl_sec" in mapping_items(node) else node,
            join(path, "lease_ttl_sec"),
            f"{ttl:g}s cannot ride out an etcd leader election (up to {election_allowance(election):g}s "
            f"with {join(path, 'etcd.election_timeout_sec')} {election:g}s): every election would fence "
            f"the owners; use at least {min_ttl_for_election(0.0, election)}s",
        )
        return None
    if "host" not in values:
        default = socket.gethostname().split(".")[0].lower()
        if not is_name(default):
            ctx.error(
                node, join(path, "host"), f"the host name {default!r} is not a valid name: set fleet.host"
            )
            return None
        values["host"] = default
    return FleetConfig(**values)


_HOSTS = seq_of(to_name, "a list of host names")


def to_placement(ctx: Ctx, node: Node, path: str) -> Placement | None:
    """Return a service's placement: exactly one of ``singleton: true`` and ``replicas: N``."""
    before = ctx.count
    values = read_mapping(
        ctx,
        node,
        path,
        {
            "singleton": to_bool,
            "replicas": to_int(minimum=1, maximum=MAX_REPLICAS),
            "prefer": _HOSTS,
            "avoid": _HOSTS,
        },
    )
    if values is None or ctx.count != before:
        return None
    present = mapping_items(node)
    if "singleton" in present and "replicas" in present:
        ctx.error(
            present["replicas"][0], join(path, "replicas"), "singleton and replicas are mutually exclusive"
        )
        return None
    if "singleton" not in present and "replicas" not in present:
        ctx.error(node, path, "expected singleton: true or replicas: N")
        return None
    if values.get("singleton") is False:
        ctx.error(
            present["singleton"][1],
            join(path, "singleton"),
            "singleton: false places nothing; remove placement",
        )
        return None
    both = sorted(set(values.get("prefer", ())) & set(values.get("avoid", ())))
    if both:
        ctx.error(present["avoid"][1], join(path, "avoid"), f"host {both[0]!r} is both preferred and avoided")
        return None
    return Placement(
        singleton="singleton" in values,
        replicas=values.get("replicas", 1),
        prefer=values.get("prefer", ()),
        avoid=values.get("avoid", ()),
    )
