"""Handlers of the commands about hasupd itself: daemon-reexec, daemon-info."""

from __future__ import annotations

from typing import Any

from hasupd.control.context import Context


async def reexec(ctx: Context, args: dict[str, Any]) -> Any:
    """Answer, then replace hasupd's image with the installed hasupd (same pid); services keep running."""
    return ctx.reloader.request_reexec()


async def info(ctx: Context, args: dict[str, Any]) -> Any:
    return ctx.reloader.daemon_info()
