"""Typed event records and the bus that carries them.

Every record hasupd writes is one of these classes: the event name and its tags are fixed in code, not
chosen at the call site. ``tags()`` gives the fields that become journald fields (``HASUPD_<TAG>``) and
JSON keys; ``message()`` is the human sentence.

Events compare by identity (``eq=False``): nothing compares two records by value, and the generated
``__eq__`` and ``__hash__`` of 85 classes cost ~0.25 MB of every hasupd's memory.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True, kw_only=True, eq=False)
class Event:
    NAME: ClassVar[str] = "event"
    LEVEL: ClassVar[int] = logging.INFO

    service: str | None = None
    incident: str | None = None
    time: float = field(default_factory=time.time)

    def tags(self) -> dict[str, object]:
        """Return the record's tags: every field that is set, plus ``event``; no ``time``."""
        out: dict[str, object] = {"event": self.NAME}
        for f in dataclasses.fields(self):
            if f.name == "time":
                continue
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def message(self) -> str:
        """Return one human sentence describing the event."""
        return self.NAME

    def level(self) -> int:
        """Return the logging level of this record (most events have a fixed one)."""
        return self.LEVEL


# --------------------------------------------------------------------------- daemon


@dataclass(frozen=True, kw_only=True, eq=False)
class DaemonStarted(Event):
    NAME = "daemon.started"
    version: str
    config_dir: str
    containment: str
    spawn: str = ""  # the spawn path in use: clone3(CLONE_INTO_CGROUP) or the subprocess fallback

    def message(self) -> str:
        return (
            f"hasupd {self.version} starting on {self.config_dir} ({self.containment}; spawn: {self.spawn})"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class DaemonReady(Event):
    NAME = "daemon.ready"
    services: int

    def message(self) -> str:
        return f"hasupd ready, supervising {self.services} service(s)"


@dataclass(frozen=True, kw_only=True, eq=False)
class DaemonStopping(Event):
    NAME = "daemon.stopping"
    reason: str

    def message(self) -> str:
        return f"hasupd stopping: {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class DaemonStopped(Event):
    NAME = "daemon.stopped"

    def message(self) -> str:
        return "hasupd stopped; every service is down"


@dataclass(frozen=True, kw_only=True, eq=False)
class DaemonReexec(Event):
    """hasupd replaced its own image (same pid): services kept running, unsupervised for a while."""

    NAME = "daemon.reexec"
    from_version: str
    to_version: str
    unsupervised_sec: float
    record: str  # "restored" or why the state record could not be used (then: adopted)
    adopted: int = 0

    def level(self) -> int:
        return logging.INFO if self.record == "restored" else logging.WARNING

    def message(self) -> str:
        return (
            f"hasupd re-executed {self.from_version} -> {self.to_version}; services unsupervised for "
            f"{self.unsupervised_sec:.3f}s; state record: {self.record}; {self.adopted} unit(s) carried on"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class DaemonReexecFailed(Event):
    NAME = "daemon.reexec_failed"
    LEVEL = logging.ERROR
    error: str

    def message(self) -> str:
        return f"hasupd could not re-execute itself and keeps running as it was: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class DaemonCrashed(Event):
    """Found on start: the previous hasupd did not stop cleanly (killed, crashed, watchdog abort)."""

    NAME = "daemon.crashed"
    LEVEL = logging.ERROR
    previous_pid: int | None
    detail: str

    def message(self) -> str:
        return f"hasupd did not stop cleanly last time (pid {self.previous_pid}): {self.detail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceAdopted(Event):
    """A running unit taken over from an earlier hasupd (re-exec fallback or crash)."""

    NAME = "service.adopted"
    pid: int
    how: str
    unknown: tuple[str, ...] = ()

    def message(self) -> str:
        tail = f"; unknown: {'; '.join(self.unknown)}" if self.unknown else ""
        return f"{self.service} adopted, pid {self.pid} (found by {self.how}){tail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class WatchdogLate(Event):
    NAME = "daemon.loop_stalled"
    LEVEL = logging.WARNING
    lag_sec: float

    def message(self) -> str:
        return f"event loop answered {self.lag_sec:.3f}s late; systemd watchdog ping withheld"


@dataclass(frozen=True, kw_only=True, eq=False)
class ConfigInvalid(Event):
    NAME = "config.invalid"
    LEVEL = logging.ERROR
    errors: tuple[str, ...]

    def message(self) -> str:
        return f"configuration invalid ({len(self.errors)} error(s)); running config kept: " + "; ".join(
            self.errors
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class ConfigApplied(Event):
    NAME = "config.applied"
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: int = 0
    # The rest of the reload plan (hasupd.config.diff): backup jobs and alert channels.
    jobs_added: tuple[str, ...] = ()
    jobs_removed: tuple[str, ...] = ()
    jobs_changed: tuple[str, ...] = ()
    channels_added: tuple[str, ...] = ()
    channels_removed: tuple[str, ...] = ()
    channels_changed: tuple[str, ...] = ()

    def message(self) -> str:
        text = (
            f"configuration applied: added {list(self.added)}, removed {list(self.removed)}, "
            f"changed {list(self.changed)}, {self.unchanged} unchanged"
        )
        for what, added, removed, changed in (
            ("backup jobs", self.jobs_added, self.jobs_removed, self.jobs_changed),
            ("alert channels", self.channels_added, self.channels_removed, self.channels_changed),
        ):
            if added or removed or changed:
                text += f"; {what}: added {list(added)}, removed {list(removed)}, changed {list(changed)}"
        return text


# --------------------------------------------------------------------------- services


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceStateChanged(Event):
    NAME = "service.state"
    LEVEL = logging.DEBUG
    old: str
    new: str
    result: str

    def message(self) -> str:
        return f"{self.service}: {self.old} -> {self.new} (result {self.result})"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceStable(Event):
    """A run lasted long enough to count as stable: backoff reset; its config is known to work."""

    NAME = "service.stable"
    LEVEL = logging.DEBUG
    pid: int | None

    def message(self) -> str:
        return f"{self.service} runs stably (pid {self.pid})"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceStarted(Event):
    NAME = "service.started"
    pid: int
    invocation: str
    restarts: int = 0

    def message(self) -> str:
        return f"{self.service} started, pid {self.pid}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceSpawnFailed(Event):
    NAME = "service.spawn_failed"
    LEVEL = logging.ERROR
    result: str
    error: str

    def message(self) -> str:
        return f"{self.service} could not be started: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceExited(Event):
    NAME = "service.exited"
    pid: int
    result: str
    exit_code: int | None = None
    signal: str | None = None
    expected: bool = False
    status: str = ""

    def message(self) -> str:
        how = "as asked" if self.expected else "unexpectedly"
        return f"{self.service} (pid {self.pid}) exited {how} with {self.status}, result {self.result}"

    def level(self) -> int:
        # An unexpected failure is a warning (it shows in `hasupctl errors` and `journalctl -p warning`);
        # an exit that was asked for, or a clean one, is routine.
        return logging.WARNING if not self.expected and self.result != "success" else logging.INFO


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceKilled(Event):
    NAME = "service.killed"
    LEVEL = logging.WARNING
    signal: str
    processes: int
    reason: str

    def message(self) -> str:
        return f"{self.service}: sent {self.signal} to {self.processes} process(es): {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceSignalled(Event):
    """``hasupctl kill``: a signal sent to a service's main process or to all its processes."""

    NAME = "service.signalled"
    LEVEL = logging.WARNING
    signal: str
    processes: int
    whom: str  # "main" or "all"

    def message(self) -> str:
        return f"{self.service}: sent {self.signal} to {self.processes} process(es) ({self.whom}) on request"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceReloading(Event):
    """A service's own reload began (``hasupctl reload NAME``, or RELOADING=1 from the service)."""

    NAME = "service.reloading"
    how: str

    def message(self) -> str:
        return f"{self.service} reloading ({self.how})"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceReloaded(Event):
    NAME = "service.reloaded"
    ok: bool
    detail: str

    def level(self) -> int:
        return logging.INFO if self.ok else logging.ERROR

    def message(self) -> str:
        return f"{self.service} {'reloaded' if self.ok else 'reload failed'}: {self.detail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class TimerTriggered(Event):
    """A scheduled (timer) service was started by its schedule."""

    NAME = "timer.triggered"
    scheduled: str  # the slot, ISO 8601
    missed: bool  # the slot passed while hasupd was down: a persistent timer's catch-up run

    def message(self) -> str:
        late = " (missed while hasupd was down; catching up)" if self.missed else ""
        return f"{self.service} started by its schedule, slot {self.scheduled}{late}"


@dataclass(frozen=True, kw_only=True, eq=False)
class TimerSkipped(Event):
    NAME = "timer.skipped"
    LEVEL = logging.WARNING
    reason: str

    def message(self) -> str:
        return f"{self.service}: scheduled run skipped: {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceRestartScheduled(Event):
    NAME = "service.restart_scheduled"
    LEVEL = logging.WARNING
    delay_sec: float
    reason: str
    restarts: int
    result: str

    def message(self) -> str:
        return (
            f"{self.service} died ({self.result}), will restart in {self.delay_sec:.3f}s "
            f"(restart #{self.restarts}; {self.reason})"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceNotRestarted(Event):
    NAME = "service.not_restarted"
    reason: str
    result: str

    def message(self) -> str:
        return f"{self.service} not restarted: {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceFailed(Event):
    NAME = "service.failed"
    LEVEL = logging.ERROR
    result: str
    restarts: int

    def message(self) -> str:
        return f"{self.service} failed (result {self.result}) after {self.restarts} restart(s)"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceStopping(Event):
    NAME = "service.stopping"
    reason: str

    def message(self) -> str:
        return f"{self.service} stopping: {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceStopped(Event):
    NAME = "service.stopped"
    result: str

    def message(self) -> str:
        return f"{self.service} stopped (result {self.result})"


@dataclass(frozen=True, kw_only=True, eq=False)
class IncidentOpened(Event):
    NAME = "incident.opened"
    LEVEL = logging.WARNING
    reason: str

    def message(self) -> str:
        return f"{self.service}: incident {self.incident} opened: {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class IncidentClosed(Event):
    NAME = "incident.closed"
    outcome: str  # "resolved" | "failed" | "stopped"

    def message(self) -> str:
        return f"{self.service}: incident {self.incident} closed: {self.outcome}"


@dataclass(frozen=True, kw_only=True, eq=False)
class IncidentOutput(Event):
    """The service's own last output lines from before the failure that opened the incident."""

    NAME = "incident.output"
    lines: tuple[str, ...]
    source: str  # "journal" or the log file read
    error: str | None = None  # why fewer lines (or none) could be read

    def message(self) -> str:
        if self.error:
            return f"{self.service}: output before incident {self.incident} unavailable: {self.error}"
        return f"{self.service}: last {len(self.lines)} output line(s) before incident {self.incident}"


# --------------------------------------------------------------------------- error groups and rules


@dataclass(frozen=True, kw_only=True, eq=False)
class ErrorGroupNew(Event):
    """A service wrote an error of a shape never seen before (``hasupd.observe.error_groups``)."""

    NAME = "errors.new_group"
    group: str
    kind: str  # "line", "python" (a traceback) or "java" (a stack trace)
    pattern: str
    sample: str

    def message(self) -> str:
        return f"{self.service}: new error group {self.group} ({self.kind}): {self.pattern}"


@dataclass(frozen=True, kw_only=True, eq=False)
class ErrorsSeen(Event):
    """``count`` more errors of ``group`` in the output of ``service``, read in one batch."""

    NAME = "errors.seen"
    LEVEL = logging.DEBUG
    group: str
    count: int
    sample: str = ""  # the latest of them

    def message(self) -> str:
        return f"{self.service}: {self.count} error(s) of group {self.group}"


@dataclass(frozen=True, kw_only=True, eq=False)
class OutputSeen(Event):
    """``service`` wrote ``lines`` lines of output (read in one batch): a sign of life."""

    NAME = "output.seen"
    LEVEL = logging.DEBUG
    lines: int

    def message(self) -> str:
        return f"{self.service}: {self.lines} line(s) of output"


@dataclass(frozen=True, kw_only=True, eq=False)
class ErrorGroupsFailed(Event):
    """The error groups could not be read or written (a full disk, a broken errors.sqlite): the output
    read meanwhile is not counted; supervision goes on. Published once per failure, not per batch."""

    NAME = "errors.failed"
    LEVEL = logging.ERROR
    error: str

    def message(self) -> str:
        return f"error groups are not being kept: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class RuleFired(Event):
    """An alert rule (``alerts.rules`` in hasupd.yaml) found something out of the ordinary: an incident."""

    NAME = "rule.fired"
    LEVEL = logging.WARNING
    rule: str
    kind: str  # new_error | error_rate | restart_rate | quiet
    detail: str  # the evidence, one sentence
    group: str | None = None
    count: int | None = None
    threshold: float | None = None
    baseline: float | None = None
    sample: str | None = None

    def message(self) -> str:
        return f"{self.service or 'hasupd'}: rule {self.rule} fired: {self.detail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class RuleResolved(Event):
    """What made a rule fire is over; the incident is closed as resolved."""

    NAME = "rule.resolved"
    rule: str
    kind: str
    detail: str
    group: str | None = None

    def message(self) -> str:
        return f"{self.service or 'hasupd'}: rule {self.rule} resolved: {self.detail}"


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True, kw_only=True, eq=False)
class MetricsListening(Event):
    NAME = "metrics.listening"
    address: str

    def message(self) -> str:
        return f"Prometheus metrics at http://{self.address}/metrics"


@dataclass(frozen=True, kw_only=True, eq=False)
class MetricsUnavailable(Event):
    NAME = "metrics.unavailable"
    LEVEL = logging.ERROR
    address: str
    error: str

    def message(self) -> str:
        return f"cannot serve metrics on {self.address}: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class WebListening(Event):
    NAME = "web.listening"
    url: str

    def message(self) -> str:
        return f"dashboard at {self.url}"


@dataclass(frozen=True, kw_only=True, eq=False)
class WebUnavailable(Event):
    NAME = "web.unavailable"
    LEVEL = logging.ERROR
    address: str
    error: str

    def message(self) -> str:
        return f"cannot serve the dashboard on {self.address}: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class WebLoginFailed(Event):
    """A dashboard request without the right credential: refused with 401."""

    NAME = "web.login_failed"
    LEVEL = logging.WARNING
    remote: str  # the client's address
    path: str
    reason: str  # "wrong credential"
    suppressed: int = 0  # earlier refusals from the same address left out of the records (a flood)

    def message(self) -> str:
        more = f" ({self.suppressed} more refused before, not recorded one by one)" if self.suppressed else ""
        return f"dashboard request for {self.path} from {self.remote} refused: {self.reason}{more}"


# --------------------------------------------------------------------------- freeze detection


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceReady(Event):
    NAME = "service.ready"
    pid: int

    def message(self) -> str:
        return f"{self.service} is ready (READY=1 from pid {self.pid})"


@dataclass(frozen=True, kw_only=True, eq=False)
class ServiceStatusText(Event):
    NAME = "service.status"
    LEVEL = logging.DEBUG
    status: str

    def message(self) -> str:
        return f"{self.service}: STATUS={self.status}"


@dataclass(frozen=True, kw_only=True, eq=False)
class WatchdogTimeout(Event):
    NAME = "watchdog.timeout"
    LEVEL = logging.ERROR
    pid: int | None
    timeout_sec: float
    reason: str

    def message(self) -> str:
        return f"{self.service} (pid {self.pid}) watchdog: {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class HealthFailed(Event):
    NAME = "health.failed"
    LEVEL = logging.ERROR
    probe: str
    detail: str
    failures: int

    def message(self) -> str:
        return f"{self.service} unhealthy after {self.failures} failed {self.probe} probe(s): {self.detail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class HealthRecovered(Event):
    NAME = "health.ok"
    probe: str

    def message(self) -> str:
        return f"{self.service} is healthy ({self.probe} probe passes)"


@dataclass(frozen=True, kw_only=True, eq=False)
class LimitExceeded(Event):
    NAME = "limit.exceeded"
    LEVEL = logging.ERROR
    limit: str
    detail: str

    def message(self) -> str:
        return f"{self.service} over its {self.limit} limit: {self.detail}"


# --------------------------------------------------------------------------- backups


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupFinished(Event):
    NAME = "backup.finished"
    job: str
    snapshot: str
    files_new: int
    files_changed: int
    bytes_added: int
    duration_sec: float
    partial: bool = False

    def message(self) -> str:
        partial = " (partial: some files were unreadable)" if self.partial else ""
        return (
            f"backup {self.job}: snapshot {self.snapshot[:8]}, {self.files_new} new and {self.files_changed} "
            f"changed files, {self.bytes_added} bytes added in {self.duration_sec:g}s{partial}"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupWarning(Event):
    NAME = "backup.warning"
    LEVEL = logging.WARNING
    job: str
    snapshot: str
    unreadable: tuple[str, ...]

    def message(self) -> str:
        return f"backup {self.job}: snapshot {self.snapshot[:8]} lacks unreadable files: " + "; ".join(
            self.unreadable[:20]
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupFailed(Event):
    NAME = "backup.failed"
    LEVEL = logging.ERROR
    job: str
    step: str
    error: str

    def message(self) -> str:
        return f"backup {self.job} failed at {self.step}: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class DatabaseDumped(Event):
    """A live database was dumped into a snapshot of its own (``/FILE``, tagged ``db:NAME``)."""

    NAME = "backup.database"
    job: str
    database: str
    snapshot: str
    bytes_added: int
    duration_sec: float

    def message(self) -> str:
        return (
            f"backup {self.job}: database {self.database} dumped into snapshot {self.snapshot[:8]} "
            f"({self.bytes_added} bytes added in {self.duration_sec:g}s)"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupRetention(Event):
    NAME = "backup.retention"
    job: str
    repository: str
    forgot: tuple[str, ...]

    def message(self) -> str:
        return f"backup {self.job}: retention in {self.repository} forgot {len(self.forgot)} snapshot(s)"


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupCopied(Event):
    NAME = "backup.copied"
    job: str
    repository: str
    copied: tuple[str, ...]
    forgot: tuple[str, ...]

    def message(self) -> str:
        return (
            f"backup {self.job}: copied {len(self.copied)} snapshot(s) to {self.repository}, "
            f"its retention forgot {len(self.forgot)}"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupChecked(Event):
    NAME = "backup.checked"
    job: str
    subset: str

    def message(self) -> str:
        return f"backup {self.job}: repository check passed" + (
            f" (data subset {self.subset})" if self.subset else ""
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupCheckFailed(Event):
    NAME = "backup.check_failed"
    LEVEL = logging.ERROR
    job: str
    subset: str
    detail: str

    def message(self) -> str:
        return (
            f"backup {self.job}: repository check found damage (subset {self.subset}): {self.detail[-500:]}"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupStale(Event):
    NAME = "backup.stale"
    LEVEL = logging.ERROR
    job: str
    age_sec: float | None
    max_age_sec: float

    def message(self) -> str:
        if self.age_sec is None:
            return f"backup {self.job} has no good snapshot, and max_age is {self.max_age_sec:g}s"
        age = f"{self.age_sec:.0f}s"
        return f"backup {self.job}: newest good snapshot is {age} old (max_age {self.max_age_sec:g}s)"


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupResumed(Event):
    NAME = "backup.resumed"
    LEVEL = logging.WARNING
    job: str
    units: tuple[str, ...]

    def message(self) -> str:
        return f"backup {self.job} was interrupted while {', '.join(self.units)} were stopped; they run again"


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupInterrupted(Event):
    """hasupd died during a job or a restore; at its next start it cleaned up what was left."""

    NAME = "backup.interrupted"
    LEVEL = logging.WARNING
    job: str
    operations: tuple[str, ...]  # what was interrupted: job kinds, "in-place restore by root (phase swap)"
    cleaned: tuple[str, ...]  # what was done about it, one line each

    def message(self) -> str:
        what = ", ".join(self.operations) or "restic"
        return f"{self.job}: {what} was interrupted by hasupd's end; cleaned up: {'; '.join(self.cleaned)}"


@dataclass(frozen=True, kw_only=True, eq=False)
class BackupUnlocked(Event):
    """After an interruption: the stale locks a plain ``restic unlock`` removed (or why it could not)."""

    NAME = "backup.unlocked"
    job: str
    repository: str
    removed: int
    error: str | None = None

    def level(self) -> int:
        return logging.INFO if self.error is None else logging.WARNING

    def message(self) -> str:
        if self.error is not None:
            return f"{self.job}: could not remove stale locks in repository {self.repository}: {self.error}"
        return f"{self.job}: removed {self.removed} stale lock(s) from repository {self.repository}"


# --------------------------------------------------------------------------- restore and recovery


@dataclass(frozen=True, kw_only=True, eq=False)
class RestoreStep(Event):
    """One step of a restore, tagged with who asked for it (an admin, or hasupd for recovery)."""

    NAME = "restore.step"
    job: str
    step: str
    detail: str
    user: str
    ok: bool = True

    def level(self) -> int:
        return logging.INFO if self.ok else logging.ERROR

    def message(self) -> str:
        return f"restore {self.job} ({self.user}): {self.step}: {self.detail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class DrillFinished(Event):
    NAME = "drill.finished"
    job: str
    ok: bool
    detail: str
    boot: bool = False  # a boot drill: the job's services were started on the restored copy
    restorable_as_of: float | None = None  # boot drill passed: the (Unix) time of the snapshot that booted

    def level(self) -> int:
        return logging.INFO if self.ok else logging.ERROR

    def message(self) -> str:
        what = "boot drill" if self.boot else "restore drill"
        return f"{what} of {self.job} {'passed' if self.ok else 'FAILED'}: {self.detail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class DrillStale(Event):
    NAME = "drill.stale"
    LEVEL = logging.ERROR
    job: str
    age_sec: float | None
    # Boot drills: the age is that of the snapshot that last booted ("restorable as of").
    allowed_sec: float | None = None

    def message(self) -> str:
        if self.allowed_sec is not None:
            age = "no snapshot has booted" if self.age_sec is None else f"{self.age_sec:.0f}s old"
            return (
                f"{self.job} is restorable as of a snapshot {age}: more than its boot drill schedule "
                f"allows ({self.allowed_sec:.0f}s)"
            )
        age = "never passed" if self.age_sec is None else f"last passed {self.age_sec:.0f}s ago"
        return f"restore drill of {self.job} is overdue ({age}; allowed: twice its schedule)"


@dataclass(frozen=True, kw_only=True, eq=False)
class RecoveryAction(Event):
    """An on_failure action taken after a crash loop, and how it went."""

    NAME = "recovery.action"
    action: str
    ok: bool
    detail: str

    def level(self) -> int:
        return logging.WARNING if self.ok else logging.ERROR

    def message(self) -> str:
        outcome = "worked" if self.ok else "did not help"
        return f"{self.service}: recovery action {self.action} {outcome}: {self.detail}"


@dataclass(frozen=True, kw_only=True, eq=False)
class RecoveryExhausted(Event):
    NAME = "recovery.exhausted"
    LEVEL = logging.ERROR
    actions: tuple[str, ...]

    def message(self) -> str:
        return f"{self.service} stays failed: every recovery action failed ({', '.join(self.actions)})"


# --------------------------------------------------------------------------- control


@dataclass(frozen=True, kw_only=True, eq=False)
class Audit(Event):
    """A state-changing control request, or any refused one: who asked, what, and what came of it."""

    NAME = "audit"
    uid: int
    user: str
    pid: int
    cmdline: str
    request: str
    outcome: str  # "ok", "refused: ...", "failed: ..."
    role: str | None = None

    def message(self) -> str:
        return f"{self.user} (uid {self.uid}, pid {self.pid}) ran {self.request!r}: {self.outcome}"

    def level(self) -> int:
        return logging.INFO if self.outcome == "ok" else logging.WARNING


@dataclass(frozen=True, kw_only=True, eq=False)
class ControlFailed(Event):
    """A control request raised something its handler did not expect. The caller got an error reply and
    hasupd went on; this is a bug in hasupd, reported with its traceback."""

    NAME = "control.error"
    LEVEL = logging.ERROR
    uid: int
    user: str
    pid: int
    request: str
    error: str
    traceback: str

    def message(self) -> str:
        return f"control request {self.request!r} from {self.user} (pid {self.pid}) failed: {self.error}"


# --------------------------------------------------------------------------- alerts
# ``service`` and ``incident`` are those of the alert's subject (None for daemon-wide alerts).


@dataclass(frozen=True, kw_only=True, eq=False)
class AlertSent(Event):
    NAME = "alert.sent"
    channel: str
    message_id: str
    subject: str
    response: str  # the server's answer to DATA, "250 ..."
    recipients: tuple[str, ...] = ()

    def message(self) -> str:
        return f"alert sent on channel {self.channel}: {self.subject!r} ({self.response})"


@dataclass(frozen=True, kw_only=True, eq=False)
class AlertFailed(Event):
    NAME = "alert.failed"
    LEVEL = logging.ERROR
    channel: str
    message_id: str
    error: str
    attempts: int
    retry_in_sec: float
    next_retry: str  # ISO time
    waiting: int  # messages spooled for this channel

    def message(self) -> str:
        return (
            f"alert on channel {self.channel} not delivered (attempt {self.attempts}): {self.error}; "
            f"{self.waiting} message(s) spooled, next try in {self.retry_in_sec:.0f}s"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class AlertDropped(Event):
    NAME = "alert.dropped"
    LEVEL = logging.WARNING
    channel: str
    message_id: str
    reason: str

    def message(self) -> str:
        return f"alert on channel {self.channel} dropped: {self.reason}"


@dataclass(frozen=True, kw_only=True, eq=False)
class AlertSuppressed(Event):
    """An alert that a silence (``hasupctl alert silence``) kept from every channel."""

    NAME = "alert.suppressed"
    kind: str
    headline: str
    silence: str  # the silence's target
    until: str  # ISO time the silence ends
    reason: str

    def message(self) -> str:
        who = f"{self.service} " if self.service else ""
        return f"alert suppressed by the silence of {self.silence} until {self.until}: {who}{self.headline}"


# --------------------------------------------------------------------------- hasupd's own records


@dataclass(frozen=True, kw_only=True, eq=False)
class RecordsDropping(Event):
    """A record writer failed (a full disk, journald gone): its records are dropped from now on."""

    NAME = "records.dropping"
    LEVEL = logging.ERROR
    destination: str
    error: str

    def message(self) -> str:
        return f"records to {self.destination} are being dropped: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class RecordsResumed(Event):
    """A record writer works again after ``dropped`` records were lost."""

    NAME = "records.resumed"
    LEVEL = logging.WARNING
    destination: str
    dropped: int

    def message(self) -> str:
        return f"records to {self.destination} are written again; {self.dropped} record(s) were dropped"


@dataclass(frozen=True, kw_only=True, eq=False)
class NotifyRejected(Event):
    """A datagram on a service's NOTIFY_SOCKET came from a process outside the service's tree."""

    NAME = "notify.rejected"
    LEVEL = logging.WARNING
    pid: int
    reason: str
    suppressed: int = 0  # rejected datagrams not recorded since the previous record

    def message(self) -> str:
        more = f" ({self.suppressed} more since the last such record)" if self.suppressed else ""
        return f"notify datagram from pid {self.pid} rejected: {self.reason}{more}"


# --------------------------------------------------------------------------- fleet (etcd placement)


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetJoined(Event):
    """This host holds a lease on etcd and registered its host name."""

    NAME = "fleet.joined"
    host: str
    cluster: str
    lease: str
    ttl_sec: float

    def message(self) -> str:
        return f"joined fleet {self.cluster} as {self.host} (lease {self.lease}, TTL {self.ttl_sec:g}s)"


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetResumed(Event):
    """A new image of hasupd (re-exec, or a restart after a crash) carries on the fleet membership of
    the last one: same lease, same ownership keys and tokens; its placed services ran on, unstopped."""

    NAME = "fleet.resumed"
    host: str
    cluster: str
    lease: str
    how: str  # "re-exec" or "crash restart"
    slots: tuple[str, ...] = ()  # "owner/web", "replica/api/1": the keys carried on
    tokens: tuple[int, ...] = ()  # their fencing tokens, in the same order
    services: tuple[str, ...] = ()  # their services, in the same order
    lease_left_sec: float = 0.0  # etcd's remaining TTL of the lease when checked (LeaseTimeToLive)

    def message(self) -> str:
        owned = ", ".join(f"{s} (token {t})" for s, t in zip(self.slots, self.tokens, strict=False))
        owned = owned or "no placed service"
        return (
            f"{self.host} carries on in fleet {self.cluster} after a {self.how} of hasupd: lease "
            f"{self.lease} alive ({self.lease_left_sec:g}s left), keeps {owned}"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetJoinRefused(Event):
    """The host name is held by another live lease, or etcd refused us: placed services stay stopped."""

    NAME = "fleet.join-refused"
    LEVEL = logging.ERROR
    host: str
    reason: str

    def message(self) -> str:
        return f"not joining the fleet as {self.host}: {self.reason}; placed services stay stopped here"


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetUnreachable(Event):
    """etcd did not answer (once per outage): local services are unaffected."""

    NAME = "fleet.unreachable"
    LEVEL = logging.WARNING
    host: str
    error: str  # each endpoint tried, with its error
    endpoints: tuple[str, ...] = ()  # the configured endpoints

    def message(self) -> str:
        tried = f" (endpoints {', '.join(self.endpoints)})" if self.endpoints else ""
        return f"etcd unreachable from {self.host}{tried}: {self.error}"


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetReachable(Event):
    """etcd answers again after ``fleet.unreachable`` (a leader election, a healed partition)."""

    NAME = "fleet.reachable"
    host: str
    after_sec: float

    def message(self) -> str:
        return f"etcd answers {self.host} again after {self.after_sec:.2f}s"


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetElected(Event):
    """This host became the owner of a placed service (or of one replica slot)."""

    NAME = "fleet.elected"
    host: str
    slot: str
    token: int

    def message(self) -> str:
        return f"{self.host} owns {self.slot} (fencing token {self.token}); starting {self.service}"


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetLost(Event):
    """This host no longer owns the service (its key is gone or belongs to another lease): stopped."""

    NAME = "fleet.lost"
    LEVEL = logging.WARNING
    host: str
    slot: str
    token: int
    reason: str

    def message(self) -> str:
        return f"{self.host} lost {self.slot} (token {self.token}): {self.reason}; stopping {self.service}"


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetFenced(Event):
    """The local deadline since the last acknowledged keep-alive passed: every placed service stops
    before the lease can expire on etcd's side (a stopped singleton is better than two)."""

    NAME = "fleet.fenced"
    LEVEL = logging.ERROR
    host: str
    since_ack_sec: float
    stopped: tuple[str, ...] = ()
    error: str = ""  # the last keep-alive's failure: each endpoint tried, with its error

    def message(self) -> str:
        names = ", ".join(self.stopped) or "nothing ran"
        why = f" (last etcd error: {self.error})" if self.error else ""
        return (
            f"FENCING: no keep-alive acknowledged for {self.since_ack_sec:.1f}s on {self.host}{why}; "
            f"stopping every placed service ({names}) before the lease expires"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetGaveUp(Event):
    """A placed service crash-looped on its owner (failed, start limit hit, recovery done): the owner
    hands it to another host and takes it back only when no other host can, for ``avoid_sec``."""

    NAME = "fleet.gave-up"
    LEVEL = logging.WARNING
    host: str
    slot: str
    token: int
    avoid_sec: float

    def message(self) -> str:
        return (
            f"{self.service} crash-looped on {self.host} (start limit hit): handing {self.slot} "
            f"(token {self.token}) to another host; {self.host} avoids it for {self.avoid_sec:.0f}s"
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetMoved(Event):
    """An operator moved (or drained) a placed service away from this host: stopped here, released."""

    NAME = "fleet.moved"
    host: str
    target: str
    slot: str
    gap_reason: str = ""

    def message(self) -> str:
        to = self.target or "any other host"
        return f"{self.service} stopped on {self.host} and released to {to} ({self.slot})"


@dataclass(frozen=True, kw_only=True, eq=False)
class FleetUnowned(Event):
    """A placed service has had no owner for longer than the lease TTL plus its start timeout."""

    NAME = "fleet.unowned"
    LEVEL = logging.ERROR
    seconds: float

    def message(self) -> str:
        return f"placed service {self.service} has had no owner in the fleet for {self.seconds:.0f}s"


# --------------------------------------------------------------------------- the bus

Subscriber = Callable[[Event], None]


class EventBus:
    """FIFO fan-out of events to subscribers, in subscription order.

    An event published while another is being delivered (a subscriber reacting by starting a unit,
    say) is queued and delivered after the current one, so every subscriber sees every event in the
    same order and delivery never recurses. ``publish`` from outside a delivery returns once the
    event and everything it caused in turn have been delivered.

    A subscriber that raises is a bug in hasupd: the exception propagates to the publisher that
    started the delivery, and the events still queued behind it are dropped (deliberately: they were
    caused by an event whose handling is now broken), so the bus is never left stuck and the next
    publish is delivered normally.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._queue: deque[Event] = deque()
        self._delivering = False

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; return a function that removes it."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber, or queue it if a delivery is under way."""
        self._queue.append(event)
        if not self._delivering:
            self._deliver()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Queue what is published inside the block and deliver it after, in order: changes made
        together (a batch of starts) are all done before any subscriber reacts to the first."""
        if self._delivering:  # inside a delivery: queued anyway
            yield
            return
        self._delivering = True
        try:
            yield
        except BaseException:
            self._queue.clear()
            raise
        finally:
            self._delivering = False
        self._deliver()

    def _deliver(self) -> None:
        self._delivering = True
        try:
            while self._queue:
                current = self._queue.popleft()
                for subscriber in tuple(self._subscribers):
                    subscriber(current)
        finally:
            self._queue.clear()  # empty unless a subscriber raised: see the class docstring
            self._delivering = False
