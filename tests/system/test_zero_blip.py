"""Issue 17, "Must show" 3 and 4: hasupd's own crash, watchdog kill, stop and package upgrade under the
real systemd of a booted Debian (see conftest.py), with services that hold a listening socket and a
client that connects to it all the time.

- kill -9 of hasupd, and the watchdog kill of a SIGSTOPped hasupd: systemd restarts hasupd, every
  service keeps its pid, the client sees no refused connection (the running instances keep accepting
  on the socket; the new hasupd gets it back from systemd's fd store).
- `systemctl stop hasupd` leaves no process of any service, also when it times out (hasupd still
  waiting for a service that ignores SIGTERM is SIGKILLed at TimeoutStopSec=, ExecStopPost= kills
  the rest).
- installing a newer build of the package over the running one re-execs hasupd (same pid, same
  service pids, no refused connection) and hasupd reports the new version.

The pid checks need crash adoption and `hasupctl daemon-reexec` (the daemon side of issue 17).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import REPO, Machine, build_deb, run

ECHO = "/usr/local/bin/blip-echo"
CLIENT = "/usr/local/bin/blip-client"
SOCKET = "/run/blip.sock"
RESULT = "/tmp/blip-client.json"
STOP_FLAG = "/tmp/blip-client.stop"
BLIP_YAML = "/etc/hasupd/services.d/blip.yaml"
SLEEPER_YAML = "/etc/hasupd/services.d/idle.yaml"
STUBBORN_YAML = "/etc/hasupd/services.d/stubborn.yaml"
DROPIN = "/etc/systemd/system/hasupd.service.d/60-systest-zero-blip.conf"

# A service written for socket activation: answers every connection with its pid.
ECHO_PY = """\
import os, socket
assert os.environ["LISTEN_PID"] == str(os.getpid()), os.environ.get("LISTEN_PID")
listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"%d\\n" % os.getpid())
"""

# Connects over and over until the stop flag appears (at most 600 s), counting what happened.
CLIENT_PY = """\
import json, os, socket, sys, time
path, stop, out = sys.argv[1:4]
counts = {"ok": 0, "refused": 0, "failed": 0, "errors": []}
deadline = time.monotonic() + 600
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            if s.recv(64).strip().isdigit():
                counts["ok"] += 1
            else:
                counts["failed"] += 1
    except (ConnectionRefusedError, FileNotFoundError) as e:
        counts["refused"] += 1
        counts["errors"].append(repr(e))
    except OSError as e:
        counts["failed"] += 1
        counts["errors"].append(repr(e))
    time.sleep(0.005)
counts["errors"] = counts["errors"][:20]
with open(out + ".tmp", "w") as f:
    json.dump(counts, f)
os.rename(out + ".tmp", out)
"""


def pids_of(machine: Machine, pattern: str) -> list[str]:
    return sorted(machine.exec("pgrep", "--full", pattern, check=False).stdout.split())


def service_pids(machine: Machine) -> dict[str, list[str]]:
    return {
        "blip": pids_of(machine, f"^/usr/bin/python3 {ECHO}$"),
        "idle": pids_of(machine, "^/bin/sleep 1001$"),
    }


def all_running(machine: Machine) -> dict[str, list[str]] | None:
    pids = service_pids(machine)
    return pids if len(pids["blip"]) == 2 and len(pids["idle"]) == 1 else None


def main_state(machine: Machine) -> dict[str, str]:
    out = machine.exec(
        "systemctl", "show", "hasupd", "--property=MainPID", "--property=NRestarts", "--property=ActiveState"
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def restarted(machine: Machine, before: dict[str, str]) -> dict[str, str] | None:
    now = main_state(machine)
    fresh = now["MainPID"] not in {"0", before["MainPID"]} and int(now["NRestarts"]) > int(
        before["NRestarts"]
    )
    return now if fresh and now["ActiveState"] == "active" else None


def listening_inodes(machine: Machine) -> list[str]:
    """The inodes of the sockets listening on SOCKET (from /proc/net/unix: flag 00010000 is
    __SO_ACCEPTCON)."""
    lines = machine.exec("cat", "/proc/net/unix").stdout.splitlines()[1:]
    return [
        f[6]
        for f in (line.split() for line in lines)
        if len(f) == 8 and f[7] == SOCKET and f[3] == "00010000"
    ]


def held_by_hasupd(machine: Machine, inode: str) -> bool:
    pid = main_state(machine)["MainPID"]
    return f"socket:[{inode}]" in machine.sh(f"ls -l /proc/{pid}/fd")


def answers(machine: Machine) -> bool:
    """hasupd answers on its control socket (it has started, or adopted, its services)."""
    return machine.exec("hasupctl", "status", check=False).returncode == 0


class Client:
    """The connecting client, as a transient systemd unit in the machine."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def __enter__(self) -> Client:
        self.machine.exec("rm", "-f", STOP_FLAG, RESULT)
        self.machine.exec(
            "systemd-run",
            "--unit=blip-client",
            "--collect",
            "/usr/bin/python3",
            CLIENT,
            SOCKET,
            STOP_FLAG,
            RESULT,
        )
        self.machine.wait_for(
            "the client connects", lambda: self.machine.sh(f"test -e {SOCKET} && echo ok"), 10
        )
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.machine.exec("touch", STOP_FLAG)

    def result(self) -> dict[str, object]:
        self.machine.exec("touch", STOP_FLAG)
        text = self.machine.wait_for(
            "the client's counts", lambda: self.machine.exec("cat", RESULT, check=False).stdout, timeout=30
        )
        return dict(json.loads(text))


