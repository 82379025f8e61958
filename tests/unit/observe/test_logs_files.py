"""Record files on real filesystems: their modes and group, a full disk, and the record format that
python-json-logger (2.0 on Debian 12, the newest in the venv) makes."""

from __future__ import annotations

import grp
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hasupd import events as ev
from hasupd.observe.logs import RECORDS_FILE, JournalHandler, RecordFileHandler, _log_record, log_events
from tests.support.fullfs import fill, small_tmpfs
from tests.support.harness import require_root
from tests.support.restic_versions import fetched_binary, this_suite

REPO = Path(__file__).resolve().parents[3]
DEBIAN_PYTHON = "/usr/bin/python3"


def exited(pid: int) -> ev.ServiceExited:
    return ev.ServiceExited(service="web", pid=pid, result="exit-code", exit_code=3, status="exit code 3")


def some_group() -> grp.struct_group:
    """A group that exists here and is not root's (the control socket's group in real life)."""
    return next(g for g in grp.getgrall() if g.gr_gid != 0)


def test_records_are_0640_in_a_0750_folder_with_the_socket_group_also_after_rotation(
    tmp_path: Path, logger: logging.Logger
) -> None:
    require_root()  # giving a file to another group
    group = some_group()
    folder = tmp_path / "records"
    folder.mkdir(mode=0o755)
    # A file an older hasupd left world-readable is tightened too.
    (folder / f"{RECORDS_FILE}.1").write_text("{}\n")
    os.chmod(folder / f"{RECORDS_FILE}.1", 0o644)
    old_umask = os.umask(0o022)
    try:
        logger.addHandler(RecordFileHandler(folder, max_bytes=2000, keep=3, group=group.gr_name))
        bus = ev.EventBus()
        log_events(bus, logger)
        for pid in range(60):
            bus.publish(exited(pid))
    finally:
        os.umask(old_umask)
    assert (folder.stat().st_mode & 0o7777, folder.stat().st_gid) == (0o750, group.gr_gid)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [RECORDS_FILE, f"{RECORDS_FILE}.1", f"{RECORDS_FILE}.2", f"{RECORDS_FILE}.3"]
    for name in names:
        st = (folder / name).stat()
        assert (name, st.st_mode & 0o7777, st.st_gid) == (name, 0o640, group.gr_gid)


def test_without_the_group_the_files_stay_0640_and_hasupds_own(
    tmp_path: Path, logger: logging.Logger
) -> None:
    logger.addHandler(RecordFileHandler(tmp_path / "records", group="no-such-group-hasupd-test"))
    logger.handle(_log_record(logger.name, exited(1)))
    st = (tmp_path / "records" / RECORDS_FILE).stat()
    assert (st.st_mode & 0o7777, st.st_gid) == (0o640, os.getegid())


def test_a_full_disk_gives_one_dropping_record_then_one_resumed_record_with_the_count(
    logger: logging.Logger,
) -> None:
    stderr = io.StringIO()
    fallback = logging.StreamHandler(stderr)
    fallback.setFormatter(logging.Formatter("%(message)s"))
    with small_tmpfs() as mount:
        handler = RecordFileHandler(mount / "records", fallback=fallback)
        logger.addHandler(handler)
        bus = ev.EventBus()
        log_events(bus, logger)
        bus.publish(exited(1))
        filler = fill(mount)
        for pid in range(2, 540):
            bus.publish(exited(pid))
        notices = stderr.getvalue().splitlines()
        assert len(notices) == 1, notices[:5]  # one notice, no traceback per record
        assert notices[0].startswith(f"records to {mount}/records/{RECORDS_FILE} are being dropped: ")
        assert "No space left on device" in notices[0]
        assert handler.dropped >= 500
        filler.unlink()
        bus.publish(exited(1000))
        lines = (mount / "records" / RECORDS_FILE).read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    notices = stderr.getvalue().splitlines()
    assert len(notices) == 2
    dropped = int(re.search(r"; (\d+) record\(s\) were dropped", notices[1]).group(1))  # type: ignore[union-attr]
    assert dropped >= 500
    # The file tells the gap too, then goes on with the record that found the disk writable again.
    resumed = [r for r in records if r.get("event") == "records.resumed"]
    assert len(resumed) == 1 and resumed[0]["dropped"] == dropped and resumed[0]["level"] == "warning"
    assert records[-1]["pid"] == 1000 and records[-2] is resumed[0]
    assert records[0]["pid"] == 1
    # The count is exact: every record published while full is either in the file or counted.
    written_while_full = [r for r in records if 2 <= r.get("pid", 0) < 540]
    assert dropped == 538 - len(written_while_full)
    # Whatever a failed write cut off stays on its own line: every other line is a whole record.
    assert sum(1 for line in lines if not line.startswith("{")) <= 1


