"""Handlers of the systemctl-like verbs: enable, disable, mask, unmask, cat, show, kill and a service's
own reload (``reload NAME``; ``reload`` alone re-reads the config, see ``services``)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hasupd.config.layout import (
    HIDDEN,
    ServiceSources,
    annotate,
    compose_service,
    describe_sources,
    find_services,
    templates,
)
from hasupd.config.load import SERVICES_DIR, read_document
from hasupd.config.quantities import parse_signal
from hasupd.config.unitstate import UnitStates, is_unit_name
from hasupd.control.commands.services import refuse_invalid_names, service_status
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.service import Service
from hasupd.states import ServiceState

RELOAD_MARGIN_SEC = 5.0
MAX_RELOAD_OUTPUT = 2000  # characters of a failed reload_command's output kept in the answer


def _one_name(args: dict[str, Any]) -> list[str]:
    """Return the names of the request; raise CommandError (usage) if there is none, or one longer
    than a unit name can be (it becomes file names: checked before anything is written)."""
    names = args.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CommandError(Exit.USAGE, "name at least one service")
    refuse_invalid_names(names, too_long_only=True)
    return names


def _states(ctx: Context) -> UnitStates:
    states = ctx.manager.unit_states
    if states is None:
        raise CommandError(Exit.FAILED, "hasupd keeps no unit states here (no state dir)")
    return states


def _save(states: UnitStates) -> None:
    try:
        states.save()
    except OSError as error:
        raise CommandError(Exit.FAILED, f"cannot write {states.path}: {error.strerror or error}") from None


def _folders(ctx: Context) -> list[Path]:
    folders = [Path(ctx.vendor_dir) / SERVICES_DIR] if ctx.vendor_dir else []
    return [*folders, Path(ctx.manager.config.config_dir) / SERVICES_DIR]


def _service_name(ctx: Context, name: str) -> str:
    """Return the configured service ``name`` stands for (a unit NAME@i of ``instances:`` too)."""
    service = ctx.manager.services.get(name)
    if service is not None and service.config.name in ctx.manager.units:
        return service.config.name
    if name in ctx.manager.units:
        return name
    raise CommandError(Exit.NOT_FOUND, f"no such service: {name}")


def _answer(states: UnitStates, names: list[str]) -> list[dict[str, str]]:
    return [{"name": name, "unit_file_state": str(states.state(name))} for name in names]


async def enable(ctx: Context, args: dict[str, Any]) -> Any:
    """Enable services (started at boot again); NAME@INSTANCE of a template creates that instance."""
    names = _one_name(args)
    states = _states(ctx)
    known_templates = await asyncio.to_thread(templates, _folders(ctx))
    new_instances = []
    for name in names:
        if name in states.masked:
            raise CommandError(Exit.FAILED, f"{name} is masked: hasupctl unmask {name} first")
        base, at, _ = name.partition("@")
        if name in ctx.manager.units:
            continue
        if at and is_unit_name(name) and f"{base}@" in known_templates:
            new_instances.append(name)
            continue
        raise CommandError(Exit.NOT_FOUND, f"no such service or template instance: {name}")
    states.disabled.difference_update(names)
    states.instances.update(new_instances)
    _save(states)
    if new_instances:
        try:
            await ctx.reloader.reload_plan(False)  # the instances become services (and start)
        except CommandError:
            # An instance the config cannot hold (its template or another file is invalid) is not
            # left behind to appear, unasked, at some later reload.
            states.instances.difference_update(new_instances)
            _save(states)
            raise
    return _answer(states, names)


async def disable(ctx: Context, args: dict[str, Any]) -> Any:
    """Disable services: not started at boot or by a reload; ``start`` still starts them."""
    names = [_service_name(ctx, n) for n in _one_name(args)]
    states = _states(ctx)
    states.disabled.update(names)
    _save(states)
    return _answer(states, names)


async def mask(ctx: Context, args: dict[str, Any]) -> Any:
    """Mask services: nothing starts them until unmasked (a running one keeps running)."""
    names = _one_name(args)
    refuse_invalid_names(names)
    states = _states(ctx)
    states.masked.update(names)
    _save(states)
    return _answer(states, names)


async def unmask(ctx: Context, args: dict[str, Any]) -> Any:
    names = _one_name(args)
    states = _states(ctx)
    states.masked.difference_update(names)
    _save(states)
    return _answer(states, names)


def _cat_text(folders: list[Path], instances: set[str], name: str) -> str | None:
    found: dict[str, ServiceSources] = {s.name: s for s in find_services(folders, instances)}
    sources = found.get(name)
    if sources is None:
        return None
    issues: list[Any] = []
    doc = compose_service(sources, lambda p, n, i: read_document(p, i, n), issues)
    lines = describe_sources(sources)
    lines += [f"# problem: {issue}" for issue in issues]
    if doc.node is not None:
        lines += annotate(doc.node)
    return "\n".join(lines) + "\n"


async def cat(ctx: Context, args: dict[str, Any]) -> Any:
    """Return the effective config of services as on disk, each key with the file:line that set it."""
    names = [_service_name(ctx, n) for n in _one_name(args)]
    states = _states(ctx)
    out = []
    for name in names:
        text = await asyncio.to_thread(_cat_text, _folders(ctx), set(states.instances), name)
        if text is None:
            raise CommandError(Exit.NOT_FOUND, f"{name}: no service file on disk any more")
        out.append({"name": name, "text": text})
    return out


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _flat(f"{prefix}.{f.name}" if prefix else f.name, getattr(value, f.name), out)
    elif isinstance(value, signal.Signals):
        out[prefix] = value.name
    elif isinstance(value, enum.Enum):
        out[prefix] = str(value.value)
    elif isinstance(value, tuple):
        out[prefix] = " ".join(
            "=".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
            for v in (value if not value or not dataclasses.is_dataclass(value[0]) else map(repr, value))
        )
    else:
        out[prefix] = "" if value is None else value


def properties(ctx: Context, service: Service) -> dict[str, Any]:
    """Return every property ``show`` knows of one unit: its status, its unit file state and its
    config (nested keys dotted: ``start_limit.burst``; durations in seconds)."""
    out: dict[str, Any] = {}
    _flat("", service.config, out)
    # Environment values may be secrets (as in cat): the names only.
    out["environment"] = " ".join(f"{k}={HIDDEN}" for k, _ in service.config.environment)
    out.pop("source", None)
    out.update(service_status(service))
    states = ctx.manager.unit_states
    out["unit_file_state"] = str(states.state(service.config.name)) if states is not None else "enabled"
    out["source"] = service.config.source
    if ctx.timers is not None and service.config.schedule is not None:
        when = ctx.timers.next_run(service.config.name)
        out["next_run"] = when.isoformat() if when is not None else ""
        last = ctx.timers.last_run(service.config.name)
        out["last_run"] = last.isoformat() if last is not None else ""
    return out


async def show(ctx: Context, args: dict[str, Any]) -> Any:
    names = _one_name(args)
    units = []
    for name in names:
        try:
            units += ctx.manager.resolve(name)
        except KeyError:
            raise CommandError(Exit.NOT_FOUND, f"no such service: {name}") from None
    return [properties(ctx, ctx.manager.services[u]) for u in units]


async def kill(ctx: Context, args: dict[str, Any]) -> Any:
    """Send a signal (default SIGTERM) to the main process (``whom: main``) or every process (``all``)
    of each named service. Changes no state by itself; whatever the signal does is seen as it happens."""
    names = _one_name(args)
    whom = args.get("whom", "all")
    if whom not in ("main", "all"):
        raise CommandError(Exit.USAGE, "'whom' must be main or all")
    raw = args.get("signal", "SIGTERM")
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise CommandError(Exit.USAGE, "'signal' must be a signal name or number")
    try:
        sig = parse_signal(raw)
    except ValueError as error:
        raise CommandError(Exit.USAGE, str(error)) from None
    units = []
    for name in names:
        try:
            units += ctx.manager.resolve(name)
        except KeyError:
            raise CommandError(Exit.NOT_FOUND, f"no such service: {name}") from None
    sent = {u: ctx.manager.services[u].kill(sig, whom == "main") for u in units}
    if not any(sent.values()):
        raise CommandError(Exit.NOT_FOUND, f"nothing to signal: {', '.join(units)} not running")
    return [{"name": u, "signal": sig.name, "processes": n} for u, n in sent.items()]


def _id(name: str | None) -> str | int | None:
    """Return a user or group as subprocess takes it: a numeric one ("65534") as a number."""
    return int(name) if name is not None and name.isdigit() else name


async def _run_reload_command(service: Service) -> tuple[bool, str]:
    """Run the service's reload_command as the service's user and group, with its ``environment`` (not
    its environment_files) and MAINPID; return (ok, detail)."""
    config = service.config
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **dict(config.environment)}
    env["MAINPID"] = str(service.pid)
    try:
        process = await asyncio.create_subprocess_exec(
            *config.reload_command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=config.working_directory or "/",
            user=_id(config.user),
            group=_id(config.group),
            start_new_session=True,
        )
    except (OSError, ValueError, KeyError) as error:
        return False, f"cannot run {config.reload_command[0]}: {error}"
    try:
        output, _ = await asyncio.wait_for(process.communicate(), config.timeout_start_sec)
    except TimeoutError:
        process.kill()
        await process.wait()
        return False, f"reload_command still running after {config.timeout_start_sec:g}s; killed"
    text = output.decode("utf-8", "replace").strip()[-MAX_RELOAD_OUTPUT:]
    if process.returncode == 0:
        return True, "reload_command succeeded"
    return False, f"reload_command exited with {process.returncode}" + (f": {text}" if text else "")


def _reloaded(service: Service) -> Callable[[], bool]:
    return lambda: service.state is not ServiceState.RELOADING


async def reload_service(ctx: Context, args: dict[str, Any]) -> Any:
    """A service's own reload: its reload_signal to the main process, or its reload_command. Answer
    once the state is back from ``reloading``.

    Each unit reloads once however often it is named. A unit that is not running when its turn comes
    (a reload someone else asked for is under way, or it stopped meanwhile) is not reloaded by this
    request, and the answer says so (exit 1): its state is never taken for this request's result.
    """
    units: list[str] = []
    for name in _one_name(args):
        try:
            units += [u for u in ctx.manager.resolve(name) if u not in units]
        except KeyError:
            raise CommandError(Exit.NOT_FOUND, f"no such service: {name}") from None
    services = [ctx.manager.services[u] for u in units]
    for service in services:
        if service.config.reload_signal is None and not service.config.reload_command:
            raise CommandError(
                Exit.FAILED, f"{service.name} cannot reload: it has no reload_signal or reload_command"
            )
        if service.state is ServiceState.RELOADING:
            raise CommandError(
                Exit.FAILED, f"{service.name}: a reload is already under way; ask again once it is over"
            )
        if service.state is not ServiceState.RUNNING:
            raise CommandError(Exit.NOT_FOUND, f"{service.name} is {service.state}: nothing to reload")
    failures = []
    for service in services:
        failure = await _reload_one(ctx, service)
        if failure is not None:
            failures.append(f"{service.name}: {failure}")
    if failures:
        raise CommandError(Exit.FAILED, "reload failed: " + "; ".join(failures))
    return [service_status(s) for s in services]


async def _reload_one(ctx: Context, service: Service) -> str | None:
    """Reload one service; return why it failed or was not done, or None when it reloaded."""
    config = service.config
    before = service.last_reload  # a new tuple when this reload ends: told apart by identity
    how = f"signal {config.reload_signal.name}" if config.reload_signal is not None else "reload_command"
    if not service.begin_reload(how):
        # Its state changed since the request came: not ours to wait for, nor to report as done.
        if service.state is ServiceState.RELOADING:
            return "not reloaded: a reload was already under way"
        return f"not reloaded: it is {service.state} now"
    if config.reload_signal is None:
        ok, detail = await _run_reload_command(service)
        service.end_reload(ok, detail)
    else:
        bound = config.timeout_start_sec + RELOAD_MARGIN_SEC
        await asyncio.wait_for(ctx.manager.wait_until(_reloaded(service)), bound)
    outcome = service.last_reload
    if outcome is None or outcome is before:
        # It left reloading without ending the reload: it stopped or died meanwhile.
        return f"the reload did not finish: it is {service.state} now"
    return None if outcome[0] else outcome[1]
