"""The interfaces between a service's state machine and the operating system.

The state machine only sees these protocols, so its unit tests run with a fake spawner and a fake
clock; the real implementations live in ``hasupd.runtimes.exec`` and ``hasupd.host.containment``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from hasupd.config.model import HealthProbe, HeartbeatFile, Limits, ServiceConfig
from hasupd.states import OutputMode

if TYPE_CHECKING:
    from hasupd.host.notify import NotifyMessage


class SpawnError(Exception):
    """The program could not be started (missing binary, unknown user, bad directory ...).

    ``str(error)`` is a complete sentence for the operator.
    """


@dataclass(frozen=True)
class ProbeOutcome:
    """The result of one check.

    ``healthy``: this check passed. ``transition``: this outcome changes the reported health (the
    first success, a success after unhealthy, or the ``failures``-th consecutive counted failure);
    then ``healthy`` is the new health. Failures inside the start period are not counted.
    """

    probe: HealthProbe
    healthy: bool
    detail: str
    consecutive_failures: int
    transition: bool


@dataclass(frozen=True)
class ExitStatus:
    """How the main process ended: exactly one of ``code`` and ``signal`` is set."""

    pid: int
    code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    # The process was not hasupd's child (adopted after a crash of hasupd): how it ended is unknown,
    # and ``code`` is 255 so that it counts as a failure.
    unknown: bool = False

    @classmethod
    def from_wait_status(cls, pid: int, status: int) -> ExitStatus:
        """Return the ExitStatus for a raw ``waitpid`` status."""
        if os.WIFSIGNALED(status):
            return cls(pid, signal=os.WTERMSIG(status), core_dumped=os.WCOREDUMP(status))
        return cls(pid, code=os.waitstatus_to_exitcode(status))

    def describe(self) -> str:
        """Return "exit code N" or "signal SIGX" (with "core dumped" when it did)."""
        if self.unknown:
            return "unknown exit status (adopted, not hasupd's child)"
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"{name} (core dumped)" if self.core_dumped else name
        return f"exit code {self.code}"


@dataclass(frozen=True)
class SpawnSpec:
    """What to start: the service's config plus what hasupd adds for this one start."""

    service: ServiceConfig
    invocation_id: str  # 32 hex digits; exported as INVOCATION_ID, also marks the process tree
    output: OutputMode  # resolved: never None here
    extra_env: Mapping[str, str] = field(default_factory=dict)  # NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_*
    pass_fds: tuple[int, ...] = ()  # inherited as fds 3.. in this order (LISTEN_FDS)
    argv: tuple[str, ...] | None = None  # overrides service.command (containers, instances)
    unit_name: str | None = None  # NAME@i for instances; defaults to service.name


