"""Chat and push alerts through Apprise (ntfy, Gotify, Slack, Mattermost, Matrix, Telegram, Discord,
Opsgenie, JSON webhooks, ...): one channel, one or more Apprise URLs.

Works with Debian 12's apprise 1.2 and the newest 2.x: both have ``Apprise.instantiate(url)``, a
plugin's ``notify(body=, title=, notify_type=)`` returning a bool, the ``socket_connect_timeout`` /
``socket_read_timeout`` attributes that bound each HTTP request, and ``LogCapture`` for the reason
of a failure. Apprise is blocking (requests): every call runs in the channel's own thread
(``ChannelThreads``), and ``import apprise`` itself (it loads every plugin: slow) happens there too.

Each URL is a target. A message owes a copy to its ``recipients``: ``("*",)`` at first (every target
of the channel as configured when it is sent), then the ids of the targets that failed, so a retry
does not repeat a copy that was delivered. A target's id is a hash of its URL, never the URL: URLs
hold tokens, and ids land in records.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hasupd.alerts.mail import Accepted, DeliveryError
from hasupd.alerts.spool import SpoolEntry
from hasupd.alerts.transport import EVERY_TARGET, ChannelThreads, Session, plain
from hasupd.config.model import ALERT_LEVELS, AlertChannel

__all__ = ["EVERY_TARGET", "AppriseTransport", "notify_type", "target_id"]


def target_id(url: str) -> str:
    """Return the id of the Apprise target ``url`` ("ntfy-3f2a9c1d"): its scheme and a short hash."""
    scheme = urllib.parse.urlsplit(url).scheme or "url"
    return f"{scheme}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def notify_type(entry: SpoolEntry) -> str:
    """Return Apprise's notify type for ``entry``: success for a resolved notice, else by level."""
    if entry.resolves:
        return "success"
    level = ALERT_LEVELS.get(entry.level, logging.ERROR)
    if level >= logging.ERROR:
        return "failure"
    return "warning" if level >= logging.WARNING else "info"


def _notify_one(url: str, title: str, body: str, kind: str, timeout: float) -> str | None:
    """Send to one target, in a worker thread. Return None if it was accepted, else why not."""
    import apprise  # noqa: PLC0415  (here, in the worker thread: importing it loads every plugin)

    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if not plugin:
        return f"Apprise does not understand target {target_id(url)}"
    # Each HTTP request is bounded by these (requests' connect and read timeouts).
    plugin.socket_connect_timeout = timeout
    plugin.socket_read_timeout = timeout
    with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:  # type: ignore[no-untyped-call,unused-ignore]
        try:
            ok = plugin.notify(body=body, title=title, notify_type=kind)
        except (OSError, ValueError) as e:  # Apprise catches requests' errors; these are ours
            return f"{type(e).__name__}: {e}"
        said = log.getvalue().strip().splitlines()
    if ok:
        return None
    return said[-1] if said else "not accepted"


class _Session:
    def __init__(self, channel: AlertChannel, threads: ChannelThreads) -> None:
        self._channel = channel
        self._threads = threads

    async def send(self, entry: SpoolEntry, dropped: int) -> Accepted:
        channel = self._channel
        targets = {target_id(url): url for url in channel.apprise}
        owed = [t for t in entry.recipients if t in targets]
        if EVERY_TARGET in entry.recipients or not owed:
            owed = list(targets)  # a first try, or the failed targets were reconfigured away
        title, body, kind = entry.subject, plain(entry, dropped), notify_type(entry)

        def each() -> dict[str, str | None]:
            return {t: _notify_one(targets[t], title, body, kind, channel.timeout_sec) for t in owed}

        bound = channel.timeout_sec * 2 * len(owed) + 1
        answers = await self._threads.run(channel.name, each, bound)
        refused = {t: why for t, why in answers.items() if why is not None}
        if len(refused) == len(owed):
            # Nothing got through: most likely the endpoint is down; the channel backs off as a whole.
            raise DeliveryError("; ".join(f"{t}: {why}" for t, why in refused.items()), session=True)
        accepted = [t for t in owed if t not in refused]
        return Accepted(response=f"accepted by {', '.join(accepted)}", refused=refused)


class AppriseTransport:
    """Sends through Apprise in the channel's thread."""

    def __init__(self, threads: ChannelThreads) -> None:
        self._threads = threads

    @asynccontextmanager
    async def session(self, channel: AlertChannel) -> AsyncIterator[Session]:
        yield _Session(channel, self._threads)
