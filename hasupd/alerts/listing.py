"""What ``hasupctl alert list`` shows: the silences in force, the messages still waiting for delivery
and the latest alert records (sent, failed, dropped, suppressed), kept in memory from the bus."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from hasupd import events as ev
from hasupd.alerts.silences import Silences
from hasupd.alerts.spool import Spool

RECENT_KEPT = 50


class Recent:
    """The latest ``alert.*`` records, newest last (bounded)."""

    def __init__(self, kept: int = RECENT_KEPT) -> None:
        self._items: deque[ev.Event] = deque(maxlen=kept)

    def add(self, event: ev.Event) -> None:
        self._items.append(event)

    def as_json(self) -> list[dict[str, Any]]:
        """Return each record's tags with its time and sentence."""
        return [{"time": e.time, **e.tags(), "message": e.message()} for e in self._items]


def listing(silences: Silences, spool: Spool, recent: Recent, now: float | None = None) -> dict[str, Any]:
    """Return the answer of ``alert list``: ``silences``, ``pending`` (spooled, oldest first) and
    ``recent`` records."""
    now = time.time() if now is None else now
    return {
        "silences": [
            {
                "target": s.target,
                "until": s.until,
                "left_sec": round(s.until - now, 1),
                "reason": s.reason,
                "by": s.by,
                "created": s.created,
            }
            for s in silences.active(now)
        ],
        "pending": [
            {
                "channel": e.channel,
                "kind": e.kind,
                "subject": e.subject,
                "service": e.service,
                "incident": e.incident,
                "created": e.created,
                "attempts": e.attempts,
                "message_id": e.message_id,
            }
            for e in spool.entries
        ],
        "recent": recent.as_json(),
    }
