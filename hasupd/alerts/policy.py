"""Alerts: which events alert, to which channels, coalesced so that a crash loop is two messages.

- **What alerts** is one table, ``ALERTS`` (event class -> ``Rule``); later features add rows.
  A rule with ``crash=True`` alerts only channels with ``on_crash: true``; ``resolves=True`` only
  channels that were alerted about that incident ("resolved", with the same incident id).
- **Routing**: a service's ``alerts:`` names its channels (None: all); daemon-wide events go to all;
  then each channel's ``min_level`` and ``events`` filters. A silence (``hasupd.alerts.silences``)
  holds an alert back from every channel, recorded as ``alert.suppressed``; resolved notices pass both.
- **Coalescing** per (channel, service): the first alert goes out at once and opens a window of the
  channel's ``coalesce_sec``; alerts within it are held and leave as ONE summary when it ends ("20
  more events: 19 x restart, 1 x failed"), which opens the next window. One timer per open window.
- A single alert about an incident waits (at most ``OUTPUT_WAIT_SEC``) for the incident's
  ``incident.output`` record, so the message carries the service's last output lines.
- **Delivery** (``hasupd.alerts.delivery``) spools every message durably before trying it and
  retries with backoff; nothing here awaits: the bus callback only records, counts and enqueues.

The incident chain in a message comes from the bus itself (bounded per incident), not from the journal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from hasupd import events as ev
from hasupd.alerts.delivery import RETRY_MAX_SEC, RETRY_MIN_SEC, Delivery
from hasupd.alerts.listing import Recent, listing
from hasupd.alerts.mail import Mailer, SmtpMailer
from hasupd.alerts.silences import Silences, iso, suppression
from hasupd.alerts.spool import Spool, SpoolEntry
from hasupd.alerts.text import Alert, Held, IncidentLog, single, summary, trial_message
from hasupd.alerts.transport import (
    EVERY_TARGET,
    ChannelThreads,
    Session,
    Transport,
    attempt_bound,
    level_name,
)
from hasupd.config.model import ALERT_LEVELS, AlertChannel, Config, ServiceConfig
from hasupd.ports import Clock, TimerHandle
from hasupd.states import OutputMode

OUTPUT_WAIT_SEC = 2.0  # how long a first alert waits for the incident's output lines
INCIDENTS_KEPT = 200  # incident logs kept in memory (open or recently closed)
ALERTED_KEPT = 2000  # (channel, incident) pairs remembered for "resolved" and threading


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Rule:
    """How an event alerts: its ``kind`` (counted in summaries) and its ``headline`` (after the
    service name in the subject)."""

    kind: str
    headline: Callable[[Any], str]
    crash: bool = False  # only channels with on_crash: true
    when: Callable[[Any], bool] = lambda event: True
    resolves: bool = False  # only channels already alerted about the incident


ALERTS: dict[type[ev.Event], Rule] = {
    ev.ServiceFailed: Rule("failed", lambda e: f"failed ({e.result})"),
    ev.WatchdogTimeout: Rule("watchdog", lambda e: f"watchdog timeout ({e.reason})"),
    ev.HealthFailed: Rule("unhealthy", lambda e: f"unhealthy ({e.probe} probe: {e.detail})"),
    ev.LimitExceeded: Rule("limit", lambda e: f"over its {e.limit} limit ({e.detail})"),
    ev.ServiceRestartScheduled: Rule(
        "restart", lambda e: f"crashed and restarts ({e.result}, restart #{e.restarts})", crash=True
    ),
    ev.DaemonCrashed: Rule(
        "daemon-crashed", lambda e: f"hasupd itself crashed and was started again ({e.detail})"
    ),
    ev.ConfigInvalid: Rule(
        "config-invalid", lambda e: f"configuration invalid ({len(e.errors)} error(s)), running config kept"
    ),
    ev.IncidentClosed: Rule(
        "resolved", lambda e: "resolved", when=lambda e: e.outcome == "resolved", resolves=True
    ),
    # The fleet: a placed service nobody runs, a host that fenced itself or may not join.
    ev.FleetUnowned: Rule("fleet-unowned", lambda e: f"no owner in the fleet for {e.seconds:.0f}s"),
    ev.FleetFenced: Rule("fleet-fenced", lambda e: f"fenced: {e.message()}"),
    ev.FleetJoinRefused: Rule("fleet-join-refused", lambda e: f"fleet join refused: {e.reason}"),
    # Backups, restores and recovery.
    ev.BackupFailed: Rule("backup-failed", lambda e: f"backup {e.job} failed at {e.step}: {e.error[:200]}"),
    ev.BackupWarning: Rule(
        "backup-warning", lambda e: f"backup {e.job}: {len(e.unreadable)} file(s) could not be read"
    ),
    ev.BackupCheckFailed: Rule("backup-damaged", lambda e: f"backup {e.job}: repository check found damage"),
    ev.BackupStale: Rule("backup-stale", lambda e: f"backup {e.job}: no good snapshot within max_age"),
    ev.DrillFinished: Rule(
        "drill-failed",
        lambda e: f"{'boot' if e.boot else 'restore'} drill of {e.job} failed: {e.detail[:200]}",
        when=lambda e: not e.ok,
    ),
    ev.DrillStale: Rule(
        "drill-stale",
        lambda e: (
            f"{e.job}: no snapshot has booted within what its boot drill schedule allows"
            if e.allowed_sec is not None
            else f"restore drill of {e.job} is overdue"
        ),
    ),
    ev.RestoreStep: Rule(
        "restore-failed", lambda e: f"restore of {e.job}: {e.step}: {e.detail[:200]}", when=lambda e: not e.ok
    ),
    ev.RecoveryAction: Rule(
        "recovery", lambda e: f"recovery action {e.action} {'worked' if e.ok else 'did not help'}"
    ),
    ev.RecoveryExhausted: Rule("recovery-failed", lambda e: "stays failed: every recovery action failed"),
    # alerts.rules (hasupd.alerts.rules): each firing is an incident; incident.closed resolves it.
    ev.RuleFired: Rule("rule", lambda e: f"{e.kind.replace('_', ' ')} (rule {e.rule}): {e.detail[:200]}"),
}


# --------------------------------------------------------------------------- what it reads


class Unit(Protocol):
    @property
    def config(self) -> ServiceConfig: ...

    @property
    def output(self) -> OutputMode: ...


class Source(Protocol):
    """The current config and services (the Manager)."""

    @property
    def config(self) -> Config: ...

    @property
    def services(self) -> Mapping[str, Unit]: ...


@dataclass(frozen=True)
class TrialOutcome:
    channel: str
    ok: bool
    answer: str  # the server's answer, or the error
    message_id: str


@dataclass
class _Window:
    length: float
    timer: TimerHandle
    held: Held | None = None


class _Lazy:
    """A transport made at its first session: its module (and what that imports: urllib for PagerDuty,
    apprise's glue) is loaded only where a channel uses it."""

    def __init__(self, make: Callable[[], Transport]) -> None:
        self._make = make
        self._made: Transport | None = None

    def session(self, channel: AlertChannel) -> AbstractAsyncContextManager[Session]:
        if self._made is None:
            self._made = self._make()
        return self._made.session(channel)


def _apprise(threads: ChannelThreads) -> Transport:
    from hasupd.alerts.apprise_channel import AppriseTransport  # noqa: PLC0415  (see _Lazy)

    return AppriseTransport(threads)


def _pagerduty(threads: ChannelThreads) -> Transport:
    from hasupd.alerts.pagerduty import PagerDutyTransport  # noqa: PLC0415  (see _Lazy)

    return PagerDutyTransport(threads)


def _sendmail() -> Transport:
    from hasupd.alerts.sendmail import SendmailTransport  # noqa: PLC0415  (see _Lazy)

    return SendmailTransport()


class Alerts:
    """Turns bus events into alert messages and hands them to delivery. ``run()`` delivers."""

    def __init__(
        self,
        bus: ev.EventBus,
        source: Source,
        folder: Path,
        clock: Clock,
        *,
        mailer: Mailer | None = None,
        host: str | None = None,
        spool: Spool | None = None,
        retry: tuple[float, float] = (RETRY_MIN_SEC, RETRY_MAX_SEC),
        transports: dict[str, Transport] | None = None,
    ) -> None:
        self._source = source
        self._clock = clock
        self._publish = bus.publish
        self.host = host or socket.gethostname()
        self.spool = spool or Spool(folder)
        self.threads = ChannelThreads()  # blocking clients: a thread per channel, off the loop
        self.silences = Silences(folder.parent)  # STATE_DIR/silences.json
        self.silences_problem = self.silences.load()  # at build time, before any alert
        self.recent = Recent()
        self.delivery = Delivery(
            self.spool,
            mailer or SmtpMailer(),
            self.channels,
            bus.publish,
            retry_min=retry[0],
            retry_max=retry[1],
            transports=transports
            or {
                "apprise": _Lazy(lambda: _apprise(self.threads)),
                "pagerduty": _Lazy(lambda: _pagerduty(self.threads)),
                "sendmail": _Lazy(_sendmail),
            },
        )
        self._windows: dict[tuple[str, str | None], _Window] = {}
        self._incidents: dict[str, IncidentLog] = {}
        self._alerted: dict[tuple[str, str], str] = {}  # (channel, incident) -> first Message-ID
        self._waiting: dict[str, tuple[TimerHandle, list[Callable[[], None]]]] = {}
        self._seq = itertools.count()
        bus.subscribe(self._on_event)

    @property
    def depth(self) -> int:
        """Return how many messages wait for delivery (the ``hasupd_alert_spool_depth`` gauge)."""
        return self.delivery.depth

    def channels(self) -> dict[str, AlertChannel]:
        """Return the configured channels by name (the config of now: reloads apply)."""
        return {c.name: c for c in self._source.config.daemon.alerts}

    async def run(self) -> None:
        """Deliver spooled messages, then new ones, until cancelled."""
        if self.silences_problem:
            self._publish(ev.AlertDropped(channel="-", message_id="-", reason=self.silences_problem))
        await self.delivery.run()

    async def send_test(self, name: str | None) -> list[TrialOutcome]:
        """Send a test message on channel ``name`` (None: every channel) now, through the spool but not
        coalesced; return each server's answer. Raise LookupError if there is no such channel."""
        channels = self.channels()
        if name is not None and name not in channels:
            raise LookupError(f"no alert channel {name!r}; configured: {', '.join(channels) or 'none'}")
        if not channels:
            raise LookupError("no alert channels are configured (alerts: in hasupd.yaml)")
        chosen = [channels[name]] if name is not None else list(channels.values())
        entries = []
        for channel in chosen:
            subject, body = trial_message(self.host, channel.name, time.time())
            # info: a pager gets a low-urgency event, not a page
            entries.append(self._entry(channel, "test", subject=subject, body=body, level=logging.INFO))
        answers = await asyncio.gather(
            *(
                self.delivery.deliver_now(entry, attempt_bound(channel))
                for entry, channel in zip(entries, chosen, strict=True)
            )
        )
        return [
            TrialOutcome(channel=c.name, ok=ok, answer=answer, message_id=e.message_id)
            for c, e, (ok, answer) in zip(chosen, entries, answers, strict=True)
        ]

    async def silence(self, target: str, seconds: float, reason: str, by: str) -> dict[str, Any]:
        """Silence alerts matching ``target`` for ``seconds`` (0: lift it); return the silence.
        Raise OSError if it cannot be saved."""
        silence = await self.silences.add(target, seconds, reason, by)
        return {**asdict(silence), "until_iso": iso(silence.until), "lifted": seconds == 0}

    def listing(self) -> dict[str, Any]:
        """Return what ``alert list`` shows (see hasupd.alerts.listing)."""
        return listing(self.silences, self.spool, self.recent)

    # ------------------------------------------------------------------ from the bus

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ConfigApplied):
            self._reconfigured(event)
        if event.NAME.startswith("alert."):
            self.recent.add(event)
            return
        if not self._source.config.daemon.alerts:
            return
        self._track(event)
        rule = ALERTS.get(type(event))
        if rule is None or not rule.when(event):
            return
        alert = Alert(kind=rule.kind, headline=rule.headline(event), event=event)
        # A resolved notice is never silenced: it goes only where the incident was told, and closes.
        suppressed = None if rule.resolves else suppression(self.silences, event, rule.kind, alert.headline)
        if suppressed is not None:
            self._publish(suppressed)  # still recorded (see hasupd.alerts.silences)
            return
        for channel in self._route(event, rule):
            if event.incident is not None and not rule.resolves:
                self._remember(channel.name, event.incident)
            self._offer(channel, alert)

    def _reconfigured(self, applied: ev.ConfigApplied) -> None:
        """A reload changed a channel (a fixed password, another server): retry its messages now. Which
        channels changed is the channels' part of the reload plan (hasupd.config.diff), in the record."""
        for name in dict.fromkeys(
            (*applied.channels_added, *applied.channels_removed, *applied.channels_changed)
        ):
            self.delivery.retry_now(name)

    def _track(self, event: ev.Event) -> None:
        """Keep the incident's records (bounded) for the chain shown in messages."""
        if event.incident is None:
            return
        if isinstance(event, ev.IncidentOpened):
            self._incidents[event.incident] = IncidentLog(
                id=event.incident, service=event.service or "", opened=event.time, reason=event.reason
            )
            while len(self._incidents) > INCIDENTS_KEPT:
                del self._incidents[next(iter(self._incidents))]
        log = self._incidents.get(event.incident)
        if log is not None:
            log.add(event)
        if isinstance(event, ev.IncidentOutput):
            self._release(event.incident)

    def _route(self, event: ev.Event, rule: Rule) -> list[AlertChannel]:
        channels = list(self.channels().values())
        if event.service is not None:
            names = self._names(event.service)
            if names is not None:
                channels = [c for c in channels if c.name in names]
        if rule.crash:
            channels = [c for c in channels if c.on_crash]
        if rule.resolves:
            # Wherever the incident was told, whatever the filters: an open page must be closed.
            return [c for c in channels if (c.name, event.incident or "") in self._alerted]
        level = event.level()
        return [
            c
            for c in channels
            if level >= ALERT_LEVELS[c.min_level] and (not c.events or event.NAME in c.events)
        ]

    def _names(self, unit: str) -> tuple[str, ...] | None:
        found = self._source.services.get(unit)
        if found is not None:
            return found.config.alerts
        config = self._source.config.service(unit.split("@", 1)[0])  # removed meanwhile: its file's
        return config.alerts if config is not None else None

    def _remember(self, channel: str, incident: str) -> None:
        self._alerted.setdefault((channel, incident), "")
        while len(self._alerted) > ALERTED_KEPT:
            del self._alerted[next(iter(self._alerted))]

    # ------------------------------------------------------------------ coalescing

    def _offer(self, channel: AlertChannel, alert: Alert) -> None:
        key = (channel.name, alert.service)
        window = self._windows.get(key)
        if window is not None:
            if window.held is None:
                window.held = Held(since=alert.event.time)
            window.held.add(alert)
            return
        self._open_window(key, channel.coalesce_sec)
        self._single(channel.name, alert)

    def _open_window(self, key: tuple[str, str | None], length: float) -> None:
        if length > 0:
            timer = self._clock.call_at(self._clock.time() + length, lambda: self._close_window(key))
            self._windows[key] = _Window(length=length, timer=timer)

    def _close_window(self, key: tuple[str, str | None]) -> None:
        window = self._windows.pop(key)
        channel = self.channels().get(key[0])
        if window.held is None or channel is None:
            return  # a quiet window; or the channel was removed by a reload
        held = window.held
        incidents = list(dict.fromkeys(a.incident for a in held.recent if a.incident is not None))
        logs = [self._incidents.get(i) for i in incidents]
        subject, body = summary(key[1], held, self.host, logs, window.length)
        latest = held.recent[-1]
        self.delivery.submit(
            self._entry(
                channel,
                "summary",
                subject=subject,
                body=body,
                service=key[1],
                incident=latest.incident,
                level=max(a.event.level() for a in held.recent),
                resolves=latest.kind == "resolved",
            )
        )
        self._open_window(key, channel.coalesce_sec)

    def _single(self, channel_name: str, alert: Alert) -> None:
        def compose() -> None:
            channel = self.channels().get(channel_name)
            if channel is not None:
                log = self._incidents.get(alert.incident) if alert.incident else None
                subject, body = single(alert, self.host, log)
                entry = self._entry(
                    channel,
                    alert.kind,
                    subject=subject,
                    body=body,
                    service=alert.service,
                    incident=alert.incident,
                    level=alert.event.level(),
                    resolves=alert.kind == "resolved",
                )
                self.delivery.submit(entry)

        log = self._incidents.get(alert.incident) if alert.incident else None
        if log is not None and log.output is None and log.output_error is None and self._has_output(log):
            self._wait_output(log.id, compose)
        else:
            compose()

    def _has_output(self, log: IncidentLog) -> bool:
        unit = self._source.services.get(log.service)
        return unit is not None and unit.output in (OutputMode.JOURNAL, OutputMode.FILE)

    def _wait_output(self, incident: str, compose: Callable[[], None]) -> None:
        if incident in self._waiting:
            self._waiting[incident][1].append(compose)
            return
        timer = self._clock.call_at(self._clock.time() + OUTPUT_WAIT_SEC, lambda: self._release(incident))
        self._waiting[incident] = (timer, [compose])

    def _release(self, incident: str) -> None:
        timer, waiting = self._waiting.pop(incident, (None, []))
        if timer is not None:
            timer.cancel()
        for compose in waiting:
            compose()

    # ------------------------------------------------------------------ messages

    def _entry(
        self,
        channel: AlertChannel,
        kind: str,
        *,
        subject: str,
        body: str,
        service: str | None = None,
        incident: str | None = None,
        level: int = logging.ERROR,
        resolves: bool = False,
    ) -> SpoolEntry:
        now = time.time()
        first = self._alerted.get((channel.name, incident), "") if incident else ""
        from email.utils import make_msgid  # noqa: PLC0415  (the email package: with the first alert)

        message_id = make_msgid(idstring=incident or kind, domain=self.host)
        if incident and not first and (channel.name, incident) in self._alerted:
            self._alerted[(channel.name, incident)] = message_id  # later ones reply to this one
        mail = channel.email or channel.sendmail
        sender, to = (mail.from_addr, mail.to) if mail is not None else ("", ())
        return SpoolEntry(
            id=f"{time.time_ns():020d}-{next(self._seq) % 10000:04d}",
            channel=channel.name,
            created=now,
            message_id=message_id,
            kind=kind,
            subject=subject,
            body=body,
            sender=sender,
            recipients=to or (EVERY_TARGET,),
            to=to,
            service=service,
            incident=incident,
            in_reply_to=first or None,
            level=level_name(level),
            resolves=resolves,
        )
