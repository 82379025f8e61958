"""What every scenario needs: settings, a fresh folder per supervisor run, starting a supervisor in its
own session, killing it with everything it started, and small statistics."""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from children import Programs
from journal import Journald
from procs import LineReader, die_with_parent, kill_tree
from supervisors import ServiceSpec, Supervisor

START_TIMEOUT_SEC = 120.0  # for a supervisor to get its services running


@dataclass(frozen=True)
class Settings:
    """Sizes of every scenario. The defaults fit the whole run in about 15 minutes on 2 cores."""

    latency_rounds: int = 4
    latency_kills: int = 200  # per child kind and supervisor, over all rounds
    latency_kills_slow: dict[str, int] = field(default_factory=lambda: {"supervisord": 40})
    latency_baseline: int = 40  # direct spawns per child kind (the floor without a supervisor)
    kill_settle_sec: float = 0.03  # pause after a restart before the next kill, plus up to as much jitter
    crash_rounds: int = 2
    crash_window_sec: float = 5.0
    give_up_rounds: int = 1
    give_up_cap_sec: float = 30.0
    idle_sizes: tuple[int, ...] = (10, 100, 500)
    startup_sizes: tuple[int, ...] = (100, 500)
    startup_rounds: int = 3  # rounds of a size in startup_sizes; others get one (for the idle measurement)
    idle_settle_sec: float = 3.0
    idle_window_sec: float = 20.0
    output_bytes: int = 200_000_000
    output_rounds: int = 2
    probe_services: int = 100
    probe_window_sec: float = 30.0
    stop_services: int = 100
    stop_rounds: int = 3

    @classmethod
    def quick(cls) -> Settings:
        """A few seconds per scenario, for the smoke test."""
        return cls(
            latency_rounds=2,
            latency_kills=10,
            latency_kills_slow={"supervisord": 4},
            latency_baseline=4,
            kill_settle_sec=0.02,
            crash_rounds=1,
            crash_window_sec=2.0,
            give_up_cap_sec=15.0,
            idle_sizes=(10,),
            startup_sizes=(10,),
            startup_rounds=1,
            idle_settle_sec=1.0,
            idle_window_sec=5.0,
            output_bytes=10_000_000,
            output_rounds=1,
            probe_services=10,
            probe_window_sec=5.0,
            stop_services=10,
            stop_rounds=1,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, pairs: Sequence[str]) -> Settings:
        """Return a copy with ``KEY=JSON`` pairs applied (``--set idle_window_sec=60``).

        Raise ValueError for an unknown key or a value that is not JSON.
        """
        changes: dict[str, Any] = {}
        for pair in pairs:
            key, _, text = pair.partition("=")
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown setting {key!r}")
            value = json.loads(text)
            changes[key] = tuple(value) if isinstance(value, list) else value
        return replace(self, **changes)


class SupervisorDied(RuntimeError):
    """The supervisor process exited during a run; ``last_line`` is the last line it wrote."""

    def __init__(self, message: str, last_line: str) -> None:
        super().__init__(message)
        self.last_line = last_line


