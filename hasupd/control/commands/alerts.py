"""Handlers of ``alert test [CHANNEL]`` (role ``operate``, audited): a test message through the spool now;
``alert silence TARGET DURATION`` (operate, audited) and ``alert list`` (read)."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from hasupd.config.quantities import parse_duration
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


_TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,199}$")
REASON_MAX = 500


async def alert_silence(ctx: Context, args: dict[str, Any]) -> Any:
    """Silence alerts matching ``target`` (a service, an event or alert name, an error group id, a
    rule) for ``duration`` ("2h"; "0s" lifts the silence); return the silence. Saved in the state dir."""
    target, duration, reason = args.get("target"), args.get("duration"), args.get("reason", "")
    if not isinstance(target, str) or not _TARGET_RE.match(target):
        raise CommandError(
            Exit.USAGE, "'target' must be a service, event or alert name, or an error group id"
        )
    if not isinstance(duration, str):
        raise CommandError(Exit.USAGE, "'duration' must be a string such as 30m, 2h or 1d")
    try:
        seconds = parse_duration(duration)
    except ValueError as e:
        raise CommandError(Exit.USAGE, str(e)) from None
    if not isinstance(reason, str) or len(reason) > REASON_MAX or not reason.isprintable():
        raise CommandError(Exit.USAGE, f"'reason' must be printable text of at most {REASON_MAX} characters")
    if ctx.alerts is None:
        raise CommandError(Exit.FAILED, "this hasupd sends no alerts")
    user = args.get("_user")
    try:
        return await ctx.alerts.silence(target, seconds, reason, str(user) if user else "?")
    except OSError as e:
        raise CommandError(Exit.FAILED, f"cannot save the silence: {e}") from None


async def alert_list(ctx: Context, args: dict[str, Any]) -> Any:
    """Return the silences in force, the messages waiting for delivery and the latest alert records."""
    if ctx.alerts is None:
        raise CommandError(Exit.FAILED, "this hasupd sends no alerts")
    return ctx.alerts.listing()
