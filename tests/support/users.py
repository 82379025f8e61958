"""Real unix users and groups, created for a test and removed after it."""

from __future__ import annotations

import grp
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def temp_group() -> Iterator[str]:
    name = "hst" + uuid.uuid4().hex[:8]
    subprocess.run(["groupadd", "--system", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False)


@contextmanager
def temp_user(groups: tuple[str, ...] = ()) -> Iterator[pwd.struct_passwd]:
    name = "hsu" + uuid.uuid4().hex[:8]
    argv = [
        "useradd",
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--user-group",
    ]
    if groups:
        argv += ["--groups", ",".join(groups)]
    subprocess.run([*argv, name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--force", name], check=False)
        try:
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], check=False)
        except KeyError:
            pass


@contextmanager
def world_dir() -> Iterator[Path]:
    """A folder every user can write (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="hasupd-test-"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
