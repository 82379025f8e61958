"""Reaping of the orphans hasupd adopts as a child subreaper."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from hasupd.host.procfs import Children, stat

# SIGCHLDs arriving within this long are handled by one sweep.
SWEEP_DELAY_SEC = 0.05


class Reaper:
    """Reaps the orphans hasupd adopts as a subreaper, which asyncio never waits for.

    On SIGCHLD it reaps zombie children that are not tracked and have stayed zombies for
    ``grace_sec``: the delay lets children that other parts of hasupd forked (asyncio subprocesses,
    plumbum) be reaped by their owners, which do so at once; an adopted orphan has no other owner.
    Tracked pids (main processes, reaped by the spawner's pidfd callback) are never touched.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        grace_sec: float = 2.0,
        on_reaped: Callable[[int, int], None] | None = None,
    ) -> None:
        self._loop = loop
        self._grace = grace_sec
        self._on_reaped = on_reaped
        self._tracked: set[int] = set()
        self._seen: dict[int, float] = {}  # untracked zombie -> loop time first seen
        self._timer: asyncio.TimerHandle | None = None
        self._burst: asyncio.TimerHandle | None = None
        self.reaped = 0
        loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
        self._after_burst()  # zombies that exited before we listened

    def track(self, pid: int) -> None:
        """Never reap ``pid``: its owner reaps it."""
        self._tracked.add(pid)

    def untrack(self, pid: int) -> None:
        """Forget ``pid`` (after its owner reaped it)."""
        self._tracked.discard(pid)

    def close(self) -> None:
        """Remove the SIGCHLD handler and any pending timer."""
        self._loop.remove_signal_handler(signal.SIGCHLD)
        for timer in (self._timer, self._burst):
            if timer is not None:
                timer.cancel()
        self._timer = self._burst = None

    def _on_sigchld(self) -> None:
        # A burst of exits (stopping hundreds of services) sends a burst of SIGCHLD; one sweep a
        # moment later serves them all, instead of one scan of our children per signal.
        if self._burst is None:
            self._burst = self._loop.call_later(SWEEP_DELAY_SEC, self._after_burst)

    def _after_burst(self) -> None:
        self._burst = None
        # A WNOWAIT peek only says whether any child exited (it always returns the same first one);
        # the zombies themselves are found among our children.
        try:
            if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return
        except ChildProcessError:
            return
        self._sweep()

    def _sweep(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._loop.time()
        zombies = set()
        for pid in Children().of(os.getpid()):
            st = stat(pid)
            if st is None or st.state != "Z" or pid in self._tracked:
                continue
            zombies.add(pid)
            if now - self._seen.setdefault(pid, now) >= self._grace:
                self._reap(pid)
                zombies.discard(pid)
        self._seen = {pid: t for pid, t in self._seen.items() if pid in zombies}
        if self._seen:
            when = min(self._seen.values()) + self._grace
            self._timer = self._loop.call_at(when, self._sweep)

    def _reap(self, pid: int) -> None:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # its owner was quicker, as it should be
            return
        if got == pid:
            self.reaped += 1
            if self._on_reaped is not None:
                self._on_reaped(pid, status)
