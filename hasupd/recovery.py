"""Recovery after a crash loop: a service that hit its start limit runs its ``on_failure`` actions in
order (an ``exec`` reset command, an in-place ``restore`` of a backup job's data, ``rollback_config``
to the last config it ran healthy under), each recorded under the still-open incident. After each
action the service gets a fresh start limit and one more chance; the first action after which it runs
healthy ends the recovery. If every action fails it stays failed and says so.

The last known-good config of each service is kept in ``STATE_DIR/known-good/NAME.pickle`` (hasupd's
own frozen dataclasses, in hasupd's root-only state dir), written when a run is stable or healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import shutil
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from hasupd import events as ev
from hasupd.config.model import RecoveryAction, RecoveryKind, ServiceConfig
from hasupd.files import atomic_write_bytes
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper
from hasupd.manager import Manager
from hasupd.ports import DataRestoreFailed, DataRestorer
from hasupd.runtimes.command import run_command
from hasupd.states import ServiceResult

log = logging.getLogger(__name__)

RESET_TIMEOUT_SEC = 300.0
RECOVERY_USER = "hasupd (recovery)"


class KnownGood:
    """The last config each service ran healthy under.

    Every instance of a service reports its first stable run, but they all share one config: what was
    saved (or found on disk) is remembered per service, so the file is read at most once and written
    once per config, not once per instance (``instances: 500`` used to mean 500 reads and fsyncs on the
    event loop).
    """

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "known-good"
        self._saved: dict[str, ServiceConfig] = {}  # what the file of each service holds

    def _path(self, name: str) -> Path:
        return self._dir / f"{name}.pickle"

    def save(self, config: ServiceConfig) -> None:
        """Keep ``config`` as its service's known-good config, unless the file already holds it."""
        if self._saved.get(config.name) == config:
            return
        if config.name not in self._saved and self.load(config.name) == config:
            self._saved[config.name] = config  # from an earlier run of hasupd
            return
        path = self._path(config.name)
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # a folder in its place (damage): else it could never be kept
            atomic_write_bytes(path, pickle.dumps(config))
        except OSError as error:
            # A full disk or a read-only state dir: the last known-good config stays what it was (a
            # rollback returns to it); supervision goes on.
            log.warning("%s: cannot keep the known-good config of %s: %s", path, config.name, error.strerror)
            return
        self._saved[config.name] = config

    def load(self, name: str) -> ServiceConfig | None:
        """Return the known-good config of service ``name``; None if there is none, or if its file is
        damaged or of another version (then a warning names the file: it is as if there were none)."""
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("%s: cannot read the known-good config of %s: %s", path, name, error.strerror)
            return None
        try:
            config = pickle.loads(data)
        except Exception as error:  # noqa: BLE001 - damaged bytes raise nearly anything in pickle; it is a cache
            config = error
        if isinstance(config, ServiceConfig):
            return config
        # Written by another version, or damaged: as if there were none (the next stable run writes it).
        log.warning("%s: not a known-good config of this hasupd (%s); ignored", path, type(config).__name__)
        return None


class Recovery:
    def __init__(
        self,
        manager: Manager,
        *,
        bus: ev.EventBus,
        state_dir: Path,
        reaper: Reaper | None,
        spawn_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        restorer_for: Callable[[str], DataRestorer | None],
    ) -> None:
        self._manager = manager
        self._bus = bus
        self._reaper = reaper
        self._spawn = spawn_task
        self._restorer_for = restorer_for
        self.known_good = KnownGood(state_dir)
        self._running: set[str] = set()
        bus.subscribe(self._on_event)

    def _base(self, unit: str) -> ServiceConfig | None:
        name = unit.split("@", 1)[0]
        return self._manager.config.service(name)

    def _on_event(self, event: ev.Event) -> None:
        if event.service is None:
            return
        if isinstance(event, ev.ServiceStable | ev.HealthRecovered):
            base = self._base(event.service)
            service = self._manager.services.get(event.service)
            if base is not None and service is not None and service.rolled_back is None:
                self.known_good.save(base)
        elif (
            isinstance(event, ev.ServiceFailed)
            and event.result == ServiceResult.START_LIMIT_HIT
            and event.service not in self._running
        ):
            base = self._base(event.service)
            if base is not None and base.on_failure:
                self._running.add(event.service)
                self._spawn(self._recover(event.service, base))

    def _record(self, unit: str, action: str, ok: bool, detail: str) -> None:
        service = self._manager.services.get(unit)
        self._bus.publish(
            ev.RecoveryAction(
                service=unit,
                incident=service.incident if service else None,
                action=action,
                ok=ok,
                detail=detail,
            )
        )

    def _hold(self, unit: str, hold: bool) -> None:
        service = self._manager.services.get(unit)
        if service is not None:
            service.hold(hold)

    async def _recover(self, unit: str, config: ServiceConfig) -> None:
        tried: list[str] = []
        self._hold(unit, True)
        try:
            for action in config.on_failure:
                name = _describe(action)
                tried.append(name)
                ok, detail = await self._act(unit, config, action)
                if ok:
                    ok = await self._manager.start_and_wait_healthy(self._manager.resolve(unit))
                    detail += "; it runs healthy again" if ok else "; it still does not run healthy"
                self._record(unit, name, ok, detail)
                if ok:
                    service = self._manager.services.get(unit)
                    if service is not None:
                        service.end_incident("resolved")
                    return
            service = self._manager.services.get(unit)
            self._bus.publish(
                ev.RecoveryExhausted(
                    service=unit, incident=service.incident if service else None, actions=tuple(tried)
                )
            )
            if service is not None:
                service.give_up()
                service.end_incident("failed")
        finally:
            self._hold(unit, False)
            self._running.discard(unit)

    async def _act(self, unit: str, config: ServiceConfig, action: RecoveryAction) -> tuple[bool, str]:
        """Do one action; return (done, what happened). The service is then given a fresh chance."""
        service = self._manager.services.get(unit)
        if service is not None:
            service.reset_failed()
        match action.kind:
            case RecoveryKind.EXEC:
                result = await run_command(
                    action.argv, reaper=self._reaper, env={"PATH": DEFAULT_PATH}, timeout=RESET_TIMEOUT_SEC
                )
                return result.ok, f"{' '.join(action.argv)} ended with {result.describe()}"
            case RecoveryKind.RESTORE:
                assert action.job is not None
                restorer = self._restorer_for(action.job)
                if restorer is None:
                    return False, f"backup job {action.job} is not known"
                try:
                    done = await restorer.restore_latest(RECOVERY_USER, service.incident if service else None)
                except DataRestoreFailed as error:
                    return False, f"restore of {action.job} failed: {error}"
                kept = ", ".join(done.aside)
                return True, f"restored snapshot {done.snapshot[:8]} of {action.job}; old data kept at {kept}"
            case RecoveryKind.ROLLBACK_CONFIG:
                good = self.known_good.load(config.name)
                if good is None:
                    return False, "no config is known to have run healthy"
                if good == config:
                    return False, "it already runs the last config that ran healthy"
                reason = f"rolled back: crash loop under the config from {config.source or 'its file'}"
                with contextlib.suppress(KeyError):
                    await self._manager.replace_config(config.name, good, reason)
                return True, "running the last config that ran healthy (the edited file is left as it is)"


def _describe(action: RecoveryAction) -> str:
    match action.kind:
        case RecoveryKind.EXEC:
            return "exec " + " ".join(action.argv)
        case RecoveryKind.RESTORE:
            return f"restore {action.job}"
        case RecoveryKind.ROLLBACK_CONFIG:
            return "rollback_config"
