"""Handlers of the service commands: status, start, stop, restart (also rolling), reset-failed, reload."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from hasupd.config.unitstate import MAX_UNIT_NAME, unit_name_problem
from hasupd.config.validate_process import process_settings
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.manager import RollingRestartError
from hasupd.service import Service
from hasupd.states import STOPPING_STATES, Health, ServiceState

# How long start/stop requests wait for the service to settle, beyond its own timeouts.
SETTLE_MARGIN_SEC = 5.0


def refuse_invalid_names(names: list[str], *, too_long_only: bool = False) -> None:
    """Raise CommandError (usage) naming each of ``names`` that cannot name a unit: longer than a
    file name can be, or (unless ``too_long_only``) not a service or template instance name."""
    bad = [
        problem
        for n in names
        if (problem := unit_name_problem(n)) is not None and (not too_long_only or len(n) > MAX_UNIT_NAME)
    ]
    if bad:
        raise CommandError(Exit.USAGE, "invalid service name: " + ", ".join(bad))


def _names(ctx: Context, args: dict[str, Any], *, required: bool) -> list[str]:
    names = args.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CommandError(Exit.USAGE, "'names' must be a list of service names")
    if required and not names:
        raise CommandError(Exit.USAGE, "name at least one service")
    refuse_invalid_names(names, too_long_only=True)
    unknown = [n for n in names if n not in ctx.manager.services and n not in ctx.manager.units]
    if unknown:
        raise CommandError(Exit.NOT_FOUND, "no such service: " + ", ".join(unknown))
    # A service name stands for all its instances (NAME@0 ...).
    return [unit for n in names for unit in ctx.manager.resolve(n)] or sorted(ctx.manager.services)


def service_status(service: Service) -> dict[str, Any]:
    st = service.status()
    return {
        "name": st.name,
        "service": service.config.name,
        "state": str(st.state),
        "result": str(st.result),
        "pid": st.pid,
        "uptime_sec": round(time.time() - st.active_since, 3) if st.active_since else None,
        "restarts": st.restarts,
        "last_exit": st.last_exit,
        "incident": st.incident,
        "invocation": st.invocation,
        "description": service.config.description,
        "status_text": st.status_text,
        "health": st.health,
        "rolled_back": st.rolled_back,
        # limits.nofile, nice, umask ...: what the child gets before exec, as configured.
        "process": process_settings(service.config),
    }


async def status(ctx: Context, args: dict[str, Any]) -> Any:
    out = [service_status(ctx.manager.services[n]) for n in _names(ctx, args, required=False)]
    if ctx.timers is not None:  # timer services: when their schedule starts them next
        for item in out:
            when = ctx.timers.next_run(item["service"])
            if when is not None:
                item["next_run"] = when.isoformat(timespec="seconds")
    return out


def _settled_after_start(service: Service) -> bool:
    return service.state not in (ServiceState.START, *STOPPING_STATES)


async def _wait(ctx: Context, names: list[str], condition: Callable[[Service], bool], what: str) -> None:
    services = [ctx.manager.services[n] for n in names]
    bound = (
        max(max(s.config.timeout_start_sec, s.config.timeout_stop_sec) for s in services) + SETTLE_MARGIN_SEC
    )
    try:
        await asyncio.wait_for(ctx.manager.wait_until(lambda: all(condition(s) for s in services)), bound)
    except TimeoutError:
        raise CommandError(Exit.FAILED, f"timed out after {bound:g}s waiting for {what}") from None


def _report(ctx: Context, names: list[str], bad: Callable[[Service], bool], verb: str) -> Any:
    states = [service_status(ctx.manager.services[n]) for n in names]
    failed = [
        f"{s['name']} is {s['state']} (result {s['result']})"
        for s, n in zip(states, names, strict=True)
        if bad(ctx.manager.services[n])
    ]
    if failed:
        raise CommandError(Exit.FAILED, f"{verb}: " + "; ".join(failed))
    return states


def _refuse_unowned(ctx: Context, units: list[str]) -> None:
    """Refuse to start a placed service this host does not own: it would run twice in the fleet."""
    for unit in units:
        name = ctx.manager.services[unit].config.name
        if ctx.manager.is_placed(name) and (ctx.fleet is None or not ctx.fleet.node.owns(name)):
            raise CommandError(
                Exit.FAILED,
                f"{name} is placed by the fleet and this host does not own it "
                "(hasupctl fleet status shows the owner; hasupctl fleet move NAME HOST moves it)",
            )


def _refuse_masked(ctx: Context, units: list[str]) -> None:
    """Refuse to start a masked service (hasupctl mask): that is what masking is for."""
    masked = sorted({ctx.manager.services[u].config.name for u in units if ctx.manager.is_masked(u)})
    if masked:
        raise CommandError(
            Exit.FAILED,
            f"{', '.join(masked)}: masked, cannot be started (hasupctl unmask {' '.join(masked)} first)",
        )


async def start(ctx: Context, args: dict[str, Any]) -> Any:
    names = _names(ctx, args, required=True)
    _refuse_masked(ctx, names)
    _refuse_unowned(ctx, names)
    for name in names:
        ctx.manager.start(name)
    waiting = [n for n in names if ctx.manager.is_pending(n)]
    await _wait(ctx, [n for n in names if n not in waiting], _settled_after_start, "the start")
    return _report(
        ctx, [n for n in names if n not in waiting], lambda s: s.state is ServiceState.FAILED, "start failed"
    )


async def stop(ctx: Context, args: dict[str, Any]) -> Any:
    names = _names(ctx, args, required=True)
    await ctx.manager.stop_many(names, "stopped with hasupctl")
    return [service_status(ctx.manager.services[n]) for n in names]


def _healthy(service: Service) -> bool:
    return service.health in (None, Health.HEALTHY)  # None: it has no probes


async def _rolling_restart(ctx: Context, args: dict[str, Any]) -> Any:
    names = args.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CommandError(Exit.USAGE, "--rolling needs service names")
    refuse_invalid_names(names, too_long_only=True)
    unknown = [n for n in names if n not in ctx.manager.units]
    if unknown:
        raise CommandError(Exit.NOT_FOUND, "no such service: " + ", ".join(unknown))
    done: list[str] = []
    for name in names:
        try:
            done += await ctx.manager.rolling_restart(name, _healthy)
        except RollingRestartError as error:
            restarted = ", ".join(done) or "none"
            raise CommandError(
                Exit.FAILED, f"rolling restart stopped: {error} (restarted: {restarted})"
            ) from None
    return [service_status(ctx.manager.services[u]) for u in done]


async def restart(ctx: Context, args: dict[str, Any]) -> Any:
    if args.get("rolling"):
        return await _rolling_restart(ctx, args)
    names = _names(ctx, args, required=True)
    _refuse_masked(ctx, names)
    _refuse_unowned(ctx, names)
    for name in names:
        ctx.manager.services[name].restart()
    await _wait(ctx, names, _settled_after_start, "the restart")
    return _report(ctx, names, lambda s: s.state is ServiceState.FAILED, "restart failed")


async def reset_failed(ctx: Context, args: dict[str, Any]) -> Any:
    names = _names(ctx, args, required=False)
    for name in names:
        ctx.manager.services[name].reset_failed()
    return [service_status(ctx.manager.services[n]) for n in names]


async def reload(ctx: Context, args: dict[str, Any]) -> Any:
    dry_run = args.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise CommandError(Exit.USAGE, "'dry_run' must be true or false")
    plan = await ctx.reloader.reload_plan(dry_run)
    # "plan": the lines people read (as before); the parts by kind for scripts (--json).
    return {"dry_run": dry_run, "plan": plan.describe(), **plan.as_json()}
