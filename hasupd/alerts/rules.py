"""Alert rules (``alerts.rules`` in hasupd.yaml): something out of the ordinary becomes an incident.

Evaluated on the event stream, never by polling the services:

- ``new_error``: an error group seen for the first time (``errors.new_group``). The incident resolves
  once the group has not come back for ``window_sec`` (default 1h).
- ``error_rate``: an error group's count within the last ``window_sec`` (from ``errors.seen``) is above
  ``above`` and, with ``factor``, above factor x its baseline for such a window. The incident lasts while
  the count stays above; a timer re-counts when the oldest counted errors leave the window.
- ``restart_rate``: the same for a service's restarts (``service.restart_scheduled``).
- ``quiet``: a dead-man's switch. No sign of life from a service for ``window_sec`` (``after_sec`` in
  the file): a sign of life is a line of output, a READY=/STATUS= notification or a successful run.
  ONE timer per (rule, service), re-armed only when it fires early (the last sign of life is a
  timestamp, so a chatty service costs nothing per line). Resolves with the next sign of life.

Baselines come from the hourly counts of ``STATE_DIR/errors.sqlite`` (``History``): ``same_hour`` is the
mean of the same hour of the day over the past ``days`` days, ``moving_average`` the hourly mean over
the past ``days`` days; both are scaled to the window. Read once per key and hour (cached).

A firing publishes ``incident.opened`` and ``rule.fired`` (with its evidence: the count, the threshold,
the baseline, a sample), so it reaches every alert channel through ``hasupd.alerts.policy`` like any other
incident; ONE incident while the condition lasts; then ``rule.resolved`` and ``incident.closed``
(resolved), which sends the resolved notice.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from hasupd import events as ev
from hasupd.config.model import AlertRule, Baseline, Config, RuleKind
from hasupd.ports import Clock, TimerHandle

HOUR = 3600
RESTART_KEY = "restart:"  # as hasupd.observe.error_store counts restarts
SAMPLES_KEPT = 10_000  # groups whose latest sample is kept for the evidence


class History(Protocol):
    def hourly(self, key: str, first_hour: int, last_hour: int) -> Mapping[int, int]:
        """Return ``{hour since the epoch: count}`` of ``key`` (hours without a count may be absent)."""
        ...


class Source(Protocol):
    """The current config (the Manager)."""

    @property
    def config(self) -> Config: ...


@dataclass
class _Firing:
    incident: str
    service: str
    group: str | None
    timer: TimerHandle | None = None


@dataclass
class _Window:
    """Counts within a rule's window: (clock time, count), oldest first."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def add(self, when: float, n: int) -> None:
        self.entries.append((when, n))
        self.total += n

    def trim(self, start: float) -> int:
        while self.entries and self.entries[0][0] <= start:
            self.total -= self.entries.popleft()[1]
        return self.total


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


