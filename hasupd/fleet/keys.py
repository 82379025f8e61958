"""The fleet's key layout in etcd, under ``/hasupd/<cluster>/``.

- ``hosts/<host>``: a live host (bound to its lease; the value is JSON ``{"lease", "joined"}``)
- ``owner/<service>``: the owner of a singleton; ``replica/<service>/<n>``: the owner of replica n
  (bound to the owner's lease; JSON ``{"host", "since"}``; the fencing token is its create revision)
- ``move/<service>``: a requested hand-over (the target host's name)
- ``drain/<host>``: the host gives its placed services away (bound to that host's lease)
- ``failed/<service>/<host>``: the service crash-looped on that host, which handed it over; hosts take
  it only when no other can (bound to that host's lease; deleted by it after a while)
"""

from __future__ import annotations

from hasupd.config.model import Placement


def root(cluster: str) -> str:
    return f"/hasupd/{cluster}/"


def host_key(cluster: str, host: str) -> str:
    return f"{root(cluster)}hosts/{host}"


def slot_keys(cluster: str, service: str, placement: Placement) -> list[str]:
    """Return the ownership keys of ``service``: one for a singleton, one per replica."""
    if placement.singleton:
        return [f"{root(cluster)}owner/{service}"]
    return [f"{root(cluster)}replica/{service}/{n}" for n in range(placement.replicas)]


def move_key(cluster: str, service: str) -> str:
    return f"{root(cluster)}move/{service}"


def drain_key(cluster: str, host: str) -> str:
    return f"{root(cluster)}drain/{host}"


def failed_prefix(cluster: str, service: str) -> str:
    return f"{root(cluster)}failed/{service}/"


def failed_key(cluster: str, service: str, host: str) -> str:
    return f"{failed_prefix(cluster, service)}{host}"


def slot_name(cluster: str, key: str) -> str:
    """Return ``owner/web`` or ``replica/web/1`` for an ownership key (for records)."""
    return key.removeprefix(root(cluster))