@pytest.fixture(scope="module")
def services(machine: Machine) -> Iterator[Machine]:
    """The machine with two services: `blip` (2 instances on a held unix socket) and `idle`."""
    machine.write(ECHO, ECHO_PY)
    machine.write(CLIENT, CLIENT_PY)
    machine.write(
        BLIP_YAML,
        f"command: [/usr/bin/python3, {ECHO}]\ninstances: 2\nsockets: [{{listen: {SOCKET}}}]\n",
    )
    machine.write(SLEEPER_YAML, 'command: [/bin/sleep, "1001"]\n')
    machine.exec("systemctl", "reload", "hasupd", timeout=120)
    machine.wait_for("both services run", lambda: all_running(machine), timeout=20)
    yield machine


def assert_no_blip(machine: Machine, client: Client) -> dict[str, object]:
    counts = client.result()
    assert counts["ok"] and counts["refused"] == 0 and counts["failed"] == 0, counts
    return counts


@pytest.mark.system
def test_kill_9_of_hasupd_keeps_services_and_refuses_no_connection(services: Machine) -> None:
    machine = services
    pids = machine.wait_for("both services run", lambda: all_running(machine), timeout=20)
    (inode,) = listening_inodes(machine)
    assert held_by_hasupd(machine, inode)
    before = main_state(machine)
    with Client(machine) as client:
        killed = time.monotonic()
        machine.exec("kill", "-9", before["MainPID"])
        machine.wait_for("systemd restarts hasupd", lambda: restarted(machine, before), timeout=30)
        machine.wait_for("the new hasupd answers", lambda: answers(machine), timeout=30, interval=0.05)
        back = time.monotonic() - killed
        time.sleep(2.0)  # anything the new hasupd would (wrongly) restart has happened by now
        counts = assert_no_blip(machine, client)
    print(f"kill -9: {counts['ok']} connections served, 0 refused; hasupd answered again {back:.2f}s later")
    # The new hasupd holds the very socket the old one bound: systemd's fd store gave it back.
    assert listening_inodes(machine) == [inode]
    assert held_by_hasupd(machine, inode), machine.journal()
    journal = machine.journal(lines=300)
    assert "not a requested stop" in journal, journal
    assert service_pids(machine) == pids, f"services were restarted\n{journal}"


@pytest.mark.system
def test_watchdog_kill_of_a_stopped_hasupd_keeps_services(services: Machine) -> None:
    machine = services
    machine.write(DROPIN, "[Service]\nWatchdogSec=3s\n")
    try:
        machine.exec("systemctl", "daemon-reload")
        machine.exec("systemctl", "restart", "hasupd", timeout=180)
        pids = machine.wait_for("both services run", lambda: all_running(machine), timeout=20)
        before = main_state(machine)
        timeouts = machine.journal(lines=10000).count("Watchdog timeout")
        with Client(machine) as client:
            machine.exec("kill", "-STOP", before["MainPID"])
            machine.wait_for("the watchdog restarts hasupd", lambda: restarted(machine, before), timeout=20)
            machine.wait_for("the new hasupd answers", lambda: answers(machine), timeout=30)
            time.sleep(2.0)
            counts = assert_no_blip(machine, client)
        print(f"watchdog: {counts['ok']} connections served, 0 refused")
        assert machine.journal(lines=10000).count("Watchdog timeout") > timeouts
        assert service_pids(machine) == pids, f"services were restarted\n{machine.journal()}"
    finally:
        machine.exec("rm", "-f", DROPIN)
        machine.exec("systemctl", "daemon-reload")


