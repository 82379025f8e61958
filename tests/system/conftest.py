"""The installed Debian package under a real systemd: fixtures.

`deb` builds the package with packaging/build-deb (lintian included) for the release that is booted:
on the host when that is the host's release, else inside a container of that release (a .deb is built
on the release it installs on: its C extension is compiled for that release's Python versions).
`rootfs` builds a Debian root filesystem of that release with mmdebstrap, cached as a tarball.
`machine` imports it into a private podman store, boots it with systemd as PID 1, and installs the
package with apt-get, so that its dependencies resolve from the Debian archive.

A missing tool fails the test with the reason; HASUPD_TEST_NO_SYSTEM=1 turns that into a skip.

Environment:
  HASUPD_SYSTEST_CACHE    where root filesystem tarballs and downloaded .debs are kept
                          (default /var/cache/hasupd-systest)
  HASUPD_SYSTEST_RELEASE  the Debian release to build the .deb on and boot (default: the host's
                          VERSION_CODENAME); e.g. `trixie` on a Debian 12 host builds the .deb in a
                          Debian 13 build container (its root filesystem has the Build-Depends of
                          packaging/debian/control, lintian and git) and boots Debian 13
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.gitclone import clone

REPO = Path(__file__).resolve().parents[2]
OPT_OUT = "HASUPD_TEST_NO_SYSTEM"
CACHE_ENV = "HASUPD_SYSTEST_CACHE"
DEFAULT_CACHE = "/var/cache/hasupd-systest"
RELEASE_ENV = "HASUPD_SYSTEST_RELEASE"

# What the booted system needs beyond minbase; hasupd's own dependencies are left out on purpose:
# apt-get resolves them from the archive when the .deb is installed.
ROOTFS_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3")
# What packaging/build-deb needs beyond packaging/debian/control's Build-Depends, in a build container.
BUILD_TOOLS = ("build-essential", "dpkg-dev", "git", "lintian")
# A cached root filesystem older than this is rebuilt, so that it does not drift far from the
# archive that apt-get installs the dependencies from.
ROOTFS_MAX_AGE_SEC = 14 * 24 * 3600

# Per the build machines' notes (shared TESTING.md): runc (crun refuses hybrid cgroups), cgroupfs,
# file events, and ulimits that root without CAP_SYS_RESOURCE can set.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

T = TypeVar("T")


def require(ok: bool, reason: str) -> None:
    """Fail the test with `reason` unless `ok`; skip instead when the developer opted out."""
    if ok:
        return
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{reason} ({OPT_OUT}=1)")
    pytest.fail(f"{reason} (set {OPT_OUT}=1 to skip the system tests)", pytrace=False)


def require_tools(*tools: str, hint: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    require(not missing, f"missing {', '.join(missing)}: {hint}")


def run(
    argv: list[str], *, timeout: float, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capturing text output. Raise AssertionError with the output if it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def os_release() -> dict[str, str]:
    fields = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value.strip().strip('"')
    return fields


def host_release() -> str:
    return os_release().get("VERSION_CODENAME", "")


def release() -> str:
    return os.environ.get(RELEASE_ENV) or host_release()


def build_depends() -> tuple[str, ...]:
    """The package names of packaging/debian/control's Build-Depends (versions and the debhelper-compat
    virtual package resolved to what mmdebstrap --include takes)."""
    control = (REPO / "packaging" / "debian" / "control").read_text()
    field = ""
    collecting = False
    for line in control.splitlines():
        if line.startswith("Build-Depends:"):
            collecting = True
            field += line.partition(":")[2]
        elif collecting and line[:1] in {" ", "\t"}:
            field += line
        else:
            collecting = False
    names = []
    for item in field.split(","):
        name = item.split("|")[0].split("(")[0].split("[")[0].strip()
        if name:
            names.append("debhelper" if name == "debhelper-compat" else name)
    return tuple(names)


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def host_apt_sources(codename: str) -> Path | None:
    """Return the host's Debian apt sources if they name `codename`, else None (mmdebstrap's default
    mirrors, with updates and security for a stable release)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        if path.is_file() and codename in path.read_text():
            return path
    return None


