"""``hasupctl restore --in-place --path P`` with paths a restore must refuse: a mistyped path, ``..``,
a path outside the job, a symlink leading out. Each is a usage error (exit 2) before anything on disk
moves, and hasupd and its services keep running."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.integration.backup.jobsupport import QUIET, Setup, stamp
from tests.support.harness import Hasupd


def listing(root: Path) -> list[tuple[str, str]]:
    """Return every entry under ``root`` (not following symlinks) with its content or link target,
    leaving out the repository, hasupd's own state and the config."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root:
            dirs[:] = [d for d in dirs if d not in ("hot", "work0", "etc", "bin")]
        for name in sorted(dirs + files):
            path = Path(dirpath) / name
            if path.is_symlink():
                out.append((str(path), "-> " + os.readlink(path)))
            elif path.is_file():
                out.append((str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
            else:
                out.append((str(path), "dir"))
    return sorted(out)


def test_restore_paths_outside_the_job_or_the_snapshot_are_refused_before_anything_moves(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    victim = setup.tmp / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("do not move me\n")
    (setup.data / "sub").mkdir()
    (setup.data / "sub" / "file.txt").write_text("in the snapshot\n")
    setup.restic("backup", "--tag", "hasupd", "--tag", "job:app-data", str(setup.data))
    # Afterwards data/sub becomes a symlink to a folder outside the job holding a file of that name.
    outside = setup.tmp / "outside"
    outside.mkdir()
    (outside / "file.txt").write_text("outside the job\n")
    os.rename(setup.data / "sub", setup.tmp / "sub.old")
    (setup.data / "sub").symlink_to(outside)
    for kind in ("backup", "prune"):
        stamp(setup.tmp / "work0", kind, datetime.now(UTC))
    config = setup.config(QUIET, services={"app": {"command": ["/bin/sleep", "1000"]}})
    d = hasupd(config)
    app_pid = d.wait_for("service.started", service="app")[0]["pid"]
    before = listing(setup.tmp)
    data = str(setup.data)
    cases = {
        f"{data}/no-such-file": "does not exist in snapshot",
        f"{data}/../victim": "must not contain '..'",
        f"{data}/sub/../../victim": "must not contain '..'",
        str(victim): "is not in snapshot",
        "/etc": "is not in snapshot",
        "relative/path": "must be an absolute path",
        f"{data}/sub/file.txt": "through a symbolic link",
    }
    for path, message in cases.items():
        result = d.ctl("restore", "app-data", "--in-place", "--path", path)
        assert result.returncode == 2, (path, result)
        assert message in result.stderr, (path, result.stderr)
        assert listing(setup.tmp) == before, path  # nothing moved, nothing staged
    assert d.proc.poll() is None  # hasupd is alive ...
    status = json.loads(d.ctl("status", "app", "--json").stdout)[0]
    assert status["state"] == "running" and status["pid"] == app_pid  # ... and so is its service
    # A path that is in the snapshot and on disk inside the job still restores.
    (setup.data / "a.txt").write_text("changed\n")
    good = d.ctl("restore", "app-data", "--in-place", "--path", f"{data}/./a.txt", timeout=120)
    assert good.returncode == 0, good.stderr
    assert (setup.data / "a.txt").read_text() == "alpha\n"
    assert (victim / "precious.txt").read_text() == "do not move me\n"
    assert not list(setup.tmp.glob("victim.*")) and not list(setup.tmp.glob(".victim*"))
    assert d.stop() == 0
