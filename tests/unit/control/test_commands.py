"""The control command handlers called directly with a Context on fakes (a Manager on the fake spawner and
clock, a fake reloader, backup units with no restic run): no daemon process, no socket."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import signal
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hasupd import events as ev
from hasupd.backup.jobs import BackupJob
from hasupd.backup.units import BackupUnits, JobRunner
from hasupd.config.diff import ReloadPlan, plan_reload
from hasupd.config.model import BackupJobConfig, Config, DaemonConfig, RepositoryConfig, ServiceConfig
from hasupd.control.commands import COMMANDS, backup, services
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.manager import Manager
from hasupd.states import OutputMode
from tests.unit.fakes import FakeClock, FakeSpawner, FakeWatchers

SLEEP = ("/bin/sleep", "1000")


def config(*names: str, **overrides: ServiceConfig) -> Config:
    services = {n: ServiceConfig(name=n, command=SLEEP, timeout_stop_sec=2.0) for n in names}
    services.update(overrides)
    return Config(config_dir="/etc/hasupd", services=tuple(services[n] for n in sorted(services)))


class FakeReloader:
    """Plans against a config the test sets as "on disk"; applies nothing."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.on_disk = manager.config
        self.applied: list[ReloadPlan] = []
        self.error: CommandError | None = None

    async def reload_plan(self, dry_run: bool) -> ReloadPlan:
        if self.error is not None:
            raise self.error
        plan = plan_reload(self.manager.config, self.on_disk)
        if not dry_run:
            self.applied.append(plan)
        return plan


class Rig:
    def __init__(self, cfg: Config) -> None:
        self.bus = ev.EventBus()
        self.spawner = FakeSpawner()
        self.manager = Manager(
            cfg,
            spawner=self.spawner,
            clock=FakeClock(),
            bus=self.bus,
            default_output=OutputMode.INHERIT,
            watchers=FakeWatchers(),
        )
        self.reloader = FakeReloader(self.manager)
        self.ctx = Context(manager=self.manager, reloader=self.reloader)

    def pid(self, name: str) -> int:
        return next(p.pid for p in self.spawner.spawned if p.spec.service.name == name)


def running() -> Rig:
    rig = Rig(config("api", "web"))
    rig.manager.start_all()
    return rig


async def test_status_of_all_and_of_one_service() -> None:
    rig = running()
    everything = await services.status(rig.ctx, {})
    assert [(s["name"], s["state"]) for s in everything] == [("api", "running"), ("web", "running")]
    [web] = await services.status(rig.ctx, {"names": ["web"]})
    assert web["pid"] == rig.pid("web") and web["restarts"] == 0 and web["health"] is None


async def test_stop_then_start_a_service() -> None:
    rig = running()
    web = next(p for p in rig.spawner.spawned if p.spec.service.name == "web")
    stopping = asyncio.ensure_future(services.stop(rig.ctx, {"names": ["web"]}))
    await asyncio.sleep(0)
    assert signal.SIGTERM in web.scope.main_signals and not stopping.done()
    web.exit(sig=signal.SIGTERM)  # the program obeys
    [stopped] = await asyncio.wait_for(stopping, 5)
    assert stopped["state"] == "dead"
    [api] = await services.status(rig.ctx, {"names": ["api"]})
    assert api["state"] == "running"  # untouched
    [started] = await services.start(rig.ctx, {"names": ["web"]})
    assert started["state"] == "running" and started["pid"] != web.pid


async def test_reload_dry_run_returns_the_whole_plan_and_applies_nothing() -> None:
    rig = running()
    new = config("api", web=ServiceConfig(name="web", command=("/bin/sleep", "2000"), timeout_stop_sec=2.0))
    job = BackupJobConfig(name="db-data", repository="hot", paths=("/srv",))
    rig.reloader.on_disk = replace(new, backups=(job,))
    answer = await services.reload(rig.ctx, {"dry_run": True})
    assert answer["dry_run"] is True
    assert answer["plan"] == [
        "restart web (changed: command)",
        "keep    api",
        "add     backup job db-data (new)",
    ]
    assert answer["services"]["restart"] == {"web": ["command"]}
    assert answer["backup_jobs"] == {"add": ["db-data"], "remove": [], "change": {}}
    assert answer["alert_channels"] == {"add": [], "remove": [], "change": {}}
    assert rig.reloader.applied == []
    await services.reload(rig.ctx, {})
    assert len(rig.reloader.applied) == 1  # dry_run defaults to false