def bumped_deb(machine: Machine, tmp_path: Path, version: str, commit: str | None = None) -> Path:
    """Build the package from a copy of this tree (or of ``commit``) with ``version`` (changelog,
    pyproject, __version__), on the release that ``machine`` runs."""
    tree = tmp_path / "src"
    tree.mkdir(parents=True)
    if commit is not None:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit], capture_output=True, timeout=120, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, timeout=120, check=True)
    else:
        files = run(
            ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"], timeout=60
        )
        for name in files.stdout.splitlines():
            source = REPO / name
            if source.is_file():
                (tree / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, tree / name)
    run(["git", "init", "-q", str(tree)], timeout=60)
    changelog = tree / "packaging" / "debian" / "changelog"
    changelog.write_text(
        f"hasupd ({version}-1) unstable; urgency=medium\n\n  * System test build: an upgrade.\n\n"
        " -- hasupd maintainers <maintainers@hasupd.invalid>  Thu, 27 Nov 2025 12:00:00 +0000\n\n"
        + changelog.read_text()
    )
    for name, pattern in (
        ("pyproject.toml", r'^version = "[^"]+"'),
        ("hasupd/__init__.py", r'^__version__ = "[^"]+"'),
    ):
        path = tree / name
        key = pattern.split(" = ")[0].lstrip("^")
        text, count = re.subn(pattern, f'{key} = "{version}"', path.read_text(), count=1, flags=re.M)
        assert count == 1, f"no version line in {name}"
        path.write_text(text)
    deb = build_deb(tree, tmp_path / "out", machine.podman)
    assert deb.name.startswith(f"hasupd_{version}-1_"), deb
    return deb


@pytest.mark.system
def test_package_upgrade_reexecs_without_a_blip(services: Machine, tmp_path: Path) -> None:
    machine = services
    deb = bumped_deb(machine, tmp_path, "99.0.0")
    machine.podman("cp", str(deb), f"{machine.name}:/tmp/{deb.name}")
    machine.wait_for("hasupd answers", lambda: answers(machine), timeout=30)
    pids = machine.wait_for("both services run", lambda: all_running(machine), timeout=20)
    before = main_state(machine)
    with Client(machine) as client:
        started = time.monotonic()
        proc = machine.exec(
            "apt-get",
            "install",
            "--yes",
            f"/tmp/{deb.name}",
            env={"DEBIAN_FRONTEND": "noninteractive"},
            timeout=600,
        )
        print(
            f"apt-get install took {time.monotonic() - started:.1f}s",
            proc.stdout[-2000:],
            proc.stderr[-2000:],
        )
        time.sleep(2.0)
        counts = assert_no_blip(machine, client)
    print(f"upgrade: {counts['ok']} connections served, 0 refused")
    assert "restarting hasupd.service" not in proc.stdout + proc.stderr, proc.stdout
    assert main_state(machine) == before, f"hasupd was restarted, not re-exec'd\n{machine.journal()}"
    assert service_pids(machine) == pids, f"services were restarted\n{machine.journal()}"
    status = machine.exec("hasupctl", "status").stdout
    assert f"hasupd 99.0.0, pid {before['MainPID']}" in status, status
    # The new image keeps the cgroup layout (it is already in its supervisor leaf).
    started = [line for line in machine.journal(lines=400).splitlines() if "hasupd 99.0.0 starting" in line]
    assert started and "delegated layout" in started[-1], started
    info = machine.exec("hasupctl", "daemon-info").stdout
    assert "0.1.0 -> 99.0.0" in info, info
    print(info)
    assert machine.exec("dpkg-query", "-W", "-f", "${Version}", "hasupd").stdout == "99.0.0-1"


