"""Reading a file an operator named (a config file, an environment file) without trusting what it is,
and writing hasupd's own small state files whole or not at all (``atomic_write_*``).

Stdlib only. A FIFO, a device (``/dev/zero``, ``/dev/urandom``, a tty) or a folder is refused before it
is read, and without blocking; a regular file is read up to a bound. So no file can hang, fill the
memory of or take seconds from the process that reads it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotARegularFile(Exception):
    """The path is no regular file, or one larger than allowed; ``str()`` says which (for operators)."""


def file_kind(mode: int) -> str:
    """Return what a ``st_mode`` is, as "a FIFO", "a folder", "a regular file" ..."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "a regular file")


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """Return the content of the regular file at ``path`` (symlinks followed).

    Raise NotARegularFile for anything else (a FIFO, a device, a folder) or a file of more than
    ``max_bytes``; raise OSError if it cannot be opened or read (FileNotFoundError when it is missing or
    a symlink to nothing, ELOOP for a symlink loop).
    """
    # stat before open: opening some devices has effects (a tape rewinds, a tty becomes ours).
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"not a regular file: it is {file_kind(mode)}")
    # O_NONBLOCK: were it swapped for a FIFO since, open() must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(f"not a regular file: it is {file_kind(info.st_mode)}")
        if info.st_size > max_bytes:
            raise NotARegularFile(f"file too large: {info.st_size} bytes, at most {max_bytes}")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # the file may grow while it is read
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise NotARegularFile(f"file too large: more than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


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
