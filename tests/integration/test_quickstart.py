"""The README's two quick-start commands, from a fresh clone, as a normal user and as root."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.gitclone import clone
from tests.support.harness import REPO, require_root
from tests.support.users import temp_user, world_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def visit_dashboard(port: int) -> tuple[str, str]:
    """Return the overview page and the first message of its live stream (or what went wrong)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            overview = page.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=30) as live:
            return overview, live.readline().decode()
    except OSError as e:  # reported by the asserts, after the demo is stopped
        return f"dashboard: {e}", ""


def test_demo_runs_from_a_fresh_clone_as_a_normal_user() -> None:
    require_root()  # to create the normal user it runs as
    assert shutil.which("git"), "git is needed to clone the repository"
    with world_dir() as home, temp_user() as user:
        src = home / "clone"
        # REPO may belong to another user than root (`sudo scripts/test` in one's own clone).
        clone(REPO, src)
        # The demo's dashboard on a free port (9465 may be taken by a demo someone else runs).
        demo_config = src / "examples" / "demo" / "hasupd.yaml"
        port = free_port()
        demo_config.write_text(demo_config.read_text().replace("127.0.0.1:9465", f"127.0.0.1:{port}"))
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
        demo = subprocess.Popen(
            ["runuser", "-u", user.pw_name, "--", "env", "HOME=" + str(home), "./scripts/demo"],
            cwd=src,
            start_new_session=True,  # its own terminal-like process group, for the Ctrl-C below
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Give it time to fetch what it needs, then watch the demo for a while.
        deadline = time.monotonic() + 120
        assert demo.stdout is not None
        lines: list[str] = []
        ready_at = None
        dashboard = first = ""
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if ready_at is None and "hasupd ready" in line:
                ready_at = time.monotonic()
                deadline = ready_at + 9
            if not dashboard and f"dashboard at http://127.0.0.1:{port}/" in line:
                dashboard, first = visit_dashboard(port)
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C does
        rest, _ = demo.communicate(timeout=30)
        lines += rest.splitlines()
        text = "\n".join(lines)
        assert demo.returncode == 0, text
        assert ready_at is not None, text
        # A stable service ...
        assert len(re.findall(r"^clock: \d\d:\d\d:\d\d$", text, re.M)) >= 3, text
        # ... a crashing one with a growing backoff ...
        delays = [float(d) for d in re.findall(r"flaky died \(exit-code\), will restart in ([\d.]+)s", text)]
        assert len(delays) >= 2 and delays[1] > delays[0] * 1.5, text
        # ... and a crash loop that ends in failed.
        assert "broken failed (result start-limit-hit)" in text, text
        assert text.count("broken started") == 4, text
        assert "hasupd stopped; every service is down" in text
        assert 'data-unit="clock"' in dashboard and 'data-unit="broken"' in dashboard, dashboard
        assert first.startswith("data: ") and json.loads(first[6:])["full"] is True, first


def test_root_clones_a_repository_that_belongs_to_another_user(tmp_path: Path) -> None:
    """What the test above does with REPO when `sudo scripts/test` runs in one's own clone."""
    require_root()  # to hand the repository to another user
    theirs = tmp_path / "theirs"
    clone(REPO, theirs)
    subprocess.run(["chown", "-R", "65534:65534", str(theirs)], check=True)
    plain = subprocess.run(
        ["git", "clone", "-q", str(theirs), str(tmp_path / "plain")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr, plain
    clone(theirs, tmp_path / "mine")
    assert (tmp_path / "mine" / "scripts" / "demo").is_file()


@contextmanager
def sudoer(name: str) -> Iterator[None]:
    """Let user ``name`` run anything as root through sudo without a password, as a developer on
    their own machine can (the ALL command includes SETENV, which --preserve-env needs)."""
    drop_in = Path("/etc/sudoers.d") / f"hasupd-test-{name}"
    drop_in.write_text(f"{name} ALL=(root) NOPASSWD: ALL\n")
    drop_in.chmod(0o440)
    try:
        subprocess.run(["visudo", "-c", "-q", "-f", str(drop_in)], check=True, timeout=30)
        yield
    finally:
        drop_in.unlink()


def root_processes_with(marker: str) -> list[int]:
    """Return the pids of processes running as root whose environment holds ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            uid = (proc / "status").read_text().split("\nUid:")[1].split()[0]
        except (OSError, IndexError):
            continue  # gone, or a kernel thread
        if marker.encode() in environ and uid == "0":
            pids.append(int(proc.name))
    return pids


def test_scripts_test_runs_itself_as_root_through_sudo_for_a_normal_user() -> None:
    """The second command, by a normal user with sudo in their own clone: scripts/test runs itself
    again as root through sudo, in the same clone, keeping the HASUPD_* variables. (Stopped once
    it is running as root: the rest is what every root run of scripts/test does.)"""
    require_root()  # to create the user and its sudoers entry
    assert shutil.which("sudo"), "sudo is needed (apt-get install sudo)"
    marker = f"HASUPD_TEST_MARKER={uuid.uuid4().hex}"
    with world_dir() as home, temp_user() as user, sudoer(user.pw_name):
        src = home / "clone"
        clone(REPO, src, with_changes=True)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
        run = subprocess.Popen(
            ["runuser", "-u", user.pw_name, "--", "env", f"HOME={home}", marker, "scripts/test", "-x"],
            cwd=src,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert run.stdout is not None
        lines: list[str] = []
        seen: list[int] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = run.stdout.readline()
                if not line:
                    break
                lines.append(line.rstrip())
                if line.startswith("== as root (uid 0) in "):
                    # The variable crossed sudo: the root process (or the venv it makes) has it.
                    seen = root_processes_with(marker)
                    break
        finally:
            os.killpg(run.pid, signal.SIGTERM)
            run.wait(timeout=30)
            run.stdout.close()
        text = "\n".join(lines)
        assert "== the tests need root: running scripts/test through sudo" in text, text
        assert f"== as root (uid 0) in {src}" in text, text
        assert seen, f"no root process has {marker}\n{text}"
