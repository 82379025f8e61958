"""hasupctl over the control socket: roles from real unix groups, audit records, safe hot reload."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.harness import REPO, Hasupd, pid_alive, require_root, write_config
from tests.support.users import temp_group, temp_user, world_dir

SLEEP = ["/bin/sleep", "1000"]


def pids(d: Hasupd) -> dict[str, int]:
    status = d.ctl("status", "--json")
    assert status.returncode == 0, status.stderr
    return {s["name"]: s["pid"] for s in json.loads(status.stdout)}


@pytest.fixture
def shared() -> Iterator[Path]:
    with world_dir() as folder:
        # A copy of the package that the test users can read, whatever the checkout's permissions.
        shutil.copytree(REPO / "hasupd", folder / "lib" / "hasupd")
        yield folder


def test_roles_refusals_and_audit(shared: Path, tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    require_root()
    lib = shared / "lib"
    with (
        temp_group() as sock_group,
        temp_group() as readers,
        temp_group() as operators,
        temp_user(groups=(sock_group,)) as nobody,
        temp_user(groups=(sock_group, readers)) as reader,
        temp_user(groups=(sock_group, operators)) as operator,
        temp_user() as outsider,
    ):
        config = write_config(
            tmp_path / "etc",
            {"web": {"command": SLEEP}, "db": {"command": SLEEP}},
            daemon={
                "access": {"read": [readers], "operate": [operators], "admin": [], "socket_group": sock_group}
            },
        )
        d = hasupd(config, runtime_dir=shared / "run")
        d.wait_ready()
        web_pid = pids(d)["web"]
        # 2. no role: status refused; read role: status works.
        refused = d.ctl("status", user=nobody.pw_name, pythonpath=lib)
        assert refused.returncode == 4, refused
        assert "needs the read role" in refused.stderr
        ok = d.ctl("status", user=reader.pw_name, pythonpath=lib)
        assert ok.returncode == 0, ok.stderr
        assert "web" in ok.stdout and "running" in ok.stdout
        # Not even in the socket group: the socket itself refuses.
        outside = d.ctl("status", user=outsider.pw_name, pythonpath=lib)
        assert outside.returncode == 4 and "permission denied" in outside.stderr
        # 1. read is not operate: stop refused, web keeps running, the refusal is audited.
        refused = d.ctl("stop", "web", user=reader.pw_name, pythonpath=lib)
        assert refused.returncode == 4, refused
        assert pid_alive(web_pid) and pids(d)["web"] == web_pid
        audit = d.wait_for("audit", uid=reader.pw_uid)[0]
        assert audit["request"] == "stop web"
        assert audit["outcome"].startswith("refused")
        assert "hasupd.cli.ctl" in audit["cmdline"] and "stop web" in audit["cmdline"]
        assert audit["level"] == "warning"
        # An operator succeeds, and is audited too.
        done = d.ctl("stop", "web", user=operator.pw_name, pythonpath=lib)
        assert done.returncode == 0, done.stderr
        assert not pid_alive(web_pid)
        audit = d.wait_for("audit", uid=operator.pw_uid)[0]
        assert (audit["request"], audit["outcome"], audit["role"]) == ("stop web", "ok", "operate")
        assert audit["user"] == operator.pw_name and audit["pid"] > 0
        assert d.ctl("start", "web", user=operator.pw_name, pythonpath=lib).returncode == 0
        # Exit codes: unknown service 3; usage 2.
        assert d.ctl("stop", "nope").returncode == 3
        assert d.ctl("frobnicate").returncode == 2
        assert d.stop() == 0
    assert os.stat(shared / "run").st_mode & 0o777 == 0o755


def test_reload_touches_only_what_changed(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    config = write_config(
        tmp_path / "etc",
        {
            "web": {"command": SLEEP},
            "db": {"command": SLEEP},
            "old": {"command": SLEEP},
            "tuned": {"command": SLEEP, "restart_sec": "1s"},
        },
    )
    # No file watch: it would apply the edits while the dry run is still being checked (a race under
    # load); the file-watch reload has its own tests (test_config_watch.py).
    d = hasupd(config, extra_args=("--no-watch",))
    d.wait_ready()
    before = pids(d)
    services = config / "services.d"
    (services / "web.yaml").write_text(yaml.safe_dump({"command": ["/bin/sleep", "2000"]}))
    (services / "tuned.yaml").write_text(yaml.safe_dump({"command": SLEEP, "restart_sec": "2s"}))
    (services / "new.yaml").write_text(yaml.safe_dump({"command": SLEEP}))
    (services / "old.yaml").unlink()
    # 5. --dry-run prints the plan and changes nothing.
    dry = d.ctl("reload", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "restart web (changed: command)" in dry.stdout
    assert "update  tuned in place (changed: restart_sec)" in dry.stdout
    assert "start   new (new)" in dry.stdout and "stop    old (removed)" in dry.stdout
    assert pids(d) == before
    # 3. hasupctl reload applies it: only web restarts.
    assert d.ctl("reload").returncode == 0
    applied = d.wait_for("config.applied", timeout=10)[0]
    assert (
        applied["changed"] == ["web", "tuned"]
        and applied["added"] == ["new"]
        and applied["removed"] == ["old"]
    )
    after = pids(d)
    assert after["web"] != before["web"]
    assert after["db"] == before["db"] and after["tuned"] == before["tuned"]
    assert "old" not in after and not pid_alive(before["old"])
    assert after["new"] and pid_alive(after["new"])
    assert d.stop() == 0


def test_invalid_config_is_reported_and_changes_nothing(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    config = write_config(tmp_path / "etc", {"web": {"command": SLEEP}, "db": {"command": SLEEP}})
    d = hasupd(config)
    d.wait_ready()
    before = pids(d)
    bad = config / "services.d" / "broken.yaml"
    bad.write_text("command: [/bin/sleep, '1']\nrestart: [oops\n")
    (config / "services.d" / "db.yaml").write_text(yaml.safe_dump({"command": ["/bin/sleep", "7"]}))
    invalid = d.wait_for("config.invalid", timeout=10)[0]
    assert any(
        e.startswith(f"{bad}:") and e.split(":")[1].isdigit() and e.split(":")[2].isdigit()
        for e in invalid["errors"]
    ), invalid
    assert invalid["level"] == "error"
    result = d.ctl("reload")
    assert result.returncode == 1 and str(bad) in result.stderr
    assert pids(d) == before  # db's valid change was not applied either: all or nothing
    assert d.find("config.applied") == []
    assert d.stop() == 0


def test_malformed_requests_leave_the_daemon_healthy(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    config = write_config(tmp_path / "etc", {"web": {"command": SLEEP}})
    d = hasupd(config)
    d.wait_ready()
    junk = [
        b"",
        b"\n",
        b"garbage\n",
        b"{}\n",
        b"[1,2]\n",
        b'{"v":1}\n',
        b'{"v":2,"cmd":"status"}\n',
        b'{"v":1,"cmd":"status","args":[]}\n',
        b'{"v":1,"cmd":"stop","args":{"names":"web"}}\n',
        b"\xff\xfe\n",
        b"x" * 70000 + b"\n",
        b'{"v":1,"cmd":"status"',
        b"\0" * 100,
    ]
    answers = 0
    for i in range(300):
        payload = junk[i % len(junk)]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(d.socket))
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)  # half-closed
                reply = s.recv(65536)
            except (BrokenPipeError, ConnectionResetError):
                continue
            if reply:
                answers += 1
                assert json.loads(reply)["ok"] is False
    assert answers > 200
    # One that connects and never sends is timed out, not kept forever.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(d.socket))
        idle.settimeout(10)
        started = time.monotonic()
        reply = json.loads(idle.recv(65536))
        assert reply["ok"] is False and "no request within 2s of connecting" in reply["error"]
        assert time.monotonic() - started < 4  # a silent caller gives its slot back after 2 s
    status = d.ctl("status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)[0]["state"] == "running"
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_unreachable_daemon_exit_code(tmp_path: Path) -> None:
    d = Hasupd.__new__(Hasupd)
    d.socket = tmp_path / "nothing.sock"
    result = d.ctl("status")
    assert result.returncode == 5 and "not running" in result.stderr


def test_sighup_reloads(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    config = write_config(tmp_path / "etc", {"web": {"command": SLEEP}})
    d = hasupd(config, extra_args=("--no-watch",))
    d.wait_ready()
    (config / "services.d" / "api.yaml").write_text(yaml.safe_dump({"command": SLEEP}))
    time.sleep(1.0)
    assert d.find("config.applied") == []  # --no-watch: files alone change nothing
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_for("config.applied")[0]["added"] == ["api"]
    assert d.stop() == 0


def exchange(path: Path, payload: bytes) -> dict[str, object]:
    """Send one raw request on a new connection; return hasupd's reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reply: dict[str, object] = json.loads(s.makefile("rb").readline())
        return reply