class Scope(Protocol):
    """Every process that belongs to one start of one service."""

    @property
    def kind(self) -> str:
        """Return "cgroup" or "process-group"."""
        ...

    def pids(self) -> set[int]:
        """Return the pids of the service's processes that are alive now (zombies excluded)."""
        ...

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process of the scope; return how many were signalled."""
        ...

    def signal_main(self, sig: int) -> int:
        """Send ``sig`` (and SIGCONT, so that a stopped process acts on it) to the main process only, the
        first half of a stop with systemd's KillMode=mixed; with no main process left, to every process.
        Return how many processes the scope has (0: nothing is left to stop)."""
        ...

    def kill_all(self) -> int:
        """SIGKILL every process of the scope (cgroup.kill where there is a cgroup); return the count."""
        ...

    def holds(self, pid: int) -> bool:
        """Return True if the kernel's own facts place ``pid`` in the scope: its cgroup, or (without
        cgroups) a parent chain up to the live main process, or the session or process group created
        for it. Never an environment marker such as INVOCATION_ID, which any process can copy."""
        ...

    def release(self) -> None:
        """Forget the scope (remove its cgroup when empty). Safe to call more than once."""
        ...


class Process(Protocol):
    """A started main process."""

    @property
    def pid(self) -> int: ...

    @property
    def scope(self) -> Scope: ...

    def send_signal(self, sig: int) -> None:
        """Signal only the main process (no error if it is already gone)."""
        ...


class Spawner(Protocol):
    def spawn(self, spec: SpawnSpec, on_exit: Callable[[ExitStatus], None]) -> Process:
        """Start the program and return at once; ``on_exit`` is called from the event loop once,
        after the main process was reaped.

        Raise SpawnError if it could not be started; nothing is left running then.
        """
        ...


SpawnRequest = tuple[SpawnSpec, Callable[[ExitStatus], None]]


@runtime_checkable
class ManySpawner(Protocol):
    """A spawner that starts many programs faster together than one by one (``ExecSpawner``)."""

    def spawn_many(self, requests: Sequence[SpawnRequest]) -> Sequence[Process | SpawnError]:
        """Start every (spec, on_exit) as ``Spawner.spawn`` would; return, in order, each one's
        process or the SpawnError that ``spawn`` would have raised (returned, not raised)."""
        ...


def spawn_all(spawner: Spawner, requests: Sequence[SpawnRequest]) -> list[Process | SpawnError]:
    """Start ``requests`` with ``spawner``: together where it is a ManySpawner, else one by one."""
    if isinstance(spawner, ManySpawner):
        return list(spawner.spawn_many(requests))
    outcomes: list[Process | SpawnError] = []
    for spec, on_exit in requests:
        try:
            outcomes.append(spawner.spawn(spec, on_exit))
        except SpawnError as error:
            outcomes.append(error)
    return outcomes


T = TypeVar("T")


class TaskSpawner(Protocol):
    """Starts background work under the daemon's TaskGroup (``hasupd.build.DaemonTasks``).

    An unexpected exception in a task so started is recorded (naming the task) and stops hasupd with a
    non-zero exit, as DESIGN says; so the task handles the failures it expects itself.
    """

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` as a task named ``name``; return the task (cancel it to stop it)."""
        ...


class Clock(Protocol):
    """Monotonic time and timers; asyncio's loop satisfies it, and so does the tests' fake clock."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Stoppable(Protocol):
    def stop(self) -> None:
        """Disarm: no callback fires after this returns."""
        ...


class NotifyChannel(Protocol):
    """A service's NOTIFY_SOCKET endpoint."""

    @property
    def environment(self) -> dict[str, str]:
        """Return the variables that point the child at this endpoint (NOTIFY_SOCKET)."""
        ...

    def drain(self) -> None:
        """Deliver every datagram already queued on the socket, now."""
        ...

    def close(self) -> None: ...


class Watchers(Protocol):
    """Makes the observers of one service: its notify endpoint, probes, heartbeat and limits.

    Every callback is called from the event loop. The real one is hasupd.watch.watchers.LoopWatchers.
    """

    def notify(
        self,
        config: ServiceConfig,
        unit: str,
        on_message: Callable[[NotifyMessage], None],
        allowed: Callable[[int], bool],
    ) -> NotifyChannel: ...

    def probes(
        self, probes: tuple[HealthProbe, ...], on_outcome: Callable[[ProbeOutcome], None]
    ) -> Stoppable: ...

    def heartbeat(self, spec: HeartbeatFile, on_stale: Callable[[str], None]) -> Stoppable: ...

    def resources(
        self, limits: Limits, scope: Scope, on_exceeded: Callable[[str, str], None]
    ) -> Stoppable: ...

    def oom_killed(self, scope: Scope) -> bool:
        """Return True if the kernel's OOM killer killed a process of ``scope``."""
        ...


class DataRestoreFailed(Exception):
    """A restore of a service's data failed; what was live is live again. ``str()`` says why."""


@dataclass(frozen=True)
class RestoredData:
    """A restore that was done: the snapshot now live and the folders the old data was moved to."""

    snapshot: str
    aside: list[str]


class DataRestorer(Protocol):
    """Restores one backup job's data in place (the ``restore`` recovery action sees backups only so)."""

    async def restore_latest(self, user: str, incident: str | None) -> RestoredData:
        """Restore the newest snapshot in place, with the services stopped and started around the swap.

        Return what was restored. Raise DataRestoreFailed if it failed (the old data is live again).
        """
        ...
