"""hasupd "hosts" in network namespaces, joined to a hub namespace's bridge where etcd listens.

Layout (all addresses private and ONLY inside the namespaces made here; the root namespace gets none):

    hub namespace: bridge ``br0`` with 10.213.0.1 plus one address per etcd member (10.213.0.11, .12, ...)
    host namespace hN: ``eth0`` (a veth whose peer is on the hub's bridge) with 10.213.0.2N

A partition of a host is ``ip link set eth0 down`` inside its namespace. ``Fabric.close`` kills every
process left in the namespaces and deletes them, also when the test failed.

The shared log: services started from ``SINGLETON_SCRIPT`` append ``start|beat|stop TOKEN HOST NAME TIME
NODE`` lines to one file (HOST is HASUPD_FLEET_HOST, NODE the test's host, HASUPD_TEST_NODE), TIME from
``time.time()`` (CLOCK_REALTIME of this one machine), so intervals of different hosts compare on one clock.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.harness import Hasupd, require, write_config

SUBNET = "10.213.0"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def require_netns() -> None:
    require(os.geteuid() == 0, "network namespaces need root", "HASUPD_TEST_NO_NETNS")


@dataclass
class Host:
    """One hasupd host: its namespace, address, config dir and (while running) its hasupd."""

    name: str
    netns: str
    address: str
    work: Path
    daemon: Hasupd | None = None

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns)

    def start(self, services: Mapping[str, Mapping[str, Any]], daemon: Mapping[str, Any]) -> Hasupd:
        """Write this host's config and start ``hasupd run`` inside its namespace."""
        config = write_config(self.work / "etc", services, daemon)
        # --no-cgroup: the hosts share this machine's cgroup tree, where their service cgroups would have
        # the same names (and `ip netns exec` remounts /sys, hiding it anyway); process groups keep each
        # host's services its own.
        self.daemon = Hasupd(config, self.work / "d", argv_prefix=self.prefix, extra_args=("--no-cgroup",))
        return self.daemon

    def pids(self) -> list[int]:
        """Every process in this host's namespace (hasupd and everything it started)."""
        out = ip("netns", "pids", self.netns, check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_all(self) -> float:
        """SIGKILL hasupd and all processes of this host; return the time (time.time()) of the kill."""
        t = time.time()
        for _ in range(20):  # bounded: a process forked during the sweep is caught by the next one
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self.daemon is not None:
            self.daemon.kill()
        return t

    def partition(self) -> float:
        """Cut this host off the network (its link down); return the time of the cut."""
        t = time.time()
        ip("-n", self.netns, "link", "set", "eth0", "down")
        return t

    def heal(self) -> None:
        ip("-n", self.netns, "link", "set", "eth0", "up")


class Fabric:
    """The hub namespace with its bridge, and the host namespaces; use as a context manager."""

    def __init__(self, work: Path) -> None:
        require_netns()
        self.work = work
        self.tag = secrets.token_hex(3)
        self.hub = f"hft{self.tag}hub"
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self._add_netns(self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        ip("-n", self.hub, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")

    @property
    def hub_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.hub)

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def etcd_addresses(self, count: int, first: int = 11) -> list[str]:
        """Put ``count`` addresses (from ``SUBNET.first``) on the hub's bridge for etcd; return them."""
        addresses = [f"{SUBNET}.{first + i}" for i in range(count)]
        for a in addresses:
            ip("-n", self.hub, "addr", "add", f"{a}/24", "dev", "br0")
        return addresses

    def add_host(self, name: str) -> Host:
        """A new namespace joined to the bridge by a veth pair, with the next host address."""
        n = len(self.hosts) + 1
        netns = f"hft{self.tag}h{n}"
        self._add_netns(netns)
        port = f"hft{self.tag}p{n}"
        ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("-n", self.hub, "link", "set", port, "master", "br0")
        ip("-n", self.hub, "link", "set", port, "up")
        address = f"{SUBNET}.{20 + n}"
        ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        host = Host(name, netns, address, self.work / name)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Stop every hasupd, kill what is left in the namespaces, delete them."""
        for host in self.hosts:
            if host.daemon is not None and host.daemon.proc.poll() is None:
                with contextlib.suppress(Exception):
                    host.daemon.stop(timeout=10)
            host.kill_all()
        for ns in reversed(self.namespaces):
            pids = ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", ns, check=False)

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def fabric(work: Path) -> Iterator[Fabric]:
    f = Fabric(work)
    try:
        yield f
    finally:
        f.close()


# A placed service: logs start/beat/stop with its fencing token to the shared log; serves TCP on PORT.
SINGLETON_SCRIPT = r"""
import os, signal, socket, sys, threading, time
log, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
token = os.environ.get("HASUPD_FLEET_TOKEN", "-")
host = os.environ.get("HASUPD_FLEET_HOST", "-")
node = os.environ.get("HASUPD_TEST_NODE", "-")  # the test's name of the host (namespace)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def note(kind):
    os.write(fd, f"{kind} {token} {host} {name} {time.time():.6f} {node}\n".encode())
def stop(*_):
    note("stop")
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
if port:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    def serve():
        while True:
            c, _ = srv.accept()
            c.sendall(f"{host} {token}\n".encode())
            c.close()
    threading.Thread(target=serve, daemon=True).start()
note("start")
while True:
    time.sleep(0.1)
    note("beat")
"""


@dataclass
class Interval:
    """One run of a service on one host, from the shared log."""

    name: str
    host: str
    token: int
    start: float
    end: float  # the stop line, or the last beat of a run that was killed
    stopped: bool
    node: str = "-"  # the test's host that ran it (HASUPD_TEST_NODE), even when two share a fleet name


def read_intervals(log: Path, name: str | None = None) -> list[Interval]:
    """Runs of services in the shared log, by start time (a run is keyed by host and token)."""
    runs: dict[tuple[str, str, str], Interval] = {}
    if not log.exists():
        return []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 6 or (name is not None and parts[3] != name):
            continue
        kind, token, host, svc, t, node = *parts[:4], float(parts[4]), parts[5]
        key = (svc, node, token)
        if kind == "start":
            runs[key] = Interval(svc, host, int(token) if token.isdigit() else -1, t, t, False, node)
        elif key in runs:
            runs[key].end = max(runs[key].end, t)
            runs[key].stopped = runs[key].stopped or kind == "stop"
    return sorted(runs.values(), key=lambda r: r.start)


def max_concurrent(runs: list[Interval]) -> int:
    """The largest number of runs alive at one instant."""
    edges = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs], key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, d in edges:
        now += d
        best = max(best, now)
    return best
