"""What every control command handler gets (``Context``) and how it fails (``CommandError``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hasupd.config.diff import ReloadPlan
from hasupd.control.protocol import Exit
from hasupd.manager import Manager
from hasupd.observe.error_groups import ErrorGroups
from hasupd.observe.queries import RecordStore

if TYPE_CHECKING:
    from hasupd.alerts.policy import Alerts
    from hasupd.backup.units import BackupUnits
    from hasupd.fleet.controller import Fleet
    from hasupd.timers import Timers


class CommandError(Exception):
    """A request that cannot be served: ``code`` is the exit status hasupctl ends with."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code


class Reloader(Protocol):
    async def reload_plan(self, dry_run: bool) -> ReloadPlan:
        """Return the plan for the config on disk (applied unless dry_run). Raise CommandError if invalid."""
        ...

    def request_reexec(self) -> dict[str, object]:
        """Re-execute hasupd (same pid) once this request is answered; return what to answer.
        Raise CommandError if a re-exec cannot be done now (stopping, or one already under way)."""
        ...

    def daemon_info(self) -> dict[str, object]:
        """Return hasupd's version, pid and how its last re-exec went (None if there was none)."""
        ...


@dataclass
class Context:
    manager: Manager
    reloader: Reloader
    records: RecordStore | None = None  # logs, events, errors, incident
    alerts: Alerts | None = None  # alert test
    backups: BackupUnits | None = None  # set once the job units exist
    fleet: Fleet | None = None  # set when hasupd.yaml has fleet: and it could be set up
    errors: ErrorGroups | None = None  # the services' error groups (errors, errors-show)
    vendor_dir: str | None = None  # packages' services.d lives below it (hasupctl cat, enable NAME@I)
    timers: Timers | None = None  # the schedules of timer services (hasupctl show: next_run)
