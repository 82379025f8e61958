"""The fleet as ``hasupctl fleet status`` shows it, from this host's last read of etcd."""

from __future__ import annotations

import json
from typing import Any

from hasupd.fleet import keys
from hasupd.fleet.etcd import Snapshot
from hasupd.fleet.node import FleetNode


def _decode(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def describe(
    node: FleetNode, snapshot: Snapshot | None, lease_ttls: dict[int, tuple[int, int]]
) -> dict[str, Any]:
    """Return {host, cluster, joined, refused, hosts: [...], services: [...]} as JSON-ready data.

    ``lease_ttls`` maps a lease to (remaining, granted) TTL; a host's lease age is the time since its
    last keep-alive reached etcd (granted - remaining).
    """
    prefix = keys.root(node.cluster)
    kvs = {kv.key: kv for kv in snapshot.kvs} if snapshot is not None else {}
    hosts = []
    for key, kv in sorted(kvs.items()):
        if not key.startswith(prefix + "hosts/"):
            continue
        remaining, granted = lease_ttls.get(kv.lease, (-1, 0))
        hosts.append(
            {
                "host": key.removeprefix(prefix + "hosts/"),
                "alive": remaining >= 0,
                "lease_age_sec": max(0, granted - remaining) if remaining >= 0 else None,
                "joined": _decode(kv.value).get("joined"),
                "drained": keys.drain_key(node.cluster, key.removeprefix(prefix + "hosts/")) in kvs,
            }
        )
    services = []
    for name, placement in sorted(node.placements.items()):
        for key in keys.slot_keys(node.cluster, name, placement):
            slot = kvs.get(key)
            owner = _decode(slot.value) if slot is not None else {}
            services.append(
                {
                    "service": name,
                    "slot": keys.slot_name(node.cluster, key),
                    "owner": owner.get("host"),
                    "token": slot.create_revision if slot is not None else None,
                    "since": owner.get("since"),
                    "move_to": kvs[keys.move_key(node.cluster, name)].value
                    if keys.move_key(node.cluster, name) in kvs
                    else None,
                }
            )
    return {
        "host": node.host,
        "cluster": node.cluster,
        "joined": node.view.joined,
        "refused": node.view.refused or None,
        "elections": node.view.elections,
        "hosts": hosts,
        "services": services,
    }