async def test_reload_errors() -> None:
    rig = running()
    with pytest.raises(CommandError) as bad:
        await services.reload(rig.ctx, {"dry_run": "yes"})
    assert bad.value.code is Exit.USAGE and "'dry_run' must be true or false" in str(bad.value)
    rig.reloader.error = CommandError(Exit.FAILED, "configuration invalid, nothing changed")
    with pytest.raises(CommandError) as invalid:
        await services.reload(rig.ctx, {"dry_run": True})
    assert invalid.value.code is Exit.FAILED


@pytest.mark.parametrize(
    ("command", "args", "code", "message"),
    [
        ("status", {"names": ["nope"]}, Exit.NOT_FOUND, "no such service: nope"),
        ("status", {"names": "web"}, Exit.USAGE, "'names' must be a list of service names"),
        ("start", {}, Exit.USAGE, "name at least one service"),
        ("stop", {"names": ["web", "nope"]}, Exit.NOT_FOUND, "no such service: nope"),
        (
            "restart",
            {"names": [], "rolling": True},
            Exit.USAGE,
            "--rolling needs",
        ),
        ("backup-status", {}, Exit.FAILED, "backups are not set up yet"),
    ],
)
async def test_bad_requests_fail_with_their_exit_code(
    command: str, args: dict[str, Any], code: Exit, message: str
) -> None:
    rig = running()
    with pytest.raises(CommandError) as error:
        await COMMANDS[command].handler(rig.ctx, args)
    assert error.value.code is code and message in str(error.value)


async def test_backup_status(tmp_path: Path) -> None:
    rig = running()
    now = datetime.now(UTC)
    repos = {"hot": RepositoryConfig(name="hot", url=str(tmp_path / "repo"), password_file="/dev/null")}
    units = BackupUnits(asyncio.get_running_loop(), asyncio.ensure_future, rig.bus.publish)
    for name, schedule in (("db-data", "30 4 * * *"), ("logs", "@hourly")):
        cfg = BackupJobConfig(name=name, repository="hot", paths=("/srv",), schedule=schedule)
        job = BackupJob(
            cfg, repos, state_dir=tmp_path, reaper=None, publish=rig.bus.publish, quiescer=rig.manager
        )
        job.stamps.set(name, "backup", now)  # backed up just now: the next run is the next slot
        units.runners[name] = JobRunner(job)  # not armed: nothing runs
    rig.ctx.backups = units
    both = await backup.status(rig.ctx, {})
    assert [s["job"] for s in both] == ["db-data", "logs"]
    [one] = await backup.status(rig.ctx, {"job": "db-data"})
    assert one["repository"] == "hot" and one["last_good_backup"] == now.isoformat()
    assert one["age_sec"] == 0 and one["max_age_sec"] is None and one["pending"] == []
    assert one["next"]["backup"].endswith("T04:30:00+00:00")
    with pytest.raises(CommandError) as unknown:
        await backup.status(rig.ctx, {"job": "nope"})
    assert unknown.value.code is Exit.NOT_FOUND and "jobs: db-data, logs" in str(unknown.value)


def test_a_config_without_services_has_an_empty_status() -> None:
    rig = Rig(Config(config_dir="/etc/hasupd", daemon=DaemonConfig()))
    assert asyncio.run(services.status(rig.ctx, {})) == []


def test_every_command_names_a_handler_of_its_family() -> None:
    # The table imports a family's module at the first call of one of its commands: a misspelt name
    # would only show when a user runs that command.
    for name, command in COMMANDS.items():
        family, _, function = command.handler.__qualname__.partition(".")
        module = importlib.import_module(f"hasupd.control.commands.{family}")
        assert inspect.iscoroutinefunction(getattr(module, function)), name
