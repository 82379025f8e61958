"""Issue 22, must-shows 1 and 2: the vendor folder overridden by /etc, drop-ins, templates, ``hasupctl
cat``; enable/disable/mask kept across restarts and re-exec, refused starts, audit records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.support.harness import REPO, Hasupd

SLEEP = "/bin/sleep"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _status(d: Hasupd, *names: str) -> dict[str, dict[str, object]]:
    out = d.ctl("status", "--json", *names)
    assert out.returncode in (0, 3), out.stderr
    return {s["name"]: s for s in json.loads(out.stdout)}


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").decode().split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def _layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Return (config dir, vendor dir, the restart_sec drop-in) of must-show 1's layout."""
    vendor, etc = tmp_path / "vendor", tmp_path / "etc"
    _write(etc / "hasupd.yaml", "{}\n")
    _write(vendor / "services.d" / "web.yaml", f"description: vendor web\ncommand: [{SLEEP}, '1001']\n")
    _write(etc / "services.d" / "web.yaml", f"description: local web\ncommand: [{SLEEP}, '1002']\n")
    dropin = _write(etc / "services.d" / "web.d" / "10-restart.yaml", "# faster restarts\nrestart_sec: 2s\n")
    _write(
        vendor / "services.d" / "app@.yaml",
        f"description: app {{instance_name}}\ncommand: [{SLEEP}, '1003']\n"
        "environment: {INSTANCE: '{instance_name}'}\n",
    )
    (etc / "services.d" / "app@one.yaml").symlink_to(vendor / "services.d" / "app@.yaml")
    return etc, vendor, dropin