def cgroup2_mount_below_v1() -> str | None:
    """Return where cgroup2 is mounted when the host's cgroups are hybrid (v1 controllers under
    /sys/fs/cgroup, cgroup2 at e.g. /sys/fs/cgroup/unified), else None."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype = right.split()[0]
        mountpoint = left.split()[4]
        if fstype == "cgroup2" and mountpoint.startswith("/sys/fs/cgroup/"):
            return mountpoint
    return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require_root() -> None:
    require(os.geteuid() == 0, "the system tests need root (podman, mmdebstrap, apt inside the container)")


def debian_rootfs(codename: str, packages: tuple[str, ...], kind: str) -> Path:
    """Return a minbase root filesystem tarball of `codename` with `packages`, built by mmdebstrap and
    cached by release and recipe (`kind` names it: rootfs, buildfs)."""
    require_tools("mmdebstrap", hint="apt-get install mmdebstrap")
    sources = host_apt_sources(codename)
    recipe = {
        "release": codename,
        "variant": "minbase",
        "include": packages,
        "sources": sources.read_text() if sources else None,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    cache = cache_dir()
    tarball = cache / f"{kind}-{codename}-{key}.tar"
    with locked(cache / ".lock"):
        if tarball.exists() and time.time() - tarball.stat().st_mtime < ROOTFS_MAX_AGE_SEC:
            return tarball
        for old in cache.glob(f"{kind}-{codename}-*.tar"):
            old.unlink()
        partial = tarball.with_suffix(".partial.tar")
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            codename,
            str(partial),
        ]
        if sources:
            argv.append(str(sources))
        run(argv, timeout=1200)
        partial.rename(tarball)
    return tarball


def require_release() -> str:
    codename = release()
    require(
        bool(codename),
        f"cannot tell the Debian release: no VERSION_CODENAME in /etc/os-release, set {RELEASE_ENV}",
    )
    return codename


BUILD_HINT = (
    "apt-get install git build-essential dpkg-dev debhelper dh-python pybuild-plugin-pyproject "
    "python3-all python3-all-dev python3-setuptools lintian"
)


def build_deb(src: Path, out: Path, podman: Podman) -> Path:
    """Run `src`/packaging/build-deb OUT (lintian included) on the release that `rootfs` boots and
    return the one .deb it leaves in `out`. A .deb is built on the release it installs on (its C
    extension is compiled for that release's Python versions): on the host when the host runs that
    release, else in a container of it whose root filesystem has packaging/debian/control's
    Build-Depends (imported once into `podman`'s store), with no network. `src` must be a git tree
    (packaging/build-deb copies the files git knows about)."""
    require_root()
    codename = require_release()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if codename == host_release():
        require_tools("git", "dpkg-buildpackage", "dh", "lintian", hint=BUILD_HINT)
        proc = run([str(src / "packaging" / "build-deb"), str(out)], timeout=900)
    else:
        proc = podman(
            "run",
            "--rm",
            "--network=none",
            "--volume",
            f"{src}:/src",
            "--volume",
            f"{out}:/out",
            podman.build_image(codename),
            "/src/packaging/build-deb",
            "/out",
            timeout=1800,
        )
    print(
        f"packaging/build-deb on {codename}: {time.monotonic() - started:.0f} s\n", proc.stdout, proc.stderr
    )
    debs = sorted(out.glob("hasupd_*.deb"))
    assert len(debs) == 1, f"expected one .deb in {out}, found {debs}"
    return debs[0]


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory, podman: Podman) -> Path:
    """The hasupd .deb built from this tree by packaging/build-deb (which fails on lintian errors), on
    the release that `rootfs` boots (see build_deb)."""
    require_root()
    src = REPO
    if require_release() != host_release():
        # The build container sees only what is mounted: a clone of this tree with its changes
        # (REPO may be a git worktree whose git directory lies elsewhere).
        require_tools("git", hint="apt-get install git")
        src = tmp_path_factory.mktemp("build-src") / "hasupd"
        clone(REPO, src, with_changes=True)
    return build_deb(src, tmp_path_factory.mktemp("deb"), podman)


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """A minbase Debian root filesystem tarball with systemd as init, cached by release and recipe."""
    require_root()
    return debian_rootfs(require_release(), ROOTFS_PACKAGES, "rootfs")


class Podman:
    """podman with a private store, its own containers.conf, and nothing shared with the system's."""

    def __init__(self, base: Path) -> None:
        self.base = base
        conf = base / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        # Podman 5 warns on every call where the host's cgroups are v1 or hybrid.
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
        self.argv = [
            "podman",
            "--root",
            str(base / "root"),
            "--runroot",
            str(base / "runroot"),
            "--tmpdir",
            str(base / "tmp"),
        ]
        self.build_images: dict[str, str] = {}

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run([*self.argv, *args], timeout=timeout, check=check, env=self.env)

    def build_image(self, codename: str) -> str:
        """Return the name of a build image of `codename` in this store, importing it the first time."""
        if codename not in self.build_images:
            buildfs = debian_rootfs(codename, (*build_depends(), *BUILD_TOOLS), "buildfs")
            image = f"localhost/hasupd-systest-build:{buildfs.stem}"
            self("import", str(buildfs), image, timeout=600)
            self.build_images[codename] = image
        return self.build_images[codename]

    def remove_store(self) -> None:
        """Delete the private store, unless podman left something mounted in it."""
        mounted = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(self.base))
        ]
        if mounted:
            print(f"leaving {self.base}: still mounted: {mounted}")
            return
        shutil.rmtree(self.base, ignore_errors=True)


