"""Issue 18's "Must show": fleet failover on a real 3-member etcd cluster, hasupd hosts in network namespaces.

Every host runs ``hasupd run`` inside its own namespace (tests/support/netns.py); etcd's members listen in
the hub namespace (tests/support/etcd.py). Placed services are SINGLETON_SCRIPT: they append start, beat
(every 0.1 s) and stop lines with HASUPD_FLEET_TOKEN and HASUPD_FLEET_HOST to one shared log, stamped with
time.time() of this one machine, so overlaps between hosts are measured on one clock. The figures (take-over
time, hand-over gap) are printed as ``FIGURE test key = seconds`` (run pytest with ``-s``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.etcd import EtcdCluster, make_ca, make_server_cert
from tests.support.harness import Hasupd, pid_alive, record_time
from tests.support.netns import (
    SINGLETON_SCRIPT,
    SUBNET,
    Fabric,
    Host,
    Interval,
    max_concurrent,
    read_intervals,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

PY = sys.executable
TTL = 2.0  # lease_ttl_sec in every test: short, to keep the file within a few minutes
START_ALLOW = 4.0  # a Python service's start under the load of a 2-core CI machine, with margin
ALIVE = 0.6  # a run whose last beat is older than this (beats every 0.1 s) is not running
CLUSTER = "t18"
ELECTION_TIMEOUT = 1.0  # etcd's --election-timeout in tests/support/etcd.py


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``pred`` every 0.1 s until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not within {timeout}s: {what}")


def alive(run: Interval) -> bool:
    return not run.stopped and time.time() - run.end < ALIVE


@dataclass
class Env:
    """A fabric, an etcd cluster in its hub, hosts, the shared log and the service script."""

    fabric: Fabric
    etcd: EtcdCluster
    log: Path
    script: Path

    def fleet(self, host: str, **over: Any) -> dict[str, Any]:
        fleet: dict[str, Any] = {
            "etcd": {"endpoints": self.etcd.endpoints},
            "cluster": CLUSTER,
            "host": host,
            "lease_ttl_sec": f"{TTL:g}s",
        }
        fleet.update(over)
        return {"fleet": fleet}

    def service(self, name: str, port: int = 0, placement: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command": [PY, str(self.script), str(self.log), name, str(port)],
            "timeout_stop_sec": "500ms",  # a placed service's stop must fit in half the lease TTL
        }
        if placement is not None:
            body["placement"] = placement
        return body

    def start_host(self, name: str, services: dict[str, dict[str, Any]], **fleet_over: Any) -> Host:
        host = self.fabric.add_host(name)
        self.run_hasupd(host, services, **fleet_over)
        return host

    def run_hasupd(self, on: Host, services: dict[str, dict[str, Any]], **fleet_over: Any) -> Hasupd:
        """Start ``hasupd run`` on host ``on`` (again: on the same state and runtime dirs); ``host`` in
        ``fleet_over`` is its fleet host name (default: its own name)."""
        services = {**services, "local": self.service(f"local-{on.name}")}
        node = {"environment": {"HASUPD_TEST_NODE": on.name}}
        services = {k: {**v, **node} for k, v in services.items()}
        return on.start(services, self.fleet(fleet_over.pop("host", on.name), **fleet_over))

    def runs(self, name: str) -> list[Interval]:
        return read_intervals(self.log, name)

    def alive_runs(self, name: str) -> list[Interval]:
        return [r for r in self.runs(name) if alive(r)]

    def host(self, name: str) -> Host:
        return next(h for h in self.fabric.hosts if h.name == name)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with Fabric(tmp_path) as fabric:
        etcd = EtcdCluster(tmp_path / "etcd", 3, hosts=fabric.etcd_addresses(3), prefix=fabric.hub_prefix)
        try:
            etcd.start()
            script = tmp_path / "svc.py"
            script.write_text(SINGLETON_SCRIPT)
            yield Env(fabric, etcd, tmp_path / "shared.log", script)
        finally:
            etcd.stop()


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Callable[[str, float], None]:
    """Print a measured figure (``FIGURE test key = seconds``, seen with ``-s``) and keep it on the item."""

    def record(key: str, value: float) -> None:
        print(f"FIGURE {request.node.name} {key} = {value:.3f}")
        request.node.user_properties.append((key, round(value, 3)))

    return record


def check_history(runs: list[Interval], at_most: int = 1) -> None:
    """No more than ``at_most`` runs at once; fencing tokens strictly increasing in start order."""
    assert max_concurrent(runs) <= at_most, [vars(r) for r in runs]
    if at_most == 1:
        for before, after in itertools.pairwise(runs):
            assert after.start >= before.end, (vars(before), vars(after))
            assert after.token > before.token, (vars(before), vars(after))


def runs_of(env: Env, name: str) -> Callable[[], list[Interval]]:
    return lambda: env.alive_runs(name)


def three_hosts(env: Env, services: dict[str, dict[str, Any]], **fleet_over: Any) -> list[Host]:
    hosts = [env.start_host(f"h{i}", services, **fleet_over) for i in (1, 2, 3)]
    for h in hosts:
        assert h.daemon is not None
        h.daemon.wait_ready(timeout=30)
    return hosts


def test_sigkill_of_owner_host_fails_over_within_ttl(
    env: Env, record_figure: Callable[[str, float], None]
) -> None:
    """Must show 1: SIGKILL of the owner's hasupd and all its processes -> another host takes over."""
    three_hosts(env, {"single": env.service("single", placement={"singleton": True})})
    first = wait_until(lambda: env.alive_runs("single"), 30, "the singleton runs on one host")[0]
    time.sleep(TTL)  # settled: nobody else started it meanwhile
    assert len(env.alive_runs("single")) == 1
    killed_at = env.host(first.host).kill_all()
    new = wait_until(
        lambda: [r for r in env.alive_runs("single") if r.start > killed_at],
        TTL + START_ALLOW + 10,
        "another host runs the singleton after the owner host died",
    )[0]
    takeover = new.start - killed_at
    record_figure("takeover_sec", takeover)
    assert new.host != first.host
    assert takeover <= TTL + START_ALLOW, f"take-over took {takeover:.2f}s (TTL {TTL}s)"
    time.sleep(TTL)
    assert len(env.alive_runs("single")) == 1
    check_history(env.runs("single"))


