"""Live updates for open dashboard pages: server-sent events fed from the event bus, never polled.

Bus events mark what they touched (a unit, the backups, the alert spool); a flush shortly after the
first mark of a burst sends, to every open page, only the rows that changed and the notable events
themselves. With no page open the bus subscriber only adds names to a set; with pages open and
nothing happening, the only traffic is one comment line per ``KEEPALIVE_SEC`` per page.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from hasupd import events as ev
from hasupd.observe.logs import event_record

FLUSH_DELAY_SEC = 0.05  # changes within this window go out as one message
KEEPALIVE_SEC = 20.0  # a comment line: proxies keep the stream open, a gone client is noticed
CLIENT_QUEUE = 256  # messages a slow page may lag behind before it is dropped (it reconnects)
# Events a page shows as they come (the "latest events" list), besides the rows they change.
_NOTABLE_LEVEL = logging.WARNING
_NOTABLE = frozenset({ev.ServiceStarted.NAME, ev.IncidentClosed.NAME, ev.HealthRecovered.NAME})
_BACKUP_PREFIXES = ("backup.", "drill.")
_ALERT_PREFIX = "alert."

Rows = Callable[[list[str]], list[dict[str, Any]]]  # unit names -> their rows (unknown names left out)
Backups = Callable[[], Awaitable[list[dict[str, Any]]]]
Summary = Callable[[], dict[str, Any]]


def sse(message: dict[str, Any]) -> bytes:
    """Return ``message`` as one server-sent event (``data:`` line, blank line)."""
    return b"data: " + json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n\n"


class LiveFeed:
    """Collects what bus events changed and sends it to every connected page."""

    def __init__(self, bus: ev.EventBus, rows: Rows, backups: Backups, summary: Summary) -> None:
        self._rows = rows
        self._backups = backups
        self._summary = summary
        self._units: set[str] = set()
        self._notable: list[dict[str, Any]] = []
        self._backups_dirty = False
        self._summary_dirty = False
        self._wake = asyncio.Event()
        # Open pages, oldest first (a dict keeps the order in which they connected).
        self.clients: dict[asyncio.Queue[bytes | None], None] = {}
        self._unsubscribe = bus.subscribe(self._on_event)

    def close(self) -> None:
        """Stop listening to the bus and end every open stream."""
        self._unsubscribe()
        for queue in list(self.clients):
            self._offer(queue, None)

    def connect(self, limit: int) -> asyncio.Queue[bytes | None]:
        """Return a new page's queue of messages (None: the stream ends). With ``limit`` pages open
        already, the oldest one's stream ends: a closed page is only noticed at its next write, and a
        page still open reconnects by itself."""
        while len(self.clients) >= limit:
            self._end(next(iter(self.clients)))
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE)
        self.clients[queue] = None
        return queue

    def disconnect(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.clients.pop(queue, None)

    def _on_event(self, event: ev.Event) -> None:
        if not self.clients:
            return  # nobody watches: a page that connects later gets everything anew
        name = event.NAME
        if event.service is not None and isinstance(
            event, ev.ServiceStateChanged | ev.ServiceStarted | ev.ServiceExited | ev.HealthFailed
            | ev.HealthRecovered | ev.IncidentOpened | ev.IncidentClosed | ev.ServiceStatusText
            | ev.ServiceRestartScheduled | ev.ServiceFailed
        ):  # fmt: skip
            self._units.add(event.service)
        if name.startswith(_BACKUP_PREFIXES):
            self._backups_dirty = True
        if name.startswith(_ALERT_PREFIX) or isinstance(event, ev.ConfigApplied):
            self._summary_dirty = True
        if event.level() >= _NOTABLE_LEVEL or name in _NOTABLE:
            self._notable.append(event_record(event))
        if self._units or self._notable or self._backups_dirty or self._summary_dirty:
            self._wake.set()

    async def run(self) -> None:
        """Send what changed, a burst at a time, until cancelled."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_DELAY_SEC)  # the rest of the burst joins this message
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        units, self._units = sorted(self._units), set()
        notable, self._notable = self._notable, []
        message: dict[str, Any] = {}
        if units:
            rows = self._rows(units)
            known = {row["name"] for row in rows}
            message["units"] = rows
            removed = [u for u in units if u not in known]
            if removed:
                message["removed"] = removed
        if notable:
            message["events"] = notable
        if self._backups_dirty:
            self._backups_dirty = False
            message["backups"] = await self._backups()
        if self._summary_dirty or units:
            self._summary_dirty = False
            message["daemon"] = self._summary()
        self.broadcast(message)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every open page (a page too far behind is dropped: it reconnects)."""
        if not message:
            return
        data = sse(message)
        for queue in list(self.clients):
            self._offer(queue, data)

    def _offer(self, queue: asyncio.Queue[bytes | None], data: bytes | None) -> None:
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            self._end(queue)

    def _end(self, queue: asyncio.Queue[bytes | None]) -> None:
        """End the stream of ``queue`` now: what it had not sent yet is dropped."""
        self.clients.pop(queue, None)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
