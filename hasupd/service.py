"""One service's state machine: the only writer of its state.

The shape follows systemd's ``service.c``: ``_set_state()`` is the single place that assigns the
state and it disarms the timers that do not belong to the new state; side effects happen in
``_enter_<state>()`` methods, which end by setting the state; the first failure wins (a later failure
never overwrites the result). Inputs are commands (start, stop, restart, reset_failed), the main
process's exit, and timers. Every (state, input) pair is decided explicitly below.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hasupd import events as ev
from hasupd.config.model import ServiceConfig
from hasupd.ports import (
    Clock,
    ExitStatus,
    NotifyChannel,
    Process,
    Spawner,
    SpawnError,
    SpawnRequest,
    SpawnSpec,
    Stoppable,
    TimerHandle,
    Watchers,
    spawn_all,
)
from hasupd.restart import StartLimit, backoff_delay, shall_restart
from hasupd.states import (
    ACTIVE_STATES,
    INACTIVE_STATES,
    STOPPING_STATES,
    Health,
    OutputMode,
    ServiceResult,
    ServiceState,
    ServiceType,
)

if TYPE_CHECKING:
    from hasupd.host.notify import NotifyMessage
    from hasupd.host.sockets import SocketSet
    from hasupd.ports import ProbeOutcome

S = ServiceState
R = ServiceResult

# Watchdog, probes, heartbeat and limits watch the process only in these states.
_WATCHED_STATES = frozenset({S.START, S.RUNNING, S.RELOADING})

# After SIGKILL the kernel needs a moment; if processes are still there after this long they are stuck
# in uninterruptible sleep and hasupd gives up waiting (and says so).
SIGKILL_WAIT_SEC = 5.0
# While the main process is gone but other processes of the tree remain, check this often.
EMPTY_POLL_SEC = 0.02
# A flood of refused notify datagrams makes one record per this long, with the count in between.
NOTIFY_REJECT_RECORD_SEC = 10.0


class StartBatch:
    """Starts gathered in one pass (the manager's start-up, a reload) and spawned together through
    ``ports.spawn_all``: many children exec in parallel instead of one after the other.

    Each service stays as it was until ``run``; then all are spawned, and each goes on (started,
    running, or failed to spawn) with the bus held, so no subscriber reacts to the first before the
    last has its process.
    """

    def __init__(self, bus: ev.EventBus) -> None:
        self._bus = bus
        self._entries: list[tuple[Spawner, SpawnRequest, Callable[[Process | SpawnError], None]]] = []

    def add(
        self,
        spawner: Spawner,
        spec: SpawnSpec,
        on_exit: Callable[[ExitStatus], None],
        done: Callable[[Process | SpawnError], None],
    ) -> None:
        """Spawn ``spec`` with ``spawner`` when the batch runs, then call ``done`` with the outcome."""
        self._entries.append((spawner, (spec, on_exit), done))

    def run(self) -> None:
        """Spawn everything added (grouped by spawner), then hand each outcome to its ``done``."""
        entries, self._entries = self._entries, []
        if not entries:
            return
        groups: dict[int, list[int]] = {}
        for index, (spawner, _, _) in enumerate(entries):
            groups.setdefault(id(spawner), []).append(index)
        outcomes: list[Process | SpawnError | None] = [None] * len(entries)
        for indexes in groups.values():
            spawner = entries[indexes[0]][0]
            results = spawn_all(spawner, [entries[i][1] for i in indexes])
            for index, result in zip(indexes, results, strict=True):
                outcomes[index] = result
        with self._bus.held():
            for (_, _, done), outcome in zip(entries, outcomes, strict=True):
                assert outcome is not None
                done(outcome)


@dataclass(frozen=True)
class ServiceStatus:
    """A snapshot for status views."""

    name: str
    state: ServiceState
    result: ServiceResult
    pid: int | None
    active_since: float | None  # wall clock
    restarts: int
    last_exit: str | None
    incident: str | None
    invocation: str | None
    status_text: str | None = None
    health: Health | None = None
    rolled_back: str | None = None


def result_from_exit(status: ExitStatus) -> ServiceResult:
    """Return the result systemd would give for a main process that ended like ``status``."""
    if status.signal is not None:
        return R.CORE_DUMP if status.core_dumped else R.SIGNAL
    return R.SUCCESS if status.code == 0 else R.EXIT_CODE


class Service:
    """A supervised unit: ``start()`` and ``stop()`` return at once; progress is driven by events."""

    # Slots: no dict per instance (~1.5 KB each: 0.75 MB at 500 services).
    __slots__ = (
        "_active_since",
        "_attempt",
        "_bus",
        "_clock",
        "_generation",
        "_hold",
        "_incident",
        "_main_alive",
        "_monitors",
        "_notify",
        "_notify_rejected",
        "_notify_rejected_at",
        "_output",
        "_poll",
        "_process",
        "_rand",
        "_rolled_back",
        "_running_since",
        "_sockets",
        "_spawner",
        "_start_after_stop",
        "_start_limit",
        "_stop_requested",
        "_timer",
        "_timer_due",
        "_watchdog",
        "_watchdog_due",
        "_watchdog_sec",
        "_watchers",
        "config",
        "health",
        "invocation",
        "last_exit",
        "last_reload",
        "name",
        "restarts",
        "result",
        "state",
        "status_text",
    )

    def __init__(
        self,
        config: ServiceConfig,
        *,
        spawner: Spawner,
        clock: Clock,
        bus: ev.EventBus,
        output: OutputMode,
        unit_name: str | None = None,
        rand: Callable[[], float] = random.random,
        watchers: Watchers | None = None,
        sockets: SocketSet | None = None,
    ) -> None:
        self.config = config
        self.name = unit_name or config.name
        self._spawner = spawner
        self._clock = clock
        self._bus = bus
        self._output = output
        self._rand = rand
        self._watchers = watchers
        self._sockets = sockets  # held by the manager, shared by all instances

        self.state = S.DEAD
        self.result = R.SUCCESS
        self.restarts = 0  # restarts since the last explicit start
        self.last_exit: ExitStatus | None = None
        self._incident: str | None = None
        self.invocation: str | None = None
        self._process: Process | None = None
        self._main_alive = False
        self._attempt = 0  # backoff step; back to 0 after a stable run
        self._start_limit = StartLimit(config.start_limit.burst, config.start_limit.interval_sec)
        self._stop_requested = False
        self._start_after_stop = False
        self._active_since: float | None = None
        self._running_since: float | None = None
        self._timer: TimerHandle | None = None
        self._timer_due: tuple[float, str] | None = None  # (deadline, callback name): for the state record
        self._watchdog_due: float | None = None
        self._poll: TimerHandle | None = None
        self._notify_rejected = 0  # refused datagrams not yet recorded
        self._notify_rejected_at: float | None = None  # when the last notify.rejected was recorded
        self._generation = 0
        # Freeze detection: the notify endpoint lives as long as the service; the rest per run, keyed
        # by what they watch ("health", "heartbeat", "limits"), so a reload re-arms only what changed.
        self._notify: NotifyChannel | None = None
        self._monitors: dict[str, Stoppable] = {}
        self._watchdog: TimerHandle | None = None
        self._watchdog_sec = config.watchdog_sec
        self.status_text: str | None = None
        self._rolled_back: str | None = None  # why it runs a rolled-back config
        # While recovery actions run, the incident stays open until recovery says how it ended.
        self._hold = False
        self.health: Health | None = None  # None: no probes
        self.last_reload: tuple[bool, str] | None = None  # (ok, detail) of the last reload that ended

    # ------------------------------------------------------------------ views

    @property
    def pid(self) -> int | None:
        """Return the main pid while the main process is alive."""
        return self._process.pid if self._process is not None and self._main_alive else None

    @property
    def incident(self) -> str | None:
        """The id of the open incident, if any."""
        return self._incident

    @property
    def incident_held(self) -> bool:
        """True while recovery holds the incident open (see ``hold``)."""
        return self._hold

    @property
    def rolled_back(self) -> str | None:
        """Why this unit runs a rolled-back config instead of the one from its file (None if it does not)."""
        return self._rolled_back

    @property
    def output(self) -> OutputMode:
        """Where this service's stdout and stderr are asked to go."""
        return self._output

    @property
    def stable_sec(self) -> float:
        """How long a run must last to count as stable (backoff reset, incident resolved)."""
        return max(self.config.restart_max_delay_sec, self.config.restart_sec, 1.0)

    def status(self) -> ServiceStatus:
        """Return a snapshot of this service for status views."""
        return ServiceStatus(
            name=self.name,
            state=self.state,
            result=self.result,
            pid=self.pid,
            active_since=self._active_since,
            restarts=self.restarts,
            last_exit=self.last_exit.describe() if self.last_exit else None,
            incident=self._incident,
            invocation=self.invocation,
            status_text=self.status_text,
            health=self.health,
            rolled_back=self._rolled_back,
        )

    # ------------------------------------------------------------------ commands

    def start(self, batch: StartBatch | None = None) -> None:
        """Start the service if it is not active (an explicit start also clears the start limit).

        With ``batch``, a spawn is only added to it: the start completes when the batch runs.
        """
        match self.state:
            case S.DEAD | S.FAILED:
                self._reset_for_explicit_start()
                self._enter_start(batch)
            case S.AUTO_RESTART:
                # Skip the rest of the delay: someone wants it now.
                self._reset_for_explicit_start()
                self._enter_start(batch)
            case S.START | S.RUNNING | S.RELOADING:
                pass  # already started
            case _ if self.state in STOPPING_STATES:
                self._start_after_stop = True
            case _:
                raise AssertionError(f"start() in unhandled state {self.state}")

    def stop(self, reason: str = "stop requested") -> None:
        """Stop the service and do not restart it."""
        self._start_after_stop = False
        match self.state:
            case S.DEAD | S.FAILED:
                pass  # nothing runs
            case S.AUTO_RESTART:
                self._stop_requested = True
                self._publish(ev.ServiceStopping(reason=reason))
                self._finish(ev.ServiceStopped(result=str(self.result)), S.DEAD, "stopped")
            case S.START | S.RUNNING | S.RELOADING:
                self._stop_requested = True
                self._publish(ev.ServiceStopping(reason=reason))
                self._enter_signal(S.STOP_SIGTERM, R.SUCCESS)
            case _ if self.state in STOPPING_STATES:
                self._stop_requested = True  # already on its way down
            case _:
                raise AssertionError(f"stop() in unhandled state {self.state}")

    def restart(self) -> None:
        """Stop the service if it runs, then start it again."""
        if self.state in (S.START, S.RUNNING, S.RELOADING):
            self.stop("restart requested")
            self._start_after_stop = True
        elif self.state in STOPPING_STATES:
            self._start_after_stop = True
        else:
            self.start()

    def reset_failed(self) -> None:
        """Forget the failure: a failed service becomes dead with result success."""
        if self.state is S.FAILED:
            self.result = R.SUCCESS
            self._start_limit.reset()
            self._attempt = 0
            self._set_state(S.DEAD)

    def kill(self, sig: int, main_only: bool) -> int:
        """Send ``sig`` to the main process (``main_only``) or to every process of the service; return
        how many got it (0: nothing runs). No transition: what the signal does shows as it happens."""
        if self._process is None or self.state not in ACTIVE_STATES:
            return 0
        scope = self._process.scope
        if main_only:
            if not self._main_alive:
                return 0
            self._process.send_signal(sig)
            count = 1
        else:
            count = scope.signal_all(sig)
        self._publish(
            ev.ServiceSignalled(
                signal=signal.Signals(sig).name, processes=count, whom="main" if main_only else "all"
            )
        )
        return count

    def begin_reload(self, how: str) -> bool:
        """Enter ``reloading`` from running; return False (nothing done) in any other state.

        With ``reload_signal`` the signal goes to the main process here. A notify service then stays in
        reloading until READY=1 (it says RELOADING=1 first); any other ends it with ``end_reload``
        (the caller's command returned) or, for a signal alone, at once. Past timeout_start_sec the
        reload counts as failed and the service as running again.
        """
        if self.state is not S.RUNNING or self._process is None:
            return False
        self._publish(ev.ServiceReloading(how=how))
        self._set_state(S.RELOADING)
        self._arm_timer(self.config.timeout_start_sec, self._on_reload_timeout)
        sig = self.config.reload_signal
        if sig is not None:
            self._process.send_signal(sig)
            if self.config.type is not ServiceType.NOTIFY:
                self.end_reload(True, f"sent {sig.name} to pid {self.pid}")
        return True

    def end_reload(self, ok: bool, detail: str) -> None:
        """The reload is over (its command returned, or READY=1 came): running again. A no-op in any
        state but reloading (the service may have died meanwhile)."""
        if self.state is not S.RELOADING:
            return
        self.last_reload = (ok, detail)
        self._publish(ev.ServiceReloaded(ok=ok, detail=detail))
        self._set_state(S.RUNNING)
        self._arm_timer(self.stable_sec, self._on_stable)

    def _on_reload_timeout(self) -> None:
        self.end_reload(False, f"not done within {self.config.timeout_start_sec:g}s")

    def give_up(self) -> None:
        """Recovery found nothing that helps: a service its actions left inactive (``reset_failed`` gives
        each action a fresh chance) settles in failed again, with result start-limit-hit."""
        if self.state is S.DEAD:
            self.result = R.START_LIMIT_HIT
            self._set_state(S.FAILED)

    def close(self) -> None:
        """Release what outlives single runs (the notify endpoint); call once the service is inactive."""
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def hold(self, held: bool) -> None:
        """Hold the open incident open (``held``) while recovery actions run: a stable run or a passing
        probe then does not resolve it; ``end_incident`` (or ``hold(False)``) lets go."""
        self._hold = held

    def carry_over(self, previous: Service) -> None:
        """Take over the open incident of ``previous`` and its hold: this unit replaces it (a rollback
        swaps the units of a service), so what happens next is recorded in the same incident."""
        self._incident = previous.incident
        self._hold = previous.incident_held

    def roll_back(self, reason: str) -> None:
        """Record that this unit runs a rolled-back config, and why (shown in status)."""
        self._rolled_back = reason

    def end_incident(self, outcome: str) -> None:
        """Close the open incident with ``outcome`` (how recovery ended) and stop holding it."""
        self._hold = False
        self._close_incident(outcome)

    def update_config(self, config: ServiceConfig) -> None:
        """Take a new config whose differences do not touch the running process (see config.diff).

        The process keeps running; probes, heartbeat and limits whose settings changed are stopped and
        armed anew with the new ones at once (new probes start with their start period, a new
        heartbeat gives the file ``max_age_sec`` from now), as far as the current state watches them.
        """
        old, self.config = self.config, config
        self._start_limit.burst = config.start_limit.burst
        self._start_limit.interval = config.start_limit.interval_sec
        process = self._process
        if self._watchers is None or process is None or self.state not in _WATCHED_STATES:
            return  # nothing is watched now; the next run arms what the new config asks for
        if old.heartbeat_file != config.heartbeat_file:
            self._arm_heartbeat()
        if old.limits != config.limits:
            self._arm_limits(process, rearm=True)
        if old.health != config.health and self.state is S.RUNNING:
            # A notify service in start gets its probes on READY=1, as always.
            self.health = Health.STARTING if config.health else None
            self._arm_probes()

    # ------------------------------------------------------------------ hand-over (re-exec, adoption)

    def snapshot(self) -> dict[str, object]:
        """Return everything a new image of hasupd needs to carry this unit on (JSON-able): state,
        result, counters, start-limit window and pending timers as CLOCK_MONOTONIC deadlines (the
        loop's clock, which survives execve and is the same for every process of the boot)."""
        return {
            "state": str(self.state),
            "result": str(self.result),
            "main_pid": self.pid,
            "invocation": self.invocation,
            "incident": self.incident,
            "hold_incident": self.incident_held,
            "restarts": self.restarts,
            "attempt": self._attempt,
            "start_limit": list(self._start_limit._starts),
            "stop_requested": self._stop_requested,
            "start_after_stop": self._start_after_stop,
            "active_since": self._active_since,
            "running_since": self._running_since,
            "timer": list(self._timer_due) if self._timer_due is not None else None,
            "watchdog_due": self._watchdog_due,
            "watchdog_sec": self._watchdog_sec,
            "health": self.health,
            "status_text": self.status_text,
            "rolled_back": self.rolled_back,
            "last_exit": dataclasses.asdict(self.last_exit) if self.last_exit is not None else None,
        }

    def restore(self, snap: dict[str, object], process: Process | None) -> None:
        """Carry on from ``snap`` (``snapshot()`` of an earlier image) with ``process`` (the adopted main
        process, None if there is none or it could not be found).

        Not a transition: the unit was in this state all along, so no state record is published. Timers
        are armed at their original deadlines; a deadline already past fires at once. A unit caught while
        stopping is stopped again (with the same intent); one whose process is gone is dead, and the
        caller starts it. The watchdog, heartbeat, limits and probes of a watched state are armed anew.
        """
        state = S(str(snap["state"]))
        if state is S.RELOADING:
            state = S.RUNNING  # a reload cut short by the re-exec: it runs (it may reload again)
        self.result = R(str(snap["result"]))
        self.restarts = int(snap.get("restarts") or 0)  # type: ignore[call-overload]
        self._attempt = int(snap.get("attempt") or 0)  # type: ignore[call-overload]
        self._start_limit._starts.clear()
        self._start_limit._starts.extend(float(t) for t in snap.get("start_limit") or ())  # type: ignore[attr-defined]
        incident = snap.get("incident")
        self._incident = incident if isinstance(incident, str) else None
        self._hold = bool(snap.get("hold_incident"))
        self.invocation = snap.get("invocation")  # type: ignore[assignment]
        self._stop_requested = bool(snap.get("stop_requested"))
        self._start_after_stop = bool(snap.get("start_after_stop"))
        self.status_text = snap.get("status_text")  # type: ignore[assignment]
        rolled_back = snap.get("rolled_back")
        self._rolled_back = rolled_back if isinstance(rolled_back, str) else None
        last = snap.get("last_exit")
        if isinstance(last, dict):
            self.last_exit = ExitStatus(**last)
        watchdog_sec = snap.get("watchdog_sec")
        self._watchdog_sec = float(watchdog_sec) if isinstance(watchdog_sec, (int, float)) else None
        timer = snap.get("timer")
        due = (float(timer[0]), str(timer[1])) if isinstance(timer, list) and len(timer) == 2 else None
        callbacks: dict[str, Callable[[], None]] = {
            "_on_restart_due": self._on_restart_due,
            "_on_stable": self._on_stable,
            "_on_start_timeout": self._on_start_timeout,
            "_on_stop_timeout": self._on_stop_timeout,
        }
        if process is None:
            if state is S.AUTO_RESTART and due is not None and due[1] == "_on_restart_due":
                self.state = state  # restored, not entered: see the docstring
                self._arm_timer_at(due[0], self._on_restart_due)
            elif state in (S.DEAD, S.FAILED):
                self.state = state
            else:
                self.state = S.DEAD  # its process is gone: the caller starts it again
            return
        self._process = process
        self._main_alive = True
        active = snap.get("active_since")
        self._active_since = float(active) if isinstance(active, (int, float)) else time.time()
        running = snap.get("running_since")
        self._running_since = float(running) if isinstance(running, (int, float)) else None
        self._spawn_environment()  # the notify endpoint (the kept socket after a re-exec)
        if state in STOPPING_STATES or state not in (S.START, S.RUNNING):
            # Caught mid-stop (or a state that has no process): stop again, with the same intent.
            # (_stop_requested says whether it comes back; the result says why it went.)
            self.state = S.RUNNING
            self._enter_signal(S.STOP_SIGTERM, self.result)
            return
        self.state = state
        if due is not None and due[1] in callbacks:
            self._arm_timer_at(due[0], callbacks[due[1]])
        elif state is S.RUNNING:
            self._arm_timer(self.stable_sec, self._on_stable)
        if self._watchers is not None:
            watchdog_due = snap.get("watchdog_due")
            self._arm_watchdog(float(watchdog_due) if isinstance(watchdog_due, (int, float)) else None)
            self._arm_heartbeat()
            self._arm_limits(process, rearm=False)
            if state is S.RUNNING:
                self._arm_probes()
                health = snap.get("health")
                if self.config.health and isinstance(health, str) and health in set(Health):
                    self.health = Health(health)

    def adopt_found(self, process: Process, invocation: str) -> None:
        """Carry on with ``process``, found running without a usable state record: it counts as running
        since now (nothing else is known), with fresh counters."""
        self.restore({"state": str(S.RUNNING), "result": str(R.SUCCESS), "invocation": invocation}, process)

    @property
    def is_inactive(self) -> bool:
        """True when nothing of the service runs and nothing is scheduled."""
        return self.state in INACTIVE_STATES

    # ------------------------------------------------------------------ state

    def _set_state(self, new: ServiceState) -> None:
        old = self.state
        # Timers and polls belong to the state that armed them; the _enter_ method arms the new ones.
        self._disarm_timer()
        self._disarm_poll()
        if new not in _WATCHED_STATES:
            self._disarm_monitors()
        self.state = new
        if new in ACTIVE_STATES and old not in ACTIVE_STATES:
            self._active_since = time.time()
        elif new not in ACTIVE_STATES:
            self._active_since = None
        if new is not old:
            self._publish(ev.ServiceStateChanged(old=str(old), new=str(new), result=str(self.result)))

    def _set_result(self, result: ServiceResult) -> None:
        # The first failure wins.
        if self.result is R.SUCCESS:
            self.result = result

    def _reset_for_explicit_start(self) -> None:
        self.result = R.SUCCESS
        self._stop_requested = False
        self._start_after_stop = False
        self._start_limit.reset()
        self._attempt = 0
        self.restarts = 0

    # ------------------------------------------------------------------ timers

    def _arm_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._arm_timer_at(self._clock.time() + delay, callback)

    def _arm_timer_at(self, when: float, callback: Callable[[], None]) -> None:
        self._disarm_timer()
        self._generation += 1
        generation = self._generation

        def fire() -> None:
            if generation == self._generation:
                self._timer = None
                self._timer_due = None
                callback()

        self._timer = self._clock.call_at(when, fire)
        self._timer_due = (when, callback.__name__)

    def _disarm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due = None
        self._generation += 1

    def _arm_poll(self) -> None:
        if self._poll is None:
            self._poll = self._clock.call_at(self._clock.time() + EMPTY_POLL_SEC, self._on_poll)

    def _disarm_poll(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None

    # ------------------------------------------------------------------ transitions

    def _enter_start(self, batch: StartBatch | None = None) -> None:
        # Each run has its own result (as in systemd): the first failure wins within one run, and the
        # previous run's ending stays visible in last_exit.
        self.result = R.SUCCESS
        if not self._start_limit.allow(self._clock.time()):
            self._set_result(R.START_LIMIT_HIT)
            self._open_incident(
                f"start limit hit ({self.config.start_limit.burst} starts in "
                f"{self.config.start_limit.interval_sec:g}s)"
            )
            self._enter_dead()
            return
        self.invocation = uuid.uuid4().hex
        self.status_text = None
        try:
            env = self._spawn_environment()
            fds: tuple[int, ...] = ()
            if self._sockets is not None:
                fds = self._sockets.fds()
                env.update(self._sockets.environment())
            spec = SpawnSpec(
                service=self.config,
                invocation_id=self.invocation,
                output=self._output,
                unit_name=self.name,
                extra_env=env,
                pass_fds=fds,
            )
            if batch is not None:
                batch.add(self._spawner, spec, self._on_exit, self._spawned)
                return
            process = self._spawner.spawn(spec, self._on_exit)
        except SpawnError as error:
            self._spawned(error)
            return
        self._spawned(process)

    def _spawned(self, process: Process | SpawnError) -> None:
        """Go on from the spawn of ``_enter_start``: running (or starting), or dead if it failed."""
        if isinstance(process, SpawnError):
            self._set_result(R.RESOURCES)
            self._open_incident(f"could not start: {process}")
            self._publish(ev.ServiceSpawnFailed(result=str(R.RESOURCES), error=str(process)))
            self._enter_dead()
            return
        assert self.invocation is not None
        self._process = process
        self._main_alive = True
        self._publish(ev.ServiceStarted(pid=process.pid, invocation=self.invocation, restarts=self.restarts))
        match self.config.type:
            case ServiceType.SIMPLE:
                self._enter_running()
            case ServiceType.NOTIFY:
                self._set_state(S.START)
                self._arm_timer(self.config.timeout_start_sec, self._on_start_timeout)
            case ServiceType.ONESHOT:
                self._set_state(S.START)
        if self.state in _WATCHED_STATES:
            self._arm_monitors(process)

    def _enter_running(self) -> None:
        self._running_since = self._clock.time()
        if self.config.health and self._watchers is not None:
            # Set before the state changes, so nobody waiting for "running and healthy" sees a
            # running service with no verdict yet as healthy.
            self.health = Health.STARTING
        self._set_state(S.RUNNING)
        self._arm_timer(self.stable_sec, self._on_stable)
        # Probes judge a running service: for notify ones, only once READY=1 came.
        self._arm_probes()

    def _enter_signal(self, state: ServiceState, result: ServiceResult) -> None:
        """Signal the tree (kill_signal, SIGABRT for the watchdog, or SIGKILL) and wait for it.

        systemd's KillMode=mixed: the stop signal goes to the main process only, and to the rest of the
        tree once the main has exited (``_on_exit``); SIGKILL, at the timeout, goes to every process. A
        master that respawns its workers (nginx) so never sees them die before it was told to stop.
        """
        self._set_result(result)
        scope = self._process.scope if self._process is not None else None
        if scope is None:
            self._enter_dead()
            return
        if state is S.STOP_SIGKILL:
            count = scope.kill_all()
            if count:
                self._publish(
                    ev.ServiceKilled(
                        signal="SIGKILL",
                        processes=count,
                        reason=f"still running after {self.config.timeout_stop_sec:g}s",
                    )
                )
        else:
            sig = signal.SIGABRT if state is S.STOP_WATCHDOG else self.config.kill_signal
            # With SIGCONT: a stopped process only acts on the signal once it runs again (as systemd).
            count = scope.signal_main(sig)
        if count == 0 and not self._main_alive:
            self._enter_dead()
            return
        self._set_state(state)
        timeout = SIGKILL_WAIT_SEC if state is S.STOP_SIGKILL else self.config.timeout_stop_sec
        self._arm_timer(timeout, self._on_stop_timeout)
        if not self._main_alive:
            self._arm_poll()

    def _enter_dead(self) -> None:
        """Everything is gone: release the scope, then restart, or settle in dead or failed."""
        if self._process is not None:
            self._process.scope.release()
            self._process = None
        self._main_alive = False
        self._running_since = None
        if self._start_after_stop:
            self._start_after_stop = False
            self._reset_for_explicit_start()
            self._enter_start()
            return
        restart, reason = shall_restart(
            self.config.restart,
            self.result,
            stop_requested=self._stop_requested,
            exit_code=self.last_exit.code if self.last_exit is not None else None,
            prevent_exit_status=self.config.restart_prevent_exit_status,
        )
        if restart:
            self._enter_auto_restart(reason)
            return
        if self.result is R.SUCCESS or self._stop_requested:
            if self.result is not R.SUCCESS:
                self._publish(ev.ServiceNotRestarted(reason=reason, result=str(self.result)))
            self._finish(ev.ServiceStopped(result=str(self.result)), S.DEAD, "stopped")
        else:
            self._publish(ev.ServiceNotRestarted(reason=reason, result=str(self.result)))
            failed = ev.ServiceFailed(result=str(self.result), restarts=self.restarts)
            if self.result is R.START_LIMIT_HIT and self.config.on_failure:
                # Recovery actions follow: the incident stays open so that they are recorded in it.
                self._publish(failed)
                self._set_state(S.FAILED)
            else:
                self._finish(failed, S.FAILED, "failed")

    def _enter_auto_restart(self, reason: str) -> None:
        delay = backoff_delay(
            self._attempt, self.config.restart_sec, self.config.restart_max_delay_sec, self._rand
        )
        self._attempt += 1
        self.restarts += 1
        # Published before the delay starts, so every failure is visible even when it is transient.
        self._publish(
            ev.ServiceRestartScheduled(
                delay_sec=round(delay, 6), reason=reason, restarts=self.restarts, result=str(self.result)
            )
        )
        self._set_state(S.AUTO_RESTART)
        self._arm_timer(delay, self._on_restart_due)

    def _finish(self, record: ev.Event, state: ServiceState, outcome: str) -> None:
        self._publish(record)
        self._close_incident(outcome)
        self._set_state(state)

    # ------------------------------------------------------------------ inputs

    def _on_exit(self, status: ExitStatus) -> None:
        """The main process ended (called once per start, from the event loop)."""
        self._main_alive = False
        self.last_exit = status
        result = result_from_exit(status)
        # A oneshot is meant to end; it is "as asked" when it ends well.
        finished = self.config.type is ServiceType.ONESHOT and result is R.SUCCESS
        expected = self._stop_requested or self.state in STOPPING_STATES or finished
        if (
            result is R.SIGNAL
            and self._process is not None
            and self._watchers is not None
            and self._watchers.oom_killed(self._process.scope)
        ):
            result = R.OOM_KILL
        if not expected and result is not R.SUCCESS:
            self._open_incident(f"main process exited unexpectedly with {status.describe()}")
        self._publish(
            ev.ServiceExited(
                pid=status.pid,
                result=str(result),
                exit_code=status.code,
                signal=signal.Signals(status.signal).name if status.signal is not None else None,
                expected=expected,
                status=status.describe(),
            )
        )
        match self.state:
            case S.START | S.RUNNING | S.RELOADING:
                # Whatever is left of the tree goes too (systemd's KillMode=control-group).
                self._enter_signal(S.STOP_SIGTERM, result)
            case _ if self.state in STOPPING_STATES:
                if self._process is None or not self._process.scope.pids():
                    self._enter_dead()
                    return
                if self.state in (S.STOP_SIGTERM, S.STOP_WATCHDOG):
                    # KillMode=mixed, second half: the main is gone, now the rest gets the signal.
                    sig = signal.SIGABRT if self.state is S.STOP_WATCHDOG else self.config.kill_signal
                    if self._process.scope.signal_all(sig) and sig not in (signal.SIGKILL, signal.SIGCONT):
                        self._process.scope.signal_all(signal.SIGCONT)
                self._arm_poll()
            case _:
                raise AssertionError(f"main process exit in state {self.state}: no process should exist")

    def main_exited(self, status: ExitStatus) -> None:
        """The adopted main process ended (the exit callback handed to ``Spawner``-like adopters)."""
        self._on_exit(status)

    def _on_poll(self) -> None:
        self._poll = None
        if self.state not in STOPPING_STATES:
            return  # explicit no-op: the state moved on
        if self._process is None or not self._process.scope.pids():
            self._enter_dead()
        else:
            self._arm_poll()

    def _on_start_timeout(self) -> None:
        assert self.state is S.START, self.state
        self._open_incident(f"not ready within {self.config.timeout_start_sec:g}s")
        self._enter_signal(S.STOP_SIGTERM, R.TIMEOUT)

    def _on_stable(self) -> None:
        assert self.state is S.RUNNING, self.state
        self._attempt = 0
        self._publish(ev.ServiceStable(pid=self.pid))
        if not self.config.health and not self._hold:
            # With probes, "healthy again" resolves the incident instead.
            self._close_incident("resolved")

    def _on_stop_timeout(self) -> None:
        match self.state:
            case S.STOP_SIGTERM | S.STOP_WATCHDOG:
                self._set_result(R.TIMEOUT)
                self._enter_signal(S.STOP_SIGKILL, R.TIMEOUT)
            case S.STOP_SIGKILL:
                # Processes that survive SIGKILL are stuck in the kernel; waiting longer changes nothing.
                self._publish(
                    ev.ServiceKilled(
                        signal="SIGKILL",
                        processes=len(self._leftover()),
                        reason="processes survived SIGKILL; giving up on them",
                    )
                )
                self._enter_dead()
            case _:
                raise AssertionError(f"stop timeout in state {self.state}")

    def _on_restart_due(self) -> None:
        assert self.state is S.AUTO_RESTART, self.state
        self._enter_start()

    def _leftover(self) -> set[int]:
        return self._process.scope.pids() if self._process is not None else set()

    # ------------------------------------------------------------------ freeze detection

    def _spawn_environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self._watchers is None:
            return env
        if self._notify is None:
            self._notify = self._watchers.notify(self.config, self.name, self._on_notify, self._is_ours)
        env.update(self._notify.environment)
        if self._watchdog_sec:
            env["WATCHDOG_USEC"] = str(int(self._watchdog_sec * 1_000_000))
        return env

    def _is_ours(self, pid: int) -> bool:
        """Datagrams count only from the service's own processes, as the kernel places them
        (``Scope.holds``); a refused one is recorded, at most once per NOTIFY_REJECT_RECORD_SEC."""
        process = self._process
        if process is not None and (
            (self._main_alive and pid == process.pid) or process.scope.holds(pid)  # a reaped pid is reusable
        ):
            return True
        self._notify_rejected += 1
        now = self._clock.time()
        if self._notify_rejected_at is None or now - self._notify_rejected_at >= NOTIFY_REJECT_RECORD_SEC:
            if process is None:
                reason = "the service has no process running"
            elif process.scope.kind == "cgroup":
                reason = "not in the service's cgroup"
            else:
                reason = (
                    "not in the service's process tree, session or process group"
                    " (an INVOCATION_ID in its environment does not count)"
                )
            self._publish(ev.NotifyRejected(pid=pid, reason=reason, suppressed=self._notify_rejected - 1))
            self._notify_rejected_at = now
            self._notify_rejected = 0
        return False

    def _arm_monitors(self, process: Process) -> None:
        if self._watchers is None:
            return
        self._arm_watchdog()
        self._arm_heartbeat()
        self._arm_limits(process, rearm=False)

    def _replace_monitor(self, kind: str, monitor: Stoppable | None) -> None:
        """Stop the ``kind`` watcher of this run, if any, and keep ``monitor`` in its place."""
        old = self._monitors.pop(kind, None)
        if old is not None:
            old.stop()
        if monitor is not None:
            self._monitors[kind] = monitor

    def _arm_probes(self) -> None:
        probes = self.config.health
        watchers = self._watchers
        self._replace_monitor(
            "health", watchers.probes(probes, self._on_probe) if probes and watchers is not None else None
        )

    def _arm_heartbeat(self) -> None:
        spec = self.config.heartbeat_file
        watchers = self._watchers
        self._replace_monitor(
            "heartbeat",
            watchers.heartbeat(spec, self._on_heartbeat_stale) if spec and watchers is not None else None,
        )

    def _arm_limits(self, process: Process, *, rearm: bool) -> None:
        """Watch the limits; ``rearm``: they changed while running, so even none at all must be
        applied (a memory.max set by the old limits is lifted)."""
        limits = self.config.limits
        watchers = self._watchers
        wanted = limits.memory is not None or limits.cpu_percent is not None
        self._replace_monitor(
            "limits",
            watchers.resources(limits, process.scope, self._on_limit)
            if watchers is not None and (wanted or rearm)
            else None,
        )

    def _disarm_monitors(self) -> None:
        for kind in list(self._monitors):
            self._replace_monitor(kind, None)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.health is not None:
            self.health = None

    def _arm_watchdog(self, when: float | None = None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._watchdog_due = None
        if self._watchdog_sec:
            self._watchdog_due = when if when is not None else self._clock.time() + self._watchdog_sec
            self._watchdog = self._clock.call_at(self._watchdog_due, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self._watchdog = None
        self._watchdog_due = None
        if self.state not in _WATCHED_STATES:
            return  # explicit no-op: disarmed by a state change in the same loop turn
        # A ping that arrived before the deadline wins even if the loop has not read it yet.
        if self._notify is not None:
            self._notify.drain()
        if self._watchdog is not None or self.state not in _WATCHED_STATES:
            return
        self._freeze(
            R.WATCHDOG,
            ev.WatchdogTimeout(
                pid=self.pid,
                timeout_sec=self._watchdog_sec or 0.0,
                reason=f"no WATCHDOG=1 within {self._watchdog_sec:g}s",
            ),
        )

    def _freeze(self, result: ServiceResult, record: ev.Event) -> None:
        """The process is alive but not working: record why, then stop it (SIGABRT for the watchdog)."""
        # The reason is the record's own sentence, so it must name the service before it is formatted.
        self._open_incident(self._stamped(record).message())
        self._publish(record)
        self._enter_signal(S.STOP_WATCHDOG if result is R.WATCHDOG else S.STOP_SIGTERM, result)

    def _on_notify(self, msg: NotifyMessage) -> None:
        """A datagram from one of the service's processes (sd_notify protocol)."""
        if msg.status is not None and msg.status != self.status_text:
            self.status_text = msg.status
            self._publish(ev.ServiceStatusText(status=msg.status))
        if msg.errno is not None:
            self.status_text = f"{self.status_text or ''} (errno {msg.errno})".strip()
        if msg.extend_timeout_usec and self.state in (S.START, S.STOP_SIGTERM):
            # More time for the current start or polite stop, counted from now (as systemd does).
            self._extend_timer(msg.extend_timeout_usec / 1e6)
        if self.state not in _WATCHED_STATES:
            return  # a stopping tree may still talk; only STATUS and EXTEND_TIMEOUT matter then
        if msg.watchdog_usec:
            self._watchdog_sec = msg.watchdog_usec / 1e6
            self._arm_watchdog()
        if msg.watchdog:
            self._arm_watchdog()
        if msg.ready and self.state is S.START and self.config.type is ServiceType.NOTIFY:
            self._publish(ev.ServiceReady(pid=msg.pid))
            self._enter_running()
        elif msg.reloading and self.state is S.RUNNING and self.config.type is ServiceType.NOTIFY:
            self.begin_reload("RELOADING=1 from the service")  # a reload the service began itself
        elif msg.ready and self.state is S.RELOADING:
            self.end_reload(True, "READY=1")
        if msg.watchdog_trigger:
            self._freeze(
                R.WATCHDOG,
                ev.WatchdogTimeout(
                    pid=self.pid,
                    timeout_sec=self._watchdog_sec or 0.0,
                    reason="WATCHDOG=trigger from the service",
                ),
            )

    def _extend_timer(self, seconds: float) -> None:
        callback = self._on_start_timeout if self.state is S.START else self._on_stop_timeout
        self._arm_timer(seconds, callback)

    def _on_probe(self, outcome: ProbeOutcome) -> None:
        if self.state is not S.RUNNING or not outcome.transition:
            return
        kind = str(outcome.probe.kind)
        if outcome.healthy:
            self.health = Health.HEALTHY
            self._publish(ev.HealthRecovered(probe=kind))
            if not self._hold:
                self._close_incident("resolved")
            return
        self.health = Health.UNHEALTHY
        self._freeze(
            R.HEALTH,
            ev.HealthFailed(
                probe=kind,
                detail=outcome.detail,
                failures=outcome.consecutive_failures,
            ),
        )

    def _on_heartbeat_stale(self, detail: str) -> None:
        if self.state in _WATCHED_STATES:
            self._freeze(
                R.WATCHDOG,
                ev.WatchdogTimeout(
                    pid=self.pid,
                    timeout_sec=(
                        self.config.heartbeat_file.max_age_sec if self.config.heartbeat_file else 0.0
                    ),
                    reason=detail,
                ),
            )

    def _on_limit(self, kind: str, detail: str) -> None:
        if self.state in _WATCHED_STATES:
            self._freeze(R.RESOURCES, ev.LimitExceeded(limit=kind, detail=detail))

    # ------------------------------------------------------------------ records

    def _open_incident(self, reason: str) -> None:
        if self._incident is None:
            self._incident = uuid.uuid4().hex[:12]
            self._publish(ev.IncidentOpened(reason=reason))

    def _close_incident(self, outcome: str) -> None:
        if self._incident is not None:
            self._publish(ev.IncidentClosed(outcome=outcome))
            self._incident = None

    def _stamped(self, event: ev.Event) -> ev.Event:
        """Return ``event`` with this service's name and open incident filled in."""
        return dataclasses.replace(event, service=self.name, incident=self._incident)

    def _publish(self, event: ev.Event) -> None:
        # Every record of this service carries its name and the open incident.
        self._bus.publish(self._stamped(event))
