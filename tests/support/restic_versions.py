"""The two restic versions the backup tests run against: the system's and the other Debian release's.

Debian 12 ships restic 0.14, Debian 13 ships 0.18. The other one is fetched once from the package
registry with a private apt configuration (its own source list naming the other suite, signed by the
Debian archive keyring; its own lists and cache), never touching the system's apt sources:
``apt-get download restic`` then ``dpkg-deb -x``. restic is a static binary and runs on either release.
It is kept under ``$HASUPD_TEST_CACHE`` (default /var/cache/hasupd-test), so it is fetched once.

A test that cannot get the second version FAILS with the reason, unless ``HASUPD_TEST_ONE_RESTIC=1``
says to run with the system restic only (then the second-version tests are skipped, named as such).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR = "http://deb.debian.org/debian"


def cache_root() -> Path:
    return Path(os.environ.get("HASUPD_TEST_CACHE", "/var/cache/hasupd-test"))


def system_restic() -> Path:
    """Return the system restic. Raise RuntimeError naming the fix if it is not installed."""
    found = shutil.which("restic")
    if found is None:
        raise RuntimeError("restic is not installed: apt-get install -y restic")
    return Path(found)


def restic_version(binary: Path) -> tuple[int, int, int]:
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True, timeout=30)
    m = re.search(r"restic (\d+)\.(\d+)\.(\d+)", out.stdout)
    if m is None:
        raise RuntimeError(f"{binary} version printed {out.stdout!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def other_suite() -> str:
    """Return the Debian suite whose restic is not the system's: trixie on Debian 12, else bookworm."""
    version = Path("/etc/debian_version").read_text().strip()
    return "trixie" if version.startswith("12") else "bookworm"


def second_restic() -> Path:
    """Return the other release's restic binary, fetching it once. Raise RuntimeError with the reason."""
    return fetched_binary(other_suite(), "restic", "usr/bin/restic")


def this_suite() -> str:
    """Return this machine's Debian suite: bookworm on Debian 12, else trixie."""
    version = Path("/etc/debian_version").read_text().strip()
    return "bookworm" if version.startswith("12") else "trixie"


def fetched_binary(suite: str, package: str, member: str) -> Path:
    """Return ``member`` (a path inside ``package``'s .deb of ``suite``), extracted once into the cache.

    Nothing is installed: no maintainer script runs (so a server package starts no service), and the
    system's apt sources and state are untouched. Raise RuntimeError with the reason when it cannot be had.
    """
    root = cache_root() / f"{package}-{suite}"
    binary = root / member
    if binary.exists():
        return binary
    if not KEYRING.exists():
        raise RuntimeError(f"{KEYRING} is missing: apt-get install -y debian-archive-keyring")
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f".{package}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs fetch it once
        if binary.exists():
            return binary
        _fetch(suite, package, root)
    if not binary.exists():
        raise RuntimeError(f"{package} from {suite} has no {member}")
    return binary


def _fetch(suite: str, package: str, root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"{package}-apt-", dir=cache_root()) as tmp:
        work = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial", "deb"):
            (work / sub).mkdir(parents=True)
        sources = work / "sources.list"
        sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")
        options = [
            f"-oDir::Etc::SourceList={sources}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={work / 'lists'}",
            f"-oDir::Cache={work / 'cache'}",
            "-oDir::State::status=/dev/null",
            "-oAPT::Sandbox::User=root",  # the temp dir is not readable by _apt
            "-oDebug::NoLocking=1",
        ]
        for argv in (["apt-get", *options, "update"], ["apt-get", *options, "download", package]):
            done = subprocess.run(
                argv, check=False, cwd=work / "deb", capture_output=True, text=True, timeout=600
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(argv[:1] + argv[-1:])} for {suite} failed: {done.stderr[-2000:]}"
                )
        debs = list((work / "deb").glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise RuntimeError(f"apt-get download {package} gave {debs}")
        staging = work / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(staging)], check=True, timeout=120)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)


@pytest.fixture(scope="session", params=["system", "second"])
def restic_binary(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Yield the restic binary of each version: the system's, then the other Debian release's."""
    try:
        system = system_restic()
    except RuntimeError as e:
        pytest.fail(str(e))
    if request.param == "system":
        yield system
        return
    try:
        binary = second_restic()
        versions = restic_version(system), restic_version(binary)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        if os.environ.get("HASUPD_TEST_ONE_RESTIC") == "1":
            pytest.skip(f"HASUPD_TEST_ONE_RESTIC=1: second restic version not used ({e})")
        pytest.fail(f"cannot get the second restic version (set HASUPD_TEST_ONE_RESTIC=1 to opt out): {e}")
    if versions[0] == versions[1]:
        pytest.fail(f"the second restic is the same version as the system's: {versions[0]}")
    yield binary
