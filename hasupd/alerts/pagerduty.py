"""The "call me" path: PagerDuty Events API v2, or any receiver that speaks it, at a configurable URL.

Native rather than through Apprise: Apprise's pagerduty plugin posts only to PagerDuty's own hosts
(a fixed URL per region, so no Events-compatible receiver of your own and no loopback test), and in
Debian 12's apprise 1.2 it sends no ``dedup_key`` and cannot resolve. Here every message about an
incident carries the incident id as its ``dedup_key``: a retry, a summary of the same crash loop or a
message re-sent after hasupd restarted all land on one PagerDuty incident, and the resolved notice
(``event_action: resolve``) closes it. A message without an incident uses its Message-ID, so its own
retries still page once.

urllib in the channel's thread (``ChannelThreads``), with ``timeout_sec`` per request. The answer
table: 2xx accepted; 400 this event refused (it backs off alone); 429, 5xx, any other status and
every network error: the channel backs off as a whole.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hasupd.alerts.mail import Accepted, DeliveryError
from hasupd.alerts.spool import SpoolEntry
from hasupd.alerts.transport import ChannelThreads, Session, plain
from hasupd.config.model import ALERT_LEVELS, AlertChannel, PagerDutyChannel

SUMMARY_MAX = 1024  # PagerDuty's limit for payload.summary
DETAILS_MAX = 16_000  # of the body, in custom_details


def severity(entry: SpoolEntry) -> str:
    """Return the Events v2 severity of ``entry``: critical, error, warning or info."""
    level = ALERT_LEVELS.get(entry.level, logging.ERROR)
    if level >= logging.CRITICAL:
        return "critical"
    if level >= logging.ERROR:
        return "error"
    return "warning" if level >= logging.WARNING else "info"


def event(entry: SpoolEntry, routing_key: str, source: str, dropped: int = 0) -> dict[str, Any]:
    """Return the Events v2 body for ``entry``: trigger (or resolve, for a resolved notice)."""
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "resolve" if entry.resolves else "trigger",
        "dedup_key": entry.incident or entry.message_id,
        "client": "hasupd",
    }
    if not entry.resolves:
        body["payload"] = {
            "summary": entry.subject[:SUMMARY_MAX],
            "source": source,
            "severity": severity(entry),
            "component": entry.service or "hasupd",
            "class": entry.kind,
            "custom_details": {
                "incident": entry.incident,
                "message_id": entry.message_id,
                "text": plain(entry, dropped)[:DETAILS_MAX],
            },
        }
    return body


def _post(config: PagerDutyChannel, data: bytes) -> str:
    """POST one event, in a worker thread. Return the receiver's answer. Raise DeliveryError."""
    # Here: urllib.request (with http.client, email) is loaded only where PagerDuty is configured.
    import http.client  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(
        config.url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_sec) as response:
            return f"{response.status} {response.read(500).decode('utf-8', 'replace').strip()}"
    except urllib.error.HTTPError as e:
        try:
            text = f"{e.code} {e.read(500).decode('utf-8', 'replace').strip()}".strip()
        except (OSError, http.client.HTTPException):
            text = str(e.code)
        raise DeliveryError(f"{config.url} answered {text}", session=e.code != 400) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise DeliveryError(f"cannot post to {config.url}: {reason}", session=True) from None
    except http.client.HTTPException as e:
        # Not HTTP (a status line such as "GARBAGE", a cut-off body): the receiver's fault, retried
        # like a refused connection; it must not end hasupd.
        raise DeliveryError(
            f"{config.url} did not answer in HTTP: {type(e).__name__}: {str(e).strip()}", session=True
        ) from None


def _read_key(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


class _Session:
    def __init__(self, channel: AlertChannel, key: str, threads: ChannelThreads) -> None:
        self._channel = channel
        self._key = key
        self._threads = threads
        self._source = socket.gethostname()

    async def send(self, entry: SpoolEntry, dropped: int) -> Accepted:
        config = self._channel.pagerduty
        assert config is not None
        data = json.dumps(event(entry, self._key, self._source, dropped)).encode()
        answer = await self._threads.run(
            self._channel.name, lambda: _post(config, data), config.timeout_sec * 2 + 1
        )
        return Accepted(response=answer, refused={})


class PagerDutyTransport:
    """Posts Events v2 in the channel's thread; the routing key is read from its file at each session."""

    def __init__(self, threads: ChannelThreads) -> None:
        self._threads = threads

    @asynccontextmanager
    async def session(self, channel: AlertChannel) -> AsyncIterator[Session]:
        config = channel.pagerduty
        assert config is not None
        try:
            key = await self._threads.run(channel.name, lambda: _read_key(config.routing_key_file), 5.0)
        except (OSError, UnicodeDecodeError) as e:
            raise DeliveryError(f"cannot read routing_key_file: {e}", session=True) from None
        if not key:
            raise DeliveryError(f"routing_key_file {config.routing_key_file} is empty", session=True)
        yield _Session(channel, key, self._threads)
