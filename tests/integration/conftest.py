from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
