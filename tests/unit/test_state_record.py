"""The state record's format: versioned, checksummed, and unreadable rather than wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasupd import state_record


def body() -> dict[str, object]:
    return {"hasupd_version": "0.1.0", "pid": 42, "units": {"web": {"state": "running", "main_pid": 7}}}


def test_a_written_record_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state.record"
    state_record.write(path, body())
    assert state_record.read(path) == body()
    assert not list(tmp_path.glob(".*.tmp"))  # replaced atomically, nothing left beside it


def test_a_record_of_another_format_is_unreadable_and_says_which() -> None:
    data = state_record.encode(body(), fmt=state_record.FORMAT - 1)
    with pytest.raises(
        state_record.UnreadableRecord, match=f"format {state_record.FORMAT - 1}, this hasupd reads"
    ):
        state_record.decode(data)


@pytest.mark.parametrize("offset", [-1, -5, 40])
def test_a_flipped_byte_anywhere_in_the_body_is_a_checksum_mismatch(offset: int) -> None:
    data = bytearray(state_record.encode(body()))
    start = data.index(b"\n") + 1
    data[offset if offset < 0 else start + offset] ^= 0x20
    with pytest.raises(state_record.UnreadableRecord, match="checksum"):
        state_record.decode(bytes(data))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not a hasupd state record"),
        (b"garbage\n{}", "not a hasupd state record"),
        (b"HASUPD-STATE x abc\n{}", "no format number"),
    ],
)
def test_anything_else_is_unreadable(data: bytes, why: str) -> None:
    with pytest.raises(state_record.UnreadableRecord, match=why):
        state_record.decode(data)


def test_a_truncated_record_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "state.record"
    state_record.write(path, body())
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(state_record.UnreadableRecord, match="checksum"):
        state_record.read(path)


def test_a_missing_record_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(state_record.UnreadableRecord):
        state_record.read(tmp_path / "nope")


def test_the_running_marker_tells_a_crash_from_a_clean_stop(tmp_path: Path) -> None:
    assert state_record.write_marker(tmp_path) is None  # first start
    assert state_record.write_marker(tmp_path) is not None  # no clean stop in between: a crash
    state_record.clear_marker(tmp_path)
    assert state_record.write_marker(tmp_path) is None


@pytest.mark.parametrize("content", [b"\xff\x00garbage", b"12\xfe", b""])
def test_a_damaged_marker_counts_as_an_unclean_stop_and_is_replaced(tmp_path: Path, content: bytes) -> None:
    """Bytes hasupd never writes (a damaged disk): hasupd exited at start with UnicodeDecodeError, and
    so again at every restart by systemd."""
    (tmp_path / state_record.RUNNING_MARKER).write_bytes(content)
    assert state_record.write_marker(tmp_path) == 0
    assert (tmp_path / state_record.RUNNING_MARKER).read_text().isdigit()
