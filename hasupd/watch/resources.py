"""Resource limits of a service's process tree: memory (RSS) and CPU, sampled with psutil.

Acts only after several consecutive samples over a limit, so one spike never kills a service.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hasupd.config.model import Limits
from hasupd.ports import TaskSpawner
from hasupd.watch.armed import Armed

_TICK = 1 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Sample:
    at: float  # CLOCK_BOOTTIME seconds: the clock of the start times in /proc/PID/stat
    boot: float  # psutil.boot_time() then: create time - boot = start time since boot
    rss: int  # bytes, summed over the processes
    cpu: dict[tuple[int, float], float]  # (pid, create time) -> user + system seconds
    cost: float  # seconds the collection took


def _collect(pids: set[int]) -> _Sample:
    """Read RSS and CPU times of ``pids`` (those that vanished or deny access are skipped).

    The create time in the key tells a reused pid from the process seen last time.
    """
    import psutil  # noqa: PLC0415  (~1 MB: loaded with the first service that has limits)

    at, boot, started = time.clock_gettime(time.CLOCK_BOOTTIME), psutil.boot_time(), time.perf_counter()
    rss = 0
    cpu: dict[tuple[int, float], float] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu[(pid, proc.create_time())] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return _Sample(at, boot, rss, cpu, time.perf_counter() - started)


class ResourceWatch(Armed):
    """Samples a process tree every ``interval`` seconds against ``limits``.

    memory: the sum of RSS over ``pids()`` (shared pages count once per process, as ``ps`` shows).
    cpu: CPU seconds the tree used over the last ``cpu_window_sec``, in percent of one CPU (200 = two
    cores busy), judged only once a whole window was observed (a busy start-up is no runaway). The
    window sums the growth of user+system time of processes seen at consecutive samples, plus all
    the time of processes born since the previous sample. Not counted: time a process used between
    its last sample and its exit, and processes that live less than ``interval``, so fork-heavy
    trees are under-counted (a cgroup's cpu.stat would be exact). Children's time that their parent
    collected (``children_user``) is left out on purpose: it would count again what was already
    seen of those children while they ran.

    A kind ("memory" or "cpu") acts after ``consecutive`` samples in a row over its limit:
    ``on_exceeded(kind, detail)`` once per kind. Sampling runs on the loop while one collection
    costs under ``THREAD_ABOVE_SEC``; above, the next ones run in a worker thread
    (``asyncio.to_thread``), and return to the loop once they cost less than half of it.
    """

    THREAD_ABOVE_SEC = 0.005

    def __init__(
        self,
        limits: Limits,
        pids: Callable[[], set[int]],
        on_exceeded: Callable[[str, str], None],
        *,
        interval: float = 1.0,
        consecutive: int = 3,
        tasks: TaskSpawner | None = None,
    ) -> None:
        super().__init__(tasks)
        self.limits = limits
        self._pids = pids
        self._on_exceeded = on_exceeded
        self.interval = interval
        self.consecutive = consecutive
        self._kinds = {
            k for k, v in (("memory", limits.memory), ("cpu", limits.cpu_percent)) if v is not None
        }
        self._previous: _Sample | None = None
        self._first: float | None = None
        self._window: deque[tuple[float, float]] = deque()  # (interval start, CPU seconds used in it)
        self._over = {"memory": 0, "cpu": 0}
        self._fired: set[str] = set()
        self.memory: int | None = None  # the last RSS sum
        self.cpu_percent: float | None = None  # the last whole-window figure
        self.sample_sec = 0.0  # what the last collection cost
        self.threaded = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take the first sample (the CPU baseline) at once, then one every ``interval``.

        Nothing is armed when ``limits`` sets neither memory nor cpu_percent. Raise RuntimeError if
        used before.
        """
        self._begin(loop)
        if self._kinds:
            self._timer = loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        pids = self._pids()
        if self.threaded:
            self._spawn(self._collect_in_thread(pids), "resource sample")
        else:
            self._apply(_collect(pids))

    async def _collect_in_thread(self, pids: set[int]) -> None:
        self._apply(await asyncio.to_thread(_collect, pids))

    def _apply(self, sample: _Sample) -> None:
        if self._loop is None:
            return
        self.sample_sec = sample.cost
        limit = self.THREAD_ABOVE_SEC / 2 if self.threaded else self.THREAD_ABOVE_SEC
        self.threaded = sample.cost > limit
        self.memory = sample.rss
        if self.limits.memory is not None:
            over = sample.rss > self.limits.memory
            self._count(
                "memory",
                over,
                f"memory {_size(sample.rss)} RSS over the "
                f"{_size(self.limits.memory)} limit in {self.consecutive} samples "
                f"({len(sample.cpu)} processes)",
            )
        self._judge_cpu(sample)
        if not self._kinds <= self._fired:
            self._arm(self.interval, self._fire)

    def _judge_cpu(self, sample: _Sample) -> None:
        previous, self._previous = self._previous, sample
        limit = self.limits.cpu_percent
        if limit is None:
            return
        if previous is None:
            self._first = sample.at
            return
        used = 0.0
        for key, seconds in sample.cpu.items():
            before = previous.cpu.get(key)
            if before is not None:
                used += max(seconds - before, 0.0)
            elif key[1] - sample.boot >= previous.at - _TICK:
                # Born since the last sample: all of its time is new. Times since boot, not the
                # wall clock: psutil's create times are only as exact as the whole-second btime.
                used += seconds
        self._window.append((previous.at, used))
        window = self.limits.cpu_window_sec
        while self._window and self._window[0][0] < sample.at - window - 1e-6:
            self._window.popleft()
        if self._first is None or sample.at - self._first < window or not self._window:
            return
        span = sample.at - self._window[0][0]
        self.cpu_percent = 100.0 * sum(used for _, used in self._window) / span
        self._count(
            "cpu",
            self.cpu_percent > limit,
            f"cpu {self.cpu_percent:.1f}% over the last {span:.1f}s, over the {limit:g}% limit "
            f"in {self.consecutive} samples",
        )

    def _count(self, kind: str, over: bool, detail: str) -> None:
        self._over[kind] = self._over[kind] + 1 if over else 0
        if self._over[kind] >= self.consecutive and kind not in self._fired:
            self._fired.add(kind)
            self._on_exceeded(kind, detail)


def _size(nbytes: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f}{unit}"
    return f"{nbytes}B"


def oom_killed(cgroup_path: str | os.PathLike[str]) -> bool:
    """Return True if memory.events of the cgroup counts an OOM kill (cgroup v2 with the memory
    controller); False when it does not, or when the file is not there (no memory controller,
    cgroup v1, cgroup gone)."""
    try:
        text = (Path(cgroup_path) / "memory.events").read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return value.strip().isdigit() and int(value) > 0
    return False
