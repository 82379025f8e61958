"""Silences: "no alerts about TARGET for DURATION", kept in ``STATE_DIR/silences.json`` so they
survive a restart of hasupd.

A silence matches an alert when its target equals one of the alert's keys (``keys()``): the service
(``web`` also matches its instances ``web@0``...), the event name (``service.failed``), the alert kind
(``restart``), and the ``group``, ``rule`` and ``job`` fields of the event when it has them (an error
group id, an anomaly rule's name, a backup job). So silences work the same for every alert, whichever
part of hasupd raised it. An expired silence simply stops matching (wall clock, checked per alert: no
timer); expired ones are dropped from the file at the next change.

The file is small and written atomically (temp file, fsync, rename) in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hasupd import events as ev
from hasupd.files import atomic_write_bytes

FILE = "silences.json"
MAX_SILENCES = 1000
_EVENT_KEYS = ("group", "rule", "job")  # event fields a silence can name, besides service and event


@dataclass(frozen=True)
class Silence:
    target: str
    until: float  # wall clock
    reason: str
    created: float
    by: str  # the user who asked

    def active(self, now: float) -> bool:
        """True while the silence holds at ``now``."""
        return now < self.until


def iso(ts: float) -> str:
    """Return wall-clock ``ts`` as an ISO time in UTC, to the second."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def keys(event: ev.Event, kind: str) -> set[str]:
    """Return every name a silence can match an alert by (see the module's docstring)."""
    found = {event.NAME, kind}
    if event.service:
        found |= {event.service, event.service.split("@", 1)[0]}
    for name in _EVENT_KEYS:
        value = getattr(event, name, None)
        if isinstance(value, str) and value:
            found.add(value)
    return found


def _silence(item: Any) -> Silence | None:
    """Return the silence an entry of the file describes, or None if it is not one hasupd writes (a
    wrong type would otherwise fail every later alert's ``match``, and ``alert-list``)."""
    if not isinstance(item, dict):
        return None
    target, reason, by = (item.get(k) for k in ("target", "reason", "by"))
    until, created = (item.get(k) for k in ("until", "created"))
    if not (isinstance(target, str) and isinstance(reason, str) and isinstance(by, str)):
        return None
    times = [float(t) for t in (until, created) if isinstance(t, int | float) and not isinstance(t, bool)]
    if len(times) != 2 or not all(map(math.isfinite, times)):
        return None
    return Silence(target=target, until=times[0], reason=reason, created=times[1], by=by)


class Silences:
    """The silences in force, loaded from and saved to ``folder / FILE``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE
        self._items: list[Silence] = []

    def _load(self) -> tuple[list[Silence], str | None]:
        try:
            raw: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return [], None
        except RecursionError:
            raise ValueError("not JSON (nested too deep)") from None
        if not isinstance(raw, list):
            return [], f"cannot read {self.path}: not a list of silences (a {type(raw).__name__})"
        found = [s for s in map(_silence, raw) if s is not None]
        skipped = len(raw) - len(found)
        return found, f"{self.path}: {skipped} entries are not silences, left out" if skipped else None

    def load(self) -> str | None:
        """Load the file (at build time: it is small); return the problem if it could not be read
        (then no silence holds) or if entries of it were left out (then the others hold)."""
        try:
            self._items, problem = self._load()
        except (OSError, ValueError) as e:
            return f"cannot read {self.path}: {str(e)[:200]}"
        return problem

    def match(self, names: Iterable[str], now: float | None = None) -> Silence | None:
        """Return the active silence (the one that lasts longest) matching any of ``names``, or None."""
        now = time.time() if now is None else now
        wanted = set(names)
        hits = [s for s in self._items if s.active(now) and s.target in wanted]
        return max(hits, key=lambda s: s.until) if hits else None

    def active(self, now: float | None = None) -> list[Silence]:
        """Return the silences in force, soonest to end first."""
        now = time.time() if now is None else now
        return sorted((s for s in self._items if s.active(now)), key=lambda s: s.until)

    async def add(self, target: str, seconds: float, reason: str, by: str) -> Silence:
        """Silence ``target`` for ``seconds`` from now (replacing an earlier silence of the same target;
        0 seconds lifts it) and save. Raise OSError if the file cannot be written (nothing changes)."""
        now = time.time()
        silence = Silence(target=target, until=now + seconds, reason=reason, created=now, by=by)
        items = [s for s in self._items if s.active(now) and s.target != target]
        if seconds > 0:
            items.append(silence)
        items = items[-MAX_SILENCES:]
        data = json.dumps([asdict(s) for s in items], indent=1).encode()
        await asyncio.to_thread(atomic_write_bytes, self.path, data)
        self._items = items
        return silence


def suppression(silences: Silences, event: ev.Event, kind: str, headline: str) -> ev.AlertSuppressed | None:
    """Return the ``alert.suppressed`` record if a silence holds back the alert ``kind`` about ``event``
    (with ``headline``), else None."""
    silence = silences.match(keys(event, kind))
    if silence is None:
        return None
    return ev.AlertSuppressed(
        service=event.service,
        incident=event.incident,
        kind=kind,
        headline=headline,
        silence=silence.target,
        until=iso(silence.until),
        reason=silence.reason,
    )
