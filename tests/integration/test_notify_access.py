"""Who may speak sd_notify for a service, against the real daemon without cgroups (process groups): a
process outside the service's tree that copied its INVOCATION_ID and NOTIFY_SOCKET from /proc, and
came to hasupd as an orphan, is refused and recorded; the service's own main process is heard."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.harness import Hasupd, require_root, write_config
from tests.support.users import temp_user, world_dir

PY = "/usr/bin/python3"  # Debian's: readable by every user, unlike a venv under /root

# The service: records its pid, waits for the go file, then says READY=1 itself.
VICTIM = r"""
import json
import os, socket, sys, time
d = sys.argv[1]
open(d + "/victim.pid.tmp", "w").write(str(os.getpid()))
os.rename(d + "/victim.pid.tmp", d + "/victim.pid")
for _ in range(3000):
    if os.path.exists(d + "/go"):
        break
    time.sleep(0.01)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1\nSTATUS=real", os.environ["NOTIFY_SOCKET"])
time.sleep(1000)
"""

# Another service of the same user: copies the victim's environment from /proc and starts a sender
# with it, double-forked so that the sender is re-parented to hasupd (the subreaper).
ATTACKER = r"""
import os, sys, time
d = sys.argv[1]
for _ in range(3000):
    if os.path.exists(d + "/victim.pid"):
        break
    time.sleep(0.01)
victim = int(open(d + "/victim.pid").read())
raw = open(f"/proc/{victim}/environ", "rb").read().split(b"\0")
env = dict(e.decode().split("=", 1) for e in raw if b"=" in e)
assert "INVOCATION_ID" in env and "NOTIFY_SOCKET" in env
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.3)  # the middle process is gone: hasupd is the parent now
        sender = (
            "import os, socket, time; d = %r\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "for _ in range(50):  # a flood makes one record\n"
            "    s.sendto(b'READY=1\\nSTATUS=pwned', os.environ['NOTIFY_SOCKET'])\n"
            "open(d + '/sent', 'w').write(str(os.getpid()))\n"
            "time.sleep(1000)\n" % d
        )
        os.execve(sys.executable, [sys.executable, "-c", sender], env)
    os._exit(0)
time.sleep(1000)
"""


def wait_file(path: Path, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


@contextlib.contextmanager
def service_user(who: str) -> Iterator[str | None]:
    """None: hasupd's own user (root here); else a new unprivileged user for both services."""
    if who == "root":
        yield None
        return
    require_root()
    with temp_user() as user:
        yield user.pw_name


@pytest.mark.parametrize("who", ["root", "unprivileged"])
def test_an_orphan_with_a_copied_invocation_id_is_refused_and_the_main_is_heard(
    who: str, tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    with world_dir() as shared, service_user(who) as user:
        run_attack(shared, user, tmp_path, hasupd)


def run_attack(shared: Path, user: str | None, tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    (shared / "victim.py").write_text(VICTIM)
    (shared / "attacker.py").write_text(ATTACKER)
    as_user = {"user": user} if user is not None else {}
    config = write_config(
        tmp_path / "etc",
        {
            "victim": {
                "type": "notify",
                "command": [PY, str(shared / "victim.py"), str(shared)],
                "timeout_start_sec": "60s",
                **as_user,
            },
            "attacker": {"command": [PY, str(shared / "attacker.py"), str(shared)], **as_user},
        },
    )
    # The notify sockets must be reachable for the services' user: not under pytest's private tmp_path.
    d = hasupd(config, extra_args=("--no-cgroup",), runtime_dir=shared / "run")
    main = d.wait_for("service.started", service="victim")[0]["pid"]
    sender = int(wait_file(shared / "sent"))
    rejected = d.wait_for("notify.rejected", service="victim", timeout=10)[0]
    assert rejected["pid"] == sender and rejected["level"] == "warning"
    assert "INVOCATION_ID" in rejected["reason"]
    assert d.find("service.ready", service="victim") == []
    status = d.ctl("--json", "status", "victim")
    # Still starting (no READY=1 was believed): not running yet, so status NAME exits 3 as systemctl's.
    assert status.returncode == 3 and "pwned" not in status.stdout
    assert json.loads(status.stdout)[0]["state"] == "start"
    (shared / "go").write_text("")
    ready = d.wait_for("service.ready", service="victim", timeout=10)
    assert ready[0]["pid"] == main
    assert len(d.find("notify.rejected", service="victim")) == 1
