"""The command table: for each control command its handler, the role it needs and whether it changes state.

One module per command family; each imports only ``hasupd.control.context``, and this table imports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hasupd.control.auth import Role
from hasupd.control.commands import alerts, backup, daemon, fleet, records, restore, services, units
from hasupd.control.context import Context

Handler = Callable[[Context, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    """One command: the role a caller needs, whether it is audited as a change, and its handler."""

    role: Role
    changes_state: bool
    handler: Handler


COMMANDS: dict[str, Command] = {
    "status": Command(Role.READ, False, services.status),
    "start": Command(Role.OPERATE, True, services.start),
    "stop": Command(Role.OPERATE, True, services.stop),
    "restart": Command(Role.OPERATE, True, services.restart),
    "reset-failed": Command(Role.OPERATE, True, services.reset_failed),
    "reload": Command(Role.OPERATE, True, services.reload),
    "logs": Command(Role.READ, False, records.logs),
    "events": Command(Role.READ, False, records.events),
    "errors": Command(Role.READ, False, records.errors),
    "incident": Command(Role.READ, False, records.incident),
    "alert-test": Command(Role.OPERATE, True, alerts.alert_test),
    "alert-silence": Command(Role.OPERATE, True, alerts.alert_silence),
    "alert-list": Command(Role.READ, False, alerts.alert_list),
    "backup-run": Command(Role.OPERATE, True, backup.run),
    "backup-list": Command(Role.READ, False, backup.list_snapshots),
    "backup-status": Command(Role.READ, False, backup.status),
    "restore": Command(Role.ADMIN, True, restore.restore),
    "daemon-reexec": Command(Role.ADMIN, True, daemon.reexec),
    "daemon-info": Command(Role.READ, False, daemon.info),
    "fleet-status": Command(Role.READ, False, fleet.status),
    "fleet-move": Command(Role.OPERATE, True, fleet.move),
    "fleet-drain": Command(Role.OPERATE, True, fleet.drain),
    "errors-show": Command(Role.READ, False, records.errors_show),
    "enable": Command(Role.OPERATE, True, units.enable),
    "disable": Command(Role.OPERATE, True, units.disable),
    "mask": Command(Role.OPERATE, True, units.mask),
    "unmask": Command(Role.OPERATE, True, units.unmask),
    "cat": Command(Role.READ, False, units.cat),
    "show": Command(Role.READ, False, units.show),
    "kill": Command(Role.OPERATE, True, units.kill),
    "reload-service": Command(Role.OPERATE, True, units.reload_service),
}