def test_partitioned_owner_fences_itself_before_lease_expiry(
    env: Env, record_figure: Callable[[str, float], None]
) -> None:
    """Must show 2: the owner cut off from etcd stops its service; another starts it only after."""
    three_hosts(env, {"single": env.service("single", placement={"singleton": True})})
    first = wait_until(lambda: env.alive_runs("single"), 30, "the singleton runs on one host")[0]
    owner = env.host(first.host)
    cut_at = owner.partition()
    new = wait_until(
        lambda: [r for r in env.alive_runs("single") if r.start > cut_at],
        2 * TTL + START_ALLOW + 10,
        "another host runs the singleton after the owner was partitioned",
    )[0]
    old = next(r for r in env.runs("single") if r.host == first.host and r.token == first.token)
    record_figure("fence_stop_after_cut_sec", old.end - cut_at)
    record_figure("new_start_after_fence_stop_sec", new.start - old.end)
    assert old.stopped, "the partitioned owner did not stop its service"
    assert old.end < cut_at + TTL, "the old owner stopped only after its lease could have expired"
    assert new.start > old.end
    assert owner.daemon is not None and owner.daemon.proc.poll() is None, "the fenced hasupd died"
    assert [r for r in env.alive_runs(f"local-{owner.name}")], "the local service stopped too"
    owner.heal()
    time.sleep(2 * TTL)
    assert len(env.alive_runs("single")) == 1
    check_history(env.runs("single"))


