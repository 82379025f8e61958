from __future__ import annotations

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
