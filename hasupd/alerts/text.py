"""The words of an alert: subjects and plain-text bodies, made from events and an incident's records.

Pure functions over data collected from the bus (``IncidentLog``); nothing here does I/O. What goes
into a message: the time, the result, the exit code or signal, the restart count, the incident's chain
of records, the service's last output lines (``incident.output``) and the command that shows more.
Nothing from a service's environment ever reaches an event, so none of it reaches a message; errors
about ``environment`` keys of an invalid config are shortened to their location.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from hasupd import events as ev

CHAIN_HEAD = 15  # the first records of an incident, always shown
CHAIN_TAIL = 45  # and the latest ones
HELD_SHOWN = 50  # events listed one by one in a summary
ERRORS_SHOWN = 50  # config errors listed
MAX_LINE = 500  # characters of one output line in a message
_ENV_ERROR = re.compile(r"^(.*?:\d+:\d+: [\w.-]*\benvironment(?:_files)?\b[\w.-]*:).*$", re.DOTALL)
# Tags of an event that the fixed part of a body shows already (or that are not for people).
_SHOWN_TAGS = frozenset({"event", "service", "incident", "result", "restarts", "errors", "time"})


def local(ts: float, *, ms: bool = False) -> str:
    """Return ``ts`` as local time, "2025-03-15 11:04:31 +0100" (with milliseconds if ``ms``)."""
    moment = datetime.fromtimestamp(ts).astimezone()
    text = moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if ms else moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text} {moment.strftime('%z')}"


def clip(line: str, limit: int = MAX_LINE) -> str:
    """Return ``line`` cut to ``limit`` characters (marked), without control characters."""
    line = "".join(c if c.isprintable() or c == "\t" else "?" for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass
class IncidentLog:
    """What the bus said about one incident, bounded: its first and latest records, its output."""

    id: str
    service: str
    opened: float
    reason: str
    head: list[tuple[float, str, str]] = field(default_factory=list)  # (time, event name, message)
    tail: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=CHAIN_TAIL))
    omitted: int = 0
    output: tuple[str, ...] | None = None  # None: not captured (yet)
    output_source: str = ""
    output_error: str | None = None
    last_exit: str | None = None  # "exit code 3", "SIGKILL"
    restarts: int | None = None
    outcome: str | None = None

    def add(self, event: ev.Event) -> None:
        """Take in one record of this incident."""
        if isinstance(event, ev.IncidentOutput):
            self.output = tuple(clip(line) for line in event.lines)
            self.output_source = event.source
            self.output_error = event.error
            return
        if isinstance(event, ev.ServiceExited):
            self.last_exit = event.status
        restarts = getattr(event, "restarts", None)
        if isinstance(restarts, int):
            self.restarts = restarts
        if isinstance(event, ev.IncidentClosed):
            self.outcome = event.outcome
        if event.level() < logging.INFO:
            return  # debug records (state changes) are not written, so not shown either
        line = (event.time, event.NAME, clip(event.message()))
        if len(self.head) < CHAIN_HEAD:
            self.head.append(line)
            return
        if len(self.tail) == self.tail.maxlen:
            self.omitted += 1
        self.tail.append(line)

    def chain(self) -> list[str]:
        """Return the chain of records as lines, with a note where records were left out."""
        lines = [f"  {local(t, ms=True)}  {name:<26} {text}" for t, name, text in self.head]
        if self.omitted:
            lines.append(
                f"  ... {self.omitted} record(s) left out (hasupctl incident {self.id} has them all)"
            )
        lines += [f"  {local(t, ms=True)}  {name:<26} {text}" for t, name, text in self.tail]
        return lines


@dataclass(frozen=True)
class Alert:
    """One alerting occurrence: what happened (``headline``, without the service name) and to whom."""

    kind: str  # "failed", "restart", "resolved" ... (the summary counts these)
    headline: str  # "failed (start-limit-hit)"
    event: ev.Event

    @property
    def service(self) -> str | None:
        return self.event.service

    @property
    def incident(self) -> str | None:
        return self.event.incident


def subject(host: str, text: str) -> str:
    """Return the subject line: "[hasupd@host] <text>", on one line."""
    return clip(f"[hasupd@{host}] {text}".replace("\n", " "), 250)


def what(alert: Alert) -> str:
    """Return "web failed (start-limit-hit)", or just the headline for a daemon-wide alert."""
    return f"{alert.service} {alert.headline}" if alert.service else alert.headline


def count_kinds(counts: Counter[str]) -> str:
    """Return "4 x restart, 1 x failed": most frequent first, ties in order of first appearance."""
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: a Counter keeps insertion order
    return ", ".join(f"{n} x {kind}" for kind, n in ranked)


def _error_line(error: str) -> str:
    match = _ENV_ERROR.match(error)
    if match:
        return f"{match.group(1)} (message withheld: environment values are not mailed)"
    return clip(error)


def _details(alert: Alert, host: str, log: IncidentLog | None) -> list[str]:
    event = alert.event
    tags = event.tags()
    rows = [("What", what(alert)), ("When", local(event.time)), ("Host", host)]
    if alert.service:
        rows.append(("Service", alert.service))
    if "result" in tags:
        rows.append(("Result", str(tags["result"])))
    if log is not None and log.last_exit:
        rows.append(("Last exit", log.last_exit))
    restarts = tags.get("restarts", log.restarts if log is not None else None)
    if restarts is not None:
        rows.append(("Restarts", str(restarts)))
    if log is not None:
        rows.append(("Incident", f"{log.id}, opened {local(log.opened)}: {clip(log.reason, 200)}"))
    elif alert.incident:
        rows.append(("Incident", alert.incident))
    rows += [
        (k.replace("_", " ").capitalize(), clip(str(round(v, 3) if isinstance(v, float) else v), 300))
        for k, v in tags.items()
        if k not in _SHOWN_TAGS
    ]
    width = max(len(k) for k, _ in rows) + 1
    lines = [f"{k + ':':<{width}} {v}" for k, v in rows]
    errors = tags.get("errors")
    if isinstance(errors, list):
        lines += ["", f"Errors ({len(errors)}):"]
        lines += [f"  {_error_line(str(e))}" for e in errors[:ERRORS_SHOWN]]
        if len(errors) > ERRORS_SHOWN:
            lines.append(f"  ... and {len(errors) - ERRORS_SHOWN} more (hasupd check-config lists them all)")
    return lines


def _incident_sections(log: IncidentLog | None, incident: str | None, service: str | None) -> list[str]:
    lines: list[str] = []
    if log is not None:
        lines += ["", f"Chain of events of incident {log.id}:", *log.chain()]
        lines.append("")
        if log.output_error:
            lines.append(f"Output before the failure: unavailable ({clip(log.output_error, 300)})")
        elif log.output:
            lines.append(f"Last {len(log.output)} output line(s) before the failure ({log.output_source}):")
            lines += [f"  | {line}" for line in log.output]
        else:
            lines.append("No output was captured before the failure.")
    more = []
    if incident:
        more.append(f"hasupctl incident {incident}")
    if service:
        more.append(f"hasupctl logs {service} -n 50")
    if more:
        lines += ["", "More:", *(f"  {m}" for m in more)]
    return lines


def single(alert: Alert, host: str, log: IncidentLog | None) -> tuple[str, str]:
    """Return (subject, body) of an alert that goes out on its own."""
    incident = f" (incident {alert.incident})" if alert.kind == "resolved" and alert.incident else ""
    body = [f"{what(alert)}{incident}", "", *_details(alert, host, log)]
    body += _incident_sections(log, alert.incident, alert.service)
    return subject(host, what(alert) + incident), "\n".join(body) + "\n"


@dataclass
class Held:
    """Alerts held back within a coalescing window: counted all, the latest few kept."""

    since: float
    total: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    recent: deque[Alert] = field(default_factory=lambda: deque(maxlen=HELD_SHOWN))

    def add(self, alert: Alert) -> None:
        self.total += 1
        self.kinds[alert.kind] += 1
        self.recent.append(alert)


def summary(
    service: str | None, held: Held, host: str, logs: Sequence[IncidentLog | None], window_sec: float
) -> tuple[str, str]:
    """Return (subject, body) of the one message that stands for every alert ``held`` in a window.

    ``logs`` are the incident logs of the held alerts' incidents, newest last (None where unknown).
    """
    latest = held.recent[-1]
    counted = f"{held.total} more event{'s' if held.total != 1 else ''}: {count_kinds(held.kinds)}"
    who = f"{service}: " if service else ""
    now = f"; now {latest.headline}" if latest.kind == "resolved" else ""
    head = f"{who}{counted}{now}"
    body = [
        head,
        "",
        f"Held back since {local(held.since)} (alerts are coalesced for {window_sec:g}s per service).",
        "",
        f"Events ({held.total}):",
    ]
    if held.total > len(held.recent):
        body.append(f"  ... {held.total - len(held.recent)} earlier event(s) counted above")
    for alert in held.recent:
        tag = f" [incident {alert.incident}]" if alert.incident else ""
        body.append(f"  {local(alert.event.time, ms=True)}  {alert.kind:<12} {clip(what(alert), 300)}{tag}")
    log = logs[-1] if logs else None
    body += ["", "Latest:", *(f"  {line}" for line in _details(latest, host, log))]
    body += _incident_sections(log, latest.incident, service)
    others = [lg.id for lg in logs[:-1] if lg is not None]
    if others:
        body += ["", "Earlier incidents in this window:", *(f"  hasupctl incident {i}" for i in others)]
    return subject(host, head), "\n".join(body) + "\n"


def trial_message(host: str, channel: str, requested: float) -> tuple[str, str]:
    """Return (subject, body) of the message ``hasupctl alert test`` sends."""
    body = (
        f"This is a test of the alert channel {channel} of hasupd on {host},\n"
        f"requested with `hasupctl alert test` at {local(requested)}.\n\n"
        "If you read this, hasupd's alerts reach you.\n"
    )
    return subject(host, f"test alert on channel {channel}"), body
