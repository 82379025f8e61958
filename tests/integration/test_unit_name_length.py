"""Every verb that takes a unit name refuses one longer than a file name can be (a unit name becomes
file names: its drop-in folder, its timer stamp) with the same usage error, and writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import Hasupd

LONG = "x" * 300


def _layout(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    (etc / "services.d").mkdir(parents=True)
    (etc / "hasupd.yaml").write_text("{}\n")
    (etc / "services.d" / "app@.yaml").write_text("command: [/bin/sleep, '1003']\n")
    (etc / "services.d" / "web.yaml").write_text("command: [/bin/sleep, '1004']\n")
    return etc


def test_too_long_names_are_refused_by_every_verb_and_nothing_is_written(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    d = hasupd(_layout(tmp_path))
    d.wait_ready()
    units = d.state_dir / "units.json"
    for verb in ("enable", "disable", "mask", "unmask", "start", "stop", "restart", "reset-failed"):
        for name in (f"app@{LONG}", LONG):
            out = d.ctl(verb, name)
            assert out.returncode == 2, (verb, out.returncode, out.stderr)
            assert "invalid service name" in out.stderr and "longer than 247" in out.stderr, (
                verb,
                out.stderr,
            )
            assert len(out.stderr) < 1000, out.stderr  # the name is shortened, not echoed whole
    assert not units.exists() or json.loads(units.read_text()) == {
        "disabled": [],
        "masked": [],
        "instances": [],
    }
    # The daemon goes on: a fine instance is enabled and starts.
    assert d.ctl("enable", "app@two").returncode == 0
    d.wait_for("service.started", service="app@two")
    assert d.stop() == 0
