"""Record writers: the JSON object, journald's native encoding (and memfd path), rotated JSON-line files."""

from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import socket
import struct
from pathlib import Path

from hasupd import events as ev
from hasupd.config.model import LogFormat, LogTarget
from hasupd.observe.logs import (
    RECORDS_FILE,
    JournalHandler,
    RecordFileHandler,
    TextFormatter,
    event_record,
    journal_field,
    log_events,
    setup_logging,
)


def exited(pid: int = 42) -> ev.ServiceExited:
    return ev.ServiceExited(
        service="web", incident="abc123def456", pid=pid, result="exit-code", exit_code=3, status="exit code 3"
    )


def test_a_record_file_line_is_the_event_record_and_is_readable_at_once(
    tmp_path: Path, logger: logging.Logger
) -> None:
    logger.addHandler(RecordFileHandler(tmp_path))
    bus = ev.EventBus()
    log_events(bus, logger)
    event = exited()
    bus.publish(event)
    # Line-buffered: the line is there without a flush or close.
    line = (tmp_path / RECORDS_FILE).read_text()
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record == event_record(event)
    assert record["event"] == "service.exited" and record["level"] == "warning"
    assert record["exit_code"] == 3 and record["incident"] == "abc123def456" and record["expected"] is False
    assert set(record) == {"time", "level", "message", *event.tags()}


def test_record_files_rotate_by_size_and_keep_a_fixed_number(tmp_path: Path, logger: logging.Logger) -> None:
    logger.addHandler(RecordFileHandler(tmp_path, max_bytes=2000, keep=3))
    bus = ev.EventBus()
    log_events(bus, logger)
    for pid in range(100):
        bus.publish(exited(pid))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [RECORDS_FILE, f"{RECORDS_FILE}.1", f"{RECORDS_FILE}.2", f"{RECORDS_FILE}.3"]
    assert all((tmp_path / n).stat().st_size <= 2000 for n in names)
    newest = [json.loads(line)["pid"] for line in (tmp_path / RECORDS_FILE).read_text().splitlines()]
    assert newest[-1] == 99


def test_debug_records_are_not_written(tmp_path: Path, logger: logging.Logger) -> None:
    logger.addHandler(RecordFileHandler(tmp_path))
    bus = ev.EventBus()
    log_events(bus, logger)
    bus.publish(ev.ServiceStateChanged(service="web", old="dead", new="start", result="success"))
    assert (tmp_path / RECORDS_FILE).read_text() == ""


def test_expected_or_clean_exits_are_info_unexpected_failures_are_warnings() -> None:
    assert exited().level() == logging.WARNING
    assert ev.ServiceExited(pid=1, result="signal", expected=True).level() == logging.INFO
    assert ev.ServiceExited(pid=1, result="success").level() == logging.INFO


def test_journal_fields_use_the_binary_form_for_values_with_newlines() -> None:
    assert journal_field("HASUPD_SERVICE", "web") == b"HASUPD_SERVICE=web\n"
    assert journal_field("MESSAGE", "a\nb") == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n"


def receive(server: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = server.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)


def test_journal_handler_sends_small_records_as_datagrams_and_large_ones_in_a_sealed_memfd(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        handler = JournalHandler(path)
        logger.addHandler(handler)
        bus = ev.EventBus()
        log_events(bus, logger)

        bus.publish(exited())
        data, fds = receive(server)
        assert fds == []
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        assert fields["SYSLOG_IDENTIFIER"] == "hasupd" and fields["PRIORITY"] == "4"
        assert fields["HASUPD_SERVICE"] == "web" and fields["HASUPD_EXIT_CODE"] == "3"
        assert fields["HASUPD_EXPECTED"] == "false" and fields["HASUPD_EVENT"] == "service.exited"
        assert json.loads(fields["MESSAGE"])["pid"] == 42

        big = tuple("x" * 1000 for _ in range(4000))  # 4 MB: more than any datagram
        bus.publish(ev.ConfigInvalid(errors=big))
        data, fds = receive(server)
        assert data == b"" and len(fds) == 1 and handler.memfd_sends == 1
        try:
            seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
            payload = os.pread(fds[0], os.fstat(fds[0]).st_size, 0)
        finally:
            os.close(fds[0])
        assert b"HASUPD_EVENT=config.invalid\n" in payload
        assert b"SYSLOG_IDENTIFIER=hasupd\n" in payload
        message = next(line for line in payload.split(b"\n") if line.startswith(b"MESSAGE="))
        assert len(json.loads(message.removeprefix(b"MESSAGE="))["errors"]) == 4000


def test_without_journald_records_go_to_stderr_and_to_files(tmp_path: Path) -> None:
    setup = setup_logging(LogTarget.STDERR, LogFormat.TEXT, records_dir=tmp_path / "records")
    try:
        assert setup.journal is False and setup.records_dir == tmp_path / "records"
        kinds = sorted(type(h).__name__ for h in setup.logger.handlers)
        assert kinds == ["RecordFileHandler", "StreamHandler"]
        stream = next(h for h in setup.logger.handlers if type(h) is logging.StreamHandler)
        assert isinstance(stream.formatter, TextFormatter)  # text for people; the files stay JSON
    finally:
        setup_logging(LogTarget.STDERR, LogFormat.JSON)
