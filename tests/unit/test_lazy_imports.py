"""What a plain config does not use is not imported at start (issue 23: memory and start-up time of a
daemon with hundreds of services): the metrics exposition, the backup stack, mail, the fleet, the
resource sampler, the control commands' families. Each is imported where it is first needed."""

from __future__ import annotations

import subprocess
import sys

NOT_AT_START = (
    "prometheus_client",
    "plumbum",
    "aiosmtplib",
    "psutil",
    "email.message",
    "urllib.request",
    "hasupd.backup.jobs",
    "hasupd.backup.restic",
    "hasupd.backup.databases",
    "hasupd.fleet.controller",
    "hasupd.alerts.pagerduty",
    "hasupd.control.commands.restore",
)


def test_the_daemon_module_leaves_the_optional_stacks_unimported() -> None:
    # A fresh interpreter: this test process has imported much of hasupd already.
    code = f"import sys, hasupd.daemon; print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == []
