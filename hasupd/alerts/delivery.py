"""Delivering spooled alerts: one task per channel that has messages, retries with exponential backoff.

``submit()`` is what the synchronous bus callbacks call: it queues and returns. ``run()`` writes each
queued message to the spool (fsynced, in a worker thread) and only then lets the channel's task try
it. A channel's task exists only while the channel has messages; it sleeps until the next retry is due
or something new arrives (a timer per retry, no polling).

Every channel is delivered alike, whatever its transport (``hasupd.alerts.transport``: email, apprise,
pagerduty, sendmail). Two kinds of failure:

- the connection, TLS or login failed (or the server stalled, or an endpoint answered 5xx): every
  message of the channel would fail alike, so the channel backs off as a whole, ``RETRY_MIN_SEC``
  doubling up to ``RETRY_MAX_SEC``;
- the server refused one message (MAIL, RCPT or DATA answered 4xx/5xx; an Events v2 400): that message
  backs off alone and the others go on.

Each failed attempt is one ``alert.failed`` record; each accepted message one ``alert.sent``. A message
with a waiter (``hasupctl alert test``) is tried at once even while its channel backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from hasupd import events as ev
from hasupd.alerts.mail import DeliveryError, Mailer
from hasupd.alerts.spool import Spool, SpoolEntry
from hasupd.alerts.transport import MailTransport, Session, Transport, pick
from hasupd.config.model import AlertChannel
from hasupd.restart import backoff_delay

RETRY_MIN_SEC = 5.0
RETRY_MAX_SEC = 600.0


@dataclass
class _ChannelState:
    failures: int = 0  # connection-level failures in a row
    until: float = 0.0  # loop time before which only urgent messages are tried


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Delivery:
    """Spools and delivers messages for the channels that ``channels()`` currently configures."""

    def __init__(
        self,
        spool: Spool,
        mailer: Mailer,
        channels: Callable[[], Mapping[str, AlertChannel]],
        publish: Callable[[ev.Event], None],
        *,
        retry_min: float = RETRY_MIN_SEC,
        retry_max: float = RETRY_MAX_SEC,
        rand: Callable[[], float] = random.random,
        transports: Mapping[str, Transport] | None = None,
    ) -> None:
        self._spool = spool
        # email through ``mailer``; the other transports by name (AlertChannel.transport)
        self._transports: dict[str, Transport] = {"email": MailTransport(mailer), **(transports or {})}
        self._channels = channels
        self._publish = publish
        self._retry = (retry_min, retry_max)
        self._rand = rand
        self._queue: asyncio.Queue[SpoolEntry] = asyncio.Queue()
        self._tasks: asyncio.TaskGroup | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._state: dict[str, _ChannelState] = {}

    @property
    def depth(self) -> int:
        """Return how many messages wait for delivery (spooled, or about to be)."""
        return len(self._spool) + self._queue.qsize()

    def submit(self, entry: SpoolEntry) -> None:
        """Queue ``entry`` to be spooled, then delivered; return at once (safe in a bus callback)."""
        self._queue.put_nowait(entry)

    def retry_now(self, channel: str) -> None:
        """Forget the channel's backoff and try its messages now (its settings changed)."""
        state = self._state.get(channel)
        if state is not None:
            state.failures, state.until = 0, 0.0
        for entry in self._spool.of_channel(channel):
            entry.next_try = 0.0
        self._kick(channel)

    async def deliver_now(self, entry: SpoolEntry, timeout: float) -> tuple[bool, str]:
        """Spool ``entry`` and try it at once, whatever the channel's backoff; return (accepted, the
        server's answer or the error). After ``timeout`` return (False, ...): it stays spooled."""
        entry.waiter = asyncio.get_running_loop().create_future()
        self.submit(entry)
        try:
            return await asyncio.wait_for(asyncio.shield(entry.waiter), timeout)
        except TimeoutError:
            entry.waiter = None
            return False, f"no answer within {timeout:g}s; the message stays spooled and is retried"

    async def run(self) -> None:
        """Load the spool, deliver what it holds, then spool and deliver what is submitted; return only
        when cancelled (what is spooled stays for the next start)."""
        try:
            bad = await self._spool.open()
        except OSError as e:
            bad = [(str(self._spool.folder), f"cannot open the spool ({e}); messages are kept in memory")]
        for name, problem in bad:
            self._publish(ev.AlertDropped(channel="-", message_id=name, reason=problem))
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            for channel in sorted({e.channel for e in self._spool.entries}):
                self._kick(channel)
            while True:
                await self._store(await self._queue.get())

    # ------------------------------------------------------------------ spooling

    async def _store(self, entry: SpoolEntry) -> None:
        try:
            victims = await self._spool.add(entry)
        except OSError as e:
            # Delivering it is still better than losing it: it may be the alert about the full disk.
            self._spool.entries.append(entry)
            self._failed(entry, f"cannot write it to the spool ({e}); kept in memory only", 0, 0.0)
            victims = []
        for old in victims:
            self._publish(
                ev.AlertDropped(
                    service=old.service,
                    incident=old.incident,
                    channel=old.channel,
                    message_id=old.message_id,
                    reason=(
                        f"spool full ({self._spool.max_messages} messages or {self._spool.max_bytes} "
                        f"bytes): the oldest message ({old.subject!r}) was dropped"
                    ),
                )
            )
            self._answer(old, False, "dropped from a full spool")
        self._kick(entry.channel)

    def _kick(self, name: str) -> None:
        if name in self._workers:
            self._wake[name].set()
        elif self._tasks is not None:
            self._wake[name] = asyncio.Event()
            self._workers[name] = self._tasks.create_task(self._work(name))

    # ------------------------------------------------------------------ delivering

    async def _work(self, name: str) -> None:
        """Deliver the channel's messages until none is left."""
        loop = asyncio.get_running_loop()
        wake = self._wake[name]
        state = self._state.setdefault(name, _ChannelState())
        try:
            while entries := self._spool.of_channel(name):
                wake.clear()
                channel = self._channels().get(name)
                if channel is None:
                    await self._drop(entries, f"alert channel {name} is no longer configured")
                    continue
                now = loop.time()
                due = [e for e in entries if e.waiter is not None]
                if state.until <= now:
                    due += [e for e in entries if e.waiter is None and e.next_try <= now]
                if due:
                    await self._deliver(channel, due, state)
                    continue
                wait_until = max(state.until, min(e.next_try for e in entries))
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
                # arrives as the wake-up does (hasupd stopping while a new alert is spooled), and this
                # loop would then go on until the channel's messages are delivered.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait_until - now)):
                        await wake.wait()
        finally:
            del self._workers[name], self._wake[name]

    async def _drop(self, entries: list[SpoolEntry], reason: str) -> None:
        for entry in entries:
            with contextlib.suppress(
                OSError
            ):  # out of the index already; a file left behind is dropped again next start
                await self._spool.remove(entry)
            self._publish(
                ev.AlertDropped(
                    service=entry.service,
                    incident=entry.incident,
                    channel=entry.channel,
                    message_id=entry.message_id,
                    reason=reason,
                )
            )
            self._answer(entry, False, reason)

    async def _deliver(self, channel: AlertChannel, due: list[SpoolEntry], state: _ChannelState) -> None:
        """Try ``due`` in one session (one SMTP connection for email); back the channel off if the
        session fails."""
        pending = list(due)
        try:
            async with pick(self._transports, channel).session(channel) as session:
                while pending:
                    if pending[0] in self._spool.entries:  # not dropped meanwhile
                        await self._send(channel, session, pending[0])
                    pending.pop(0)
        except DeliveryError as error:
            state.failures += 1
            delay = self._backoff(state.failures)
            state.until = asyncio.get_running_loop().time() + delay
            head = pending[0] if pending else due[0]
            self._failed(head, str(error), state.failures, delay)
            for entry in pending:
                self._answer(entry, False, str(error))
            return
        state.failures, state.until = 0, 0.0

    async def _send(self, channel: AlertChannel, session: Session, entry: SpoolEntry) -> None:
        """Send one message. Raise DeliveryError if the session failed (the message stays spooled)."""
        dropped = self._spool.dropped.get(channel.name, 0)
        entry.in_flight = True
        try:
            accepted = await session.send(entry, dropped)
        except DeliveryError as error:
            if error.session:
                raise
            entry.attempts += 1
            delay = self._backoff(entry.attempts)
            entry.next_try = asyncio.get_running_loop().time() + delay
            self._failed(entry, str(error), entry.attempts, delay)
            self._answer(entry, False, str(error))
            return
        finally:
            entry.in_flight = False
        delivered = tuple(r for r in entry.recipients if r not in accepted.refused)
        try:
            if accepted.refused:
                entry.recipients = tuple(accepted.refused)
                entry.attempts += 1
                delay = self._backoff(entry.attempts)
                entry.next_try = asyncio.get_running_loop().time() + delay
                await self._spool.rewrite(entry)
                refused = "; ".join(f"{r}: {m}" for r, m in accepted.refused.items())
                self._failed(entry, f"refused for some recipients: {refused}", entry.attempts, delay)
            else:
                await self._spool.remove(entry)
            if dropped:
                await self._spool.reported(channel.name, dropped)
        except OSError as e:
            self._failed(
                entry, f"delivered, but the spool could not be updated ({e}): it may be sent again", 0, 0
            )
        self._publish(
            ev.AlertSent(
                service=entry.service,
                incident=entry.incident,
                channel=channel.name,
                message_id=entry.message_id,
                subject=entry.subject,
                response=accepted.response,
                recipients=delivered,
            )
        )
        self._answer(entry, True, accepted.response)

    # ------------------------------------------------------------------ helpers

    def _backoff(self, failures: int) -> float:
        return backoff_delay(max(0, failures - 1), self._retry[0], self._retry[1], self._rand)

    def _failed(self, entry: SpoolEntry, error: str, attempts: int, delay: float) -> None:
        self._publish(
            ev.AlertFailed(
                service=entry.service,
                incident=entry.incident,
                channel=entry.channel,
                message_id=entry.message_id,
                error=error,
                attempts=attempts,
                retry_in_sec=round(delay, 3),
                next_retry=_iso(time.time() + delay),
                waiting=len(self._spool.of_channel(entry.channel)),
            )
        )

    @staticmethod
    def _answer(entry: SpoolEntry, ok: bool, text: str) -> None:
        """Tell a waiting ``hasupctl alert test``; from then on the message is an ordinary one."""
        if entry.waiter is not None and not entry.waiter.done():
            entry.waiter.set_result((ok, text))
        entry.waiter = None
