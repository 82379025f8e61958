"""Recovery on fakes: on_failure actions run in order, recorded under the open incident, acting only
through Service and Manager methods."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from hasupd import events as ev
from hasupd import manager as manager_module
from hasupd.config.model import RecoveryAction, RecoveryKind, StartLimit
from hasupd.ports import DataRestoreFailed, RestoredData
from hasupd.recovery import Recovery
from hasupd.states import ServiceResult as R
from hasupd.states import ServiceState as S
from tests.unit.fakes import ManagerRig as Rig
from tests.unit.fakes import service


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "ROLLING_SETTLE_SEC", 0.01)


class NoSnapshot:
    def __init__(self) -> None:
        self.calls: list[str | None] = []

    async def restore_latest(self, user: str, incident: str | None) -> RestoredData:
        self.calls.append(incident)
        raise DataRestoreFailed("no snapshot")


RESTORE = RecoveryAction(RecoveryKind.RESTORE, job="data")
ROLLBACK = RecoveryAction(RecoveryKind.ROLLBACK_CONFIG)


class Setup:
    def __init__(self, tmp_path: Path, *actions: RecoveryAction) -> None:
        self.config = service(
            "web",
            command=("/bin/new",),
            start_limit=StartLimit(burst=1, interval_sec=60.0),
            on_failure=actions,
        )
        self.rig = Rig(self.config)
        self.restorer = NoSnapshot()
        self.tasks: list[asyncio.Task[None]] = []

        def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            task = asyncio.get_running_loop().create_task(coro)
            self.tasks.append(task)
            return task

        self.recovery = Recovery(
            self.rig.manager,
            bus=self.rig.bus,
            state_dir=tmp_path,
            reaper=None,
            spawn_task=spawn,
            restorer_for=lambda job: self.restorer if job == "data" else None,
        )
        # What the recovery records saw of the service while they were published.
        self.held: list[bool] = []
        self.rig.bus.subscribe(self._on)

    def _on(self, event: ev.Event) -> None:
        if isinstance(event, ev.RecoveryAction):
            self.held.append(self.rig.manager.services["web"].incident_held)

    async def crash_loop(self) -> str:
        """Start web, let it crash until its start limit is hit; return the incident it opened."""
        self.rig.manager.start_all()
        self.rig.spawner.last.exit(1)
        incident = self.rig.manager.services["web"].incident
        assert incident is not None
        self.rig.clock.advance(1.0)  # the restart is due; the start limit (1 in 60 s) refuses it
        failed = self.rig.rec.of(ev.ServiceFailed)
        assert failed and isinstance(failed[0], ev.ServiceFailed) and failed[0].result == R.START_LIMIT_HIT
        await asyncio.wait_for(asyncio.gather(*self.tasks), 5)
        return incident

    def actions(self) -> list[tuple[str, bool, str | None]]:
        return [
            (e.action, e.ok, e.incident)
            for e in self.rig.rec.of(ev.RecoveryAction)
            if isinstance(e, ev.RecoveryAction)
        ]


async def test_actions_run_in_order_until_one_brings_the_service_back(tmp_path: Path) -> None:
    setup = Setup(tmp_path, RESTORE, ROLLBACK)
    good = dataclasses.replace(setup.config, command=("/bin/old",))
    setup.recovery.known_good.save(good)
    incident = await setup.crash_loop()
    assert setup.restorer.calls == [incident]
    assert setup.actions() == [("restore data", False, incident), ("rollback_config", True, incident)]
    assert setup.held == [True, True]  # the incident stayed open through the actions
    web = setup.rig.manager.services["web"]
    assert web.state is S.RUNNING
    assert setup.rig.spawner.last.spec.service.command == ("/bin/old",)
    assert web.rolled_back is not None and web.rolled_back.startswith("rolled back")
    closed = [e for e in setup.rig.rec.of(ev.IncidentClosed) if isinstance(e, ev.IncidentClosed)]
    assert [(e.incident, e.outcome) for e in closed] == [(incident, "resolved")]
    assert web.incident is None and not web.incident_held


async def test_when_every_action_fails_it_says_so_and_closes_the_incident_as_failed(tmp_path: Path) -> None:
    setup = Setup(tmp_path, RESTORE, ROLLBACK)  # no known-good config: the rollback cannot help
    incident = await setup.crash_loop()
    assert setup.actions() == [("restore data", False, incident), ("rollback_config", False, incident)]
    exhausted = setup.rig.rec.of(ev.RecoveryExhausted)
    assert len(exhausted) == 1 and isinstance(exhausted[0], ev.RecoveryExhausted)
    assert exhausted[0].actions == ("restore data", "rollback_config") and exhausted[0].incident == incident
    closed = [e for e in setup.rig.rec.of(ev.IncidentClosed) if isinstance(e, ev.IncidentClosed)]
    assert [(e.incident, e.outcome) for e in closed] == [(incident, "failed")]
    web = setup.rig.manager.services["web"]
    assert not web.incident_held and web.rolled_back is None
    assert (web.state, web.result) == (S.FAILED, R.START_LIMIT_HIT)  # not "dead, success"
