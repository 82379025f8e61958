"""No engine call blocks the event loop: a hung container engine does not delay other services."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from hasupd import events as ev
from hasupd.build import LoopClock
from hasupd.config.model import ContainerSpec, ServiceConfig, StartLimit
from hasupd.host.containment import Containment
from hasupd.host.reaper import Reaper
from hasupd.runtimes.container import ContainerSpawner, RoutingSpawner
from hasupd.runtimes.exec import ExecSpawner
from hasupd.service import Service
from hasupd.states import OutputMode, RestartMode, ServiceState
from hasupd.watch.watchers import LoopWatchers

# A stand-in for a hung podman (a real one cannot be made to hang on demand): every inspection
# (``image exists``, ``inspect``) sleeps; anything else fails at once as podman does (exit code 125), so
# the container service crashes and is started again and again meanwhile.
HUNG_PODMAN = """#!/bin/sh
case " $* " in
  *" inspect "*|*" image exists "*) exec /bin/sleep 1000 ;;
esac
echo "hung podman: $1 failed" >&2
exit 125
"""

RESTART_SEC = 0.2
SLACK_SEC = 0.1


async def wait_until(what: str, check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


async def test_a_hung_podman_does_not_delay_the_restart_of_another_service(tmp_path: Path) -> None:
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    (engine_dir / "podman").write_text(HUNG_PODMAN)
    (engine_dir / "podman").chmod(0o755)

    loop = asyncio.get_running_loop()
    containment = Containment.detect(
        base_name=f"hasupd-test-{uuid.uuid4().hex[:12]}", force_fallback=False, runtime_dir=tmp_path
    )
    reaper = Reaper(loop, grace_sec=0.1)
    programs = ExecSpawner(loop, containment, reaper, tmp_path / "state", tmp_path / "nojournal")
    # The engine is found on this PATH only: the hung podman. preflight_timeout stays at its default.
    containers = ContainerSpawner(
        programs, reaper=reaper, name_prefix="hasupd-hung-", engine_env={"PATH": str(engine_dir)}
    )
    clock = LoopClock(loop)
    spawner = RoutingSpawner(programs, containers)
    watchers = LoopWatchers(loop, clock, tmp_path, reaper)
    started: dict[str, list[tuple[float, int]]] = {"plain": [], "boxed": []}
    attempts = {"plain": 0, "boxed": 0}

    def service(config: ServiceConfig) -> Service:
        bus = ev.EventBus()

        def seen(event: ev.Event) -> None:
            if isinstance(event, ev.ServiceStarted):
                started[config.name].append((time.monotonic(), event.pid))
            if isinstance(event, (ev.ServiceStarted, ev.ServiceSpawnFailed)):
                attempts[config.name] += 1

        bus.subscribe(seen)
        return Service(
            config, spawner=spawner, clock=clock, bus=bus, output=OutputMode.FILE, watchers=watchers
        )

    boxed = service(
        ServiceConfig(
            name="boxed",
            container=ContainerSpec(image="localhost/anything:1"),
            restart=RestartMode.ALWAYS,
            restart_sec=RESTART_SEC,
            restart_max_delay_sec=RESTART_SEC,
            start_limit=StartLimit(burst=100000),
        )
    )
    plain = service(
        ServiceConfig(
            name="plain",
            command=("/bin/sleep", "1000"),
            restart=RestartMode.ALWAYS,
            restart_sec=RESTART_SEC,
            restart_max_delay_sec=RESTART_SEC,  # no backoff: every restart comes after restart_sec
            start_limit=StartLimit(burst=100000),
        )
    )
    try:
        boxed.start()
        plain.start()
        await wait_until("plain started", lambda: plain.state is ServiceState.RUNNING)
        await wait_until("boxed tried to start", lambda: attempts["boxed"] >= 1, timeout=20)
        delays = []
        for _ in range(5):
            count = len(started["plain"])
            pid = started["plain"][-1][1]
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            await wait_until("plain restarted", lambda count=count: len(started["plain"]) > count, timeout=20)
            delays.append(started["plain"][-1][0] - killed)
            await asyncio.sleep(0.3)
        print("kill-to-restart:", ", ".join(f"{d * 1000:.0f} ms" for d in delays))
        assert max(delays) <= RESTART_SEC + SLACK_SEC, delays
        assert attempts["boxed"] >= 5  # the hung engine was asked all along
    finally:
        for svc in (boxed, plain):
            svc.stop()
        for svc in (boxed, plain):
            await wait_until(f"{svc.name} stopped", lambda svc=svc: svc.is_inactive, 20)
            svc.close()
        await containers.aclose(10)
        programs.close()
        containment.close()
        reaper.close()
