"""Zero-blip (issue 17), standalone: ``hasupctl daemon-reexec`` and crash adoption with real processes.

The set: 20 units (15 plain sleepers, a 3-instance server on a held TCP socket, a service in its backoff
delay, a probed server), and a client that connects to the held socket in a loop throughout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO, Hasupd, pid_alive, record_time, require_root, write_config


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()  # cgroups, and pidfd_getfd of a held socket out of an adopted instance


SERVER = """
import os, socket, sys
sock = socket.socket(fileno=3) if os.environ.get("LISTEN_FDS") else None
if sock is None:
    sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[2]))); sock.listen(64)
while True:
    conn, _ = sock.accept()
    with conn:
        conn.recv(16)
        conn.sendall(b"ok\\n")
"""

WATCHDOG = """
import os, socket, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(0.2)
    try:
        sock.sendto(b"WATCHDOG=1", os.environ["NOTIFY_SOCKET"])
    except OSError:
        pass  # refused while nobody is bound at the path: the watchdog will tell
"""

BACKOFF_SEC = 4.0
SLEEPERS = 14


def tag(tmp_path: Path) -> int:
    """A number unique to this test's run: its processes are told apart from another run's by it."""
    return 1_000_000 + zlib.crc32(str(tmp_path).encode()) % 8_000_000 * 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_set(tmp_path: Path, web_port: int, probed_port: int) -> dict[str, dict[str, Any]]:
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    services: dict[str, dict[str, Any]] = {
        f"s{i:02d}": {"command": ["/bin/sleep", f"{tag(tmp_path) + i}"], "restart": "always"}
        for i in range(SLEEPERS)
    }
    services["web"] = {
        "command": [sys.executable, str(server), f"web-zb-{tag(tmp_path)}", "0"],
        "instances": 3,
        "sockets": [{"listen": f"127.0.0.1:{web_port}"}],
        "restart": "always",
    }
    marker = tmp_path / "flaky-ran-once"
    services["flaky"] = {
        # Fails its first run, then runs: at the re-exec it waits in its backoff delay.
        "command": [
            "/bin/sh",
            "-c",
            f"if [ -e {marker} ]; then exec /bin/sleep {tag(tmp_path) + 99}; fi; touch {marker}; exit 1",
        ],
        "restart": "on-failure",
        "restart_sec": f"{BACKOFF_SEC:g}s",
        "restart_max_delay_sec": f"{BACKOFF_SEC:g}s",
    }
    pinger = tmp_path / "pinger.py"
    pinger.write_text(WATCHDOG)
    services["wd"] = {
        "command": [sys.executable, str(pinger), f"wd-zb-{tag(tmp_path)}"],
        "type": "notify",
        "watchdog_sec": "1s",
        "restart": "always",
    }
    services["probed"] = {
        "command": [sys.executable, str(server), f"probed-zb-{tag(tmp_path)}", str(probed_port)],
        "restart": "always",
        "health": [{"tcp": f"127.0.0.1:{probed_port}", "interval_sec": "500ms", "failures": 2}],
    }
    return services


class Client:
    """Connects to the held socket in a loop (bounded), counting refused and failed requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.refused = 0
        self.reset = 0  # a request an instance had accepted when it was SIGKILLed on purpose (RST or EOF)
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
                    conn.sendall(b"hi\n")
                    data = conn.recv(16)
                if data == b"ok\n":
                    self.ok += 1
                elif data == b"":
                    # The instance read the request and was SIGKILLed before replying: the kernel
                    # closed the connection with a FIN (no unread data left, so no RST).
                    self.reset += 1
                else:
                    self.failed.append(repr(data))
            except ConnectionRefusedError:
                self.refused += 1
            except ConnectionResetError:
                self.reset += 1
            except OSError as e:
                self.failed.append(str(e))
            time.sleep(0.005)

    @contextmanager
    def running(self) -> Iterator[Client]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(15)


def status(h: Hasupd) -> dict[str, dict[str, Any]]:
    proc = h.ctl("status", "--json")
    assert proc.returncode == 0, proc.stderr
    return {s["name"]: s for s in json.loads(proc.stdout)}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def all_running(h: Hasupd, except_: tuple[str, ...] = ()) -> Callable[[], bool]:
    def check() -> bool:
        st = status(h)
        return len(st) == 20 and all(
            s["state"] == "running" and s["pid"] for n, s in st.items() if n not in except_
        )

    return check