def test_vendor_override_dropin_template_and_cat(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    etc, vendor, dropin = _layout(tmp_path)
    d = hasupd(etc, extra_args=("--vendor-dir", str(vendor)))
    d.wait_ready()
    d.wait_for("service.started", service="app@one")
    # /etc's web.yaml hides the vendor's whole; the drop-in's restart_sec is merged over it.
    web = _status(d, "web")["web"]
    assert _cmdline(int(web["pid"])) == [SLEEP, "1002"]
    shown = d.ctl("show", "web", "-p", "restart_sec,description")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["restart_sec=2.0", "description=local web"]
    # The template instantiated twice: by the symlink and by hasupctl enable.
    enabled = d.ctl("enable", "app@two")
    assert enabled.returncode == 0, enabled.stderr
    d.wait_for("service.started", service="app@two")
    both = _status(d, "app@one", "app@two")
    for instance in ("one", "two"):
        pid = int(both[f"app@{instance}"]["pid"])
        assert _environ(pid)["INSTANCE"] == instance
        assert both[f"app@{instance}"]["description"] == f"app {instance}"
    # cat: every file in the order it applies, and the file:line each key came from.
    cat = d.ctl("cat", "web")
    assert cat.returncode == 0, cat.stderr
    print(cat.stdout)
    assert f"# file: {etc}/services.d/web.yaml" in cat.stdout
    assert f"#   (overrides {vendor}/services.d/web.yaml)" in cat.stdout
    assert f"# drop-in: {dropin}" in cat.stdout
    assert f"restart_sec: 2s  # {dropin}:2" in cat.stdout
    assert f"description: local web  # {etc}/services.d/web.yaml:1" in cat.stdout
    cat_two = d.ctl("cat", "app@two")
    print(cat_two.stdout)
    assert f"template for instance 'two': {vendor}/services.d/app@.yaml" in cat_two.stdout
    assert f"description: app two  # {vendor}/services.d/app@.yaml:1" in cat_two.stdout
    # Environment values may be secrets: cat and show (read role) name the variables, never the values.
    assert f"  INSTANCE: (hidden)  # {vendor}/services.d/app@.yaml:" in cat_two.stdout, cat_two.stdout
    assert "two" not in cat_two.stdout.split("environment:")[1]
    env = d.ctl("show", "app@two", "-p", "environment", "--value")
    assert env.stdout.strip() == "INSTANCE=(hidden)", env.stdout
    # A type error in the drop-in is reported at the drop-in's line, by check-config and by reload.
    bad = _write(
        etc / "services.d" / "web.d" / "20-bad.yaml", "# a list is no duration\n\nrestart_sec: [1]\n"
    )
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "hasupd",
            "check-config",
            "--config-dir",
            str(etc),
            "--vendor-dir",
            str(vendor),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert check.returncode == 1
    assert f"{bad}:3:14: restart_sec: expected a duration such as 30s, got a list" in check.stderr
    reload = d.ctl("reload")
    assert reload.returncode == 1
    assert f"{bad}:3:14: restart_sec:" in reload.stderr
    assert _status(d, "web")["web"]["pid"] == web["pid"]  # nothing changed


def test_disable_and_mask_survive_restart_and_reexec(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    etc = tmp_path / "etc"
    _write(etc / "hasupd.yaml", "{}\n")
    for name in ("quiet", "loud", "locked"):
        _write(etc / "services.d" / f"{name}.yaml", yaml.safe_dump({"command": [SLEEP, "1000"]}))
    state = tmp_path / "state"
    d = hasupd(etc, state_dir=state)
    d.wait_ready()
    assert d.ctl("disable", "quiet").returncode == 0
    assert d.ctl("mask", "locked").returncode == 0
    assert d.ctl("is-enabled", "quiet").stdout.strip() == "disabled"
    assert d.ctl("is-enabled", "quiet").returncode == 3
    assert d.ctl("is-enabled", "loud").returncode == 0
    # Masked: start fails with a clear message and exit 1; both requests are audited.
    refused = d.ctl("start", "locked")
    assert refused.returncode == 1
    assert "locked: masked, cannot be started (hasupctl unmask locked first)" in refused.stderr
    audits = [r["request"] + " -> " + r["outcome"] for r in d.find("audit")]
    assert "disable quiet -> ok" in audits
    assert "mask locked -> ok" in audits
    assert any(a.startswith("start locked -> failed: locked: masked") for a in audits), audits
    assert d.stop() == 0

    # A new hasupd on the same state dir: the disabled and the masked one do not start.
    d2 = hasupd(etc, state_dir=state)
    d2.wait_ready()
    d2.wait_for("service.started", service="loud")
    states = _status(d2)
    assert states["quiet"]["state"] == "dead"
    assert states["locked"]["state"] == "dead"
    assert d2.ctl("is-active", "quiet").returncode == 3
    assert d2.ctl("status", "quiet").returncode == 3  # as systemctl: a named service that is not running
    assert d2.ctl("status", "loud").returncode == 0
    assert d2.ctl("is-enabled", "locked").stdout.strip() == "masked"
    # Disabled is still startable by hand.
    assert d2.ctl("start", "quiet").returncode == 0
    assert d2.ctl("is-active", "quiet").returncode == 0
    assert d2.ctl("stop", "quiet").returncode == 0

    # A re-exec keeps the marks: after it the disabled service is still not started by a reload.
    reexec = d2.ctl("daemon-reexec")
    assert reexec.returncode == 0, reexec.stderr
    d2.wait_for("daemon.reexec")
    assert d2.ctl("is-enabled", "quiet").stdout.strip() == "disabled"
    assert d2.ctl("start", "locked").returncode == 1
    (etc / "services.d" / "quiet.yaml").write_text(yaml.safe_dump({"command": [SLEEP, "1001"]}))
    assert d2.ctl("reload").returncode == 0
    assert _status(d2)["quiet"]["state"] == "dead"
    assert d2.ctl("unmask", "locked").returncode == 0
    assert d2.ctl("start", "locked").returncode == 0
    assert json.loads((state / "units.json").read_text()) == {
        "disabled": ["quiet"],
        "masked": [],
        "instances": [],
    }
