"""Handlers of the read-only record commands: logs, events, errors, errors show, incident (role ``read``,
no audit)."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit, Streaming
from hasupd.observe.error_rank import error_group, rank_errors
from hasupd.observe.queries import Query, RecordStore, parse_since
from hasupd.observe.service_output import JournalctlError

MAX_LINES = 100_000
DEFAULT_LOG_LINES = 10
DEFAULT_ERRORS_SINCE = "30d"
# Names and ids become journalctl matches: nothing but these characters.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]*$")
_INCIDENT_RE = re.compile(r"^[0-9a-f]{1,64}$")
_GROUP_RE = re.compile(r"^[0-9a-f]{12}$")


def _store(ctx: Context) -> RecordStore:
    if ctx.records is None:
        raise CommandError(Exit.FAILED, "this hasupd keeps no records it can read back")
    return ctx.records


def _lines(args: dict[str, Any], default: int | None) -> int | None:
    lines = args.get("lines", default)
    if lines is None:
        return None
    if isinstance(lines, bool) or not isinstance(lines, int) or not 0 <= lines <= MAX_LINES:
        raise CommandError(Exit.USAGE, f"'lines' must be a whole number from 0 to {MAX_LINES}")
    return lines


def _since(args: dict[str, Any], default: str | None) -> float | None:
    since = args.get("since", default)
    if since is None:
        return None
    if not isinstance(since, str):
        raise CommandError(Exit.USAGE, "'since' must be a string such as 30d, 2h or an ISO time")
    try:
        return parse_since(since)
    except ValueError as e:
        raise CommandError(Exit.USAGE, f"--since: {e}") from None


def _service(args: dict[str, Any], key: str, *, required: bool) -> str | None:
    name = args.get(key)
    if name is None and not required:
        return None
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CommandError(Exit.USAGE, f"'{key}' must be a service name")
    return name


async def logs(ctx: Context, args: dict[str, Any]) -> Any:
    """The service's output and records about it, merged in time order; streamed on with ``follow``."""
    store = _store(ctx)
    name = _service(args, "name", required=True)
    assert name is not None
    lines = _lines(args, DEFAULT_LOG_LINES)
    if lines is None:  # an explicit null: logs has no "all lines"
        raise CommandError(Exit.USAGE, f"'lines' must be a whole number from 0 to {MAX_LINES}")
    follow = args.get("follow", False)
    if not isinstance(follow, bool):
        raise CommandError(Exit.USAGE, "'follow' must be true or false")
    # Subscribed before the first lines are read, so nothing published in between is missed.
    follower = store.follower(name) if follow else None
    try:
        initial = await store.logs(name, lines)
    except (JournalctlError, OSError) as e:
        if follower is not None:
            follower.close()
        raise CommandError(Exit.FAILED, f"cannot read the log of {name}: {e}") from None
    if name not in ctx.manager.services and not initial:
        if follower is not None:
            follower.close()
        raise CommandError(Exit.NOT_FOUND, f"no such service, and no records about it: {name}")
    if follower is not None:
        return Streaming(lambda send: follower.run(initial, send))
    return initial


async def events(ctx: Context, args: dict[str, Any]) -> Any:
    """hasupd's records, oldest first: since a time, about one service, the newest N."""
    query = Query(
        since=_since(args, None), service=_service(args, "service", required=False), limit=_lines(args, None)
    )
    try:
        return await _store(ctx).events(query)
    except (JournalctlError, OSError) as e:
        raise CommandError(Exit.FAILED, f"cannot read records: {e}") from None


async def errors(ctx: Context, args: dict[str, Any]) -> Any:
    """The error groups of the services' output and hasupd's own error records, most common first."""
    since = _since(args, DEFAULT_ERRORS_SINCE)
    service = _service(args, "service", required=False)
    limit = _lines(args, None)
    try:
        return await rank_errors(ctx.errors, ctx.records, since=since, service=service, limit=limit)
    except (JournalctlError, OSError, sqlite3.Error) as e:
        raise CommandError(Exit.FAILED, f"cannot read the errors: {e}") from None


async def errors_show(ctx: Context, args: dict[str, Any]) -> Any:
    """One error group: its samples and the incidents it appeared in."""
    group = args.get("group")
    if not isinstance(group, str) or not _GROUP_RE.match(group):
        raise CommandError(
            Exit.USAGE, "'group' must be an error group id (12 hex digits, see hasupctl errors)"
        )
    since = _since(args, DEFAULT_ERRORS_SINCE)
    try:
        found = await error_group(ctx.errors, ctx.records, group, since=since)
    except (JournalctlError, OSError, sqlite3.Error) as e:
        raise CommandError(Exit.FAILED, f"cannot read the errors: {e}") from None
    if found is None:
        raise CommandError(Exit.NOT_FOUND, f"no error group {group}")
    return found


async def incident(ctx: Context, args: dict[str, Any]) -> Any:
    """One incident's chain of records and the output before it."""
    incident_id = args.get("id")
    if not isinstance(incident_id, str) or not _INCIDENT_RE.match(incident_id):
        raise CommandError(Exit.USAGE, "'id' must be an incident id (hex digits)")
    try:
        found = await _store(ctx).incident(incident_id)
    except (JournalctlError, OSError) as e:
        raise CommandError(Exit.FAILED, f"cannot read records: {e}") from None
    if found is None:
        raise CommandError(Exit.NOT_FOUND, f"no records of incident {incident_id}")
    return found