def processes_with(marker: str) -> list[int]:
    """Return the live pids whose command line contains ``marker``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and pid_alive(int(name)):
            out.append(int(name))
    return out


def start_set(hasupd: Callable[..., Hasupd], tmp_path: Path, **kwargs: Any) -> tuple[Hasupd, int]:
    web_port, probed_port = free_port(), free_port()
    config = write_config(tmp_path / "etc", service_set(tmp_path, web_port, probed_port))
    h = hasupd(config, **kwargs)
    h.wait_ready(20)
    wait_until(all_running(h, except_=("flaky",)), 20, "every unit but flaky running")
    wait_until(lambda: status(h)["probed"]["health"] == "healthy", 10, "probed healthy")
    return h, web_port


def test_daemon_reexec_keeps_every_pid_refuses_nothing_and_keeps_the_restart_schedule(
    hasupd: Callable[..., Hasupd], tmp_path: Path
) -> None:
    h, web_port = start_set(hasupd, tmp_path)
    daemon_pid = h.proc.pid
    with Client(web_port).running() as client:
        scheduled = h.wait_for("service.restart_scheduled", timeout=10, service="flaky")[0]
        due = record_time(scheduled) + scheduled["delay_sec"]
        time.sleep(0.5)
        before = status(h)
        assert before["flaky"]["state"] == "auto-restart"
        answers: list[subprocess.CompletedProcess[str]] = []
        asking = threading.Thread(target=lambda: answers.append(h.ctl("daemon-reexec")))
        asking.start()
        # A child that dies in the exec window (the old image wrote its record and is executing the new
        # one) is a zombie by the time the new image looks: its exit status is still collected.
        in_window = before["s07"]["pid"]
        wait_until((h.runtime_dir / "reexec.record").exists, 20, "the re-exec record")
        os.kill(in_window, signal.SIGKILL)
        asking.join(70)
        proc = answers[0]
        assert proc.returncode == 0, proc.stderr
        print(proc.stdout)
        reexec = h.wait_for("daemon.reexec", timeout=20)[0]
        assert reexec["record"] == "restored", reexec
        audit = [r for r in h.find("audit") if "daemon-reexec" in str(r.get("request"))]
        assert audit and audit[0]["outcome"] == "ok", audit  # admin only, and audited
        exited = h.wait_for("service.exited", timeout=10, service="s07")[0]
        assert exited["pid"] == in_window and exited["signal"] == "SIGKILL", exited
        assert record_time(exited) >= record_time(reexec) - 0.05  # seen by the new image
        h.wait_for("service.started", timeout=10, count=2, service="s07")
        after = status(h)
        # The same process, the same pid: no service was signalled, every main pid is the same.
        assert h.proc.poll() is None and h.proc.pid == daemon_pid
        for name, s in before.items():
            if s["pid"] is not None and name != "s07":
                assert after[name]["pid"] == s["pid"], (name, s, after[name])
                assert after[name]["state"] == "running", after[name]
        assert after["probed"]["health"] == "healthy"
        # The pending restart happens on its original schedule (not BACKOFF_SEC after the re-exec).
        started = h.wait_for("service.started", timeout=BACKOFF_SEC + 5, count=2, service="flaky")[1]
        assert abs(record_time(started) - due) < 0.5, (record_time(started) - due, reexec)
        # A SIGKILL right after the re-exec is seen (the new image reaps its children) and restarted.
        victim = after["s03"]["pid"]
        os.kill(victim, signal.SIGKILL)
        h.wait_for(
            "service.exited",
            timeout=10,
            service="s03",
            where=lambda r: r["pid"] == victim and r["signal"] == "SIGKILL",
        )
        h.wait_for("service.started", timeout=10, count=2, service="s03")
        web = [s["pid"] for n, s in after.items() if n.startswith("web@")]
        os.kill(web[0], signal.SIGKILL)  # an instance dies: the held socket (kept across exec) serves on
        wait_until(lambda: status(h)["web@0"]["pid"] not in (None, web[0]), 10, "web@0 restarted")
        time.sleep(0.5)
    assert client.refused == 0
    assert client.failed == []
    assert client.reset <= 1  # at most the request web@0 held when it was killed
    assert client.ok > 20
    assert not h.find("service.adopted")  # a readable record: carried on, nothing had to be adopted
    # The notify socket stayed bound across the exec: the watchdog pings went on arriving.
    assert not h.find("watchdog.timeout")
    assert status(h)["wd"]["pid"] == before["wd"]["pid"]
    print(f"unsupervised during re-exec: {reexec['unsupervised_sec']:.3f}s; {client.ok} requests served")


@pytest.mark.parametrize("record", ["current", "removed"])
@pytest.mark.parametrize("containment", ["cgroup", "process-group"])
def test_kill_9_of_hasupd_then_run_again_adopts_every_service_exactly_once(
    hasupd: Callable[..., Hasupd], tmp_path: Path, containment: str, record: str
) -> None:
    extra = ("--no-cgroup",) if containment == "process-group" else ()
    h, web_port = start_set(hasupd, tmp_path, extra_args=extra)
    assert containment in h.wait_for("daemon.started")[0]["containment"].replace(
        "process groups", "process-group"
    )
    h.wait_for("service.started", timeout=BACKOFF_SEC + 5, count=2, service="flaky")
    wait_until(all_running(h), 10, "every unit running")
    before = status(h)
    with Client(web_port).running() as client:
        h.kill()  # SIGKILL: no clean-up, no record written at the end
        time.sleep(0.3)
        assert all(pid_alive(s["pid"]) for s in before.values())
        if record == "removed":  # lost with the crash: found through cgroups / INVOCATION_ID alone
            (h.runtime_dir / "state.record").unlink()
        config = tmp_path / "etc"
        again = hasupd(config, runtime_dir=h.runtime_dir, state_dir=h.state_dir, extra_args=extra)
        again.wait_ready(20)
        adopted = again.wait_for("service.adopted", timeout=10, count=20)
        crashed = again.wait_for("daemon.crashed", timeout=5)[0]
        after = status(again)
        for name, s in before.items():
            assert after[name]["pid"] == s["pid"], (name, s, after[name])
            assert after[name]["state"] == "running"
        # Exactly once: no duplicate started beside the adopted one, and nothing orphaned.
        for i in range(SLEEPERS):
            assert len(processes_with(f"sleep {tag(tmp_path) + i}")) == 1
        assert len(processes_with(f"web-zb-{tag(tmp_path)} ")) == 3
        assert len(processes_with(f"probed-zb-{tag(tmp_path)} ")) == 1
        assert len(processes_with(f"wd-zb-{tag(tmp_path)}")) == 1
        assert len(processes_with(f"sleep {tag(tmp_path) + 99}")) == 1
        assert not again.find("service.started")
        # A later SIGKILL of an adopted service is restarted (its exit status is unknown: a failure).
        victim = after["s05"]["pid"]
        os.kill(victim, signal.SIGKILL)
        exited = again.wait_for("service.exited", timeout=10, service="s05")[0]
        assert exited["pid"] == victim
        again.wait_for("service.started", timeout=10, service="s05")
        # The held socket was recovered from a running instance: a restarted instance gets it.
        victim = after["web@1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        again.wait_for("service.started", timeout=10, service="web@1")
        wait_until(lambda: status(again)["web@1"]["state"] == "running", 10, "web@1 running")
        time.sleep(0.5)
    assert client.failed == [], client.failed
    assert client.reset <= 1  # at most the request web@1 held when it was killed
    # The notify socket is bound again at the same path: the adopted service's pings arrive.
    assert not again.find("watchdog.timeout")
    assert status(again)["wd"]["pid"] == before["wd"]["pid"]
    assert crashed["incident"], crashed  # an incident (and an alert, where channels are configured)
    assert client.refused == 0
    hows = {r["how"].split(" ")[0] for r in adopted}
    assert hows == (
        {"state"} if record == "current" else {"cgroup" if containment == "cgroup" else "INVOCATION_ID"}
    )
    print(f"adopted by {hows}; crash record: {crashed.get('message', crashed)}")


def _copy_repo(tmp_path: Path) -> Path:
    """A copy of the package, so that the "installed" hasupd can change under the running one."""
    root = tmp_path / "installed"
    shutil.copytree(REPO / "hasupd", root / "hasupd", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _reexec_with_bad_record(hasupd: Callable[..., Hasupd], tmp_path: Path, spoil: str) -> None:
    root = _copy_repo(tmp_path)
    # Run from the copy (python -m puts the working directory first on sys.path).
    h, web_port = start_set(
        hasupd, tmp_path, env={"PYTHONPATH": str(root)}, argv_prefix=("env", f"--chdir={root}")
    )
    h.wait_for("service.started", timeout=BACKOFF_SEC + 5, count=2, service="flaky")
    wait_until(all_running(h), 10, "every unit running")
    before = status(h)
    record = h.runtime_dir / "reexec.record"
    stop = threading.Event()
    if spoil == "format":
        # The new image reads a newer format: the running one's record is of an older format to it.
        module = root / "hasupd" / "state_record.py"
        module.write_text(module.read_text().replace("FORMAT = 2", "FORMAT = 3  # a newer hasupd", 1))
        shutil.rmtree(module.parent / "__pycache__", ignore_errors=True)  # same second: a stale .pyc
    else:

        def corrupt() -> None:
            # Flip a byte of the body as soon as the old image has written it (before the new one reads).
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    data = record.read_bytes()
                except FileNotFoundError:
                    time.sleep(0.0005)
                    continue
                spoiled = bytearray(data)
                spoiled[-2] ^= 0x01
                record.write_bytes(bytes(spoiled))
                return

        threading.Thread(target=corrupt, daemon=True).start()
    with Client(web_port).running() as client:
        proc = h.ctl("daemon-reexec")
        stop.set()
        assert proc.returncode == 0, proc.stderr
        reexec = h.wait_for("daemon.reexec", timeout=20)[0]
        expected = "format 2, this hasupd reads format 3" if spoil == "format" else "checksum mismatch"
        assert expected in reexec["record"], reexec
        adopted = h.wait_for("service.adopted", timeout=10, count=20)
        after = status(h)
        for name, s in before.items():
            assert after[name]["pid"] == s["pid"], (name, s, after[name])
            assert after[name]["state"] == "running"
        # Nothing was started anew: every unit was found running and adopted.
        started_after = [r for r in h.find("service.started") if record_time(r) >= record_time(reexec)]
        assert started_after == [], started_after
        time.sleep(0.3)
    assert client.refused == 0, client.refused
    # Found without the record: through the unit's cgroup, or its INVOCATION_ID without cgroups.
    assert all(r["how"].startswith(("cgroup ", "INVOCATION_ID")) for r in adopted), adopted
    print(f"{spoil}: {reexec['message']}")


def test_reexec_with_a_record_of_an_older_format_adopts_every_service(
    hasupd: Callable[..., Hasupd], tmp_path: Path
) -> None:
    _reexec_with_bad_record(hasupd, tmp_path, "format")


def test_reexec_with_a_corrupt_record_adopts_every_service(
    hasupd: Callable[..., Hasupd], tmp_path: Path
) -> None:
    _reexec_with_bad_record(hasupd, tmp_path, "corrupt")


def test_after_a_crash_a_service_whose_config_changed_is_restarted_under_the_new_one(
    hasupd: Callable[..., Hasupd], tmp_path: Path
) -> None:
    base = tag(tmp_path)
    services = {
        "same": {"command": ["/bin/sleep", f"{base + 1}"]},
        "changed": {"command": ["/bin/sleep", f"{base + 2}"], "environment": {"MODE": "old"}},
    }
    config = write_config(tmp_path / "etc", services)
    h = hasupd(config)
    h.wait_ready(20)
    wait_until(lambda: all(s["state"] == "running" for s in status(h).values()), 10, "both running")
    before = status(h)
    h.kill()
    services["changed"]["environment"] = {"MODE": "new"}  # edited while hasupd was down
    write_config(tmp_path / "etc", services)
    again = hasupd(config, runtime_dir=h.runtime_dir, state_dir=h.state_dir)
    again.wait_ready(20)
    again.wait_for("service.started", timeout=10, service="changed")
    wait_until(lambda: status(again)["changed"]["state"] == "running", 10, "changed running again")
    after = status(again)
    assert after["same"]["pid"] == before["same"]["pid"]
    assert after["changed"]["pid"] != before["changed"]["pid"]
    assert b"MODE=new" in Path(f"/proc/{after['changed']['pid']}/environ").read_bytes().split(b"\0")
    assert not pid_alive(before["changed"]["pid"])  # the old one was stopped, not left behind
    assert processes_with(f"sleep {base + 2}") == [after["changed"]["pid"]]
    assert not again.find("service.started", service="same")
