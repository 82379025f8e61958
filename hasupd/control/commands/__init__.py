"""The command table: for each control command its handler, the role it needs and whether it changes state.

One module per command family; each imports only ``hasupd.control.context``. This table names them and
imports a family's module when one of its commands is first called: the backup, restore and fleet
commands bring their stacks (restic, databases, etcd), which hasupd need not load for a config that
never uses them, nor at start.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hasupd.control.auth import Role
from hasupd.control.context import Context

Handler = Callable[[Context, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    """One command: the role a caller needs, whether it is audited as a change, and its handler."""

    role: Role
    changes_state: bool
    handler: Handler


def lazy(family: str, name: str) -> Handler:
    """Return a handler that imports ``hasupd.control.commands.<family>`` at its first call and runs
    the module's ``name``."""

    async def handler(context: Context, args: dict[str, Any]) -> Any:
        function: Handler = getattr(importlib.import_module(f"{__name__}.{family}"), name)
        return await function(context, args)

    handler.__qualname__ = f"{family}.{name}"
    return handler


COMMANDS: dict[str, Command] = {
    "status": Command(Role.READ, False, lazy("services", "status")),
    "start": Command(Role.OPERATE, True, lazy("services", "start")),
    "stop": Command(Role.OPERATE, True, lazy("services", "stop")),
    "restart": Command(Role.OPERATE, True, lazy("services", "restart")),
    "reset-failed": Command(Role.OPERATE, True, lazy("services", "reset_failed")),
    "reload": Command(Role.OPERATE, True, lazy("services", "reload")),
    "logs": Command(Role.READ, False, lazy("records", "logs")),
    "events": Command(Role.READ, False, lazy("records", "events")),
    "errors": Command(Role.READ, False, lazy("records", "errors")),
    "incident": Command(Role.READ, False, lazy("records", "incident")),
    "alert-test": Command(Role.OPERATE, True, lazy("alerts", "alert_test")),
    "alert-silence": Command(Role.OPERATE, True, lazy("alerts", "alert_silence")),
    "alert-list": Command(Role.READ, False, lazy("alerts", "alert_list")),
    "backup-run": Command(Role.OPERATE, True, lazy("backup", "run")),
    "backup-list": Command(Role.READ, False, lazy("backup", "list_snapshots")),
    "backup-status": Command(Role.READ, False, lazy("backup", "status")),
    "restore": Command(Role.ADMIN, True, lazy("restore", "restore")),
    "daemon-reexec": Command(Role.ADMIN, True, lazy("daemon", "reexec")),
    "daemon-info": Command(Role.READ, False, lazy("daemon", "info")),
    "fleet-status": Command(Role.READ, False, lazy("fleet", "status")),
    "fleet-move": Command(Role.OPERATE, True, lazy("fleet", "move")),
    "fleet-drain": Command(Role.OPERATE, True, lazy("fleet", "drain")),
    "errors-show": Command(Role.READ, False, lazy("records", "errors_show")),
    "enable": Command(Role.OPERATE, True, lazy("units", "enable")),
    "disable": Command(Role.OPERATE, True, lazy("units", "disable")),
    "mask": Command(Role.OPERATE, True, lazy("units", "mask")),
    "unmask": Command(Role.OPERATE, True, lazy("units", "unmask")),
    "cat": Command(Role.READ, False, lazy("units", "cat")),
    "show": Command(Role.READ, False, lazy("units", "show")),
    "kill": Command(Role.OPERATE, True, lazy("units", "kill")),
    "reload-service": Command(Role.OPERATE, True, lazy("units", "reload_service")),
}
