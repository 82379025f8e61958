"""Containers under supervision, against real podman and the docker CLI (through podman's docker API).

Two layers: the spawner proven directly (a real Service, ExecSpawner and ContainerSpawner on the test's
event loop), and the real daemon (harness) with container services in its config.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hasupd import events as ev
from hasupd.build import LoopClock, containment_name
from hasupd.config.model import ContainerEngine, ContainerSpec, ServiceConfig, StartLimit
from hasupd.host.containment import Containment
from hasupd.host.reaper import Reaper
from hasupd.ports import ExitStatus, SpawnError, SpawnSpec
from hasupd.runtimes.container import (
    ContainerProcess,
    ContainerSpawner,
    RoutingSpawner,
    cleanup_stale_containers,
)
from hasupd.runtimes.exec import ExecSpawner
from hasupd.service import Service
from hasupd.states import OutputMode, RestartMode, ServiceState, ServiceType
from hasupd.watch.watchers import LoopWatchers
from tests.support.harness import Hasupd, pid_alive, record_time, write_config
from tests.support.podman import Podman, docker_api_fixture, podman_fixture  # noqa: F401  (fixtures)

# PID 1 of the container: stops at once on SIGTERM (its trap runs after the current 0.1 s sleep).
SERVING = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
# PID 1 without a handler: the kernel ignores SIGTERM for a namespace's init, so only SIGKILL ends it.
STUBBORN = "exec sleep 1000"
# Five WATCHDOG=1 pings over a second, then silence.
PINGS = "for i in 1 2 3 4 5; do sd-notify WATCHDOG=1; sleep 0.2; done; "
ENGINES = [ContainerEngine.PODMAN, ContainerEngine.DOCKER]


# --------------------------------------------------------------------------- direct: the spawner alone


@dataclass
class Rig:
    """A Service's world on the test's loop: real containment, spawners, notify endpoints."""

    tmp: Path
    podman: Podman
    containers: ContainerSpawner
    spawner: RoutingSpawner
    watchers: LoopWatchers
    clock: LoopClock
    events: list[ev.Event] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)

    def service(self, name: str, container: ContainerSpec, **kw: Any) -> Service:
        kw.setdefault("restart", RestartMode.ALWAYS)
        kw.setdefault("restart_sec", 0.2)
        kw.setdefault("start_limit", StartLimit(burst=50))
        bus = ev.EventBus()
        bus.subscribe(self.events.append)
        svc = Service(
            ServiceConfig(name=name, container=container, **kw),
            spawner=self.spawner,
            clock=self.clock,
            bus=bus,
            output=OutputMode.FILE,
            watchers=self.watchers,
        )
        self.services.append(svc)
        return svc

    def of(self, kind: type[ev.Event], name: str) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and e.service == name]


async def wait_until(what: str, check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def wait_for_init(proc: ContainerProcess, timeout: float = 10.0) -> int:
    await wait_until("the container's init pid is known", lambda: proc.init_pid is not None, timeout)
    assert proc.init_pid is not None
    return proc.init_pid


def process_of(svc: Service) -> ContainerProcess:
    proc = svc._process
    assert isinstance(proc, ContainerProcess), proc
    return proc


def cli(podman: Podman, engine: ContainerEngine) -> Callable[..., Any]:
    return podman.docker if engine is ContainerEngine.DOCKER else podman


@pytest.fixture(params=ENGINES, ids=[e.value for e in ENGINES])
def engine(request: pytest.FixtureRequest, podman: Podman) -> ContainerEngine:
    kind = ContainerEngine(request.param)
    if kind is ContainerEngine.DOCKER:
        request.getfixturevalue("docker_api")
    return kind


@pytest.fixture
async def rig(request: pytest.FixtureRequest, tmp_path: Path, podman: Podman) -> AsyncIterator[Rig]:
    """Cgroup containment, or the process-group fallback when parametrized with "process-group"."""
    loop = asyncio.get_running_loop()
    fallback = getattr(request, "param", "cgroup") == "process-group"
    containment = Containment.detect(
        base_name=f"hasupd-test-{uuid.uuid4().hex[:12]}", force_fallback=fallback, runtime_dir=tmp_path
    )
    if not fallback and containment.kind != "cgroup":
        pytest.fail(f"cgroup containment needs root and a writable cgroup2: {containment.describe()}")
    reaper = Reaper(loop, grace_sec=0.1)
    programs = ExecSpawner(loop, containment, reaper, tmp_path / "state", tmp_path / "nojournal")
    env = dict(podman.engine_env)
    if podman.docker_host is not None:
        env["DOCKER_HOST"] = podman.docker_host
    prefix = f"hasupd-t{uuid.uuid4().hex[:8]}-"
    containers = ContainerSpawner(programs, reaper=reaper, name_prefix=prefix, engine_env=env)
    clock = LoopClock(loop)
    rig = Rig(
        tmp_path,
        podman,
        containers,
        RoutingSpawner(programs, containers),
        LoopWatchers(loop, clock, tmp_path, reaper),
        clock,
    )
    try:
        yield rig
    finally:
        for svc in rig.services:
            svc.stop()
        for svc in rig.services:
            await wait_until(f"{svc.name} stopped", lambda svc=svc: svc.is_inactive, 20)
            svc.close()
        await containers.aclose(20)
        programs.close()
        containment.close()
        reaper.close()
        leftovers = [c["id"] for c in podman.containers(f"hasupd.daemon={prefix}")]
        if leftovers:
            podman("rm", "--force", "--time", "0", *leftovers)


@pytest.mark.parametrize("rig", ["cgroup", "process-group"], indirect=True)
async def test_a_killed_container_is_restarted_and_a_stop_leaves_nothing(
    engine: ContainerEngine, rig: Rig
) -> None:
    """Cases 1, 3 and 5 on the spawner itself: podman/docker kill from outside, restart, clean stop."""
    image = rig.podman.image
    svc = rig.service(
        "web",
        ContainerSpec(image=image, engine=engine, args=("sh", "-c", SERVING), options=("--network=none",)),
        timeout_stop_sec=3.0,
    )
    svc.start()
    first = process_of(svc)
    init = await wait_for_init(first)
    name = first.name
    assert name == f"{rig.containers.name_prefix}web"
    assert init == rig.podman.init_pid(name)
    pids = first.scope.pids()
    assert first.pid in pids and init in pids, pids  # the CLI and the container's init
    # exec probes: a command inside the running container.
    argv, env = rig.containers.exec_command(svc.config.container, "web", ["cat", "/proc/1/cmdline"])
    inside = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert inside.returncode == 0 and inside.stdout.startswith("sh\0-c\0trap"), inside

    killed_at = time.monotonic()
    cli(rig.podman, engine)("kill", name)
    await wait_until("a second start", lambda: len(rig.of(ev.ServiceStarted, "web")) == 2, 10)
    second = process_of(svc)
    await wait_for_init(second)
    back = time.monotonic() - killed_at
    assert back <= 0.2 + 2.0, back
    exited = rig.of(ev.ServiceExited, "web")[0]
    assert exited.exit_code == 137 and not exited.expected  # the CLI reports the container's SIGKILL
    assert second.container_id != first.container_id
    ours = rig.podman.containers(f"hasupd.daemon={rig.containers.name_prefix}")
    assert [(c["state"], c["id"]) for c in ours] == [("running", second.container_id)]

    stopping = time.monotonic()
    svc.stop()
    await wait_until("stopped", lambda: svc.state is ServiceState.DEAD, 10)
    took = time.monotonic() - stopping
    assert took < 3.0, took  # the trap ends it at once: no SIGKILL needed
    assert not rig.of(ev.ServiceKilled, "web")
    await rig.containers.wait_idle(10)
    assert rig.podman.containers(f"hasupd.daemon={rig.containers.name_prefix}") == []
    print(f"{engine.value}: running again {back:.2f}s after kill; stop took {took:.2f}s")


async def test_a_stubborn_container_is_killed_at_the_stop_timeout(rig: Rig) -> None:
    svc = rig.service(
        "stubborn",
        ContainerSpec(image=rig.podman.image, args=("sh", "-c", STUBBORN), options=("--network=none",)),
        timeout_stop_sec=1.0,
    )
    svc.start()
    init = await wait_for_init(process_of(svc))
    stopping = time.monotonic()
    svc.stop()
    await wait_until("stopped", lambda: svc.state is ServiceState.DEAD, 10)
    took = time.monotonic() - stopping
    assert 0.9 <= took <= 1.0 + 1.0, took
    assert not pid_alive(init)
    await rig.containers.wait_idle(10)
    assert rig.podman.containers(f"hasupd.daemon={rig.containers.name_prefix}") == []
    print(f"stubborn: stopped by SIGKILL after {took:.2f}s (timeout_stop_sec 1s)")


async def test_notify_from_inside_the_container(rig: Rig) -> None:
    """READY=1, STATUS= and WATCHDOG=1 sent by processes inside the container count; pings that stop
    lead to a restart with result watchdog."""
    script = "trap 'exit 0' TERM; sd-notify READY=1 STATUS=warm; " + PINGS + SERVING
    svc = rig.service(
        "api",
        ContainerSpec(image=rig.podman.image, args=("sh", "-c", script), options=("--network=none",)),
        type=ServiceType.NOTIFY,
        watchdog_sec=1.5,
        timeout_start_sec=20.0,
        timeout_stop_sec=2.0,  # its init ignores the watchdog's SIGABRT (no handler): SIGKILL after 2 s
    )
    svc.start()
    assert svc.state is ServiceState.START
    await wait_until("ready", lambda: svc.state is ServiceState.RUNNING, 15)
    proc = process_of(svc)
    ready = rig.of(ev.ServiceReady, "api")[0]
    assert ready.pid != proc.pid  # from inside the container, not the CLI
    assert ready.pid in proc.container_pids() or not pid_alive(ready.pid)
    assert svc.status_text == "warm"
    await wait_until("watchdog timeout", lambda: rig.of(ev.WatchdogTimeout, "api"), 10)
    await wait_until("restarted", lambda: len(rig.of(ev.ServiceReady, "api")) == 2, 15)
    assert rig.of(ev.ServiceRestartScheduled, "api")[0].result == "watchdog"


async def test_exit_code_and_output_are_the_containers(engine: ContainerEngine, rig: Rig) -> None:
    spec = SpawnSpec(
        service=ServiceConfig(
            name="job",
            container=ContainerSpec(
                image=rig.podman.image,
                engine=engine,
                args=("sh", "-c", 'echo "out $GREETING"; echo err >&2; exit 3'),
                options=("--network=none",),
            ),
            environment=(("GREETING", "hello"),),
        ),
        invocation_id=uuid.uuid4().hex,
        output=OutputMode.FILE,
    )
    done: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
    proc = rig.containers.spawn(spec, done.set_result)
    status = await asyncio.wait_for(done, 20)
    assert status.code == 3  # docker runs without --rm for this: podman's API loses it otherwise
    await proc.wait_output_closed()
    proc.scope.signal_all(signal.SIGTERM)  # what the Service does after an exit
    await wait_until("nothing left", lambda: not proc.scope.pids())
    proc.scope.release()
    log = (rig.tmp / "state" / "logs" / "job.log").read_text()
    assert "out hello" in log and "err" in log
    await rig.containers.wait_idle(10)
    assert rig.podman.containers(f"hasupd.daemon={rig.containers.name_prefix}") == []


async def test_spawn_errors_say_why(rig: Rig, podman: Podman, tmp_path: Path) -> None:
    def spec(engine: ContainerEngine = ContainerEngine.PODMAN, image: str = podman.image) -> SpawnSpec:
        return SpawnSpec(
            service=ServiceConfig(name="x", container=ContainerSpec(image=image, engine=engine)),
            invocation_id=uuid.uuid4().hex,
            output=OutputMode.FILE,
        )

    # The images are checked before the start (at start-up and reload), so spawn never waits for the engine.
    await rig.containers.preflight([spec(image="localhost/nope:1").service])
    with pytest.raises(SpawnError, match=r"cannot start x: image localhost/nope:1 is not in podman's local"):
        rig.containers.spawn(spec(image="localhost/nope:1"), lambda status: None)
    bad_options = ServiceConfig(
        name="x", container=ContainerSpec(image=podman.image, options=("--restart=always",))
    )
    with pytest.raises(SpawnError, match="--restart=always is not allowed"):
        rig.containers.spawn(SpawnSpec(bad_options, uuid.uuid4().hex, OutputMode.FILE), lambda status: None)
    # No engine binary: an empty PATH for the engine.
    programs = rig.containers._exec
    nowhere = ContainerSpawner(
        programs, reaper=None, name_prefix="hasupd-x-", engine_env={"PATH": str(tmp_path)}
    )
    with pytest.raises(SpawnError, match="container engine podman is not installed"):
        nowhere.spawn(spec(), lambda status: None)
    # An engine that does not answer: the real docker CLI against a stand-in for a hung daemon, a
    # socket that accepts and never replies (a real daemon cannot be made to hang on demand).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(tmp_path / "silent.sock"))
        silent.listen(8)
        mute = ContainerSpawner(
            programs,
            reaper=None,
            name_prefix="hasupd-x-",
            preflight_timeout=1.0,
            engine_env={"DOCKER_HOST": f"unix://{tmp_path}/silent.sock"},
        )
        started = time.monotonic()
        await mute.preflight([spec(ContainerEngine.DOCKER).service])
        assert time.monotonic() - started < 3
        with pytest.raises(SpawnError, match=r"docker did not answer within 1s \(image inspect"):
            mute.spawn(spec(ContainerEngine.DOCKER), lambda status: None)
        await mute.aclose(5)  # the check asked again in the background
    assert not rig.events  # nothing was started


async def test_cleanup_removes_only_this_daemons_leftovers(podman: Podman) -> None:
    ours, theirs = f"hasupd-c{uuid.uuid4().hex[:6]}-", f"hasupd-c{uuid.uuid4().hex[:6]}-"
    common = ["create", "--network=none"]
    podman(*common, "--name", f"{ours}web", "--label", f"hasupd.daemon={ours}", podman.image, "sleep", "9")
    podman(*common, "--name", f"{ours}db", "--label", f"hasupd.daemon={ours}", podman.image, "sleep", "9")
    podman("start", f"{ours}db")
    podman(*common, "--name", f"{theirs}web", "--label", f"hasupd.daemon={theirs}", podman.image, "true")
    podman(*common, "--name", f"{ours}manual", podman.image, "true")  # not labelled: not ours
    try:
        removed = await cleanup_stale_containers("podman", ours, engine_env=podman.engine_env)
        assert removed == [f"{ours}db", f"{ours}web"]
        names = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
        assert f"{theirs}web" in names and f"{ours}manual" in names
        assert f"{ours}web" not in names and f"{ours}db" not in names
        assert await cleanup_stale_containers("podman", ours, engine_env=podman.engine_env) == []
    finally:
        podman("rm", "--force", "--time", "0", f"{theirs}web", f"{ours}manual", check=False)


# --------------------------------------------------------------------------- the real daemon


def daemon_env(podman: Podman) -> dict[str, str]:
    env = dict(podman.engine_env)
    if podman.docker_host is not None:
        env["DOCKER_HOST"] = podman.docker_host
    return env


def prefix_of(d: Hasupd) -> str:
    return containment_name(d.runtime_dir) + "-"


def container_service(podman: Podman, script: str, engine: ContainerEngine, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "container": {
            "engine": engine.value,
            "image": podman.image,
            "args": ["sh", "-c", script],
            "options": ["--network=none"],
        },
        "restart": "always",
        "restart_sec": "200ms",
        "output": "file",
    }
    body.update(kw)
    return body


def running_container(podman: Podman, prefix: str, unit: str) -> dict[str, str] | None:
    rows = [c for c in podman.containers(f"hasupd.daemon={prefix}") if c["name"] == prefix + unit]
    return rows[0] if rows and rows[0]["state"] == "running" else None


def wait_running(podman: Podman, prefix: str, unit: str, invocation: str, timeout: float = 10) -> float:
    """Wait until the container of ``invocation`` runs; return the time.time() it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        found = running_container(podman, prefix, unit)
        if found is not None and found["invocation"] == invocation:
            return time.time()
        if time.monotonic() > deadline:
            pytest.fail(
                f"{prefix}{unit} of {invocation} not running within {timeout}s: {podman.containers()}"
            )
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ENGINES, ids=[e.value for e in ENGINES])
def test_daemon_restarts_a_killed_container_and_stops_it_cleanly(
    tmp_path: Path,
    hasupd: Callable[..., Hasupd],
    podman: Podman,
    kind: ContainerEngine,
    request: pytest.FixtureRequest,
) -> None:
    """Cases 1, 3 and 5 through the daemon: kill from outside, running again within restart_sec + 2 s,
    stop within timeout_stop_sec, no container left."""
    if kind is ContainerEngine.DOCKER:
        request.getfixturevalue("docker_api")
    config = write_config(
        tmp_path / "etc",
        {
            "web": container_service(podman, SERVING, kind, timeout_stop_sec="3s"),
            "stubborn": container_service(podman, STUBBORN, kind, timeout_stop_sec="1s"),
        },
    )
    d = hasupd(config, env=daemon_env(podman))
    prefix = prefix_of(d)
    first = d.wait_for("service.started", service="web", timeout=15)[0]
    wait_running(podman, prefix, "web", first["invocation"])
    d.wait_for("service.started", service="stubborn", timeout=15)

    killed_at = time.time()
    (podman.docker if kind is ContainerEngine.DOCKER else podman)("kill", prefix + "web")
    second = d.wait_for("service.started", service="web", count=2, timeout=10)[1]
    seen = wait_running(podman, prefix, "web", second["invocation"])
    back = seen - killed_at
    assert back <= 0.2 + 2.0, back
    exited = d.find("service.exited", service="web")[0]
    assert exited["exit_code"] == 137 and exited["expected"] is False

    for unit, timeout in (("web", 3.0), ("stubborn", 1.0)):
        asked = time.time()
        result = d.ctl("stop", unit)
        assert result.returncode == 0, result.stderr
        stopped = d.wait_for("service.stopped", service=unit)[0]
        took = record_time(stopped) - asked
        assert took <= timeout + 0.5, (unit, took)
        print(f"{kind.value} {unit}: stop took {took:.2f}s (timeout_stop_sec {timeout:g}s)")
    assert d.find("service.killed", service="stubborn")  # SIGKILL was needed
    deadline = time.monotonic() + 10
    while podman.containers(f"hasupd.daemon={prefix}") and time.monotonic() < deadline:
        time.sleep(0.05)  # the engine removes them right after the stop
    assert podman.containers(f"hasupd.daemon={prefix}") == []
    assert d.stop() == 0
    print(f"{kind.value}: running again {back:.2f}s after kill (restart_sec 0.2s)")