def test_quorum_loss_stops_placed_services_and_keeps_local_ones(
    env: Env, record_figure: Callable[[str, float], None]
) -> None:
    """Must show 3: one member down: nothing moves; two down: placed stop, local run; back: once each."""
    placed = {
        "sa": env.service("sa", placement={"singleton": True}),
        "sb": env.service("sb", placement={"singleton": True}),
    }
    hosts = three_hosts(env, placed)
    before = {n: wait_until(runs_of(env, n), 30, f"{n} runs")[0] for n in placed}
    # A follower: killing the leader costs an election (1-2 s with a 1 s election timeout), which is
    # as long as the owners' fencing deadline with this test's 2 s TTL (see the report of issue 18).
    leader = env.etcd.leader_index()
    follower = next(i for i in range(3) if i != leader)
    env.etcd.kill_member(follower)
    time.sleep(3 * TTL)
    for n, run in before.items():
        assert [(r.host, r.token) for r in env.alive_runs(n)] == [(run.host, run.token)], f"{n} moved"
    second = leader
    env.etcd.kill_member(second)
    lost_at = time.time()
    for n in placed:
        wait_until(lambda: not env.alive_runs(n), TTL + 5, f"{n} stopped after quorum loss")  # noqa: B023
        stopped = next(r for r in env.runs(n) if r.token == before[n].token)
        record_figure(f"{n}_stop_after_quorum_loss_sec", stopped.end - lost_at)
        # A leader that lost its quorum still answers keep-alives until CheckQuorum makes it step down
        # (one election timeout, 1 s in tests/support/etcd.py); the owner's deadline runs from then.
        assert stopped.stopped and stopped.end <= lost_at + ELECTION_TIMEOUT + TTL + 0.5
    time.sleep(TTL)
    for h in hosts:
        assert env.alive_runs(f"local-{h.name}"), f"local service on {h.name} stopped without etcd"
        assert h.daemon is not None and h.daemon.proc.poll() is None
    for n in placed:
        assert not env.alive_runs(n), f"{n} started without a quorum"
    env.etcd.restart_member(follower)
    env.etcd.restart_member(second)
    back_at = time.time()
    env.etcd.wait_healthy(30)
    for n in placed:
        wait_until(runs_of(env, n), 3 * TTL + START_ALLOW + 10, f"{n} runs again")
    record_figure("placed_back_after_etcd_sec", time.time() - back_at)
    time.sleep(2 * TTL)
    for n in placed:
        again = [r for r in env.runs(n) if r.start > back_at]
        assert len(again) == 1, [vars(r) for r in again]
        check_history(env.runs(n))


# A TTL that rides out an etcd leader election (tests/support/etcd.py: --election-timeout 1000): the owner
# fences at its last acknowledged keep-alive + 4 s (TTL - timeout_stop_sec - 0.5 s), while etcd is without a
# leader for up to 2 election timeouts; check-config refuses 4 s here (hasupd/config/fleet_timing.py).
LEADER_TTL = 5.0


def test_leader_member_killed_nothing_moves(env: Env, record_figure: Callable[[str, float], None]) -> None:
    """Must show 3, first half, for the worst member: the raft leader killed -> nothing moves."""
    over = {
        "lease_ttl_sec": f"{LEADER_TTL:g}s",
        "etcd": {"endpoints": env.etcd.endpoints, "election_timeout_sec": f"{ELECTION_TIMEOUT:g}s"},
    }
    three_hosts(env, {"sa": env.service("sa", placement={"singleton": True})}, **over)
    before = wait_until(runs_of(env, "sa"), 30, "sa runs")[0]
    time.sleep(1)  # a few keep-alives acknowledged by the leader
    owner = env.host(before.node).daemon
    assert owner is not None
    leader = env.etcd.leader_index()
    env.etcd.kill_member(leader)
    killed_at = time.time()
    wait_until(lambda: _has_leader(env), 10, "the two members left elect a leader")
    record_figure("new_leader_after_kill_sec", time.time() - killed_at)
    time.sleep(2 * LEADER_TTL)  # longer than the lease: a fenced or expired owner would show by now
    with owner._lock:  # what the owner said, for the diagnosis
        said = [r for r in owner.records if str(r["event"]).startswith("fleet.")]
    print("OWNER RECORDS", *(f"{r['event']}: {r.get('message')}" for r in said), sep="\n")
    back = [r for r in said if r["event"] == "fleet.reachable"]
    if back:  # the owner's keep-alives failed for a while (no leader): how long
        record_figure("owner_keepalive_outage_sec", float(back[-1]["after_sec"]))
    runs = [(r.node, r.token) for r in env.runs("sa")]
    assert [(r.node, r.token) for r in env.alive_runs("sa")] == [(before.node, before.token)], runs
    assert not [r for r in said if r["event"] in ("fleet.fenced", "fleet.lost")], said
    check_history(env.runs("sa"))


