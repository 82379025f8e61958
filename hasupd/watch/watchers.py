"""The real observers of a service, made for the state machine: notify endpoint, probes, heartbeat, limits."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from hasupd.config.model import HealthProbe, HeartbeatFile, Limits, ServiceConfig
from hasupd.host.containment import CgroupScope
from hasupd.host.notify import NotifyEndpoint, NotifyMessage
from hasupd.host.reaper import Reaper
from hasupd.host.users import UnknownIdentity, lookup_group, lookup_user
from hasupd.ports import Clock, ProbeOutcome, Scope, SpawnError, Stoppable
from hasupd.runtimes.exec import DEFAULT_PATH
from hasupd.watch.heartbeat import HeartbeatWatch
from hasupd.watch.probes import ProbeRunner
from hasupd.watch.resources import ResourceWatch, oom_killed

# exec probes run as hasupd's user with a clean environment, never with hasupd's own variables.
PROBE_ENVIRONMENT = {"PATH": DEFAULT_PATH}


class _Probes:
    def __init__(self, runners: list[ProbeRunner]) -> None:
        self._runners = runners

    def stop(self) -> None:
        for runner in self._runners:
            runner.stop()


class LoopWatchers:
    """Implements hasupd.ports.Watchers on the running event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: Clock, runtime_dir: Path, reaper: Reaper
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._notify_dir = runtime_dir / "notify"
        self._reaper = reaper
        # unit -> notify socket fd kept open across a re-exec; used once, by the unit's first notify().
        self.inherited_notify: dict[str, int] = {}
        self.endpoints: dict[str, NotifyEndpoint] = {}  # unit -> its latest endpoint (kept on re-exec)

    def notify(
        self,
        config: ServiceConfig,
        unit: str,
        on_message: Callable[[NotifyMessage], None],
        allowed: Callable[[int], bool],
    ) -> NotifyEndpoint:
        endpoint = NotifyEndpoint(self._notify_dir / f"{unit}.sock", on_message, allowed)
        inherited = self.inherited_notify.pop(unit, None)
        if inherited is not None:
            try:
                endpoint.open_inherited(self._loop, inherited)
                self.endpoints[unit] = endpoint
                return endpoint
            except OSError:
                os.close(inherited)  # not what the record said: bind anew below
        try:
            endpoint.open(self._loop)
        except (ValueError, OSError) as error:  # a path too long for AF_UNIX, a full disk ...
            raise SpawnError(f"cannot create the notify socket of {unit}: {error}") from error
        if config.user is not None or config.group is not None:
            # Only the service's own user (and root) may even send.
            try:  # validated, but the user database may have changed since
                user = lookup_user(config.user) if config.user else None
                gid = lookup_group(config.group) if config.group else (user.gid if user else -1)
            except UnknownIdentity as error:
                endpoint.close()
                raise SpawnError(f"cannot create the notify socket of {unit}: {error}") from None
            endpoint.chown(user.uid if user else -1, gid)
        self.endpoints[unit] = endpoint
        return endpoint

    def probes(
        self, probes: tuple[HealthProbe, ...], on_outcome: Callable[[ProbeOutcome], None]
    ) -> Stoppable:
        runners = [
            ProbeRunner(p, reaper=self._reaper, on_result=on_outcome, env=PROBE_ENVIRONMENT) for p in probes
        ]
        for runner in runners:
            runner.start(self._loop)
        return _Probes(runners)

    def heartbeat(self, spec: HeartbeatFile, on_stale: Callable[[str], None]) -> Stoppable:
        watch = HeartbeatWatch(spec, on_stale, self._clock)
        watch.start()
        return watch

    def resources(self, limits: Limits, scope: Scope, on_exceeded: Callable[[str, str], None]) -> Stoppable:
        """Watch ``limits`` on ``scope``; also called with no limits when a reload removed them."""
        if isinstance(scope, CgroupScope):
            # The kernel enforces it too where the memory controller is there (OOM kill -> oom-kill);
            # no memory limit (any more) is "max".
            scope.set_memory_max(limits.memory)
        watch = ResourceWatch(limits, scope.pids, on_exceeded)
        watch.start(self._loop)
        return watch

    def oom_killed(self, scope: Scope) -> bool:
        return isinstance(scope, CgroupScope) and oom_killed(scope.path)