def test_daemon_restarts_unhealthy_and_silent_containers(
    tmp_path: Path, hasupd: Callable[..., Hasupd], podman: Podman
) -> None:
    """Case 2: a failing health probe (run inside the container with podman exec) and missing
    WATCHDOG=1 pings both restart the container."""
    run_dir = tmp_path / "run"
    prefix = containment_name(run_dir) + "-"
    healthy = "touch /tmp/healthy; " + SERVING
    pinging = "trap 'exit 0' TERM; sd-notify READY=1; " + PINGS + SERVING
    # exec probes run with a bare environment: the engine's variables go in through env(1).
    in_container = [
        "/usr/bin/env",
        *(f"{k}={v}" for k, v in podman.engine_env.items()),
        "podman",
        "exec",
        prefix + "checked",
        "test",
        "-e",
        "/tmp/healthy",
    ]
    probe = {"exec": in_container, "interval_sec": "300ms", "timeout_sec": "5s", "failures": 2}
    config = write_config(
        tmp_path / "etc",
        {
            "checked": container_service(podman, healthy, ContainerEngine.PODMAN, health=[probe]),
            "pinging": container_service(
                podman,
                pinging,
                ContainerEngine.PODMAN,
                type="notify",
                watchdog_sec="1500ms",
                timeout_stop_sec="2s",
            ),
        },
    )
    d = hasupd(config, env=daemon_env(podman), runtime_dir=run_dir)
    d.wait_for("health.ok", service="checked", timeout=15)
    podman("exec", prefix + "checked", "rm", "/tmp/healthy")
    failed = d.wait_for("health.failed", service="checked", timeout=10)[0]
    again = d.wait_for("health.ok", service="checked", count=2, timeout=15)[1]
    assert record_time(again) > record_time(failed)
    assert d.find("service.restart_scheduled", service="checked")[0]["result"] == "health"

    ready = d.wait_for("service.ready", service="pinging", timeout=15)[0]
    started = d.find("service.started", service="pinging")[0]
    assert ready["pid"] != started["pid"]  # sent from inside the container, not by the CLI
    d.wait_for("watchdog.timeout", service="pinging", timeout=10)
    d.wait_for("service.ready", service="pinging", count=2, timeout=15)
    assert d.find("service.restart_scheduled", service="pinging")[0]["result"] == "watchdog"
    assert d.stop() == 0
    assert podman.containers(f"hasupd.daemon={prefix}") == []


