"""The project's metadata builds without a deprecation warning on Debian 12's setuptools (66, which
builds the .deb) and on the newest one (which `pip install` fetches), and says the licence is MIT."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import REPO

DEBIAN_PYTHON = "/usr/bin/python3"
# Asks setuptools' PEP 517 backend for the wheel's METADATA, as pip and pybuild do, with every
# warning shown; prints the setuptools version, then the metadata.
PREPARE = """
import sys, warnings
out = sys.argv[1]  # (setuptools rewrites sys.argv)
warnings.simplefilter("always")
import setuptools
from setuptools import build_meta
print("setuptools", setuptools.__version__, flush=True)
info = build_meta.prepare_metadata_for_build_wheel(out)
print(open(f"{out}/{info}/METADATA").read())
"""


def setuptools_version(python: str) -> tuple[int, ...]:
    out = subprocess.run(
        [python, "-c", "import setuptools; print(setuptools.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return tuple(int(part) for part in out.strip().split(".")[:2])


@pytest.mark.parametrize(
    ("python", "want"),
    [
        pytest.param(DEBIAN_PYTHON, (66,), id="debian-setuptools"),
        # The test venv gets the newest release through the `test` extra (setuptools>=77, the first
        # release that deprecates `project.license` as a table and license classifiers).
        pytest.param(sys.executable, (77,), id="newest-setuptools"),
    ],
)
def test_metadata_builds_without_deprecation(tmp_path: Path, python: str, want: tuple[int, ...]) -> None:
    assert shutil.which(python), f"{python} is needed (apt-get install python3 python3-setuptools)"
    version = setuptools_version(python)
    assert version >= want, (
        f"{python} has setuptools {version}, this case needs {want} or newer "
        "(scripts/test installs the newest with the `test` extra)"
    )
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "hasupd", src / "hasupd", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "meta"
    out.mkdir()
    proc = subprocess.run(
        [python, "-c", PREPARE, str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Warnings go to stderr (stdout has the metadata, whose README text may say anything).
    warnings = [line for line in proc.stderr.splitlines() if "deprecat" in line.lower()]
    assert warnings == [], proc.stderr
    metadata_header = proc.stdout.partition("\n\n")[0]
    assert "\nLicense: MIT" in metadata_header, metadata_header
