"""What delivery sees of a channel's transport, and the pieces the transports share.

Delivery (``hasupd.alerts.delivery``) opens a ``Session`` per batch of due messages and sends them one
by one; a transport raises ``DeliveryError`` with ``session=True`` when every message of the channel
would fail alike (the channel backs off as a whole) and ``session=False`` when only this message was
refused (it backs off alone). Email keeps its own ``Mailer`` (an SMTP session is a real connection);
the other transports open no connection until they send.

Blocking clients (Apprise, urllib) run in ``ChannelThreads``: at most one thread per channel, so a hung
endpoint holds its own channel's thread and nothing else (not the loop's default executor, which the
spool's fsyncs use). Every call there is bounded on the loop's side too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

from hasupd.alerts.mail import Accepted, DeliveryError, Mailer, MailSession, render
from hasupd.alerts.spool import SpoolEntry
from hasupd.config.model import ALERT_LEVELS, AlertChannel

T = TypeVar("T")
EVERY_TARGET = "*"  # the recipients of a message not made for mail: whoever the channel names now


def envelope(entry: SpoolEntry, from_addr: str, to: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Return (sender, recipients) for mailing ``entry``: its own, or the channel's ``from_addr`` and
    ``to`` when it was made for another transport (the channel was changed by a reload meanwhile)."""
    if EVERY_TARGET in entry.recipients or not entry.sender:
        return from_addr, to
    return entry.sender, entry.recipients


class Session(Protocol):
    async def send(self, entry: SpoolEntry, dropped: int) -> Accepted:
        """Send one message (noting ``dropped`` older ones). Return what was accepted. Raise
        DeliveryError."""
        ...


class Transport(Protocol):
    def session(self, channel: AlertChannel) -> AbstractAsyncContextManager[Session]:
        """Return a ready session for ``channel``. Entering raises DeliveryError (session=True)."""
        ...


def plain(entry: SpoolEntry, dropped: int = 0) -> str:
    """Return the text of a chat or pager message: the body, with the note about dropped alerts."""
    if not dropped:
        return entry.body
    return f"NOTE: {dropped} older alert(s) were dropped: the spool was full.\n\n{entry.body}"


def level_name(level: int) -> str:
    """Return the name in ALERT_LEVELS of the highest level not above logging level ``level``."""
    names = [name for name, value in ALERT_LEVELS.items() if value <= level]
    return names[-1] if names else "debug"


def attempt_bound(channel: AlertChannel) -> float:
    """Return the most one delivery attempt on ``channel`` can take, in seconds (with some slack)."""
    if channel.email is not None:
        return channel.email.smtp.timeout_sec * 12 + 5
    if channel.sendmail is not None:
        return channel.sendmail.timeout_sec + 5
    if channel.pagerduty is not None:
        return channel.pagerduty.timeout_sec * 2 + 5
    return channel.timeout_sec * 2 * max(1, len(channel.apprise)) + 5


class ChannelThreads:
    """At most one worker thread per channel for blocking clients; calls are bounded on the loop's side.

    The threads are daemon threads: one stuck on a hung endpoint (until its client's own timeout)
    never holds up hasupd's exit. While a channel's previous call still runs, a new one fails at once
    instead of starting a second thread: threads cannot pile up behind a hung endpoint.
    """

    def __init__(self) -> None:
        self._busy: dict[str, threading.Event] = {}  # channel -> set once its last call returned

    async def run(self, channel: str, call: Callable[[], T], timeout: float) -> T:
        """Return ``call()`` run in a thread of its own. Raise DeliveryError(session=True) if it takes
        longer than ``timeout`` (the thread finishes on its own: every client call has a timeout), or
        if the channel's previous call has not finished yet. Exceptions of ``call`` propagate."""
        previous = self._busy.get(channel)
        if previous is not None and not previous.is_set():
            raise DeliveryError("the previous attempt has not finished yet (no answer)", session=True)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return  # timed out meanwhile
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        done = threading.Event()

        def work() -> None:
            try:
                result = call()
            except BaseException as e:  # noqa: BLE001 (handed over to the loop, raised there)
                done.set()  # before the loop hears of it: the channel's next call may start
                with contextlib.suppress(RuntimeError):  # the loop closed: hasupd is exiting
                    loop.call_soon_threadsafe(settle, None, e)
                return
            done.set()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, None)

        self._busy[channel] = done
        threading.Thread(target=work, name=f"hasupd-alert-{channel}", daemon=True).start()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: 3.11's can lose a cancellation
                return await future
        except TimeoutError:
            raise DeliveryError(f"no answer within {timeout:g}s", session=True) from None


class _MailSession:
    def __init__(self, session: MailSession, from_addr: str, to: tuple[str, ...]) -> None:
        self._session = session
        self._from_addr = from_addr
        self._to = to

    async def send(self, entry: SpoolEntry, dropped: int) -> Accepted:
        sender, recipients = envelope(entry, self._from_addr, self._to)
        return await self._session.send(sender, recipients, render(entry, dropped))


class MailTransport:
    """Email over SMTP through a ``Mailer``."""

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer

    @asynccontextmanager
    async def session(self, channel: AlertChannel) -> AsyncIterator[Session]:
        assert channel.email is not None
        async with self._mailer.session(channel.email.smtp) as session:
            yield _MailSession(session, channel.email.from_addr, channel.email.to)


def pick(transports: Mapping[str, Transport], channel: AlertChannel) -> Transport:
    """Return the transport of ``channel``. Raise DeliveryError(session=True) if there is none."""
    found = transports.get(channel.transport)
    if found is None:
        raise DeliveryError(f"no {channel.transport} transport in this hasupd", session=True)
    return found