@pytest.mark.parametrize("mode", [(), ("--no-cgroup",)], ids=["cgroup", "process-group"])
def test_daemon_killed_and_started_again_runs_one_container(
    tmp_path: Path, hasupd: Callable[..., Hasupd], podman: Podman, mode: tuple[str, ...]
) -> None:
    """Case 4: hasupd SIGKILLed while its container runs, then started again: exactly one container."""
    config = write_config(
        tmp_path / "etc", {"web": container_service(podman, SERVING, ContainerEngine.PODMAN)}
    )
    run_dir = tmp_path / "run"
    first = hasupd(config, env=daemon_env(podman), runtime_dir=run_dir, extra_args=mode)
    prefix = prefix_of(first)
    started = first.wait_for("service.started", service="web", timeout=15)[0]
    wait_running(podman, prefix, "web", started["invocation"])
    old_cli = started["pid"]
    first.kill()
    assert running_container(podman, prefix, "web") is not None  # the container outlived hasupd

    second = hasupd(config, env=daemon_env(podman), runtime_dir=run_dir, extra_args=mode)
    again = second.wait_for("service.started", service="web", timeout=20)[0]
    wait_running(podman, prefix, "web", again["invocation"])
    time.sleep(1.0)  # anything left over would show up by now
    rows = podman.containers(f"hasupd.daemon={prefix}")
    assert [(r["name"], r["state"], r["invocation"]) for r in rows] == [
        (prefix + "web", "running", again["invocation"])
    ]
    assert not pid_alive(old_cli)
    status = json.loads(second.ctl("status", "--json").stdout)
    assert [(s["name"], s["state"]) for s in status] == [("web", "running")]
    assert second.stop() == 0
    assert podman.containers(f"hasupd.daemon={prefix}") == []
    assert os.path.isdir(run_dir)
