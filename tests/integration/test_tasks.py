"""Every background task runs under the daemon's TaskGroup: a bug in one stops hasupd (DESIGN)."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import REPO, Hasupd, write_config

# Loaded by Python at start-up (``sitecustomize`` on PYTHONPATH): it plants a bug in the health probe
# check, which runs as a background task of the daemon, as a real bug there would.
INJECT_PROBE_BUG = """
import hasupd.watch.probes as probes

async def _check(self):
    raise RuntimeError("injected bug in a probe check")

probes.ProbeRunner._check = _check
"""


def test_a_task_that_raises_stops_hasupd_with_a_record_naming_it(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(textwrap.dedent(INJECT_PROBE_BUG))
    config = write_config(
        tmp_path / "etc",
        {
            "probed": {
                "command": ["/bin/sleep", "1000"],
                "health": [{"exec": ["/bin/true"], "interval_sec": "100ms"}],
            }
        },
    )
    d = hasupd(config, env={"PYTHONPATH": f"{inject}:{REPO}"})
    d.wait_for("service.started", service="probed")
    deadline = time.monotonic() + 15
    while d.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    code = d.proc.poll()
    assert code is not None, "hasupd went on running after a bug in one of its tasks"
    assert code != 0
    d._reader.join(5)
    named = [line for line in d.lines if "internal error in task 'probe exec /bin/true'" in line]
    assert named, "\n".join(d.lines[-30:])
    assert "RuntimeError: injected bug in a probe check" in named[0]
