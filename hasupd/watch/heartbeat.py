"""Heartbeat files: a file the service touches to say it is alive, one ``stat`` per ``max_age_sec``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from hasupd.config.model import HeartbeatFile
from hasupd.ports import Clock, TimerHandle
from hasupd.watch.probes import describe_error


class HeartbeatWatch:
    """Watches a file the service touches to say it is alive.

    ``start`` arms a timer ``max_age_sec`` ahead. When it fires the file is stat'ed once: if it was
    touched less than ``max_age_sec`` ago, the timer is re-armed for the rest of that age; else
    ``on_stale(detail)`` is called once and the watch disarms. File times are wall-clock times, so
    ``wall`` (default ``time.time``) measures the age; ``clock`` only schedules.
    """

    def __init__(
        self,
        spec: HeartbeatFile,
        on_stale: Callable[[str], None],
        clock: Clock,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self._on_stale = on_stale
        self._clock = clock
        self._wall = wall
        self._timer: TimerHandle | None = None
        self.stats = 0  # how many times the file was looked at

    def start(self) -> None:
        """Arm the watch: the service has ``max_age_sec`` from now for its first touch."""
        self.stop()
        self._arm(self.spec.max_age_sec)

    def stop(self) -> None:
        """Disarm the watch. Safe to call more than once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, delay: float) -> None:
        self._timer = self._clock.call_at(self._clock.time() + delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        path, max_age = self.spec.path, self.spec.max_age_sec
        self.stats += 1
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            self._on_stale(f"heartbeat file {path} does not exist")
            return
        except OSError as e:
            self._on_stale(f"heartbeat file {path} cannot be read: {describe_error(e)}")
            return
        age = self._wall() - mtime
        if age < max_age:
            # A file dated in the future (clock stepped back) counts as touched just now.
            self._arm(max_age - max(age, 0.0))
            return
        self._on_stale(f"heartbeat file {path} not touched for {age:.1f}s")