def _has_leader(env: Env) -> bool:
    try:
        env.etcd.leader_index()
    except (AssertionError, RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def test_replicas_two_of_three_hosts(env: Env, record_figure: Callable[[str, float], None]) -> None:
    """Must show 4: replicas: 2 on three hosts; kill one -> the third starts one; never more than 2."""
    three_hosts(env, {"rep": env.service("rep", placement={"replicas": 2})})
    wait_until(lambda: len(env.alive_runs("rep")) == 2, 30, "two replicas run")
    time.sleep(TTL)
    running = env.alive_runs("rep")
    assert len(running) == 2 and len({r.host for r in running}) == 2
    spare = ({"h1", "h2", "h3"} - {r.host for r in running}).pop()
    killed_at = env.host(running[0].host).kill_all()
    new = wait_until(
        lambda: [r for r in env.alive_runs("rep") if r.start > killed_at],
        TTL + START_ALLOW + 10,
        "the third host starts a replica",
    )[0]
    record_figure("replica_takeover_sec", new.start - killed_at)
    assert new.host == spare
    time.sleep(TTL)
    assert len(env.alive_runs("rep")) == 2
    assert max_concurrent(env.runs("rep")) <= 2


def test_crash_looping_singleton_is_handed_to_another_host(
    env: Env, record_figure: Callable[[str, float], None]
) -> None:
    """A singleton that crash-loops on its (preferred) owner is handed over to a host where it runs."""
    placement = {"singleton": True, "prefer": ["h1"]}
    broken = {
        "command": [PY, "-c", "import sys; sys.exit(3)"],  # h1's copy of the program is broken
        "timeout_stop_sec": "500ms",
        "restart_sec": "100ms",
        "start_limit": {"burst": 2, "interval_sec": "60s"},
        "placement": placement,
    }
    h1 = env.start_host("h1", {"single": broken})
    assert h1.daemon is not None
    h1.daemon.wait_for("fleet.elected", timeout=30)
    others = [env.start_host(n, {"single": env.service("single", placement=placement)}) for n in ("h2", "h3")]
    gave_up = h1.daemon.wait_for("fleet.gave-up", timeout=30)[0]
    h1.daemon.wait_for("fleet.moved", timeout=10)
    run = wait_until(lambda: env.alive_runs("single"), TTL + START_ALLOW + 10, "another host runs it")[0]
    record_figure("handover_after_gave_up_sec", run.start - record_time(gave_up))
    assert run.node in {h.name for h in others}
    time.sleep(2 * TTL)
    assert [(r.node, r.token) for r in env.alive_runs("single")] == [(run.node, run.token)]
    assert int(run.token) > int(gave_up["token"])
    assert env.alive_runs("local-h1"), "h1's local service stopped"
    check_history(env.runs("single"))


LOADER = r"""
import socket, sys, time
addrs, port, until = sys.argv[1].split(","), int(sys.argv[2]), time.time() + float(sys.argv[3])
while time.time() < until:
    for a in addrs:
        try:
            with socket.create_connection((a, port), timeout=0.2) as s:
                print(f"ok {time.time():.6f} {s.recv(100).decode().strip()}", flush=True)
        except OSError:
            pass
    time.sleep(0.02)
"""


def served_by(out: Path, run: Interval) -> list[str]:
    """The loader's lines, once it got an answer from ``run`` (so the outage before it is complete)."""

    def lines() -> list[str]:
        got = out.read_text().splitlines()
        return got if any(line.endswith(f" {run.host} {run.token}") for line in got) else []

    result: list[str] = wait_until(lines, 10, f"the client gets answers from {run.host}")
    return result


def longest_outage(lines: list[str], since: float) -> float:
    """The longest time between two good answers after ``since``."""
    times = sorted(float(line.split()[1]) for line in lines if line.startswith("ok "))
    times = [t for t in times if t >= since]
    return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


def test_move_and_drain_under_load(
    env: Env, tmp_path: Path, record_figure: Callable[[str, float], None]
) -> None:
    """Must show 5: fleet move and drain; down only between old stop and new start (gap recorded)."""
    port = 18080
    hosts = three_hosts(env, {"single": env.service("single", port, placement={"singleton": True})})
    first = wait_until(lambda: env.alive_runs("single"), 30, "the singleton runs")[0]
    out = tmp_path / "load.out"
    with open(out, "w") as sink:
        loader = subprocess.Popen(
            [*env.fabric.hub_prefix, PY, "-c", LOADER, ",".join(h.address for h in hosts), str(port), "90"],
            stdout=sink,
        )
    try:
        owner = env.host(first.host)
        target = next(h for h in hosts if h is not owner)
        assert owner.daemon is not None
        moved_at = time.time()
        done = owner.daemon.ctl("fleet", "move", "single", target.name)
        assert done.returncode == 0, done.stdout + done.stderr
        moved = wait_until(
            lambda: [r for r in env.alive_runs("single") if r.start > moved_at],
            TTL + START_ALLOW + 10,
            "the singleton runs on the move's target",
        )[0]
        old = next(r for r in env.runs("single") if r.token == first.token and r.host == first.host)
        assert moved.host == target.name and old.stopped and moved.start >= old.end
        record_figure("move_gap_sec", moved.start - old.end)
        outage = longest_outage(served_by(out, moved), moved_at)
        record_figure("move_client_outage_sec", outage)
        # Down only between the old stop and the new start (plus the client's polling period).
        assert outage <= moved.start - old.end + 0.5, outage

        assert target.daemon is not None
        drained_at = time.time()
        done = target.daemon.ctl("fleet", "drain")
        assert done.returncode == 0, done.stdout + done.stderr
        after = wait_until(
            lambda: [r for r in env.alive_runs("single") if r.start > drained_at],
            TTL + START_ALLOW + 10,
            "the singleton runs elsewhere after drain",
        )[0]
        prev = next(r for r in env.runs("single") if r.token == moved.token)
        assert after.host != target.name and prev.stopped and after.start >= prev.end
        record_figure("drain_gap_sec", after.start - prev.end)
        outage = longest_outage(served_by(out, after), drained_at)
        record_figure("drain_client_outage_sec", outage)
        assert outage <= after.start - prev.end + 0.5, outage
        time.sleep(2 * TTL)
        assert [r.host for r in env.alive_runs("single")] == [after.host], "the drained host took it back"
        check_history(env.runs("single"))
    finally:
        loader.kill()
        loader.wait(10)


def error_lines(host: Host, *words: str) -> list[str]:
    """hasupd's warning/error records on ``host`` that mention any of ``words``."""
    assert host.daemon is not None
    with host.daemon._lock:
        records = list(host.daemon.records)
    return [
        str(r.get("message"))
        for r in records
        if r.get("level") in ("warning", "error", "critical")
        and any(w.lower() in str(r).lower() for w in words)
    ]


def test_bad_input_clear_errors_local_services_unaffected(env: Env, tmp_path: Path) -> None:
    """Must show 6: unreachable endpoints, wrong certificates, a host name used twice."""
    with contextlib.ExitStack() as stack:
        bad_input(env, tmp_path, stack)


def bad_input(env: Env, tmp_path: Path, stack: contextlib.ExitStack) -> None:
    placed = {"single": env.service("single", placement={"singleton": True})}
    nowhere = env.start_host("h1", placed, etcd={"endpoints": [f"http://{SUBNET}.99:2379"]})
    # A real TLS etcd whose certificate is signed by a CA the host does not trust.
    tls_dir = tmp_path / "tls"
    good_ca = make_ca(tls_dir, "etcd-ca")
    (address,) = env.fabric.etcd_addresses(1, first=14)
    server = make_server_cert(tls_dir, good_ca, address)
    secure = EtcdCluster(
        tmp_path / "etcd-tls", 1, hosts=[address], prefix=env.fabric.hub_prefix, tls=(good_ca[0], *server)
    )
    stack.callback(secure.stop)
    secure.start()  # etcdctl with the right CA gets through: only the host's certificates are wrong
    wrong_ca = make_ca(tls_dir, "not-the-etcd-ca")
    bad = {"endpoints": secure.endpoints, "ca_file": str(wrong_ca[0])}
    badtls = env.start_host(
        "h2", placed, etcd={**bad, "cert_file": str(wrong_ca[0]), "key_file": str(wrong_ca[1])}
    )
    first = env.start_host("h3", placed, host="dup")
    for h in (nowhere, badtls, first):
        assert h.daemon is not None
        h.daemon.wait_ready(timeout=30)
    run = wait_until(lambda: env.alive_runs("single"), 30, "the singleton runs on the healthy host")[0]
    assert run.host == "dup"
    second = env.start_host("h4", placed, host="dup")
    assert second.daemon is not None
    second.daemon.wait_ready(timeout=30)
    time.sleep(3 * TTL)
    for h in (nowhere, badtls, first, second):
        assert h.daemon is not None and h.daemon.proc.poll() is None, f"hasupd on {h.name} exited"
        assert env.alive_runs(f"local-{h.name}"), f"local service on {h.name} does not run"
    unreachable = error_lines(nowhere, "etcd", f"{SUBNET}.99")
    wrong_cert = error_lines(badtls, "certificate", "tls", "ssl")
    twice = error_lines(second, "dup")
    print("ERRORS", unreachable[:1], wrong_cert[:1], twice[:1], sep="\n")
    assert unreachable, "no clear error for unreachable endpoints"
    # The record names the endpoint tried and what went wrong there.
    assert any(f"http://{SUBNET}.99:2379: no answer within" in line for line in unreachable), unreachable
    assert wrong_cert, "no clear error for a wrong certificate"
    assert twice, "no clear error for a host name used twice"
    runs = [(r.node, r.token) for r in env.runs("single")]
    assert [(r.node, r.token) for r in env.alive_runs("single")] == [(run.node, run.token)], runs
    check_history(env.runs("single"))


# A lease that outlives a prompt restart of hasupd on a loaded 2-core machine (~1-3 s to start Python).
CARRY_TTL = 8.0


def placed_pid(daemon: Hasupd, name: str) -> int:
    proc = daemon.ctl("status", "--json")
    assert proc.returncode == 0, proc.stderr
    pid = next(s for s in json.loads(proc.stdout) if s["name"] == name)["pid"]
    assert isinstance(pid, int), pid
    return pid


def assert_carried_on(env: Env, first: Interval, daemon: Hasupd, pid: int) -> None:
    """The singleton ran on, once, on its owner with its token and pid: nobody stopped, elected or
    started it anywhere, and no host lost or fenced it."""
    assert placed_pid(daemon, "single") == pid
    assert pid_alive(pid)
    runs = env.runs("single")
    assert [(r.node, r.token) for r in runs] == [(first.node, first.token)], [vars(r) for r in runs]
    assert not runs[0].stopped and alive(runs[0])
    for host in env.fabric.hosts:
        assert host.daemon is not None
        for event in ("fleet.lost", "fleet.fenced"):
            assert not host.daemon.find(event), (host.name, host.daemon.find(event))
        elected = host.daemon.find("fleet.elected", service="single")
        assert not elected or host.name == first.node, (host.name, elected)


def test_reexec_of_the_owners_hasupd_keeps_its_placed_service_running(
    env: Env, record_figure: Callable[[str, float], None]
) -> None:
    """Zero-blip x fleet: ``hasupctl daemon-reexec`` on the owner carries the lease and the ownership
    on: same pid, same token, no fleet.lost/fenced/elected record, nobody else starts it."""
    services = {"single": env.service("single", placement={"singleton": True})}
    three_hosts(env, services, lease_ttl_sec=f"{CARRY_TTL:g}s")
    first = wait_until(lambda: env.alive_runs("single"), 30, "the singleton runs on one host")[0]
    daemon = env.host(first.node).daemon
    assert daemon is not None
    daemon.wait_for("fleet.elected", timeout=10, service="single")
    pid = placed_pid(daemon, "single")
    answer = daemon.ctl("daemon-reexec")
    assert answer.returncode == 0, answer.stderr
    reexec = daemon.wait_for("daemon.reexec", timeout=30)[0]
    resumed = daemon.wait_for("fleet.resumed", timeout=20)[0]
    assert resumed["how"] == "re-exec", resumed
    assert (resumed["slots"], resumed["tokens"]) == (["owner/single"], [first.token]), resumed
    record_figure("reexec_unsupervised_sec", float(reexec["unsupervised_sec"]))
    record_figure("lease_left_at_resume_sec", float(resumed["lease_left_sec"]))
    time.sleep(1.5 * CARRY_TTL)  # longer than the lease: an expired or lost one would show by now
    assert_carried_on(env, first, daemon, pid)
    assert len(daemon.find("fleet.elected", service="single")) == 1  # the first election only


def test_kill_9_of_the_owners_hasupd_and_a_prompt_restart_keeps_its_placed_service_running(
    env: Env, record_figure: Callable[[str, float], None]
) -> None:
    """SIGKILL of the owner's hasupd alone (its services run on) and ``hasupd run`` again within the
    lease TTL: the lease is alive (LeaseTimeToLive), the new hasupd carries on like after a re-exec."""
    services = {"single": env.service("single", placement={"singleton": True})}
    three_hosts(env, services, lease_ttl_sec=f"{CARRY_TTL:g}s")
    first = wait_until(lambda: env.alive_runs("single"), 30, "the singleton runs on one host")[0]
    owner = env.host(first.node)
    assert owner.daemon is not None
    owner.daemon.wait_for("fleet.elected", timeout=10, service="single")
    pid = placed_pid(owner.daemon, "single")
    time.sleep(CARRY_TTL / 2)  # keep-alives go on; the state record still has the election's
    owner.daemon.kill()
    killed_at = time.time()
    assert pid_alive(pid)
    again = env.run_hasupd(owner, services, lease_ttl_sec=f"{CARRY_TTL:g}s")
    again.wait_ready(30)
    resumed = again.wait_for("fleet.resumed", timeout=20)[0]
    record_figure("hasupd_down_until_resumed_sec", record_time(resumed) - killed_at)
    record_figure("lease_left_at_resume_sec", float(resumed["lease_left_sec"]))
    assert resumed["how"] == "crash restart", resumed
    assert (resumed["slots"], resumed["tokens"]) == (["owner/single"], [first.token]), resumed
    assert again.find("service.adopted", service="single"), "the singleton was not adopted"
    time.sleep(1.5 * CARRY_TTL)
    assert_carried_on(env, first, again, pid)
    assert not again.find("fleet.elected")