def test_standard_extra_fields_reach_the_record_through_python_json_logger(
    tmp_path: Path, logger: logging.Logger
) -> None:
    logger.addHandler(RecordFileHandler(tmp_path))
    logger.warning("disk %s is slow", "sda", extra={"device": "sda", "latency_ms": 250})
    record = json.loads((tmp_path / RECORDS_FILE).read_text())
    assert list(record) == ["time", "level", "message", "device", "latency_ms"]
    assert record["level"] == "warning" and record["message"] == "disk sda is slow"
    assert record["device"] == "sda" and record["latency_ms"] == 250
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", record["time"])


FORMAT_PROGRAM = """
import json
from hasupd import events as ev
from hasupd.observe.logs import RecordJsonFormatter, _log_record
e = ev.ServiceExited(service="web", incident="3fa2b91c0d4e", pid=4121, result="signal", signal="SIGKILL",
                     expected=False, status="SIGKILL", time=1742033071.227114)
print(RecordJsonFormatter().format(_log_record("hasupd", e)))
"""


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("A record looks like this (times are UTC, microseconds):", 1)[1]
    return block.split("```json\n", 1)[1].split("\n```", 1)[0]


@pytest.mark.parametrize("python", ["venv", "debian"])
def test_the_record_format_is_the_documented_one_with_both_python_json_logger_versions(python: str) -> None:
    exe = sys.executable if python == "venv" else DEBIAN_PYTHON
    pythonpath = str(REPO)
    if python == "debian":
        # Debian 12's python-json-logger, taken out of its .deb (not installed) and put first on the path,
        # run by Debian's own Python: the library version the .deb runs on.
        try:
            module = fetched_binary(
                this_suite(),
                "python3-pythonjsonlogger",
                "usr/lib/python3/dist-packages/pythonjsonlogger/jsonlogger.py",
            )
        except RuntimeError as e:
            pytest.fail(str(e))
        pythonpath = f"{module.parent.parent}:{REPO}"
    out = subprocess.run(
        [exe, "-W", "error", "-c", FORMAT_PROGRAM],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
        timeout=60,
        check=True,
    )
    assert out.stderr == ""
    assert out.stdout.strip() == readme_example()


def test_journald_gone_gives_one_notice_on_stderr_and_one_when_it_is_back(
    tmp_path: Path, logger: logging.Logger
) -> None:
    path = tmp_path / "journal.sock"
    stderr = io.StringIO()
    handler = JournalHandler(path)
    assert handler.fallback is not None
    handler.fallback = logging.StreamHandler(stderr)
    handler.fallback.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    for pid in range(100):  # nobody listens: every send fails
        logger.handle(_log_record(logger.name, exited(pid)))
    assert stderr.getvalue().splitlines() == [
        f"records to journald ({path}) are being dropped: No such file or directory"
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(str(path))
        logger.handle(_log_record(logger.name, exited(100)))
        first = journald.recv(65536)
        second = journald.recv(65536)
    assert b"HASUPD_EVENT=records.resumed\n" in first and b"HASUPD_DROPPED=100\n" in first
    assert b"HASUPD_PID=100\n" in second
    assert (
        stderr.getvalue().splitlines()[1]
        == f"records to journald ({path}) are written again; 100 record(s) were dropped"
    )
