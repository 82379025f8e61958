"""An in-memory etcd for the fleet's unit tests: leases expire on a fake clock, revisions count up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hasupd.fleet.etcd import EtcdUnavailable, KeyValue, Snapshot


@dataclass
class FakeCluster:
    """The shared store; each host talks to it through its own ``FakeEtcd`` (which can be cut off)."""

    now: Callable[[], float]
    revision: int = 1
    kvs: dict[str, KeyValue] = field(default_factory=dict)
    leases: dict[int, tuple[float, int]] = field(default_factory=dict)  # id -> (expiry, ttl)
    next_lease: int = 100
    leaderless_until: float = 0.0  # a raft leader election: every call fails until then

    def elect(self) -> None:
        """End an election: like etcd's new leader, renew every lease in full (lessor.Promote)."""
        if self.leaderless_until and self.now() >= self.leaderless_until:
            self.leaderless_until = 0.0
            for lease, (_, ttl) in list(self.leases.items()):
                self.leases[lease] = (self.now() + ttl, ttl)

    def expire(self) -> None:
        for lease, (expiry, _) in list(self.leases.items()):
            if expiry <= self.now():
                del self.leases[lease]
                for key in [k for k, kv in self.kvs.items() if kv.lease == lease]:
                    del self.kvs[key]
                    self.revision += 1


class FakeEtcd:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.reachable = True

    def _check(self) -> FakeCluster:
        if not self.reachable:
            raise EtcdUnavailable("fake: connection refused")
        if self.cluster.now() < self.cluster.leaderless_until:
            raise EtcdUnavailable("fake: etcdserver: no leader")
        self.cluster.elect()
        self.cluster.expire()
        return self.cluster

    def grant(self, ttl: int) -> int:
        c = self._check()
        c.next_lease += 1
        c.leases[c.next_lease] = (c.now() + ttl, ttl)
        return c.next_lease

    def keepalive(self, lease: int) -> int:
        c = self._check()
        if lease not in c.leases:
            return 0
        ttl = c.leases[lease][1]
        c.leases[lease] = (c.now() + ttl, ttl)
        return ttl

    def revoke(self, lease: int) -> None:
        c = self._check()
        c.leases[lease] = (c.now(), 0)
        c.expire()

    def time_to_live(self, lease: int) -> tuple[int, int]:
        c = self._check()
        if lease not in c.leases:
            return -1, 0
        expiry, ttl = c.leases[lease]
        return int(expiry - c.now()), ttl

    def create(self, key: str, value: str, lease: int) -> tuple[bool, int]:
        c = self._check()
        if key in c.kvs:
            return False, c.kvs[key].create_revision
        assert lease in c.leases, "put with an expired lease"
        c.revision += 1
        c.kvs[key] = KeyValue(key=key, value=value, create_revision=c.revision, lease=lease)
        return True, c.revision

    def delete_if(self, key: str, create_revision: int) -> bool:
        c = self._check()
        if key in c.kvs and c.kvs[key].create_revision == create_revision:
            del c.kvs[key]
            c.revision += 1
            return True
        return False

    def put(self, key: str, value: str, lease: int = 0) -> None:
        c = self._check()
        c.revision += 1
        old = c.kvs.get(key)
        c.kvs[key] = KeyValue(key, value, old.create_revision if old else c.revision, lease)

    def delete(self, key: str) -> None:
        c = self._check()
        if c.kvs.pop(key, None) is not None:
            c.revision += 1

    def range_prefix(self, prefix: str) -> Snapshot:
        c = self._check()
        return Snapshot(c.revision, tuple(kv for k, kv in sorted(c.kvs.items()) if k.startswith(prefix)))
