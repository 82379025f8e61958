"""Records: every event becomes one log record, as journald fields or as JSON lines.

With journald (its native socket is there), each tag is a field ``HASUPD_<TAG>``, ``PRIORITY`` follows
the level, ``SYSLOG_IDENTIFIER=hasupd`` and ``MESSAGE`` is the whole record as one JSON object, so both
``journalctl HASUPD_SERVICE=web`` and ``journalctl -o cat | jq`` work. A record too large for one
datagram is passed in a sealed memfd (as ``sd_journal_send`` does), so nothing is truncated or lost.

Without journald the same JSON object is one line on stderr (or a line of text for people at a terminal,
``--log-format text``) and one line in ``STATE_DIR/records/records.jsonl`` (always JSON, rotated by size),
so that ``hasupctl events``, ``errors`` and ``incident`` work there too.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import grp
import json
import logging
import logging.handlers
import os
import socket
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from io import TextIOWrapper
from pathlib import Path
from typing import Any

from hasupd import events as ev
from hasupd.config.model import LogFormat, LogTarget
from hasupd.events import Event, EventBus

try:  # python-json-logger >= 3 moved the formatter; the old path warns there.
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - Debian 12 ships 2.0
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[attr-defined,no-redef,unused-ignore]

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
LOGGER_NAME = "hasupd"
IDENTIFIER = "hasupd"
RECORDS_FILE = "records.jsonl"
RECORDS_MAX_BYTES = 10 * 1024 * 1024
RECORDS_KEEP = 10
_TAG_ATTR = "hasupd_tags"
_JSON_ATTR = "hasupd_json"  # the record's JSON line, made once for every handler that writes JSON
# syslog priorities by logging level
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
# As systemd's journal client: a large send buffer makes the memfd path rare.
_JOURNAL_SNDBUF = 8 * 1024 * 1024
# A journald that does not take a record within this long is stuck; the record goes to handleError
# (stderr) rather than freezing the event loop that publishes it.
_JOURNAL_SEND_TIMEOUT_SEC = 2.0
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


# Every attribute a plain LogRecord has (plus what formatting adds): never a field of a record. The tags
# are set as attributes of their own, which python-json-logger adds as the record's extra fields.
_RESERVED = (
    *vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)),
    "message",
    "asctime",
    "taskName",  # Python >= 3.12; python-json-logger 2.0 does not know it
    _TAG_ATTR,
    _JSON_ATTR,
)


class RecordJsonFormatter(JsonFormatter):  # type: ignore[misc,unused-ignore]  # untyped in 2.0
    """python-json-logger's formatter, set up for hasupd's record format.

    ``{"time": ISO UTC with microseconds, "level": lower case, "message": ..., <tags in order>}``: the
    first three come from the format string (renamed), the tags are the record's extra attributes,
    and the JSON is made by python-json-logger's encoder. Only the two standard hooks are overridden:
    ``formatTime`` (the time format) and ``process_log_record`` (the level in lower case).
    """

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level"},
            reserved_attrs=_RESERVED,
        )

    def format(self, record: logging.LogRecord) -> str:
        # Every JSON writer of a record (stderr, the records file) writes the same line: made once.
        made: str | None = record.__dict__.get(_JSON_ATTR)
        if made is None:
            made = str(super().format(record))
            record.__dict__[_JSON_ATTR] = made
        return made

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        log_record["level"] = str(log_record["level"]).lower()
        return log_record


_FORMATTER = RecordJsonFormatter()


def record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """Return the JSON object the writers make of ``record``: time, level, message and every tag."""
    out: dict[str, Any] = json.loads(_FORMATTER.format(record))
    return out


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tags: Mapping[str, Any] = getattr(record, _TAG_ATTR, {})
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        extra = f" [incident {tags['incident']}]" if tags.get("incident") else ""
        return f"{when} {record.levelname:<7} {record.getMessage()}{extra}"


def journal_field(key: str, value: str) -> bytes:
    """Return one field in journald's native format (the binary form when the value has a newline)."""
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


def journal_fields(record: logging.LogRecord, message: str, identifier: str = IDENTIFIER) -> bytes:
    """Return the native-protocol payload of ``record``: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, HASUPD_*."""
    tags: Mapping[str, Any] = getattr(record, _TAG_ATTR, {})
    parts = [
        journal_field("MESSAGE", message),
        journal_field("PRIORITY", str(_PRIORITY.get(record.levelno, 6))),
        journal_field("SYSLOG_IDENTIFIER", identifier),
    ]
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(journal_field("HASUPD_" + key.upper(), text))
    return b"".join(parts)


