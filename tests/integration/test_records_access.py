"""The records written without journald are the audit trail: only root, hasupd and the control
socket's group may read them."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import Hasupd, require_root, write_config
from tests.support.users import temp_group


def test_records_are_0640_group_socket_group_in_a_0750_folder(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    require_root()
    with temp_group() as group:
        gid = grp.getgrnam(group).gr_gid
        config = write_config(
            tmp_path / "etc",
            {"sleeper": {"command": ["/bin/sleep", "1000"]}},
            daemon={"access": {"socket_group": group}},
        )
        old_umask = os.umask(0o022)  # what a shell gives hasupd: files would be 0644
        try:
            d = hasupd(config)
        finally:
            os.umask(old_umask)
        d.wait_ready()
        d.ctl("restart", "sleeper")  # an audited request: the trail has something in it
        d.wait_for("audit", timeout=10)
        folder = d.state_dir / "records"
        records = folder / "records.jsonl"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750 and folder.stat().st_gid == gid
        assert stat.S_IMODE(records.stat().st_mode) == 0o640 and records.stat().st_gid == gid
        assert records.read_text().count('"event": "audit"') >= 1
        # The same group as the control socket's.
        assert d.socket.stat().st_gid == gid
        assert d.stop() == 0
