"""Timers: oneshot services with ``schedule:`` started on their cron expression.

The backup scheduler's rules (``hasupd.backup.schedule``: Vixie cron, UTC wall clock) decide the slots.
Each start is stamped in ``STATE_DIR/timers/NAME.last`` when it is triggered; with ``persistent: true`` a
slot that passed since the stamp (hasupd or the host was down) runs once, soon after start, like
systemd's ``Persistent=true``; without it, missed slots are skipped. ``randomized_delay_sec`` delays each
run by a random 0..N seconds. A run is an ordinary start of the unit, so its records, incidents and
alerts are those of any service. A disabled or masked timer service is not started (recorded), nor one
still running from its previous slot. One wall-clock timer per service, re-armed at least hourly so a
clock jump is noticed; nothing ticks over all of them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hasupd import events as ev
from hasupd.config.model import ServiceConfig
from hasupd.files import atomic_write_text
from hasupd.manager import Manager

log = logging.getLogger(__name__)

MAX_TIMER_SEC = 3600.0
STAMP_DIR = "timers"
_MAX_STAMP = 100  # an ISO time is 32 characters: a longer stamp is damaged, not read whole


@dataclass(frozen=True)
class _Due:
    config: ServiceConfig
    slot: datetime  # the slot of the schedule
    when: datetime  # the slot plus its random delay
    missed: bool  # a persistent timer's slot that passed while hasupd was down


class Timers:
    """Arms the schedule of every timer service of ``manager`` and starts them when due."""

    def __init__(
        self,
        manager: Manager,
        state_dir: str | Path,
        loop: asyncio.AbstractEventLoop,
        *,
        rand: Callable[[float, float], float] = random.uniform,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._manager = manager
        self._dir = Path(state_dir) / STAMP_DIR
        self._loop = loop
        self._rand = rand
        self._now = now
        self._due: dict[str, _Due] = {}
        self._handles: dict[str, asyncio.TimerHandle] = {}
        self._closed = False
        self._damaged: set[Path] = set()  # damaged stamps already reported

    # ------------------------------------------------------------------ stamps

    def _stamp_path(self, name: str) -> Path:
        return self._dir / f"{name}.last"

    def last_run(self, name: str) -> datetime | None:
        """Return when timer ``name`` last triggered (None: never, or the stamp is damaged: then a
        warning names the file, once, and a persistent timer catches up as if it had never run)."""
        path = self._stamp_path(name)
        try:
            with open(path, "rb") as f:
                raw = f.read(_MAX_STAMP + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            problem = error.strerror or str(error)
        else:
            try:
                when = datetime.fromisoformat(raw.decode("utf-8").strip())
            except ValueError:  # not UTF-8 too (UnicodeDecodeError)
                problem = "not a time"
            else:
                if when.tzinfo is not None:
                    return when
                problem = "a time without its zone"
        if path not in self._damaged:
            self._damaged.add(path)
            log.warning("%s: damaged timer stamp (%s): %s counts as never run", path, problem, name)
        return None

    def _set_stamp(self, name: str, when: datetime) -> None:
        """Write the stamp of ``name``. Cannot (a full disk, a read-only state dir): a warning naming the
        file, and the timer goes on; its slot may then run again after a restart of hasupd."""
        path = self._stamp_path(name)
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # a folder in its place (damage): else no stamp could ever be kept
            atomic_write_text(path, when.isoformat() + "\n")
        except OSError as error:
            log.warning("%s: cannot write the timer stamp of %s: %s", path, name, error.strerror or error)
        else:
            self._damaged.discard(path)

    # ------------------------------------------------------------------ arming

    def next_run(self, name: str) -> datetime | None:
        """Return when timer ``name`` runs next (None: not a timer)."""
        due = self._due.get(name)
        return due.when if due is not None else None

    def sync(self) -> None:
        """Arm the timers of the manager's config (at start and after each reload): new or changed
        ones anew, removed ones cancelled, unchanged ones kept as they are."""
        wanted = {s.name: s for s in self._manager.config.services if s.schedule is not None}
        for name in list(self._due):
            if wanted.get(name) != self._due[name].config:
                self._cancel(name)
        for name, config in wanted.items():
            if name not in self._due:
                self._plan(config)

    def close(self) -> None:
        self._closed = True
        for name in list(self._due):
            self._cancel(name)

    def _cancel(self, name: str) -> None:
        self._due.pop(name, None)
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _plan(self, config: ServiceConfig) -> None:
        assert config.schedule is not None
        now = self._now()
        last = self.last_run(config.name)
        if last is None or last > now:
            # The first time hasupd sees this timer: slots from now on (nothing was missed yet). A stamp
            # in the future was written while the clock was wrong: taken as now too (as systemd does),
            # else the timer would wait until then (or fail past year 9999).
            self._set_stamp(config.name, now)
            last = now
        base = last if config.persistent else max(last, now)
        # Here: the cron parser is loaded with the first timer (services with ``schedule:``) or job.
        from hasupd.backup.schedule import next_run  # noqa: PLC0415

        slot = next_run(config.schedule, base)
        missed = slot <= now
        delay = self._rand(0.0, config.randomized_delay_sec) if config.randomized_delay_sec > 0 else 0.0
        when = (now if missed else slot) + timedelta(seconds=delay)
        self._due[config.name] = _Due(config, slot, when, missed)
        self._arm(config.name)

    def _arm(self, name: str) -> None:
        due = self._due.get(name)
        if due is None or self._closed:
            return
        left = (due.when - self._now()).total_seconds()
        if left <= 0:
            self._handles.pop(name, None)
            self._fire(name, due)
            return
        self._handles[name] = self._loop.call_later(min(left, MAX_TIMER_SEC), self._arm, name)

    def _fire(self, name: str, due: _Due) -> None:
        self._due.pop(name, None)
        self._set_stamp(name, self._now())
        reason = self._skip_reason(name)
        if reason is not None:
            self._manager.publish(ev.TimerSkipped(service=name, reason=reason))
        else:
            self._manager.publish(
                ev.TimerTriggered(service=name, scheduled=due.slot.isoformat(), missed=due.missed)
            )
            for unit in self._manager.resolve(name):
                self._manager.start(unit)
        self._plan(due.config)

    def _skip_reason(self, name: str) -> str | None:
        states = self._manager.unit_states
        if states is not None and name in states.masked:
            return "masked"
        if states is not None and name in states.disabled:
            return "disabled"
        if name not in self._manager.units:
            return "no such service any more"
        if any(not self._manager.services[u].is_inactive for u in self._manager.units[name]):
            return "the previous run is still going"
        return None