class Machine:
    """A booted container with systemd as PID 1."""

    def __init__(self, podman: Podman, name: str) -> None:
        self.podman = podman
        self.name = name

    def exec(
        self, *argv: str, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        flags = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
        return self.podman("exec", *flags, self.name, *argv, timeout=timeout, check=check)

    def sh(self, script: str, *, check: bool = True, timeout: float = 60) -> str:
        return self.exec("sh", "-c", script, check=check, timeout=timeout).stdout.strip()

    def write(self, path: str, text: str) -> None:
        assert "HASUPD_EOF" not in text
        self.sh(
            f"mkdir -p {shlex.quote(os.path.dirname(path))} && "
            f"cat > {shlex.quote(path)} <<'HASUPD_EOF'\n{text}HASUPD_EOF"
        )

    def show(self, unit: str, prop: str) -> str:
        return self.exec("systemctl", "show", "--property", prop, "--value", unit).stdout.strip()

    def journal(self, unit: str = "hasupd", lines: int = 60) -> str:
        return self.exec(
            "journalctl", "--no-pager", "-u", unit, "-n", str(lines), "-o", "short-precise", check=False
        ).stdout

    def wait_until_booted(self, timeout: float) -> str:
        """Return systemd's state once it has booted (running or degraded); fail after `timeout`."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            # Until the system bus is up, systemctl fails at once instead of waiting.
            proc = self.exec("systemctl", "is-system-running", "--wait", check=False, timeout=timeout)
            state = proc.stdout.strip()
            if state in {"running", "degraded"}:
                return state
            time.sleep(0.25)
        logs = self.podman("logs", self.name, check=False)
        pytest.fail(f"the container's systemd did not boot ({state!r})\n{logs.stdout}\n{logs.stderr}")

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
        """Return the first truthy result of `probe()`; fail with `what` and the journal after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"not within {timeout}s: {what}\n--- journal of hasupd.service\n{self.journal()}")
            time.sleep(interval)


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    require_root()
    require_tools("podman", "runc", hint="apt-get install podman runc")
    base = Path(tempfile.mkdtemp(prefix="hasupd-systest-podman."))
    pm = Podman(base)
    try:
        yield pm
    finally:
        pm.remove_store()


@pytest.fixture(scope="module")
def machine(deb: Path, rootfs: Path, podman: Podman) -> Iterator[Machine]:
    """A freshly booted Debian with systemd as PID 1 and the hasupd package installed."""
    image = f"localhost/hasupd-systest:{rootfs.stem}"
    podman("import", str(rootfs), image, timeout=300)
    # .debs that apt-get downloads inside are kept here, so a warm run downloads nothing.
    apt_archives = cache_dir() / f"apt-archives-{release()}"
    (apt_archives / "partial").mkdir(parents=True, exist_ok=True)
    name = f"hasupd-systest-{os.getpid()}"
    argv = [
        "run",
        "--detach",
        "--name",
        name,
        "--hostname",
        "hasupd-systest",
        "--systemd=always",
        # Root on a host may inspect every process; podman's default capabilities leave out
        # CAP_SYS_PTRACE, without which even root cannot read /proc/PID/exe (or psutil's
        # /proc/PID/io) of a process with other credentials, such as hasupd with Group=hasupd.
        "--cap-add=SYS_PTRACE",
        # apt-get inside reaches the Debian mirror the way the host does, with no bridge, NAT or
        # iptables needed (podman's network stack is only a Recommends); the container keeps its
        # own hostname, and nothing in it listens on an IP port.
        "--network=host",
        "--volume",
        f"{apt_archives}:/var/cache/apt/archives",
    ]
    unified = cgroup2_mount_below_v1()
    if unified:
        # On a hybrid host podman gives the container only the v1 hierarchies, and a systemd with
        # no cgroup2 learns that a unit's cgroup is empty only from the v1 release agent, which a
        # container does not have: after `kill -9` of hasupd, hasupd.service would hang in
        # stop-sigkill until TimeoutStopSec. With the host's cgroup2 mounted where a hybrid
        # systemd looks for it, systemd runs in hybrid mode, as on a hybrid host.
        argv += ["--volume", f"{unified}:{unified}:rw"]
    vm = Machine(podman, name)
    try:
        podman(*argv, image, "/sbin/init")
        state = vm.wait_until_booted(timeout=120)
        if state == "degraded":
            print(vm.exec("systemctl", "--failed", "--no-pager", check=False).stdout)
        vm.exec("apt-get", "update", timeout=300)
        podman("cp", str(deb), f"{name}:/tmp/{deb.name}")
        proc = vm.exec(
            "apt-get",
            "install",
            "--yes",
            f"/tmp/{deb.name}",
            env={"DEBIAN_FRONTEND": "noninteractive"},
            timeout=600,
        )
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        yield vm
    finally:
        podman("rm", "--force", "--time", "10", name, check=False)
        podman("rmi", "--force", image, check=False)
