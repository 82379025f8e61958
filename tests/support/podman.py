"""Real podman (and the docker CLI against podman's docker-compatible API) for the container tests.

Per the build machines' notes (shared TESTING.md): runc (crun refuses hybrid cgroups), cgroupfs, file
events, ulimits that root without CAP_SYS_RESOURCE can set, a private store, ``--network=none``.

The store is made private through ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF`` rather than
``--root``/``--runroot``, so that a daemon under test reaches it through its environment alone. (podman
hands conmon's exit command ``--root``, ``--runroot`` and ``--tmpdir`` explicitly but not the libpod
``static_dir``, so that one must stay at its default under the graph root.)

The test image is a folder with a static busybox (Debian's busybox-static), a link per applet, and
``sd-notify``: a tiny static sender of sd_notify datagrams compiled here with ``gcc -static``
(busybox has no applet that sends a unix datagram); like systemd-notify it waits for the barrier.
It is tarred once into a cache and ``podman import``ed into each session's store.

A missing tool fails the test with the reason; HASUPD_TEST_NO_PODMAN=1 turns that into a skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import require

OPT_OUT = "HASUPD_TEST_NO_PODMAN"
CACHE_ENV = "HASUPD_TEST_CACHE"
IMAGE = "localhost/hasupd-test-busybox:1"
BUSYBOX = "/bin/busybox"

SD_NOTIFY_C = r"""
/* sd-notify STATE...: send the states, one per line, as one datagram to $NOTIFY_SOCKET, then wait
 * (at most 5 s) until the receiver has read it, as systemd-notify does with sd_notify_barrier():
 * a BARRIER=1 datagram carrying the write end of a pipe, whose closing is the answer. Until then the
 * sender is alive, so the receiver can still tell which service its pid belongs to. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (argc < 2 || path == NULL || *path == '\0') {
        fprintf(stderr, "usage: NOTIFY_SOCKET=PATH sd-notify STATE...\n");
        return 2;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = '\0';
    char msg[4096] = "";
    for (int i = 1; i < argc; i++) {
        strncat(msg, argv[i], sizeof(msg) - strlen(msg) - 2);
        strcat(msg, "\n");
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        perror("sd-notify");
        return 1;
    }
    int pipefd[2];
    if (pipe(pipefd) < 0) {
        perror("sd-notify: pipe");
        return 1;
    }
    char barrier[] = "BARRIER=1";
    struct iovec iov = {.iov_base = barrier, .iov_len = strlen(barrier)};
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr mh = {
        .msg_name = &sa,
        .msg_namelen = sizeof(sa),
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof(control.buf),
    };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&mh);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &pipefd[1], sizeof(int));
    if (sendmsg(fd, &mh, 0) < 0) {
        perror("sd-notify: barrier");
        return 1;
    }
    close(pipefd[1]);
    struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
    if (poll(&pfd, 1, 5000) != 1) {
        fprintf(stderr, "sd-notify: no answer to BARRIER=1 within 5s\n");
        return 1;
    }
    return 0;
}
"""


def containers_conf(base: Path) -> str:
    return f"""\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# Each exec session's conmon waits this long for an API client (docker exec) to fetch the exit code
# before it cleans up; the default, 5 minutes, would leave one conmon per exec probe run behind.
exit_command_delay = 5
tmp_dir = "{base}/tmp"
volume_path = "{base}/volumes"

[network]
network_config_dir = "{base}/networks"
"""


def storage_conf(base: Path) -> str:
    return f"""\
[storage]
driver = "overlay"
graphroot = "{base}/root"
runroot = "{base}/runroot"
"""


def require_tools(*tools: str, hint: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    require(not missing, f"missing {', '.join(missing)}: {hint}", OPT_OUT)


def run(
    argv: list[str], *, env: dict[str, str], timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; raise AssertionError with its output if it fails and ``check``."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or "/var/cache/hasupd-test")
    path.mkdir(parents=True, exist_ok=True)
    return path


def image_tarball() -> Path:
    """Return the test image as a tarball, built once per busybox binary and sender source."""
    busybox = Path(BUSYBOX).read_bytes()
    key = hashlib.sha256(busybox + SD_NOTIFY_C.encode()).hexdigest()[:16]
    tarball = cache_dir() / f"busybox-image-{key}.tar"
    if tarball.exists():
        return tarball
    with tempfile.TemporaryDirectory(prefix="hasupd-image.") as tmp:
        root = Path(tmp) / "root"
        for folder in ("bin", "dev", "etc", "proc", "run", "sys", "tmp"):
            (root / folder).mkdir(parents=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
        for applet in applets.split():
            if applet != "busybox":
                (root / "bin" / applet).symlink_to("busybox")
        source = Path(tmp) / "sd-notify.c"
        source.write_text(SD_NOTIFY_C)
        subprocess.run(
            ["gcc", "-static", "-O2", "-o", str(root / "bin" / "sd-notify"), str(source)],
            check=True,
            capture_output=True,
        )
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        partial = tarball.with_suffix(f".{os.getpid()}.partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(root, arcname=".")
        partial.rename(tarball)
    return tarball


class Podman:
    """podman with a private store and its own containers.conf; ``env`` reaches it from anywhere."""

    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "containers.conf").write_text(containers_conf(base))
        (base / "storage.conf").write_text(storage_conf(base))
        self.engine_env = {
            "CONTAINERS_CONF": str(base / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
        }
        # Podman 5 warns on every call where the host's cgroups are v1 or hybrid.
        self.env = {**os.environ, **self.engine_env, "PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
        self.image = IMAGE
        self.docker_host: str | None = None
        self._service: subprocess.Popen[bytes] | None = None

    def __call__(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(["podman", *args], env=self.env, timeout=timeout, check=check)

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against podman's docker-compatible API (``start_docker_api`` first)."""
        assert self.docker_host is not None, "start_docker_api() first"
        env = {**self.env, "DOCKER_HOST": self.docker_host}
        return run(["docker", *args], env=env, timeout=timeout, check=check)

    def containers(self, label: str | None = None) -> list[dict[str, str]]:
        """Return id, name, state ("running", "exited" ...) and invocation label of every container
        (any state), or of those with ``label`` ("key=value")."""
        fmt = '{{.ID}}|{{.Names}}|{{.State}}|{{index .Labels "hasupd.invocation"}}'
        where = ["--filter", f"label={label}"] if label else []
        out = self("ps", "--all", "--no-trunc", *where, "--format", fmt).stdout
        rows = []
        for line in out.splitlines():
            cid, name, state, invocation = [*line.split("|"), "", "", "", ""][:4]
            # podman 4's ps says "Up 3 seconds ago" where inspect says "running".
            state = "running" if state.lower().startswith(("up", "running")) else state.split()[0].lower()
            rows.append({"id": cid, "name": name, "state": state, "invocation": invocation})
        return rows

    def init_pid(self, name: str) -> int:
        """Return the host pid of the running container's init (0 if it is not running)."""
        return int(self("inspect", "--format", "{{.State.Pid}}", name).stdout.strip() or 0)

    def start_docker_api(self) -> str:
        """Serve podman's docker-compatible API on a socket in the store; return DOCKER_HOST."""
        if self.docker_host is not None:
            return self.docker_host
        sock = self.base / "docker.sock"
        with (self.base / "service.log").open("wb") as log:
            self._service = subprocess.Popen(
                ["podman", "system", "service", "--time=0", f"unix://{sock}"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        host = f"unix://{sock}"
        deadline = time.monotonic() + 20
        while True:
            ok = sock.exists() and (
                run(["docker", "version"], env={**self.env, "DOCKER_HOST": host}, check=False).returncode == 0
            )
            if ok:
                break
            if time.monotonic() > deadline or self._service.poll() is not None:
                log = (self.base / "service.log").read_text(errors="replace")
                pytest.fail(f"podman system service did not come up on {sock}:\n{log}")
            time.sleep(0.1)
        self.docker_host = host
        return host

    def close(self) -> None:
        """Remove every container, stop the API service, delete the store unless something is mounted."""
        self("rm", "--all", "--force", "--time", "0", check=False)
        if self._service is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._service.pid, signal.SIGTERM)
            try:
                self._service.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._service.pid, signal.SIGKILL)
                self._service.wait(5)
        # The overlay driver bind-mounts its own directory once; container mounts go with the
        # containers, a moment after rm for those whose conmon cleans up.
        own = str(self.base / "root" / "overlay")
        deadline = time.monotonic() + 10
        while (mounted := self._mounts()) and mounted != [own] and time.monotonic() < deadline:
            time.sleep(0.1)
        if mounted == [own]:
            subprocess.run(["umount", own], check=False)
            mounted = self._mounts()
        if mounted:
            print(f"leaving {self.base}: still mounted: {mounted}")
            return
        shutil.rmtree(self.base, ignore_errors=True)

    def _mounts(self) -> list[str]:
        points = (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
        return sorted(p for p in points if p.startswith(str(self.base)))


@pytest.fixture(scope="session", name="podman")
def podman_fixture() -> Iterator[Podman]:
    """podman with a private store holding the busybox test image."""
    require(os.geteuid() == 0, "the container tests need root (rootful podman, cgroups)", OPT_OUT)
    require_tools("podman", "runc", "gcc", hint="apt-get install podman runc busybox-static gcc libc6-dev")
    require(os.path.exists(BUSYBOX), f"{BUSYBOX} is missing: apt-get install busybox-static", OPT_OUT)
    # Short: the docker API socket lives in here, and AF_UNIX paths end at 107 bytes.
    pm = Podman(Path(tempfile.mkdtemp(prefix="hasupd-podman.", dir="/tmp")))
    try:
        pm("import", str(image_tarball()), IMAGE, timeout=120)
        yield pm
    finally:
        pm.close()


@pytest.fixture(scope="session", name="docker_api")
def docker_api_fixture(podman: Podman) -> str:
    """DOCKER_HOST of podman's docker-compatible API; the docker CLI must be installed."""
    require_tools(
        "docker",
        hint="the docker CLI (Debian 12 has it only in docker.io, which brings dockerd and containerd)",
    )
    return podman.start_docker_api()
