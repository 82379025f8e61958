"""Timestamps of the phases of one ``hasupd run`` start-up (written to stderr once the start is done).

    PYTHONPATH=. bench/.env/bin/python bench/phases.py run --config-dir DIR --state-dir S --runtime-dir R

Wraps ``read_config`` and ``Manager.start_all`` with timers, then runs hasupd's own entry point; the
times are milliseconds since this process started (``T0`` in the environment: since then instead).
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from typing import Any

T0 = float(os.environ.get("T0", time.time()))
marks: list[tuple[str, float]] = []


def mark(name: str) -> None:
    marks.append((name, time.time() - T0))


mark("interpreter up")
from hasupd import daemon, manager  # noqa: E402

mark("hasupd.daemon imported")
read_config = daemon.read_config
start_all = manager.Manager.start_all


def timed_read_config(*args: Any, **kwargs: Any) -> Any:
    mark("read_config begin")
    try:
        return read_config(*args, **kwargs)
    finally:
        mark("read_config end")


def timed_start_all(self: manager.Manager, *args: Any, **kwargs: Any) -> Any:
    mark("start_all begin")
    try:
        return start_all(self, *args, **kwargs)
    finally:
        mark("start_all end")
        sys.stderr.write("PHASES " + " | ".join(f"{n} {t * 1000:.0f} ms" for n, t in marks) + "\n")


daemon.read_config = timed_read_config  # type: ignore[assignment]
manager.Manager.start_all = timed_start_all  # type: ignore[method-assign]
sys.argv = ["hasupd", *sys.argv[1:]]
runpy.run_module("hasupd", run_name="__main__", alter_sys=True)