class _Dropping(logging.Handler, abc.ABC):
    """A writer that degrades to one notice when it fails, instead of a traceback per record.

    The first record that cannot be written (a full disk, journald gone) makes one
    ``records.dropping`` record on ``fallback`` (stderr); later failures are only counted in
    ``dropped``. The first record written after that is preceded by one ``records.resumed`` record,
    written here and on ``fallback``, with how many were dropped.
    """

    destination = ""
    fallback: logging.Handler | None = None
    dropped = 0
    _failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed = True
        self.dropped += 1
        if self.dropped == 1:
            error = sys.exc_info()[1]
            why = (error.strerror or str(error)) if isinstance(error, OSError) else repr(error)
            self._notify(ev.RecordsDropping(destination=self.destination, error=why or "unknown error"))

    @abc.abstractmethod
    def _write(self, record: logging.LogRecord) -> None:
        """Write ``record`` (a failure goes to ``handleError``)."""

    def emit(self, record: logging.LogRecord) -> None:
        self._failed = False
        if self.dropped:
            dropped = self.dropped
            resumed = ev.RecordsResumed(destination=self.destination, dropped=dropped)
            self._write(_log_record(LOGGER_NAME, resumed))
            if self._failed:
                self.dropped = dropped + 1  # still failing: this record is lost (the notice is no record)
                return
            self.dropped = 0
            self._notify(resumed)
        self._write(record)

    def _notify(self, event: ev.Event) -> None:
        # Straight to the fallback handler: never through the logger, which would come back here.
        if self.fallback is not None:
            self.fallback.handle(_log_record(LOGGER_NAME, event))


def _stderr_json() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RecordJsonFormatter())
    return handler


class JournalHandler(_Dropping):
    """Send records to journald over its native protocol.

    One datagram per record; a record larger than a datagram may be (EMSGSIZE, ENOBUFS) is written to a
    sealed memfd whose descriptor is passed with SCM_RIGHTS, which journald reads whole, exactly as
    ``sd_journal_send`` does. ``memfd_sends`` counts those. When journald does not take records, one
    notice goes to stderr (see ``_Dropping``).
    """

    def __init__(self, socket_path: Path = JOURNAL_SOCKET, identifier: str = IDENTIFIER) -> None:
        super().__init__()
        self._path = str(socket_path)
        self.destination = f"journald ({socket_path})"
        self.fallback = _stderr_json()
        self._identifier = identifier
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _JOURNAL_SNDBUF)  # the kernel caps it
        self._sock.settimeout(_JOURNAL_SEND_TIMEOUT_SEC)
        self._formatter = RecordJsonFormatter()
        self.memfd_sends = 0

    def _write(self, record: logging.LogRecord) -> None:
        payload = journal_fields(record, self._formatter.format(record), self._identifier)
        try:
            try:
                self._sock.sendto(payload, self._path)
            except OSError as e:
                if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(payload)
        except OSError:
            self.handleError(record)

    def _send_memfd(self, payload: bytes) -> None:
        fd = os.memfd_create("hasupd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            # journald only maps a memfd nobody can change any more.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._sock.sendmsg(
                [], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, self._path
            )
            self.memfd_sends += 1
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
        super().close()


