"""Records: every event becomes one log record, as journald fields or as one JSON line.

With journald (its native socket is there), each tag is a field ``HASUPD_<TAG>``, ``PRIORITY`` follows
the level and ``MESSAGE`` is the whole record as one JSON object, so both
``journalctl HASUPD_SERVICE=web`` and ``journalctl -o cat | jq`` work. Without journald the same JSON
object is one line on stderr. ``text`` is for people at a terminal.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hasupd.config.model import LogFormat, LogTarget
from hasupd.events import Event, EventBus

try:  # python-json-logger >= 3 moved the formatter; the old path warns there.
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - Debian 12 ships 2.0
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[attr-defined,no-redef,unused-ignore]

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
LOGGER_NAME = "hasupd"
_TAG_ATTR = "hasupd_tags"
# syslog priorities by logging level
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """Return the JSON object for a record: time, level, message and every tag."""
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "message": record.getMessage(),
    }
    out.update(getattr(record, _TAG_ATTR, {}))
    return out


class RecordJsonFormatter(JsonFormatter):  # type: ignore[misc,unused-ignore]  # untyped in 2.0
    """python-json-logger formatter that puts the event's tags at the top level."""

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: Any) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record.pop(_TAG_ATTR, None)
        for key in ("asctime", "levelname", "name", "msg"):
            log_record.pop(key, None)
        log_record.update(record_dict(record))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tags: Mapping[str, Any] = getattr(record, _TAG_ATTR, {})
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        extra = f" [incident {tags['incident']}]" if tags.get("incident") else ""
        return f"{when} {record.levelname:<7} {record.getMessage()}{extra}"


def _journal_field(key: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """Send records to journald over its native protocol (one datagram per record)."""

    def __init__(self, socket_path: Path = JOURNAL_SOCKET, identifier: str = "hasupd") -> None:
        super().__init__()
        self._path = str(socket_path)
        self._identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._formatter = RecordJsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        tags: Mapping[str, Any] = getattr(record, _TAG_ATTR, {})
        parts = [
            _journal_field("MESSAGE", self._formatter.format(record)),
            _journal_field("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
            _journal_field("SYSLOG_IDENTIFIER", self._identifier),
        ]
        for key, value in tags.items():
            text = value if isinstance(value, str) else json.dumps(value)
            parts.append(_journal_field("HASUPD_" + key.upper(), text))
        try:
            self._sock.sendto(b"".join(parts), self._path)
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def journal_available(socket_path: Path = JOURNAL_SOCKET) -> bool:
    """Return True when journald's native socket accepts datagrams."""
    if not socket_path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
    return True


def setup_logging(target: LogTarget, fmt: LogFormat, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``hasupd`` logger for ``target`` and ``fmt``; return it.

    ``auto`` picks journald when it is there, else stderr. The text format applies to stderr only.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.propagate = False
    logger.setLevel(level)
    use_journal = target is LogTarget.JOURNAL or (target is LogTarget.AUTO and journal_available())
    handler: logging.Handler
    if use_journal:
        handler = JournalHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter() if fmt is LogFormat.TEXT else RecordJsonFormatter())
    logger.addHandler(handler)
    return logger


def log_events(bus: EventBus, logger: logging.Logger) -> None:
    """Write every event published on ``bus`` as a record through ``logger``."""

    def write(event: Event) -> None:
        level = event.level()
        if logger.isEnabledFor(level):
            logger.log(level, event.message(), extra={_TAG_ATTR: event.tags()})

    bus.subscribe(write)
