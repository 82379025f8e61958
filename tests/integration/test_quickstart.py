"""The README's first quick-start command, from a fresh clone, as a normal user."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time

from tests.integration.harness import REPO, require_root
from tests.integration.users import temp_user, world_dir


def test_demo_runs_from_a_fresh_clone_as_a_normal_user() -> None:
    require_root()  # to create the normal user it runs as
    assert shutil.which("git"), "git is needed to clone the repository"
    with world_dir() as home, temp_user() as user:
        clone = home / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
        demo = subprocess.Popen(
            ["runuser", "-u", user.pw_name, "--", "env", "HOME=" + str(home), "./scripts/demo"],
            cwd=clone,
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
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if ready_at is None and "hasupd ready" in line:
                ready_at = time.monotonic()
                deadline = ready_at + 9
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
