"""The state record's format: versioned, checksummed, and unreadable rather than wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from hasupd import handover


def body() -> dict[str, object]:
    return {"hasupd_version": "0.1.0", "pid": 42, "units": {"web": {"state": "running", "main_pid": 7}}}


def test_a_written_record_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "state.record"
    handover.write(path, body())
    assert handover.read(path) == body()
    assert not list(tmp_path.glob(".*.tmp"))  # replaced atomically, nothing left beside it


def test_a_record_of_another_format_is_unreadable_and_says_which() -> None:
    data = handover.encode(body(), fmt=handover.FORMAT - 1)
    with pytest.raises(handover.UnreadableRecord, match=f"format {handover.FORMAT - 1}, this hasupd reads"):
        handover.decode(data)


@pytest.mark.parametrize("offset", [-1, -5, 40])
def test_a_flipped_byte_anywhere_in_the_body_is_a_checksum_mismatch(offset: int) -> None:
    data = bytearray(handover.encode(body()))
    start = data.index(b"\n") + 1
    data[offset if offset < 0 else start + offset] ^= 0x20
    with pytest.raises(handover.UnreadableRecord, match="checksum"):
        handover.decode(bytes(data))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not a hasupd state record"),
        (b"garbage\n{}", "not a hasupd state record"),
        (b"HASUPD-STATE x abc\n{}", "no format number"),
    ],
)
def test_anything_else_is_unreadable(data: bytes, why: str) -> None:
    with pytest.raises(handover.UnreadableRecord, match=why):
        handover.decode(data)


def test_a_truncated_record_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "state.record"
    handover.write(path, body())
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(handover.UnreadableRecord, match="checksum"):
        handover.read(path)


def test_a_missing_record_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(handover.UnreadableRecord):
        handover.read(tmp_path / "nope")


def test_the_running_marker_tells_a_crash_from_a_clean_stop(tmp_path: Path) -> None:
    assert handover.write_marker(tmp_path) is None  # first start
    assert handover.write_marker(tmp_path) is not None  # no clean stop in between: a crash
    handover.clear_marker(tmp_path)
    assert handover.write_marker(tmp_path) is None