class Rules:
    """Evaluates the rules of the config of now on every event (see the module docstring)."""

    def __init__(
        self,
        bus: ev.EventBus,
        source: Source,
        clock: Clock,
        history: History | None,
        *,
        wall: Callable[[], float] = time.time,
        link: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """``wall`` is the wall clock (baselines are by the hour of the day); ``link(group, incident,
        time)`` records that an error group appeared in an incident."""
        self._bus = bus
        self._source = source
        self._clock = clock
        self._history = history
        self._wall = wall
        self._link = link
        self._firings: dict[tuple[str, str], _Firing] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._alive: dict[tuple[str, str], float] = {}  # (rule, service or group) -> last seen (clock)
        self._quiet_timers: dict[tuple[str, str], TimerHandle] = {}
        self._baselines: dict[tuple[str, Baseline, int, int], float] = {}
        self._samples: dict[str, str] = {}  # group -> its latest sample (new_error evidence)
        bus.subscribe(self._on_event)

    @property
    def rules(self) -> tuple[AlertRule, ...]:
        return self._source.config.daemon.rules

    def firing(self) -> dict[tuple[str, str], str]:
        """Return the open incidents: (rule, group or service) -> incident id."""
        return {key: f.incident for key, f in self._firings.items()}

    # ------------------------------------------------------------------ the event stream

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.DaemonReady | ev.ConfigApplied):
            self._reconfigure()
        if not self.rules or event.service is None:
            return
        if isinstance(event, ev.ErrorGroupNew):
            self._remember_sample(event.group, event.sample)
            for rule in self._matching(RuleKind.NEW_ERROR, event.service, event.group):
                self._new_error(rule, event)
        elif isinstance(event, ev.ErrorsSeen):
            if event.sample:
                self._remember_sample(event.group, event.sample)
            for rule in self._matching(RuleKind.NEW_ERROR, event.service, event.group):
                self._alive[(rule.name, event.group)] = self._clock.time()
            for rule in self._matching(RuleKind.ERROR_RATE, event.service, event.group):
                self._count(rule, event.group, event.service, event.count)
        elif isinstance(event, ev.ServiceRestartScheduled):
            service = event.service.split("@", 1)[0]
            for rule in self._matching(RuleKind.RESTART_RATE, service, None):
                self._count(rule, service, service, 1)
        if _is_sign_of_life(event):
            service = event.service.split("@", 1)[0]
            for rule in self._matching(RuleKind.QUIET, service, None):
                self._sign_of_life(rule, service)

    def _remember_sample(self, group: str, sample: str) -> None:
        self._samples.pop(group, None)
        self._samples[group] = sample
        if len(self._samples) > SAMPLES_KEPT:
            del self._samples[next(iter(self._samples))]  # the least recently seen group

    def _matching(self, kind: RuleKind, service: str, group: str | None) -> list[AlertRule]:
        return [
            rule
            for rule in self.rules
            if rule.kind is kind
            and (not rule.services or service in rule.services)
            and (rule.group is None or rule.group == group)
        ]

    def _reconfigure(self) -> None:
        """The rules may have changed: end what belongs to removed rules, arm the quiet timers."""
        names = {rule.name: rule for rule in self.rules}
        for key, firing in list(self._firings.items()):
            if key[0] not in names:
                self._resolve(key, firing, "the rule was removed from the configuration")
        for key in [k for k in self._windows if k[0] not in names]:
            del self._windows[key]
        for key in [
            k for k in self._quiet_timers if k[0] not in names or names[k[0]].kind is not RuleKind.QUIET
        ]:
            self._quiet_timers.pop(key).cancel()
        services = [s.name for s in self._source.config.services]
        now = self._clock.time()
        for rule in self.rules:
            if rule.kind is not RuleKind.QUIET:
                continue
            for service in services:
                key = (rule.name, service)
                if (not rule.services or service in rule.services) and key not in self._quiet_timers:
                    self._alive.setdefault(key, now)
                    if key not in self._firings:
                        self._arm_quiet(rule, service, self._alive[key] + rule.window_sec)

    # ------------------------------------------------------------------ new_error

    def _new_error(self, rule: AlertRule, event: ev.ErrorGroupNew) -> None:
        key = (rule.name, event.group)
        self._alive[key] = self._clock.time()
        if key in self._firings:
            return
        detail = f"new error group {event.group} ({event.kind}): {event.pattern}"
        firing = self._fire(rule, key, event.service or "", event.group, detail, sample=event.sample)
        firing.timer = self._clock.call_at(
            self._clock.time() + rule.window_sec, lambda: self._new_error_check(key)
        )

    def _new_error_check(self, key: tuple[str, str]) -> None:
        firing = self._firings.get(key)
        rule = self._rule(key[0])
        if firing is None or rule is None:
            return
        due = self._alive.get(key, 0.0) + rule.window_sec
        if self._clock.time() >= due:
            self._resolve(key, firing, f"not seen again for {_seconds(rule.window_sec)}")
        else:
            firing.timer = self._clock.call_at(due, lambda: self._new_error_check(key))

    # ------------------------------------------------------------------ error_rate, restart_rate

    def _count(self, rule: AlertRule, subject: str, service: str, n: int) -> None:
        key = (rule.name, subject)
        self._windows.setdefault(key, _Window()).add(self._clock.time(), n)
        self._evaluate(rule, key, service)

    def _evaluate(self, rule: AlertRule, key: tuple[str, str], service: str) -> None:
        now = self._clock.time()
        window = self._windows.get(key)
        count = window.trim(now - rule.window_sec) if window is not None else 0
        threshold = rule.above or 0.0
        baseline = None
        if rule.factor is not None:
            baseline = self._baseline(rule, key[1])
            threshold = max(threshold, rule.factor * baseline)
        firing = self._firings.get(key)
        if count > threshold and firing is None:
            is_group = rule.kind is RuleKind.ERROR_RATE
            what = f"errors of group {key[1]}" if is_group else "restarts"
            detail = f"{count} {what} in the last {_seconds(rule.window_sec)}, above {threshold:g}"
            if baseline is not None:
                detail += (
                    f" ({rule.factor:g} x the baseline {baseline:.2f}: {rule.baseline} over {rule.days} days)"
                )
            firing = self._fire(
                rule,
                key,
                service,
                key[1] if is_group else None,
                detail,
                count=count,
                threshold=threshold,
                baseline=baseline,
                sample=self._samples.get(key[1]) if is_group else None,
            )
        elif count <= threshold and firing is not None:
            self._resolve(
                key, firing, f"{count} in the last {_seconds(rule.window_sec)}, at most {threshold:g}"
            )
            return
        if firing is not None and window is not None and window.entries:
            # Counted again when the oldest entry leaves the window (no timer per entry).
            if firing.timer is not None:
                firing.timer.cancel()
            due = window.entries[0][0] + rule.window_sec
            firing.timer = self._clock.call_at(due, lambda: self._recheck(key, service))

    def _recheck(self, key: tuple[str, str], service: str) -> None:
        rule = self._rule(key[0])
        firing = self._firings.get(key)
        if rule is not None and firing is not None:
            firing.timer = None
            self._evaluate(rule, key, service)

    def _baseline(self, rule: AlertRule, subject: str) -> float:
        """Return the usual count for one window of ``rule`` (see the module docstring)."""
        history_key = subject if rule.kind is RuleKind.ERROR_RATE else RESTART_KEY + subject
        hour = int(self._wall() // HOUR)
        cache_key = (history_key, rule.baseline, rule.days, hour)
        per_hour = self._baselines.get(cache_key)
        if per_hour is None:
            per_hour = 0.0
            if self._history is not None:
                first = hour - 24 * rule.days
                counts = self._history.hourly(history_key, first, hour - 1)
                if rule.baseline is Baseline.SAME_HOUR:
                    per_hour = sum(counts.get(hour - 24 * d, 0) for d in range(1, rule.days + 1)) / rule.days
                else:
                    per_hour = sum(counts.values()) / (24 * rule.days)
            if len(self._baselines) > 10_000:
                self._baselines.clear()
            self._baselines[cache_key] = per_hour
        return per_hour * rule.window_sec / HOUR

    # ------------------------------------------------------------------ quiet

    def _arm_quiet(self, rule: AlertRule, service: str, due: float) -> None:
        key = (rule.name, service)
        self._quiet_timers[key] = self._clock.call_at(due, lambda: self._quiet_check(key))

    def _quiet_check(self, key: tuple[str, str]) -> None:
        self._quiet_timers.pop(key, None)
        rule = self._rule(key[0])
        if rule is None or rule.kind is not RuleKind.QUIET or key in self._firings:
            return
        last = self._alive.get(key, self._clock.time())
        due = last + rule.window_sec
        if self._clock.time() < due:
            self._arm_quiet(rule, key[1], due)
            return
        quiet_for = self._clock.time() - last
        self._fire(
            rule, key, key[1], None, f"no output or other sign of life for {_seconds(round(quiet_for))}"
        )

    def _sign_of_life(self, rule: AlertRule, service: str) -> None:
        key = (rule.name, service)
        now = self._clock.time()
        self._alive[key] = now
        firing = self._firings.get(key)
        if firing is not None:
            self._resolve(key, firing, "alive again")
        if key not in self._quiet_timers:
            self._arm_quiet(rule, service, now + rule.window_sec)

    # ------------------------------------------------------------------ incidents

    def _rule(self, name: str) -> AlertRule | None:
        return next((rule for rule in self.rules if rule.name == name), None)

    def _fire(
        self,
        rule: AlertRule,
        key: tuple[str, str],
        service: str,
        group: str | None,
        detail: str,
        *,
        count: int | None = None,
        threshold: float | None = None,
        baseline: float | None = None,
        sample: str | None = None,
    ) -> _Firing:
        incident = uuid.uuid4().hex[:12]
        firing = self._firings[key] = _Firing(incident, service, group)
        self._bus.publish(
            ev.IncidentOpened(service=service, incident=incident, reason=f"rule {rule.name}: {detail}")
        )
        self._bus.publish(
            ev.RuleFired(
                service=service,
                incident=incident,
                rule=rule.name,
                kind=rule.kind.value,
                detail=detail,
                group=group,
                count=count,
                threshold=threshold,
                baseline=round(baseline, 3) if baseline is not None else None,
                sample=sample[:2000] if sample else None,
            )
        )
        if group is not None and self._link is not None:
            self._link(group, incident, self._wall())
        return firing

    def _resolve(self, key: tuple[str, str], firing: _Firing, detail: str) -> None:
        del self._firings[key]
        if firing.timer is not None:
            firing.timer.cancel()
        rule = self._rule(key[0])
        kind = rule.kind.value if rule is not None else ""
        self._bus.publish(
            ev.RuleResolved(
                service=firing.service,
                incident=firing.incident,
                rule=key[0],
                kind=kind,
                detail=detail,
                group=firing.group,
            )
        )
        self._bus.publish(
            ev.IncidentClosed(service=firing.service, incident=firing.incident, outcome="resolved")
        )


def _is_sign_of_life(event: ev.Event) -> bool:
    if isinstance(event, ev.OutputSeen | ev.ServiceReady | ev.ServiceStatusText):
        return True
    return isinstance(event, ev.ServiceExited) and event.result == "success"
