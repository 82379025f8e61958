"""The reload plan: what a new configuration changes compared with the running one.

ONE plan for the three things a reload touches, computed here and nowhere else (pure: two Configs in, a
``ReloadPlan`` out); each subsystem applies its own part of it:

- services: start (new), stop (removed), restart (the program changed), update in place, keep
  (``Manager.apply``);
- backup jobs: add, remove, change (``BackupSetup.apply`` stops and replaces a changed job; a job also
  changes when a repository it uses changes);
- alert channels: add, remove, change (the alerts read the channels of the config of now; a changed
  channel retries its spooled messages at once, on ``config.applied``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hasupd.config.model import AlertChannel, BackupJobConfig, Config, ServiceConfig

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


Entry = ServiceConfig | BackupJobConfig | AlertChannel


def changed_fields(old: Entry, new: Entry) -> list[str]:
    """Return the names of the compared dataclass fields that differ between ``old`` and ``new``."""
    return [
        f.name for f in dataclasses.fields(old) if f.compare and getattr(old, f.name) != getattr(new, f.name)
    ]


@dataclass(frozen=True)
class ServicePlan:
    """The services' part: what ``Manager.apply`` does."""

    added: tuple[ServiceConfig, ...]
    removed: tuple[str, ...]
    changed: tuple[ServiceConfig, ...]  # restarted with the new config
    updated: tuple[ServiceConfig, ...]  # new config applied in place, the process keeps running
    unchanged: tuple[str, ...]
    details: tuple[tuple[str, tuple[str, ...]], ...] = ()  # name -> changed fields

    @property
    def empty(self) -> bool:
        """True if applying the plan touches no service."""
        return not (self.added or self.removed or self.changed or self.updated)

    def describe(self) -> list[str]:
        """Return the plan as lines for people (``reload --dry-run``)."""
        fields = dict(self.details)
        lines = [f"start   {s.name} (new)" for s in self.added]
        lines += [f"stop    {name} (removed)" for name in self.removed]
        lines += [f"restart {s.name} (changed: {', '.join(fields[s.name])})" for s in self.changed]
        lines += [f"update  {s.name} in place (changed: {', '.join(fields[s.name])})" for s in self.updated]
        lines += [f"keep    {name}" for name in self.unchanged]
        return lines

    def as_json(self) -> dict[str, object]:
        fields = dict(self.details)
        return {
            "start": [s.name for s in self.added],
            "stop": list(self.removed),
            "restart": {s.name: list(fields[s.name]) for s in self.changed},
            "update": {s.name: list(fields[s.name]) for s in self.updated},
            "keep": list(self.unchanged),
        }


@dataclass(frozen=True)
class Changes:
    """One named list's part (backup jobs, alert channels): entries added, removed, changed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[tuple[str, tuple[str, ...]], ...] = ()  # name -> what changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    @property
    def changed_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.changed)

    def describe(self, what: str) -> list[str]:
        """Return lines for people, ``what`` naming the kind ("backup job", "alert channel")."""
        lines = [f"add     {what} {name} (new)" for name in self.added]
        lines += [f"remove  {what} {name} (removed)" for name in self.removed]
        lines += [f"change  {what} {name} (changed: {', '.join(f)})" for name, f in self.changed]
        return lines

    def as_json(self) -> dict[str, object]:
        return {
            "add": list(self.added),
            "remove": list(self.removed),
            "change": {name: list(f) for name, f in self.changed},
        }


@dataclass(frozen=True)
class ReloadPlan:
    """Everything a reload does: services, backup jobs, alert channels."""

    services: ServicePlan
    jobs: Changes = Changes()
    channels: Changes = Changes()

    @property
    def empty(self) -> bool:
        """True if the new config changes nothing that runs (services, jobs, channels)."""
        return self.services.empty and self.jobs.empty and self.channels.empty

    def describe(self) -> list[str]:
        """Return the whole plan as lines for people (``reload --dry-run``): services first (as
        before), then backup jobs and alert channels (only those that change)."""
        return [
            *self.services.describe(),
            *self.jobs.describe("backup job"),
            *self.channels.describe("alert channel"),
        ]

    def as_json(self) -> dict[str, object]:
        """Return the plan for ``reload --json``."""
        return {
            "services": self.services.as_json(),
            "backup_jobs": self.jobs.as_json(),
            "alert_channels": self.channels.as_json(),
        }


def plan_services(old: Config, new: Config) -> ServicePlan:
    """Return the plan that turns the services of ``old`` into those of ``new``."""
    before = {s.name: s for s in old.services}
    after = {s.name: s for s in new.services}
    differing = [s for name, s in after.items() if name in before and before[name] != s]
    return ServicePlan(
        added=tuple(s for name, s in after.items() if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(s for s in differing if process_changed(before[s.name], s)),
        updated=tuple(s for s in differing if not process_changed(before[s.name], s)),
        unchanged=tuple(name for name, s in after.items() if before.get(name) == s),
        details=tuple((s.name, tuple(changed_fields(before[s.name], s))) for s in differing),
    )


def _job_repositories(job: BackupJobConfig) -> list[str]:
    return [job.repository] + ([job.long_term.repository] if job.long_term else [])


def plan_jobs(old: Config, new: Config) -> Changes:
    """Return the backup jobs' part: a job changes when its config does or a repository it uses does
    (its restic layer is built from both)."""
    repos_before = {r.name: r for r in old.daemon.repositories}
    repos_after = {r.name: r for r in new.daemon.repositories}
    before = {j.name: j for j in old.backups}
    after = {j.name: j for j in new.backups}
    changed = []
    for name, job in after.items():
        if name not in before:
            continue
        fields = changed_fields(before[name], job)
        fields += [
            f"repository {repo}"
            for repo in dict.fromkeys(_job_repositories(job))
            if repos_before.get(repo) != repos_after.get(repo)
        ]
        if fields:
            changed.append((name, tuple(fields)))
    return Changes(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(changed),
    )


def plan_channels(old: Config, new: Config) -> Changes:
    """Return the alert channels' part."""
    before: dict[str, AlertChannel] = {c.name: c for c in old.daemon.alerts}
    after: dict[str, AlertChannel] = {c.name: c for c in new.daemon.alerts}
    return Changes(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(
            (name, tuple(changed_fields(before[name], c)))
            for name, c in after.items()
            if name in before and before[name] != c
        ),
    )


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Return the one plan that turns the running ``old`` config into ``new``; change nothing."""
    return ReloadPlan(
        services=plan_services(old, new), jobs=plan_jobs(old, new), channels=plan_channels(old, new)
    )
