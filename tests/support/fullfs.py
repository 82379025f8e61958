"""A filesystem that fills up: a 2 MiB tmpfs on a temporary mountpoint (root only), and a filler file."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.support.harness import require_root


@contextlib.contextmanager
def small_tmpfs() -> Iterator[Path]:
    """Yield the mountpoint of a fresh 2 MiB tmpfs; unmount and remove it afterwards."""
    require_root()
    point = Path(tempfile.mkdtemp(prefix="hasupd-full-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(point)], check=True)
        try:
            yield point
        finally:
            subprocess.run(["umount", "-l", str(point)], check=True)
    finally:
        point.rmdir()


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its filesystem is full; return it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            for _ in range(4096):  # 16 MiB at most: the filesystem is far smaller
                os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)
    return filler
