"""Handlers of ``hasupctl fleet status|move|drain``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.fleet.etcd import EtcdError

WAIT_STEP_SEC = 0.1


def _fleet(ctx: Context) -> Any:
    if ctx.fleet is None:
        raise CommandError(
            Exit.NOT_FOUND, "no fleet: hasupd.yaml has no fleet: section (or it could not start)"
        )
    return ctx.fleet


async def status(ctx: Context, args: dict[str, Any]) -> Any:
    return await _fleet(ctx).status()


def _owners(data: dict[str, Any], name: str) -> list[tuple[str | None, int | None]]:
    return [(s["owner"], s["token"]) for s in data["services"] if s["service"] == name]


async def move(ctx: Context, args: dict[str, Any]) -> Any:
    """Hand placed service NAME to HOST: the owner stops it first, then releases the key; HOST takes it.
    Answer once HOST owns it (or after a bounded wait: the answer says what was seen)."""
    fleet = _fleet(ctx)
    name, host = str(args.get("name", "")), str(args.get("host", ""))
    if name not in fleet.node.placements:
        raise CommandError(Exit.NOT_FOUND, f"{name!r} is not a placed service")
    before = await fleet.status()
    if host not in {h["host"] for h in before["hosts"] if h["alive"]}:
        raise CommandError(Exit.FAILED, f"host {host!r} is not alive in fleet {before['cluster']}")
    try:
        await fleet.node.request_move(name, host)
    except (EtcdError, TimeoutError) as exc:
        raise CommandError(Exit.FAILED, f"etcd: {exc or 'no answer'}") from exc
    return await _wait(fleet, name, lambda owners: any(o == host for o, _ in owners), before)


async def drain(ctx: Context, args: dict[str, Any]) -> Any:
    """Give every placed service of HOST (default: this one) to other hosts, until HOST's hasupd restarts."""
    fleet = _fleet(ctx)
    host = str(args.get("host") or fleet.node.host)
    before = await fleet.status()
    try:
        await fleet.node.request_drain(host)
    except LookupError as exc:
        raise CommandError(Exit.FAILED, str(exc)) from exc
    except (EtcdError, TimeoutError) as exc:
        raise CommandError(Exit.FAILED, f"etcd: {exc or 'no answer'}") from exc
    names = sorted({s["service"] for s in before["services"] if s["owner"] == host})
    results = [
        await _wait(fleet, n, lambda owners: host not in {o for o, _ in owners}, before) for n in names
    ]
    return {"host": host, "moved": results}


async def _wait(fleet: Any, name: str, done: Any, before: dict[str, Any]) -> dict[str, Any]:
    """Wait (at most TTL + the service's start timeout + 5 s) until ``done(owners)``; report it."""
    limit = fleet.node.ttl + fleet.node.start_timeout(name) + 5.0
    start = time.monotonic()
    data = before
    while time.monotonic() - start < limit:
        data = await fleet.status()
        if done(_owners(data, name)) and all(o is not None for o, _ in _owners(data, name)):
            break
        await asyncio.sleep(WAIT_STEP_SEC)
    else:
        raise CommandError(
            Exit.FAILED, f"{name}: not moved within {limit:.0f}s; owners now {_owners(data, name)}"
        )
    return {
        "service": name,
        "before": _owners(before, name),
        "after": _owners(data, name),
        "seconds": round(time.monotonic() - start, 3),
    }
