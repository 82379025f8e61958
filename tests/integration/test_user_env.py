"""A service runs as another user, with its environment file, and none of hasupd's variables."""

from __future__ import annotations

import grp
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import Hasupd, require_root, write_config
from tests.support.users import temp_group, temp_user, world_dir


def test_service_runs_as_another_user_with_its_environment_only(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    require_root()
    envfile = tmp_path / "app.env"
    envfile.write_text('# comment\nGREETING="hello world"\nexport MODE=prod\n\nEMPTY=\n')
    with world_dir() as out, temp_group() as extra, temp_user(groups=(extra,)) as user:
        config = write_config(
            tmp_path / "etc",
            {
                "app": {
                    "command": [
                        "/bin/sh",
                        "-c",
                        f"id -u > {out}/uid; id -G > {out}/groups; pwd > {out}/cwd;"
                        f" env > {out}/env; ls -l /proc/self/fd/0 > {out}/stdin; exec sleep 1000",
                    ],
                    "user": user.pw_name,
                    "working_directory": "/tmp",
                    "environment_files": [str(envfile), "-/nonexistent/optional.env"],
                    "environment": {"MODE": "override", "ONLY_HERE": 1},
                },
            },
        )
        leak = {
            "NOTIFY_SOCKET": "/run/x.sock",
            "LISTEN_FDS": "2",
            "LISTEN_PID": "1",
            "LISTEN_FDNAMES": "a",
            "WATCHDOG_USEC": "1000",
            "WATCHDOG_PID": "1",
            "INVOCATION_ID": "0" * 32,
            "SECRET_OF_HASUPD": "do-not-leak",
        }
        d = hasupd(config, env=leak)
        started = d.wait_for("service.started", service="app")[0]
        deadline = time.monotonic() + 5
        while not (out / "stdin").exists() or not (out / "stdin").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert int((out / "uid").read_text()) == user.pw_uid
        groups = {int(g) for g in (out / "groups").read_text().split()}
        assert grp.getgrnam(extra).gr_gid in groups  # supplementary groups applied
        assert (out / "cwd").read_text().strip() == "/tmp"
        assert "/dev/null" in (out / "stdin").read_text()
        env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
        assert env["GREETING"] == "hello world"
        assert env["MODE"] == "override"  # environment wins over environment_files
        assert env["ONLY_HERE"] == "1"
        assert env["EMPTY"] == ""
        assert env["USER"] == user.pw_name
        assert env["INVOCATION_ID"] == started["invocation"]
        for name in leak:
            if name not in ("INVOCATION_ID", "NOTIFY_SOCKET"):
                assert name not in env, name
        assert env["NOTIFY_SOCKET"] == str(d.runtime_dir / "notify" / "app.sock")  # its own, not hasupd's
        assert os.stat(f"/proc/{started['pid']}").st_uid == user.pw_uid
        assert d.stop() == 0


def test_numeric_user_and_group_are_ids_at_start_and_on_reload(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    """issue 15: ``user: 65534`` passed check-config, then pwd.getpwnam("65534") killed hasupd."""
    require_root()
    with temp_group() as extra, temp_user() as user:
        gid = grp.getgrnam(extra).gr_gid
        numeric = {"command": ["/bin/sleep", "1000"], "user": user.pw_uid, "group": gid}
        config = write_config(tmp_path / "etc", {"app": numeric})
        d = hasupd(config, extra_args=("--no-watch",))
        pid = d.wait_for("service.started", service="app")[0]["pid"]
        info = os.stat(f"/proc/{pid}")
        assert (info.st_uid, info.st_gid) == (user.pw_uid, gid)
        # the notify socket is the service's own: owned by its numeric uid and gid too
        sock = os.stat(d.runtime_dir / "notify" / "app.sock")
        assert (sock.st_uid, sock.st_gid) == (user.pw_uid, gid)
        # a reload that adds another numeric-user service starts it; the first keeps its pid
        write_config(config, {"app": numeric, "other": {**numeric, "group": str(gid)}})
        reply = d.ctl("reload")
        assert reply.returncode == 0, reply.stderr
        other = d.wait_for("service.started", service="other")[0]["pid"]
        assert os.stat(f"/proc/{other}").st_uid == user.pw_uid
        assert d.proc.poll() is None
        assert d.find("service.started", service="app")[-1]["pid"] == pid
        assert d.stop() == 0
