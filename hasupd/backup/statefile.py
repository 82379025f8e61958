"""Small state files that survive a crash: written whole or not at all."""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")


def check_name(what: str, name: str) -> str:
    """Return ``name`` if it is a hasupd name (``[a-z0-9][a-z0-9_.-]*``), else raise ValueError.

    Names become file names under the state dir, so "..", "/" and the like must never get through.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"invalid {what} name {name!r}")
    return name


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (fsync of the file and its directory).

    Raise OSError if it cannot be written.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably. Raise OSError if it cannot be written."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    # The rename is only durable once the directory entry is on disk.
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def read_text(path: Path) -> str | None:
    """Return the content of ``path``, or None if it does not exist. Raise OSError on other errors."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
