"""A real systemd-journald in a private mount namespace (TESTING.md's recipe), for ``output: journal``.

Its sockets exist only inside that namespace, so hasupd is started there with ``nsenter -t PID -m``.
Rate limiting is switched off and storage is volatile (a tmpfs private to the namespace), so journald
keeps every line instead of dropping most of a 200 MB burst.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from procs import die_with_parent

JOURNALD = Path("/lib/systemd/systemd-journald")
CONF = """\
[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
RuntimeMaxUse=1G
RuntimeMaxFileSize=64M
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
"""


def unavailable() -> str | None:
    """Return why a private journald cannot run here, or None if it can."""
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not JOURNALD.exists():
        return f"{JOURNALD} not found (apt-get install systemd)"
    return None


class Journald:
    """systemd-journald running in its own mount namespace until ``pid`` is killed."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / "journald.conf"
        conf.write_text(CONF)
        bind = (
            f"mount --bind {conf} /etc/systemd/journald.conf; "
            if Path("/etc/systemd/journald.conf").exists()
            else ""
        )
        script = f"mount -t tmpfs tmpfs /run/systemd; mount -t tmpfs tmpfs /run/log; {bind}exec {JOURNALD}"
        with open(folder / "journald.out", "wb") as out:
            # unshare and sh both exec: the pid is journald's own.
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509  (the harness has no other threads)
            )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 15
        while not Path(f"/proc/{self.pid}/root/run/systemd/journal/stdout").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"journald did not start: {(folder / 'journald.out').read_text()[-500:]}")
            time.sleep(0.05)

    def wrap(self, argv: list[str]) -> list[str]:
        """Return ``argv`` run inside journald's mount namespace."""
        return ["nsenter", "-t", str(self.pid), "-m", "--", *argv]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
