"""Reload plans: what a new configuration changes compared with the running one."""

from __future__ import annotations

from dataclasses import dataclass

from hasupd.config.model import Config, ServiceConfig


@dataclass(frozen=True)
class Plan:
    added: tuple[ServiceConfig, ...]
    removed: tuple[str, ...]
    changed: tuple[ServiceConfig, ...]  # the new configs
    unchanged: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def describe(self) -> list[str]:
        """Return the plan as lines for people (``reload --dry-run``)."""
        lines = [f"start   {s.name} (new)" for s in self.added]
        lines += [f"stop    {name} (removed)" for name in self.removed]
        lines += [f"restart {s.name} (changed)" for s in self.changed]
        lines += [f"keep    {name}" for name in self.unchanged]
        return lines


def plan_reload(old: Config, new: Config) -> Plan:
    """Return the plan that turns the services of ``old`` into those of ``new``."""
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    return Plan(
        added=tuple(s for name, s in after.items() if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(s for name, s in after.items() if name in before and before[name] != s),
        unchanged=tuple(name for name, s in after.items() if before.get(name) == s),
    )