def test_deeply_nested_request_is_refused_and_hasupd_lives(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    """Issue 15 item 1: ~990 levels of '[' made json.loads raise RecursionError, which stopped hasupd."""
    config = write_config(tmp_path / "etc", {"web": {"command": SLEEP}})
    d = hasupd(config)
    d.wait_ready()
    before = pids(d)
    deep_args = b'{"v":1,"cmd":"status","args":{"names":' + b"[" * 3000 + b"]" * 3000 + b"}}\n"
    for payload in (
        b"[" * 990 + b"\n",
        b"[" * 990 + b"]" * 990 + b"\n",
        b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"\n",
        deep_args,
        b"[" * 60000 + b"\n",
    ):
        reply = exchange(d.socket, payload)
        assert reply["ok"] is False and reply["code"] == 2, reply
        assert "nested deeper than 32 levels" in str(reply["error"])
    # Brackets inside strings are not nesting; an integer too long for Python is a usage error too.
    reply = exchange(d.socket, b'{"v":1,"cmd":"status","args":{"x":"' + b"[" * 5000 + b'"}}\n')
    assert reply["ok"] is True
    reply = exchange(d.socket, b'{"v":1,"cmd":"status","args":{"x":' + b"9" * 5000 + b"}}\n")
    assert reply["ok"] is False and reply["code"] == 2 and "4300 digits" in str(reply["error"])
    assert d.proc.poll() is None and pids(d) == before
    assert d.stop() == 0


def test_closed_stdout_ends_hasupctl_quietly(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    """Issue 15 item 10: `hasupctl --json status | grep -q x` printed a BrokenPipeError traceback."""
    config = write_config(tmp_path / "etc", {"web": {"command": SLEEP}})
    d = hasupd(config)
    d.wait_ready()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    for args in (
        ("--json", "status"),
        ("status",),
        ("events", "-n", "5"),
        ("logs", "web", "-f"),
        ("stop", "nope"),  # fails before printing anything to stdout: its own code
    ):
        # A pipe whose reader has gone: the first write to stdout fails with EPIPE, as with `| grep -q`
        # once grep has exited (hasupctl, like every Python program, ignores SIGPIPE).
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = subprocess.run(
                ["/usr/bin/python3", "-m", "hasupd.cli.ctl", "--socket", str(d.socket), *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                timeout=30,
                check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (args, done.stderr)
        assert done.returncode == (3 if args[0] == "stop" else 141), (args, done.returncode, done.stderr)
    assert d.stop() == 0


HOLDER = r"""
import json, os, selectors, socket, sys, time
path, stop_file = sys.argv[1], sys.argv[2]
sel = selectors.DefaultSelector()
refusals, opened = [], 0

def open_one():
    global opened
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    opened += 1

end = time.monotonic() + 60  # at most; the test creates stop_file when it is done
for _ in range(200):
    open_one()
while time.monotonic() < end and not os.path.exists(stop_file):
    for key, _ in sel.select(0.05):
        s = key.fileobj
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if data.strip():
            refusals.append(json.loads(data.split(b"\n")[0])["error"])
        sel.unregister(s)
        s.close()
        open_one()  # renew: hold as many as hasupd lets this user hold
print(json.dumps({"opened": opened, "count": len(refusals), "refusals": refusals[-400:]}))
"""


def test_socket_group_member_cannot_lock_out_root(
    shared: Path, tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    """Issue 15 item 13: idle connections of a socket-group member filled the 64 slots, so root's own
    `hasupctl status` was refused. Slots are now counted per uid after SO_PEERCRED, with a reserve
    for admins, and a silent caller gives its slot back after 2 s."""
    require_root()
    lib = shared / "lib"
    (shared / "holder.py").write_text(HOLDER)
    with (
        temp_group() as sock_group,
        temp_group() as readers,
        temp_user(groups=(sock_group, readers)) as member,
        temp_user(groups=(sock_group, readers)) as other,
    ):
        config = write_config(
            tmp_path / "etc",
            {"web": {"command": SLEEP}},
            daemon={"access": {"read": [readers], "operate": [], "admin": [], "socket_group": sock_group}},
        )
        d = hasupd(config, runtime_dir=shared / "run")
        d.wait_ready()
        before = pids(d)
        stop = shared / "stop-holding"
        holder = subprocess.Popen(
            [
                "runuser",
                "-u",
                member.pw_name,
                "--",
                "/usr/bin/python3",
                str(shared / "holder.py"),
                str(d.socket),
                str(stop),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)  # the holder has taken every slot it can get
            answers = []
            deadline = time.monotonic() + 6.0
            took = []
            while (time.monotonic() < deadline or len(answers) < 5) and len(answers) < 40:
                began = time.monotonic()
                answers.append(d.ctl("status", "--json", timeout=20))
                took.append(time.monotonic() - began)
            # Another member of the socket group still gets in too: the holder has only its own share.
            shared_ok = d.ctl("status", user=other.pw_name, pythonpath=lib)
            # The holder's own extra request gets a clear refusal (exit 5), not a silent close.
            own = d.ctl("status", user=member.pw_name, pythonpath=lib)
            assert holder.poll() is None, "the holder ended before root was done"
            stop.touch()
            out, _ = holder.communicate(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        report = json.loads(out)
        print(
            f"root: {len(answers)} status calls while held; holder opened {report['opened']}, "
            f"refused {report['count']}; root's slowest status took {max(took):.2f}s"
        )
        assert len(answers) >= 5
        assert all(a.returncode == 0 for a in answers), [a.stderr for a in answers if a.returncode]
        assert all(json.loads(a.stdout)[0]["pid"] == before["web"] for a in answers)
        assert shared_ok.returncode == 0, shared_ok.stderr
        assert report["count"] > 0
        assert any("too many connections" in r for r in report["refusals"]), report["refusals"][:5]
        if own.returncode != 0:  # it may land just when one of the holder's slots was given back
            assert own.returncode == 5 and "too many connections" in own.stderr, own
        # Refusals are recorded, not one record per refused connection.
        refused = d.find("audit", uid=member.pw_uid)
        assert refused and all(r["outcome"].startswith("refused: too many connections") for r in refused)
        assert len(refused) < report["count"]
        assert d.proc.poll() is None and pids(d) == before
        assert d.stop() == 0
