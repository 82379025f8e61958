"""What delivery sees of a channel's transport, and the pieces the transports share.

Delivery (``hasupd.alerts.delivery``) opens a ``Session`` per batch of due messages and sends them one
by one; a transport raises ``DeliveryError`` with ``session=True`` when every message of the channel
would fail alike (the channel backs off as a whole) and ``session=False`` when only this message was
refused (it backs off alone). Email keeps its own ``Mailer`` (an SMTP session is a real connection);
the other transports open no connection until they send.

Blocking clients (Apprise, urllib) run in ``ChannelThreads``: one worker thread per channel, so a hung
endpoint holds its own channel's thread and nothing else (not the loop's default executor, which the
spool's fsyncs use). Every call there is bounded on the loop's side too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

from hasupd.alerts.mail import Accepted, DeliveryError, Mailer, MailSession, render
from hasupd.alerts.spool import SpoolEntry
from hasupd.config.model import AlertChannel

T = TypeVar("T")


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
    """One worker thread per channel for blocking clients; calls are bounded on the loop's side."""

    def __init__(self) -> None:
        self._pools: dict[str, concurrent.futures.ThreadPoolExecutor] = {}

    async def run(self, channel: str, call: Callable[[], T], timeout: float) -> T:
        """Return ``call()`` run in the channel's thread. Raise DeliveryError(session=True) if it takes
        longer than ``timeout`` (the thread finishes on its own: every client call has a timeout)."""
        pool = self._pools.get(channel)
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"hasupd-alert-{channel}")
            self._pools[channel] = pool
        future = asyncio.get_running_loop().run_in_executor(pool, call)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeliveryError(f"no answer within {timeout:g}s", session=True) from None

    def close(self) -> None:
        """Let the threads end once their current call returns (nothing waits for them)."""
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools.clear()


class _MailSession:
    def __init__(self, session: MailSession) -> None:
        self._session = session

    async def send(self, entry: SpoolEntry, dropped: int) -> Accepted:
        return await self._session.send(entry.sender, entry.recipients, render(entry, dropped))


class MailTransport:
    """Email over SMTP through a ``Mailer``."""

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer

    @asynccontextmanager
    async def session(self, channel: AlertChannel) -> AsyncIterator[Session]:
        assert channel.email is not None
        async with self._mailer.session(channel.email.smtp) as session:
            yield _MailSession(session)


def pick(transports: Mapping[str, Transport], channel: AlertChannel) -> Transport:
    """Return the transport of ``channel``. Raise DeliveryError(session=True) if there is none."""
    found = transports.get(channel.transport)
    if found is None:
        raise DeliveryError(f"no {channel.transport} transport in this hasupd", session=True)
    return found
