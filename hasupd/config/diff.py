"""Reload plans: what a new configuration changes compared with the running one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hasupd.config.model import Config, ServiceConfig

# Changing one of these changes the running program: the service is restarted. Every other field
# (restart policy, timeouts, probes, heartbeat, limits, alerts, description ...) only changes how hasupd
# treats the process, and is applied in place without touching it (Service.update_config re-arms the
# watchers whose settings changed).
PROCESS_FIELDS = frozenset(
    {
        "command",
        "type",
        "user",
        "group",
        "working_directory",
        "environment",
        "environment_files",
        "instances",
        "sockets",
        "container",
        "output",
        "watchdog_sec",  # the program is told WATCHDOG_USEC when it starts
    }
)


def process_changed(old: ServiceConfig, new: ServiceConfig) -> bool:
    """Return True if the running program must be restarted to go from ``old`` to ``new``."""
    return any(getattr(old, name) != getattr(new, name) for name in PROCESS_FIELDS)


def changed_fields(old: ServiceConfig, new: ServiceConfig) -> list[str]:
    return [
        f.name for f in dataclasses.fields(old) if f.compare and getattr(old, f.name) != getattr(new, f.name)
    ]


@dataclass(frozen=True)
class Plan:
    added: tuple[ServiceConfig, ...]
    removed: tuple[str, ...]
    changed: tuple[ServiceConfig, ...]  # restarted with the new config
    updated: tuple[ServiceConfig, ...]  # new config applied in place, the process keeps running
    unchanged: tuple[str, ...]
    details: tuple[tuple[str, tuple[str, ...]], ...] = ()  # name -> changed fields

    def describe(self) -> list[str]:
        """Return the plan as lines for people (``reload --dry-run``)."""
        fields = dict(self.details)
        lines = [f"start   {s.name} (new)" for s in self.added]
        lines += [f"stop    {name} (removed)" for name in self.removed]
        lines += [f"restart {s.name} (changed: {', '.join(fields[s.name])})" for s in self.changed]
        lines += [f"update  {s.name} in place (changed: {', '.join(fields[s.name])})" for s in self.updated]
        lines += [f"keep    {name}" for name in self.unchanged]
        return lines


def plan_reload(old: Config, new: Config) -> Plan:
    """Return the plan that turns the services of ``old`` into those of ``new``."""
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    differing = [s for name, s in after.items() if name in before and before[name] != s]
    return Plan(
        added=tuple(s for name, s in after.items() if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(s for s in differing if process_changed(before[s.name], s)),
        updated=tuple(s for s in differing if not process_changed(before[s.name], s)),
        unchanged=tuple(name for name, s in after.items() if before.get(name) == s),
        details=tuple((s.name, tuple(changed_fields(before[s.name], s))) for s in differing),
    )