@pytest.mark.system
def test_stop_leaves_no_process_even_when_it_times_out(services: Machine) -> None:
    machine = services
    # A service that ignores SIGTERM for far longer than the unit's stop timeout: hasupd is still
    # waiting for it when systemd gives up, SIGKILLs hasupd alone (KillMode=process), and
    # ExecStopPost= must kill what is left.
    machine.write(
        STUBBORN_YAML,
        "command: [/bin/sh, -c, \"trap '' TERM; while :; do sleep 1002; done\"]\ntimeout_stop_sec: 5min\n",
    )
    machine.write(DROPIN, "[Service]\nTimeoutStopSec=5s\n")
    try:
        machine.exec("systemctl", "daemon-reload")
        machine.exec("systemctl", "reload", "hasupd", timeout=120)
        machine.wait_for(
            "every service runs", lambda: all_running(machine) and pids_of(machine, "sleep 1002"), 20
        )
        remains = machine.journal(lines=100000).count("remains running after unit stopped")
        started = time.monotonic()
        machine.exec("systemctl", "stop", "hasupd", timeout=120)
        took = time.monotonic() - started
        assert service_pids(machine) == {"blip": [], "idle": []}, machine.journal()
        assert pids_of(machine, "sleep 1002") == [] and pids_of(machine, "trap") == [], machine.journal()
        journal = machine.journal(lines=100000)
        # systemd names every process still in the unit's cgroup once the unit is inactive.
        assert journal.count("remains running after unit stopped") == remains, journal[-5000:]
        assert "stop-post: stop requested (jobs of hasupd.service: stop" in journal, journal[-5000:]
        assert "Stopping timed out" in journal or "State 'stop-sigterm' timed out" in journal, journal[-5000:]
        print(f"stop with a hung service took {took:.1f}s")

        # The plain case: hasupd stops everything itself. `systemctl restart` keeps its meaning too.
        machine.exec("rm", "-f", STUBBORN_YAML)
        machine.exec("systemctl", "start", "hasupd", timeout=120)
        pids = machine.wait_for("both services run", lambda: all_running(machine), timeout=30)
        machine.exec("systemctl", "restart", "hasupd", timeout=120)
        again = machine.wait_for("both services run", lambda: all_running(machine), timeout=30)
        assert not set(again["blip"] + again["idle"]) & set(pids["blip"] + pids["idle"]), (pids, again)
        machine.exec("systemctl", "stop", "hasupd", timeout=120)
        assert service_pids(machine) == {"blip": [], "idle": []}, machine.journal()
    finally:
        machine.exec("rm", "-f", DROPIN, STUBBORN_YAML)
        machine.exec("systemctl", "daemon-reload")
        machine.exec("systemctl", "start", "hasupd", timeout=120, check=False)


@pytest.mark.system
def test_upgrade_from_a_version_without_reexec_restarts_once(services: Machine, tmp_path: Path) -> None:
    """The fallback: the running hasupd predates daemon-reexec (hasupctl exits 2), so the postinst
    restarts the unit, says so, and the new version runs every service."""
    machine = services
    # The last commit before the package learnt to re-exec: neither hasupd nor hasupctl know it.
    first = run(
        [
            "git",
            "-C",
            str(REPO),
            "log",
            "--format=%H",
            "-S",
            "daemon-reexec",
            "--",
            "packaging/debian/postinst",
        ],
        timeout=60,
    ).stdout.split()[-1]
    old = bumped_deb(machine, tmp_path / "old", "100.0.0", commit=f"{first}^")
    new = bumped_deb(machine, tmp_path / "new", "100.0.1")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    for deb in (old, new):
        machine.podman("cp", str(deb), f"{machine.name}:/tmp/{deb.name}")
    machine.exec("apt-get", "install", "--yes", f"/tmp/{old.name}", env=env, timeout=600)
    machine.wait_for("hasupd answers", lambda: answers(machine), timeout=30)
    assert "daemon-reexec" not in machine.exec("hasupctl", "--help").stdout
    pids = machine.wait_for("both services run", lambda: all_running(machine), timeout=30)
    before = main_state(machine)

    proc = machine.exec("apt-get", "install", "--yes", f"/tmp/{new.name}", env=env, timeout=600)
    output = proc.stdout + proc.stderr  # apt-get passes the maintainer scripts' stderr on stdout
    assert "cannot re-exec itself; restarting hasupd.service" in output, output
    machine.wait_for("hasupd answers", lambda: answers(machine), timeout=30)
    assert main_state(machine)["MainPID"] != before["MainPID"]
    again = machine.wait_for("both services run", lambda: all_running(machine), timeout=30)
    assert not set(again["blip"] + again["idle"]) & set(pids["blip"] + pids["idle"]), (pids, again)
    status = machine.exec("hasupctl", "status").stdout
    assert "hasupd 100.0.1, pid" in status, status
