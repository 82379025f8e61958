"""Email through the host's own MTA: ``/usr/sbin/sendmail -i -f FROM -- RCPT...`` with the message
(the same RFC 5322 text as over SMTP) on stdin. An asyncio subprocess: nothing blocks the loop.

Exit codes (sendmail's, from sysexits.h): 0 accepted (queued by the MTA); 75 EX_TEMPFAIL and the
resource ones (71 EX_OSERR, 72 EX_OSFILE, 73 EX_CANTCREAT, 74 EX_IOERR) mean the MTA cannot take
mail now: the channel backs off as a whole; every other code (64 usage, 65 data, 67 no user, 68 no
host, 69 unavailable, 78 config, any unknown one) refuses this message, which backs off alone. A
missing program, or one that does not finish within ``timeout_sec`` (it is killed), backs the
channel off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hasupd.alerts.mail import Accepted, DeliveryError, render
from hasupd.alerts.spool import SpoolEntry
from hasupd.alerts.transport import Session, envelope
from hasupd.config.model import AlertChannel, SendmailChannel

CHANNEL_WIDE = frozenset({71, 72, 73, 74, 75})
OUTPUT_MAX = 2000


class _Session:
    def __init__(self, config: SendmailChannel) -> None:
        self._config = config

    async def send(self, entry: SpoolEntry, dropped: int) -> Accepted:
        config = self._config
        sender, recipients = envelope(entry, config.from_addr, config.to)
        argv = [config.path, "-i", "-f", sender, "--", *recipients]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            raise DeliveryError(f"cannot run {config.path}: {e.strerror or e}", session=True) from None
        try:
            async with asyncio.timeout(config.timeout_sec):
                output, _ = await proc.communicate(render(entry, dropped))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise DeliveryError(
                f"{config.path} did not finish within {config.timeout_sec:g}s (killed)", session=True
            ) from None
        text = output[:OUTPUT_MAX].decode("utf-8", "replace").strip()
        code = proc.returncode
        if code == 0:
            return Accepted(response=f"{config.path}: accepted" + (f" ({text})" if text else ""), refused={})
        said = f"{config.path} exited {code}" + (f": {text}" if text else "")
        raise DeliveryError(said, session=code in CHANNEL_WIDE or code is None or code < 0)


class SendmailTransport:
    """Hands messages to the local MTA."""

    @asynccontextmanager
    async def session(self, channel: AlertChannel) -> AsyncIterator[Session]:
        assert channel.sendmail is not None
        yield _Session(channel.sendmail)