class RecordFileHandler(_Dropping, logging.handlers.RotatingFileHandler):
    """JSON lines in ``DIR/records.jsonl``, rotated by size to ``.1`` .. ``.KEEP``; line-buffered, so a
    reader (``hasupctl events``) sees every record as soon as it is written.

    The records are the audit trail: the folder is 0750 and every file 0640, group ``group`` (the
    control socket's group) when that group exists, else hasupd's own. When a record cannot be
    written (a full disk), one notice goes to ``fallback`` (stderr by default) instead of a traceback
    per record; the partial line a failed write may leave is ended before the next record.
    """

    def __init__(
        self,
        folder: Path,
        max_bytes: int = RECORDS_MAX_BYTES,
        keep: int = RECORDS_KEEP,
        *,
        group: str | None = None,
        fallback: logging.Handler | None = None,
    ) -> None:
        self._gid = _group_id(group)
        folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        _restrict(folder, 0o750, self._gid)
        for old in folder.glob(RECORDS_FILE + "*"):  # written by an older hasupd, perhaps 0644
            if old.is_file() and not old.is_symlink():
                _restrict(old, 0o640, self._gid)
        super().__init__(folder / RECORDS_FILE, maxBytes=max_bytes, backupCount=keep, encoding="utf-8")
        self.destination = str(folder / RECORDS_FILE)
        self.fallback = fallback if fallback is not None else _stderr_json()
        self.setFormatter(RecordJsonFormatter())

    def _write(self, record: logging.LogRecord) -> None:
        logging.handlers.RotatingFileHandler.emit(self, record)
        if self._failed and self.stream is not None:
            # The buffer may still hold the failed line: drop it with the stream, reopen next time.
            stream, self.stream = self.stream, None
            with contextlib.suppress(OSError):
                stream.close()

    def _open(self) -> TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            # Also for a file made by rotation: the umask or an older hasupd must not widen it.
            os.fchmod(fd, 0o640)
            if self._gid is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, self._gid)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")  # a write cut by a full disk: the next record starts on a new line
        except BaseException:
            os.close(fd)
            raise
        # Line-buffered: every record reaches the file as it is written (the handler owns the stream).
        stream = open(fd, "a", buffering=1, encoding=self.encoding, errors=self.errors)  # noqa: SIM115
        assert isinstance(stream, TextIOWrapper)  # text mode
        return stream


def _group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None  # no such group: hasupd's own group, as for the control socket


def _restrict(path: Path, mode: int, gid: int | None) -> None:
    os.chmod(path, mode)
    if gid is not None:
        with contextlib.suppress(PermissionError):
            os.chown(path, -1, gid)


def journal_records_available(socket_path: Path = JOURNAL_SOCKET) -> bool:
    """Return True when journald's native socket accepts datagrams (where hasupd's own records go)."""
    if not socket_path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class LogSetup:
    """Where records go, for the writers (``logger``) and the readers (``hasupd.observe.queries``)."""

    logger: logging.Logger
    journal: bool  # records go to journald (and are read back from it)
    records_dir: Path | None  # else: JSON-line files here (None: stderr only)


def setup_logging(
    target: LogTarget,
    fmt: LogFormat,
    level: int = logging.INFO,
    records_dir: Path | None = None,
    group: str | None = None,
) -> LogSetup:
    """Configure the ``hasupd`` logger for ``target`` and ``fmt``; return it with where records go.

    ``auto`` picks journald when it is there, else stderr. Without journald, records also go to JSON-line
    files under ``records_dir`` when it is given (0640, group ``group`` when it exists: the control
    socket's group). The text format applies to stderr only.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.propagate = False
    logger.setLevel(level)
    use_journal = target is LogTarget.JOURNAL or (target is LogTarget.AUTO and journal_records_available())
    if use_journal:
        logger.addHandler(JournalHandler())
        return LogSetup(logger, True, None)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(TextFormatter() if fmt is LogFormat.TEXT else RecordJsonFormatter())
    logger.addHandler(stderr)
    if records_dir is not None:
        logger.addHandler(RecordFileHandler(records_dir, group=group, fallback=stderr))
    return LogSetup(logger, False, records_dir)


def log_events(bus: EventBus, logger: logging.Logger) -> None:
    """Write every event published on ``bus`` as a record through ``logger``."""

    def write(event: Event) -> None:
        if logger.isEnabledFor(event.level()):
            logger.handle(_log_record(logger.name, event))

    bus.subscribe(write)


def _log_record(name: str, event: Event) -> logging.LogRecord:
    # Stamped with the event's own time, so a record read back equals the one a follower saw on the bus.
    record = logging.LogRecord(name, event.level(), __file__, 0, event.message(), None, None)
    record.created = event.time
    record.msecs = (event.time - int(event.time)) * 1000
    tags = event.tags()
    setattr(record, _TAG_ATTR, tags)  # for the journal's HASUPD_* fields and the text format
    record.__dict__.update(tags)  # as logging's ``extra=`` does: python-json-logger adds them
    return record


def event_record(event: Event) -> dict[str, Any]:
    """Return the JSON object the writers make of ``event`` (for readers that see it on the bus)."""
    return record_dict(_log_record(LOGGER_NAME, event))
