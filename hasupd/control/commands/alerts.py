"""Handler of ``alert test [CHANNEL]`` (role ``operate``, audited): a test message through the spool now."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


async def alert_test(ctx: Context, args: dict[str, Any]) -> Any:
    """Send a test message on one channel (or all), bypassing coalescing but not the spool; return each
    server's answer. Fail (exit 1) if any channel did not accept it, 3 if the channel is unknown."""
    channel = args.get("channel")
    if channel is not None and (not isinstance(channel, str) or not _NAME_RE.match(channel)):
        raise CommandError(Exit.USAGE, "'channel' must be an alert channel name")
    if ctx.alerts is None:
        raise CommandError(Exit.FAILED, "this hasupd sends no alerts")
    try:
        outcomes = await ctx.alerts.send_test(channel)
    except LookupError as e:
        raise CommandError(Exit.NOT_FOUND, str(e.args[0])) from None
    if not all(o.ok for o in outcomes):
        lines = [f"{o.channel}: {'accepted: ' if o.ok else 'failed: '}{o.answer}" for o in outcomes]
        raise CommandError(Exit.FAILED, "test alert not delivered:\n" + "\n".join(lines))
    return [asdict(o) for o in outcomes]
