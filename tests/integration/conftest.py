from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hasupd.host.containment import Containment
from hasupd.host.reaper import Reaper
from tests.support.harness import Hasupd


@pytest.fixture
def hasupd(tmp_path: Path) -> Iterator[Callable[..., Hasupd]]:
    """Start hasupd on a config dir; every instance is stopped (or killed) at the end of the test."""
    started: list[Hasupd] = []

    def start(config_dir: Path, **kwargs: Any) -> Hasupd:
        daemon = Hasupd(config_dir, tmp_path / f"work{len(started)}", **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        try:
            daemon.stop(timeout=20)  # also closes the pipe of a hasupd that already exited
        except Exception:
            daemon.kill()
            raise


@pytest.fixture
def daemons() -> Iterator[list[Hasupd]]:
    """A list the test appends the daemons it starts itself to; each still running is stopped at the end
    (killed if it does not stop within 20 s, which fails the test)."""
    started: list[Hasupd] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            try:
                d.stop(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()
                raise


@pytest.fixture(params=["cgroup", "process-group"])
def containment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Containment]:
    """Each test twice: in cgroup mode (fails unless available, HASUPD_TEST_NO_CGROUP=1 skips it) and in
    process-group mode; test_containment.py has its own."""
    if request.param == "cgroup":
        c = Containment.detect(base_name=f"hasupd-test-{uuid.uuid4().hex[:12]}", runtime_dir=tmp_path / "run")
        if c.kind != "cgroup":
            if os.environ.get("HASUPD_TEST_NO_CGROUP") == "1":
                pytest.skip(f"HASUPD_TEST_NO_CGROUP=1 and no cgroup here: {c.describe()}")
            pytest.fail(
                "cgroup mode needs root and a writable cgroup2 (HASUPD_TEST_NO_CGROUP=1 skips it): "
                + c.describe()
            )
    else:
        c = Containment.detect(force_fallback=True, runtime_dir=tmp_path / "run")
    yield c
    c.close()


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    r = Reaper(asyncio.get_running_loop(), grace_sec=0.1)
    yield r
    r.close()
