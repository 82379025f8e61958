"""The systemd unit and the Debian package, proven under a real systemd.

The `system` tests share one container (see conftest.py) and run in file order: install, reload,
invalid reload, crash, watchdog, journal, purge. Each one that needs the sleep service sets it up
if it is missing, so that any of them can also run alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.system.conftest import REPO, Machine, require_tools

UNIT = REPO / "systemd" / "hasupd.service"
SLEEPER = "/etc/hasupd/services.d/sleeper.yaml"
SLEEPER_YAML = 'description: a service for the system test\ncommand: [/bin/sleep, "1000"]\n'
SLEEP_CMDLINE = "/bin/sleep 1000"
WATCHDOG_DROPIN = "/etc/systemd/system/hasupd.service.d/50-systest-watchdog.conf"


def test_unit_verifies_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` has nothing to say about the unit and exits 0.

    verify checks that Exec*= binaries exist and that Documentation= man pages resolve. On a
    build machine /usr/bin/hasupd and /usr/bin/hasupctl are not installed, so a copy of the unit is
    verified with the three command paths pointed at stub executables (everything else byte for
    byte the same), and MANPATH points at the man pages in the source tree, which the package
    installs.
    """
    require_tools("systemd-analyze", "man", hint="apt-get install systemd man-db")
    text = UNIT.read_text()
    assert text.count("=/usr/bin/hasupd ") == 3, (
        "expected ExecStartPre=, ExecStart= and ExecStopPost= to run /usr/bin/hasupd"
    )
    assert text.count("=/usr/bin/hasupctl ") == 1, "expected ExecReload= to run /usr/bin/hasupctl"
    for program in ("hasupd", "hasupctl"):
        stub = tmp_path / program
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        text = text.replace(f"=/usr/bin/{program} ", f"={stub} ")
    unit = tmp_path / "hasupd.service"
    unit.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MANPATH": str(REPO / "packaging" / "man")},
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def props(machine: Machine, *names: str) -> dict[str, str]:
    out = machine.exec("systemctl", "show", "hasupd", *(f"--property={name}" for name in names)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def sleep_pids(machine: Machine) -> list[str]:
    return machine.exec("pgrep", "--full", "--exact", SLEEP_CMDLINE, check=False).stdout.split()


def one_sleep(machine: Machine) -> list[str] | None:
    pids = sleep_pids(machine)
    return pids if len(pids) == 1 else None


def ensure_sleeper(machine: Machine) -> str:
    """Make sure the sleep service is configured and running; return its pid."""
    if machine.exec("test", "-e", SLEEPER, check=False).returncode != 0:
        machine.write(SLEEPER, SLEEPER_YAML)
        machine.exec("systemctl", "reload", "hasupd")
    return machine.wait_for("the sleep service runs", lambda: one_sleep(machine), timeout=10)[0]


def restarted(machine: Machine, old_pid: str, old_restarts: int) -> dict[str, str] | None:
    now = props(machine, "MainPID", "ActiveState", "NRestarts")
    fresh = now["MainPID"] not in {"0", old_pid} and int(now["NRestarts"]) > old_restarts
    return now if fresh and now["ActiveState"] == "active" else None


def assert_supervised_by_hasupd(machine: Machine, pid: str) -> None:
    cgroups = machine.exec("cat", f"/proc/{pid}/cgroup").stdout
    assert "/hasupd.service" in cgroups, f"pid {pid} is not in hasupd.service's cgroup:\n{cgroups}"


@pytest.mark.system
def test_installed_service_runs_on_debian_python(machine: Machine) -> None:
    """After `apt-get install ./hasupd_*.deb` the unit is enabled and active, its main process is
    Debian's python3, and the user, groups and directories are there."""
    state = machine.exec("systemctl", "is-active", "hasupd", check=False).stdout.strip()
    assert state == "active", f"hasupd.service is {state}\n{machine.journal()}"
    assert machine.exec("systemctl", "is-enabled", "hasupd").stdout.strip() == "enabled"
    pid = props(machine, "MainPID")["MainPID"]
    exe = machine.exec("readlink", "-f", f"/proc/{pid}/exe").stdout.strip()
    assert exe == machine.exec("readlink", "-f", "/usr/bin/python3").stdout.strip()
    cmdline = machine.exec("cat", f"/proc/{pid}/cmdline").stdout.split("\0")
    assert cmdline[1:3] == ["/usr/bin/hasupd", "run"], cmdline

    passwd = machine.exec("getent", "passwd", "hasupd").stdout.strip().split(":")
    assert passwd[5:] == ["/var/lib/hasupd", "/usr/sbin/nologin"], passwd
    assert int(passwd[2]) < 1000, f"hasupd is not a system user: {passwd}"
    for group in ("hasupd", "hasupd-operators", "hasupd-admin"):
        assert machine.exec("getent", "group", group, check=False).returncode == 0, f"no group {group}"
    modes = machine.exec("stat", "-c", "%n %U:%G %a", "/var/lib/hasupd", "/run/hasupd").stdout.splitlines()
    assert modes == ["/var/lib/hasupd root:hasupd 750", "/run/hasupd root:hasupd 751"]
    for directory in ("/etc/hasupd/services.d", "/etc/hasupd/backups.d"):
        assert machine.exec("test", "-d", directory, check=False).returncode == 0, f"no {directory}"


@pytest.mark.system
def test_installed_hasupd_spawns_through_its_c_extension(machine: Machine) -> None:
    """The package's C extension is built for the booted release's Python and loads there: the
    daemon.started record of the running hasupd names the clone3(CLONE_INTO_CGROUP) spawn path, not
    the subprocess fallback (which is what a .deb built on another release would silently give)."""
    version = machine.exec("python3", "-c", "import sys; print('%d%d' % sys.version_info[:2])").stdout.strip()
    built = machine.exec("dpkg", "-L", "hasupd").stdout.split()
    extensions = [path for path in built if "/hasupd/host/_spawn.cpython-" in path]
    assert any(f"_spawn.cpython-{version}-" in path for path in extensions), (
        f"no extension for python {version}: {extensions}"
    )
    ensure_sleeper(machine)
    out = machine.exec(
        "journalctl", "--no-pager", "-u", "hasupd", "HASUPD_EVENT=daemon.started", "-o", "json"
    ).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert records, f"no HASUPD_EVENT=daemon.started record\n{machine.journal()}"
    spawn = records[-1].get("HASUPD_SPAWN", "")
    print(f"python {version}: {extensions}; spawn: {spawn}")
    assert spawn.startswith("clone3(CLONE_INTO_CGROUP),"), f"spawn path: {spawn!r}\n{machine.journal()}"


@pytest.mark.system
def test_reload_starts_a_new_service(machine: Machine) -> None:
    """A service file dropped into services.d runs within 10 s of `systemctl reload hasupd`."""
    machine.exec("rm", "-f", SLEEPER)
    machine.exec("systemctl", "reload", "hasupd")
    machine.wait_for("no sleep service before the test", lambda: not sleep_pids(machine) or None, timeout=10)
    machine.write(SLEEPER, SLEEPER_YAML)
    machine.exec("systemctl", "reload", "hasupd")
    (pid,) = machine.wait_for("the new service runs after reload", lambda: one_sleep(machine), timeout=10)
    assert_supervised_by_hasupd(machine, pid)


def hasupd_pid(machine: Machine) -> str:
    return props(machine, "MainPID")["MainPID"]


@pytest.mark.system
def test_reload_of_an_invalid_config_fails_and_keeps_the_old_one(machine: Machine) -> None:
    """`systemctl reload hasupd` with an invalid service file fails (exit 1, the file:line:col error
    in the journal), hasupd stays active with the same pid and its old services; once the file is
    fixed the same command succeeds and applies it."""
    sleeper_pid = ensure_sleeper(machine)
    daemon_pid = hasupd_pid(machine)
    broken = "/etc/hasupd/services.d/broken.yaml"
    # A file written with the watcher on could be reloaded before systemctl asks: the outcome
    # (kept out, old config running) is the same either way.
    machine.write(broken, 'command: [/bin/sleep, "1000"]\nrestart_sec: 10 parsecs\n')
    try:
        proc = machine.exec("systemctl", "reload", "hasupd", check=False, timeout=120)
        assert proc.returncode != 0, f"an invalid config reloaded successfully\n{machine.journal()}"
        journal = machine.journal(lines=200)
        assert f"{broken}:2:14: restart_sec: " in journal, journal
        state = props(machine, "ActiveState", "SubState", "MainPID")
        assert state == {"ActiveState": "active", "SubState": "running", "MainPID": daemon_pid}, state
        assert sleep_pids(machine) == [sleeper_pid], "the running service was touched"

        machine.write(broken, 'command: [/bin/sleep, "1001"]\n')
        machine.exec("systemctl", "reload", "hasupd", timeout=120)

        def fixed_runs() -> str | None:
            pids = machine.exec("pgrep", "--full", "--exact", "/bin/sleep 1001", check=False).stdout
            return pids.strip() or None

        machine.wait_for("the fixed service runs after reload", fixed_runs, timeout=10)
        assert hasupd_pid(machine) == daemon_pid
        assert sleep_pids(machine) == [sleeper_pid]
    finally:
        machine.exec("rm", "-f", broken)
        machine.exec("systemctl", "reload", "hasupd", check=False, timeout=120)


@pytest.mark.system
def test_killed_daemon_is_restarted_with_its_services(machine: Machine) -> None:
    """`kill -9` of hasupd: systemd restarts it, and its service runs again, exactly once."""
    ensure_sleeper(machine)
    before = props(machine, "MainPID", "NRestarts")
    machine.exec("kill", "-9", before["MainPID"])
    after = machine.wait_for(
        "systemd restarts hasupd after kill -9",
        lambda: restarted(machine, before["MainPID"], int(before["NRestarts"])),
        timeout=30,
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    (pid,) = machine.wait_for("the service runs again", lambda: one_sleep(machine), timeout=10)
    time.sleep(1)
    assert sleep_pids(machine) == [pid], "the service was started twice"
    assert_supervised_by_hasupd(machine, pid)


@pytest.mark.system
def test_watchdog_restarts_a_frozen_daemon(machine: Machine) -> None:
    """With WatchdogSec=3s hasupd keeps pinging while healthy; frozen with SIGSTOP, systemd kills
    and restarts it within ~10 s and says so in the journal."""
    ensure_sleeper(machine)
    machine.write(WATCHDOG_DROPIN, "[Service]\nWatchdogSec=3s\n")
    try:
        machine.exec("systemctl", "daemon-reload")
        machine.exec("systemctl", "restart", "hasupd", timeout=180)
        healthy = props(machine, "MainPID", "NRestarts", "WatchdogUSec", "ActiveState")
        assert healthy["WatchdogUSec"] == "3s", healthy
        assert healthy["ActiveState"] == "active", f"{healthy}\n{machine.journal()}"

        # Two watchdog periods: a hasupd that pings from its event loop is left alone.
        time.sleep(6.5)
        still = props(machine, "MainPID", "NRestarts")
        assert still == {"MainPID": healthy["MainPID"], "NRestarts": healthy["NRestarts"]}, machine.journal()

        timeouts_before = machine.journal(lines=10000).count("Watchdog timeout")
        machine.exec("kill", "-STOP", healthy["MainPID"])
        machine.wait_for(
            "systemd's watchdog kills and restarts the frozen hasupd",
            lambda: restarted(machine, healthy["MainPID"], int(healthy["NRestarts"])),
            timeout=12,
        )
        assert machine.journal(lines=10000).count("Watchdog timeout") > timeouts_before, machine.journal()
        ensure_sleeper(machine)
    finally:
        machine.exec("rm", "-f", WATCHDOG_DROPIN)
        machine.exec("systemctl", "daemon-reload")
        machine.exec("systemctl", "restart", "hasupd", timeout=180, check=False)


@pytest.mark.system
def test_journal_has_native_event_fields(machine: Machine) -> None:
    """hasupd's records carry native journal fields: `journalctl -u hasupd HASUPD_EVENT=...` works."""
    ensure_sleeper(machine)
    out = machine.exec(
        "journalctl", "--no-pager", "-u", "hasupd", "HASUPD_EVENT=service.started", "-o", "json"
    ).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert records, f"no HASUPD_EVENT=service.started record\n{machine.journal()}"
    assert any(record.get("HASUPD_SERVICE") == "sleeper" for record in records), records


@pytest.mark.system
def test_completion_man_pages_and_shared_files_are_installed(machine: Machine) -> None:
    """After the install, bash-completion finds hasupctl's completion as a first Tab does (bash loads
    completions on demand, so `complete -p hasupctl` answers once the loader ran) and it completes the
    running daemon's service names; zsh's compinit finds _hasupctl; the section 5 man pages, the JSON
    Schemas, the Grafana dashboard and the Prometheus rules are where the README says."""
    ensure_sleeper(machine)
    machine.exec(
        "apt-get",
        "install",
        "--yes",
        "--no-install-recommends",
        "bash-completion",
        "zsh",
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=600,
    )
    # The loader returns 124 ("retry the completion") once it has loaded one, as on a first Tab.
    loader = ". /usr/share/bash-completion/bash_completion && { _completion_loader hasupctl; true; }"
    spec = machine.exec("bash", "-c", f"{loader} && complete -p hasupctl").stdout.strip()
    assert spec == "complete -F _hasupctl hasupctl", spec
    words = machine.exec(
        "bash",
        "-c",
        f"{loader} && COMP_WORDS=(hasupctl restart sl) COMP_CWORD=2 && _hasupctl && echo ${{COMPREPLY[@]}}",
    ).stdout.split()
    assert words == ["sleeper"], words
    zsh = "autoload -U compinit && compinit -u && print -r -- $_comps[hasupctl]"
    assert machine.exec("zsh", "-c", zsh).stdout.strip() == "_hasupctl"
    for path in (
        "/usr/share/man/man5/hasupd.yaml.5.gz",
        "/usr/share/man/man5/hasupd.service.5.gz",
        "/usr/share/man/man5/hasupd.backup.5.gz",
        "/usr/share/hasupd/schema/hasupd.schema.json",
        "/usr/share/hasupd/schema/hasupd-service.schema.json",
        "/usr/share/hasupd/schema/hasupd-backup.schema.json",
        "/usr/share/hasupd/grafana/hasupd-dashboard.json",
        "/usr/share/hasupd/prometheus/hasupd-rules.yml",
    ):
        assert machine.exec("test", "-s", path, check=False).returncode == 0, f"{path} is not installed"


@pytest.mark.system
def test_purge_removes_everything(machine: Machine) -> None:
    """`apt-get purge hasupd` stops it with its services and removes the program, the state, the
    unit and the user and groups."""
    ensure_sleeper(machine)
    machine.exec(
        "apt-get", "purge", "--yes", "hasupd", env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300
    )
    assert machine.exec("systemctl", "is-active", "hasupd", check=False).stdout.strip() == "inactive"
    assert sleep_pids(machine) == [], "hasupd's service outlived the purge"
    for path in (
        "/usr/bin/hasupd",
        "/usr/bin/hasupctl",
        "/var/lib/hasupd",
        "/run/hasupd",
        "/lib/systemd/system/hasupd.service",
        "/usr/lib/systemd/system/hasupd.service",
        "/etc/systemd/system/multi-user.target.wants/hasupd.service",
    ):
        assert machine.exec("test", "-e", path, check=False).returncode != 0, f"{path} is still there"
    assert machine.exec("getent", "passwd", "hasupd", check=False).returncode == 2, (
        "user hasupd is still there"
    )
    for group in ("hasupd", "hasupd-operators", "hasupd-admin"):
        assert machine.exec("getent", "group", group, check=False).returncode == 2, (
            f"group {group} is still there"
        )