@dataclass
class Running:
    """A supervisor started in the foreground in its own session."""

    supervisor: Supervisor
    folder: Path
    services: Sequence[ServiceSpec]
    proc: subprocess.Popen[bytes]
    started: float  # time.monotonic() just before the fork

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        """Raise RuntimeError if the supervisor has exited."""
        code = self.proc.poll()
        if code is not None:
            tail = self.tail()
            log = self.log(200)
            errors = [m.group(1) for m in re.finditer(r"^[\s|]*(\w+(?:Error|Exception): .*)$", log, re.M)]
            # The first error is the cause; a later one may be what a clean-up raised over it.
            ends = list(dict.fromkeys([*errors[:1], *errors[-1:]]))
            if len(ends) == 2:
                last = f"{ends[0]} (then {ends[1]})"
            else:
                last = ends[0] if ends else (tail.splitlines() or [f"exit status {code}"])[-1].strip()
            raise SupervisorDied(f"{self.supervisor.name} exited with status {code}:\n{tail}", last)

    def read(self, reader: LineReader, timeout: float) -> bytes | None:
        """Return the next record of ``reader``, or None after ``timeout`` s.

        Raise RuntimeError as soon as the supervisor has exited.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            line = reader.next_line(min(left, 0.5))
            if line is not None:
                return line
            self.check()
        return None

    def wait_ready(self, reader: LineReader, count: int) -> float:
        """Wait until ``count`` different services have written their name into ``reader``; return the
        seconds since the launch. Raise RuntimeError after START_TIMEOUT_SEC or if the supervisor died."""
        seen: set[str] = set()
        deadline = self.started + START_TIMEOUT_SEC
        while len(seen) < count:
            line = self.read(reader, deadline - time.monotonic())
            if line is None:
                raise RuntimeError(
                    f"{self.supervisor.name}: only {len(seen)}/{count} services running after "
                    f"{START_TIMEOUT_SEC:g}s:\n{self.tail()}"
                )
            seen.add(line.split()[0].decode())
        return time.monotonic() - self.started

    def wait(self, condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
        """Like ``wait_until``, but raise RuntimeError as soon as the supervisor has exited."""

        def done() -> bool:
            self.check()
            return condition()

        return wait_until(done, timeout, interval)

    def log(self, n: int) -> str:
        """Return the last ``n`` lines of the supervisor's own log."""
        for path in (self.supervisor.log_file(self.folder), self.folder / "supervisor.out"):
            with contextlib.suppress(OSError):
                return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def tail(self) -> str:
        """Return the end of the supervisor's own log, for error messages."""
        return self.log(20)


class Context:
    """Shared state of one benchmark run."""

    def __init__(
        self,
        settings: Settings,
        supervisors: Sequence[Supervisor],
        root: Path,
        programs: Programs,
        journal_disabled: bool = False,
    ) -> None:
        self.settings = settings
        self.supervisors = list(supervisors)
        self.root = root
        self.programs = programs
        self.journal_disabled = journal_disabled
        self.journald: Journald | None = None
        self._runs = 0
        self._t0 = time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self._t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    def folder(self, label: str) -> Path:
        """Return a new, empty folder for one run of one supervisor."""
        self._runs += 1
        path = self.root / f"{self._runs:03d}-{label}"
        path.mkdir(parents=True)
        return path

    def keep(self) -> set[int]:
        """Pids whose trees survive ``stop``: the shared journald."""
        return {self.journald.pid} if self.journald is not None else set()

    def launch(
        self, supervisor: Supervisor, label: str, services: Sequence[ServiceSpec], in_journal_ns: bool = False
    ) -> Running:
        folder = self.folder(f"{label}-{supervisor.name}")
        argv = supervisor.prepare(folder, services)
        if in_journal_ns:
            if self.journald is None:
                raise RuntimeError("no journald is running")
            argv = self.journald.wrap(argv)
        with open(folder / "supervisor.out", "wb") as out:
            started = time.monotonic()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env=supervisor.env(),
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (the harness has no other threads)
            )
        return Running(supervisor, folder, services, proc, started)

    def stop(self, run: Running) -> None:
        """SIGKILL the supervisor and every process it started, then remove its leftovers.

        A graceful stop is not part of any measurement, and killing is fast and certain.
        """
        kill_tree(skip=self.keep())
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.proc.wait(5)
        run.supervisor.cleanup(run.folder, run.services)

    @contextlib.contextmanager
    def running(
        self, supervisor: Supervisor, label: str, services: Sequence[ServiceSpec], in_journal_ns: bool = False
    ) -> Iterator[Running]:
        run = self.launch(supervisor, label, services, in_journal_ns)
        try:
            yield run
        finally:
            self.stop(run)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Return n, median, min, max (and p95/p99 for 20+ values) of ``values``, rounded."""
    if not values:
        return {"n": 0}
    out: dict[str, Any] = {
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }
    if len(values) >= 20:
        out["p95"] = round(percentile(values, 95), digits)
        out["p99"] = round(percentile(values, 99), digits)
    return out


def split(total: int, parts: int) -> list[int]:
    """Return ``total`` spread over ``parts`` as evenly as possible (the first parts get the rest)."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition()`` until it is true (return True) or ``timeout`` seconds pass (return False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
