"""The state record's file: format, checksum, atomic writes, and the marker that tells a crash of hasupd
from a clean stop. What goes in it, and what is done with it, is ``hasupd.handover``'s.

File format (``RUNTIME_DIR/state.record``, ``RUNTIME_DIR/reexec.record``)::

    HASUPD-STATE <format> <sha256 of the body, hex>\n<body: JSON>

A record of another format, a bad checksum or a body that does not parse is *unreadable*
(``UnreadableRecord``): never a reason to kill anything; the caller falls back to adoption.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

FORMAT = 2  # format 1 (no per-unit config digest) is read by nobody: it falls back to adoption
MAGIC = b"HASUPD-STATE"
RECORD_NAME = "state.record"
REEXEC_ENV = "HASUPD_REEXEC_RECORD"  # set only for the new image of a re-exec: the record to restore
# Also set for the new image: "<old version> <CLOCK_MONOTONIC at execve>", known even when the record is not.
REEXEC_FROM_ENV = "HASUPD_REEXEC_FROM"
RUNNING_MARKER = "hasupd.running"  # in the state dir; removed on a clean stop


class UnreadableRecord(Exception):
    """The record cannot be used (``str()`` says why)."""


def encode(body: dict[str, Any], fmt: int = FORMAT) -> bytes:
    """Return the record bytes for ``body``."""
    data = json.dumps(body, sort_keys=True).encode()
    return MAGIC + f" {fmt} {hashlib.sha256(data).hexdigest()}\n".encode() + data


def decode(data: bytes) -> dict[str, Any]:
    """Return the body of a record. Raise UnreadableRecord for another format, a bad checksum, a body that
    is not a JSON object."""
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        raise UnreadableRecord("not a hasupd state record")
    try:
        fmt = int(parts[1])
    except ValueError:
        raise UnreadableRecord("not a hasupd state record (no format number)") from None
    if fmt != FORMAT:
        raise UnreadableRecord(f"format {fmt}, this hasupd reads format {FORMAT}")
    if hashlib.sha256(body).hexdigest().encode() != parts[2]:
        raise UnreadableRecord("checksum mismatch (corrupt or truncated)")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise UnreadableRecord(f"body is not JSON: {str(e)[:200]}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("units"), dict):
        raise UnreadableRecord("body has no units")
    return parsed


def read(path: Path) -> dict[str, Any]:
    """Return the body of the record at ``path``. Raise UnreadableRecord (missing, unreadable, bad)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableRecord(f"{path}: {e.strerror}") from None
    try:
        return decode(data)
    except UnreadableRecord as e:
        raise UnreadableRecord(f"{path}: {e}") from None


def write(path: Path, body: dict[str, Any]) -> int:
    """Replace ``path`` atomically (rename): a reader sees the old record or the new one, never half.
    Not fsynced: the record serves a crash of hasupd, not of the machine (RUNTIME_DIR is a tmpfs).
    A folder in its place (damage) is removed first: else no record could be kept, nor a clean stop
    remove it. Return the size of the record; raise OSError if it cannot be written."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    tmp = path.with_name(f".{path.name}.tmp")
    data = encode(body)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return len(data)


def write_marker(state_dir: Path) -> int | None:
    """Mark hasupd as running (removed on a clean stop); return the pid of an earlier run whose marker
    was still there (it did not stop cleanly), else None."""
    marker = state_dir / RUNNING_MARKER
    previous: int | None = None
    try:
        text = marker.read_bytes().strip()
        previous = int(text) if text.isdigit() else 0
    except FileNotFoundError:
        pass
    except (OSError, ValueError):  # not what hasupd writes (damaged): still, an earlier run's marker
        previous = 0
    if marker.is_dir() and not marker.is_symlink():
        shutil.rmtree(marker)  # a folder in its place (damage): replaced, else every start fails here
    marker.write_text(str(os.getpid()))
    return previous


def clear_marker(state_dir: Path) -> None:
    """A clean stop: the next start is not a crash recovery."""
    (state_dir / RUNNING_MARKER).unlink(missing_ok=True)
