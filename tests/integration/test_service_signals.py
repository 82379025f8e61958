"""Issue 22, must-show 3: ``hasupctl reload NAME`` on Debian's nginx (reload_signal: SIGHUP) keeps the
master and replaces the workers; ``kill -s USR1`` reaches the main process only with ``--main``. Also the
``reloading`` state of a reload_command and of a notify service that says RELOADING=1 ... READY=1."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import Hasupd, write_config
from tests.support.nginx import nginx_command

# Records every SIGUSR1 it gets as "ROLE PID" lines; the main process forks one child that does the same.
RECORDER = r"""
import os, signal, sys, time
log, role = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "main"
def note(sig, frame):
    with open(log, "a") as f:
        f.write(f"{role} {os.getpid()} {signal.Signals(sig).name}\n")
signal.signal(signal.SIGUSR1, note)
if role == "main":
    import subprocess
    subprocess.Popen([sys.executable, sys.argv[0], log, "child"])
with open(log, "a") as f:
    f.write(f"{role} {os.getpid()} up\n")
for _ in range(100000):
    time.sleep(0.1)
"""

# A notify service whose reload takes 3 s: RELOADING=1 on SIGHUP, READY=1 when done.
NOTIFY_RELOADER = r"""
import os, signal, socket, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def send(text):
    sock.sendto(text.encode(), os.environ["NOTIFY_SOCKET"])
pending = []
signal.signal(signal.SIGHUP, lambda s, f: pending.append(1))
send("READY=1")
for _ in range(100000):
    if pending:
        pending.clear()
        send("RELOADING=1")
        time.sleep(3)
        send("READY=1")
    time.sleep(0.05)
"""


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _state(d: Hasupd, name: str) -> str:
    out = d.ctl("status", "--json", name)
    return str(json.loads(out.stdout)[0]["state"])


def test_reload_nginx_keeps_master_and_replaces_workers(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    command, port = nginx_command(tmp_path / "nginx", workers=2)
    config = write_config(tmp_path / "etc", {"web": {"command": command, "reload_signal": "SIGHUP"}})
    d = hasupd(config)
    master = d.wait_for("service.started", service="web")[0]["pid"]
    _wait(lambda: len(_children(master)) == 2, "two nginx workers")
    workers = _children(master)
    reload = d.ctl("reload", "web")
    assert reload.returncode == 0, reload.stderr
    _wait(lambda: len(_children(master)) == 2 and not (_children(master) & workers), "new workers")
    assert json.loads(d.ctl("status", "--json", "web").stdout)[0]["pid"] == master
    assert _state(d, "web") == "running"
    d.wait_for("service.reloaded", service="web", ok=True)
    # The reloaded nginx serves on the same socket (its new workers answer).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        assert answer.read() == b"ok\n"
    print(f"master {master}: workers {sorted(workers)} -> {sorted(_children(master))}")
    # A service without reload_signal or reload_command cannot reload: said clearly, exit 1.
    (tmp_path / "etc" / "services.d" / "plain.yaml").write_text("command: [/bin/sleep, '1000']\n")
    assert d.ctl("reload").returncode == 0
    plain = d.ctl("reload", "plain")
    assert plain.returncode == 1
    assert "plain cannot reload: it has no reload_signal or reload_command" in plain.stderr


def test_kill_main_reaches_only_the_main_process(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    log = tmp_path / "signals.log"
    config = write_config(tmp_path / "etc", {"rec": {"command": ["/usr/bin/python3", str(script), str(log)]}})
    d = hasupd(config)
    main = d.wait_for("service.started", service="rec")[0]["pid"]
    _wait(lambda: log.exists() and log.read_text().count(" up") == 2, "main and child up")
    child = next(int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("child"))

    def got() -> list[str]:
        return [line for line in log.read_text().splitlines() if line.endswith("SIGUSR1")]

    killed = d.ctl("kill", "-s", "USR1", "--main", "rec")
    assert killed.returncode == 0, killed.stderr
    _wait(lambda: len(got()) == 1, "the main's SIGUSR1")
    time.sleep(0.3)  # a stray signal to the child would show by now
    assert got() == [f"main {main} SIGUSR1"]
    killed = d.ctl("kill", "-s", "SIGUSR1", "rec")  # --all is the default
    assert killed.returncode == 0, killed.stderr
    _wait(lambda: len(got()) == 3, "SIGUSR1 to both")
    assert sorted(got()[1:]) == sorted([f"main {main} SIGUSR1", f"child {child} SIGUSR1"])
    audit = [r["request"] for r in d.find("audit")]
    assert "kill rec --signal=USR1 --whom=main" in audit
    assert _state(d, "rec") == "running"
    d.ctl("stop", "rec")
    gone = d.ctl("kill", "rec")
    assert gone.returncode == 3
    assert "not running" in gone.stderr


def test_reloading_state_lasts_until_the_reload_is_done(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    script = tmp_path / "notify.py"
    script.write_text(NOTIFY_RELOADER)
    marker = tmp_path / "reloaded"
    config = write_config(
        tmp_path / "etc",
        {
            "cmd": {
                "command": ["/bin/sleep", "1000"],
                "reload_command": ["/bin/sh", "-c", f'sleep 3; echo "$MAINPID" > {marker}'],
            },
            "ntf": {
                "command": ["/usr/bin/python3", str(script)],
                "type": "notify",
                "reload_signal": "SIGHUP",
            },
        },
    )
    d = hasupd(config)
    d.wait_for("service.ready", service="ntf")
    main = d.wait_for("service.started", service="cmd")[0]["pid"]
    for name in ("cmd", "ntf"):
        answers: list[int] = []
        asking = threading.Thread(
            target=lambda n=name, out=answers: out.append(d.ctl("reload", n).returncode)
        )
        asking.start()
        # Seen while it lasts (3 s, long enough for a slow hasupctl on a loaded machine).
        _wait(lambda n=name: d.ctl("is-active", n).stdout.strip() == "reloading", f"{name} reloading", 10)
        asking.join(20)
        assert answers == [0]
        assert _state(d, name) == "running"
    assert marker.read_text().strip() == str(main)  # the command ran with MAINPID
    d.wait_for("service.reloaded", service="ntf", ok=True, detail="READY=1")
