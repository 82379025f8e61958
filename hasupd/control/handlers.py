"""One handler per control command; the table says which role each needs and whether it changes state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hasupd.config.diff import Plan
from hasupd.control.auth import Role
from hasupd.control.protocol import Exit
from hasupd.manager import Manager, RollingRestartError
from hasupd.observe.queries import RecordStore
from hasupd.service import Service
from hasupd.states import STOPPING_STATES, ServiceState

if TYPE_CHECKING:
    from hasupd.alerts.policy import Alerts
    from hasupd.backup.units import BackupUnits

# How long start/stop requests wait for the service to settle, beyond its own timeouts.
SETTLE_MARGIN_SEC = 5.0


class CommandError(Exception):
    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


class Reloader(Protocol):
    async def reload_plan(self, dry_run: bool) -> Plan:
        """Return the plan for the config on disk (applied unless dry_run). Raise CommandError if invalid."""
        ...


@dataclass
class Context:
    manager: Manager
    reloader: Reloader
    records: RecordStore | None = None  # logs, events, errors, incident
    alerts: Alerts | None = None  # alert test
    backups: BackupUnits | None = None  # set once the job units exist


Handler = Callable[[Context, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    role: Role
    changes_state: bool
    handler: Handler


def _names(ctx: Context, args: dict[str, Any], *, required: bool) -> list[str]:
    names = args.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CommandError(Exit.USAGE, "'names' must be a list of service names")
    if required and not names:
        raise CommandError(Exit.USAGE, "name at least one service")
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
    }


async def _status(ctx: Context, args: dict[str, Any]) -> Any:
    return [service_status(ctx.manager.services[n]) for n in _names(ctx, args, required=False)]


def _settled_after_start(service: Service) -> bool:
    return service.state not in (ServiceState.START, ServiceState.START_PRE, *STOPPING_STATES)


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


async def _start(ctx: Context, args: dict[str, Any]) -> Any:
    names = _names(ctx, args, required=True)
    for name in names:
        ctx.manager.start(name)
    waiting = [n for n in names if ctx.manager.is_pending(n)]
    await _wait(ctx, [n for n in names if n not in waiting], _settled_after_start, "the start")
    return _report(
        ctx, [n for n in names if n not in waiting], lambda s: s.state is ServiceState.FAILED, "start failed"
    )


async def _stop(ctx: Context, args: dict[str, Any]) -> Any:
    names = _names(ctx, args, required=True)
    await ctx.manager.stop_many(names, "stopped with hasupctl")
    return [service_status(ctx.manager.services[n]) for n in names]


def _healthy(service: Service) -> bool:
    return service.health in (None, "healthy")  # None: it has no probes


async def _rolling_restart(ctx: Context, args: dict[str, Any]) -> Any:
    names = args.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CommandError(Exit.USAGE, "--rolling needs service names")
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


async def _restart(ctx: Context, args: dict[str, Any]) -> Any:
    if args.get("rolling"):
        return await _rolling_restart(ctx, args)
    names = _names(ctx, args, required=True)
    for name in names:
        ctx.manager.services[name].restart()
    await _wait(ctx, names, _settled_after_start, "the restart")
    return _report(ctx, names, lambda s: s.state is ServiceState.FAILED, "restart failed")


async def _reset_failed(ctx: Context, args: dict[str, Any]) -> Any:
    names = _names(ctx, args, required=False)
    for name in names:
        ctx.manager.services[name].reset_failed()
    return [service_status(ctx.manager.services[n]) for n in names]


async def _reload(ctx: Context, args: dict[str, Any]) -> Any:
    dry_run = args.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise CommandError(Exit.USAGE, "'dry_run' must be true or false")
    plan = await ctx.reloader.reload_plan(dry_run)
    return {"dry_run": dry_run, "plan": plan.describe()}


# Imported here: those handlers need CommandError and Context from above.
from hasupd.control import handlers_alerts, handlers_backup, handlers_records, handlers_restore  # noqa: E402

COMMANDS: dict[str, Command] = {
    "status": Command(Role.READ, False, _status),
    "start": Command(Role.OPERATE, True, _start),
    "stop": Command(Role.OPERATE, True, _stop),
    "restart": Command(Role.OPERATE, True, _restart),
    "reset-failed": Command(Role.OPERATE, True, _reset_failed),
    "reload": Command(Role.OPERATE, True, _reload),
    "logs": Command(Role.READ, False, handlers_records.logs),
    "events": Command(Role.READ, False, handlers_records.events),
    "errors": Command(Role.READ, False, handlers_records.errors),
    "incident": Command(Role.READ, False, handlers_records.incident),
    "alert-test": Command(Role.OPERATE, True, handlers_alerts.alert_test),
    "backup-run": Command(Role.OPERATE, True, handlers_backup.run),
    "backup-list": Command(Role.READ, False, handlers_backup.list_snapshots),
    "backup-status": Command(Role.READ, False, handlers_backup.status),
    "restore": Command(Role.ADMIN, True, handlers_restore.restore),
}
