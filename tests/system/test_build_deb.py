"""packaging/build-deb run by root in a clone that belongs to someone else, as `sudo scripts/test`
does in a developer's own clone (git calls that "dubious ownership" unless told otherwise)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.gitclone import clone
from tests.system.conftest import REPO, require, require_tools, run


def test_root_builds_the_deb_from_a_clone_owned_by_another_user(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "this test builds as root in a clone owned by another user")
    require_tools(
        "git",
        "dpkg-buildpackage",
        "dh",
        "lintian",
        hint="apt-get install git build-essential dpkg-dev debhelper dh-python pybuild-plugin-pyproject "
        "python3-all python3-all-dev python3-setuptools lintian",
    )
    src = tmp_path / "clone"
    clone(REPO, src, with_changes=True)
    run(["chown", "-R", "65534:65534", str(src)], timeout=60)
    # What git says to root in such a clone by default: the situation is real.
    plain = subprocess.run(
        ["git", "-C", str(src), "ls-files"], capture_output=True, text=True, timeout=60, check=False
    )
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr, plain
    out = tmp_path / "out"
    proc = run([str(src / "packaging" / "build-deb"), str(out)], timeout=600)
    debs = sorted(out.glob("hasupd_*.deb"))
    assert len(debs) == 1, f"{proc.stdout}\n{proc.stderr}"
    # Architecture: any since the spawn path is a C extension; the package must carry it (the
    # pure-Python fallback is for source installs without a compiler, not for the .deb).
    listing = run(["dpkg-deb", "--contents", str(debs[0])], timeout=60).stdout
    assert "/hasupd/host/_spawn.cpython-" in listing, listing
    arch = run(["dpkg-deb", "--field", str(debs[0]), "Architecture"], timeout=60).stdout.strip()
    assert arch == run(["dpkg", "--print-architecture"], timeout=60).stdout.strip()
