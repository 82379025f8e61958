"""Containers as main processes: ``ContainerSpawner`` implements ``hasupd.ports.Spawner``.

The engine's CLI (``podman run`` / ``docker run``) runs in the foreground as the service's main process,
started by ``ExecSpawner`` like any program: same scope, clean environment and output handling (the
CLI's stdout and stderr are the container's). Around it:

* Names and labels: the container is ``{name_prefix}{unit}`` and carries ``hasupd.daemon``,
  ``hasupd.unit`` and ``hasupd.invocation`` labels, so that each daemon finds exactly its own
  leftovers (``cleanup_stale_containers``) and each start its own container.
* Never two copies: podman runs with ``--replace``; for docker the main process first removes a
  leftover of the same name (``/bin/sh -c 'docker rm -f NAME; exec "$@"'``, then the same pid is
  ``docker run``). The engine never gets a restart policy (hasupd restarts) and never pulls.
* Preflight without blocking: ``spawn`` raises SpawnError at once if the engine CLI is not installed,
  an option is forbidden, or the last answer about the image was a failure (not in local storage, or
  the engine did not answer within ``preflight_timeout``). The answers come from asyncio engine calls
  (``podman image exists`` / ``docker image inspect``): ``preflight`` asks for every container service
  at start-up and reload; a stale (``IMAGE_CHECK_TTL_SEC``) or failed answer is asked again in the
  background when used. An image never asked about starts unchecked: the run never pulls, so a missing
  image ends it with exit code 125, and the check logs why. The event loop never waits for an engine.
* sd_notify: the service's notify socket is bind-mounted at ``/run/hasupd-notify.sock`` and
  NOTIFY_SOCKET points there, for both engines. (podman's own ``--sdnotify=container`` goes through the
  OCI runtime: with runc, conmon forwards only READY=1 and WATCHDOG=1, drops STATUS=, and sends them
  from conmon's pid.) Datagrams then come straight from the container's processes, whose host pids
  are in ``scope.pids()``. WATCHDOG_USEC and INVOCATION_ID go in too; the service's ``environment``
  and ``environment_files`` are the container's (passed as ``--env KEY``, so no value shows in ps);
  ``user``/``group`` become ``--user UID:GID`` while the CLI itself runs as hasupd.
* Scope: ``pids()`` is the CLI's tree plus the container's processes: its init pid from ``inspect``
  (asked by a per-start task from spawn on until it answers, backing off from 50 ms to 2 s; cached with
  its start time, so a reused pid number is never taken for it) and that pid's descendants. Until
  inspect has answered, the container's processes are found by the INVOCATION_ID they inherit (one
  pass over /proc). ``signal_all`` returns at once: it signals the CLI's tree and asks the engine, in
  the background, to stop the container (``stop -t timeout_stop_sec``; another signal than
  ``kill_signal``, such as the watchdog's SIGABRT, goes with ``kill -s``). ``kill_all`` SIGKILLs the
  CLI tree and the container's processes at once, then the engine kills and removes the container in
  the background. Background engine calls address the container by its ID (or its invocation label),
  never by name, so that a late call can never hit the container of the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shlex
import signal
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from hasupd.config.model import ContainerEngine, ContainerSpec, ServiceConfig
from hasupd.host.containment import ScopeImpl
from hasupd.host.procfs import Children, pids_with_env, signal_each, stat
from hasupd.host.reaper import Reaper
from hasupd.ports import (
    ExitStatus,
    Process,
    Spawner,
    SpawnError,
    SpawnRequest,
    SpawnSpec,
    TaskSpawner,
    spawn_all,
)
from hasupd.runtimes.engines import (
    CONTAINER_NOTIFY_SOCKET,
    CONTAINER_ONLY,
    LABEL_DAEMON,
    LABEL_INVOCATION,
    LABEL_UNIT,
    Engine,
    EngineError,
    check_options,
    cleanup_stale_containers,
    container_environment,
    container_name,
    engine_environment,
    exec_argv,
    user_option,
)
from hasupd.runtimes.exec import ExecProcess, ExecSpawner
from hasupd.states import OutputMode

__all__ = [
    "CONTAINER_NOTIFY_SOCKET",
    "ContainerProcess",
    "ContainerScope",
    "ContainerSpawner",
    "EngineError",
    "RoutingSpawner",
    "cleanup_stale_containers",
    "container_name",
    "engine_environment",
    "exec_argv",
]

log = logging.getLogger(__name__)

IMAGE_CHECK_TTL_SEC = 60.0
_RESOLVE_FIRST_DELAY = 0.05
_RESOLVE_MAX_DELAY = 2.0


_ImageKey = tuple[str, tuple[str, ...], str]  # engine path, engine args, image


def _image_key(engine: Engine, image: str) -> _ImageKey:
    return (engine.path, engine.args, image)


@dataclasses.dataclass(frozen=True)
class _ImageCheck:
    checked: float  # monotonic time of the answer
    error: SpawnError | None  # None: the image is there


class ContainerSpawner:
    """Starts services that have ``container:`` set. One per daemon, used from the event loop only.

    ``engine_args`` are global CLI arguments per engine (podman ``--root``/``--runroot`` ...);
    ``engine_env`` the variables every engine call gets (DOCKER_HOST, CONTAINERS_CONF ...: see
    ``engine_environment``). ``engine_timeout`` bounds every background engine call,
    ``preflight_timeout`` the synchronous image check in ``spawn``. Background engine calls run as
    tasks of ``tasks`` (the daemon's TaskGroup); without it, as plain tasks of the running loop.
    """

    def __init__(
        self,
        exec_spawner: ExecSpawner,
        *,
        reaper: Reaper | None,
        name_prefix: str,
        engine_timeout: float = 30.0,
        preflight_timeout: float = 5.0,
        engine_args: Mapping[ContainerEngine, Sequence[str]] | None = None,
        engine_env: Mapping[str, str] | None = None,
        tasks: TaskSpawner | None = None,
    ) -> None:
        self._exec = exec_spawner
        self._task_spawner = tasks
        self._reaper = reaper
        self.name_prefix = name_prefix
        self._engine_timeout = engine_timeout
        self._preflight_timeout = min(preflight_timeout, engine_timeout)
        self._engine_args = {ContainerEngine(k): tuple(v) for k, v in (engine_args or {}).items()}
        self._engine_env = dict(engine_env or {})
        self._images: dict[_ImageKey, _ImageCheck] = {}  # the last answer of the engine
        self._checking: set[_ImageKey] = set()  # asked in the background now
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ public

    def spawn(self, spec: SpawnSpec, on_exit: Callable[[ExitStatus], None]) -> ContainerProcess:
        """Start the engine CLI for ``spec.service.container`` and return at once; ``on_exit`` is
        called once from the loop after the CLI was reaped (its exit code is the container's, or
        125/126/127 for engine errors).

        Raise SpawnError ("cannot start UNIT: ...") if the engine is missing, the image is not there,
        the engine did not answer within the preflight timeout, or the CLI could not be started; then
        nothing is left running.
        """
        unit = spec.unit_name or spec.service.name
        try:
            engine, argv, cli_spec = self._prepare(spec, unit)
        except SpawnError as e:
            raise SpawnError(f"cannot start {unit}: {e}") from e
        proc = ContainerProcess(self, engine, spec, container_name(self.name_prefix, unit), on_exit)
        proc._start(self._exec.spawn(dataclasses.replace(cli_spec, argv=tuple(argv)), proc._on_cli_exit))
        return proc

    def engine(self, kind: ContainerEngine | str) -> Engine:
        """Return the engine ``kind`` as this spawner calls it. Raise SpawnError if it is not installed."""
        kind = ContainerEngine(kind)
        return Engine.find(
            kind,
            args=self._engine_args.get(kind, ()),
            engine_env=self._engine_env,
            timeout=self._engine_timeout,
            reaper=self._reaper,
        )

    def exec_command(
        self, container: ContainerSpec, unit: str, argv: Sequence[str]
    ) -> tuple[list[str], dict[str, str]]:
        """Return ``(argv, env)`` that run ``argv`` inside ``unit``'s running container (exec probes).

        Raise SpawnError if the engine is not installed.
        """
        engine = self.engine(container.engine)
        name = container_name(self.name_prefix, unit)
        return exec_argv(engine.path, name, argv, engine_args=engine.args), dict(engine.env)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait for the background engine calls (stops, removals) to finish; False if some did not."""
        pending = {t for t in self._tasks if not t.done()}
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def aclose(self, timeout: float) -> None:
        """Let pending stops and removals finish (bounded by ``timeout``), then cancel what is left."""
        await self.wait_idle(timeout)
        self.close()

    def close(self) -> None:
        """Cancel every background engine call now (hasupd exits). Kills nothing."""
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ spawn preparation

    def _prepare(self, spec: SpawnSpec, unit: str) -> tuple[Engine, list[str], SpawnSpec]:
        service = spec.service
        container = service.container
        if container is None:
            raise SpawnError("the service has no container: section")
        if spec.pass_fds:
            raise SpawnError("listening sockets (LISTEN_FDS) cannot be handed to a container")
        check_options(container.options)
        engine = self.engine(container.engine)
        self._check_image(engine, container.image)
        name = container_name(self.name_prefix, unit)
        env, mounts = container_environment(spec, service)
        argv = engine.run_argv(
            name=name,
            labels={LABEL_DAEMON: self.name_prefix, LABEL_UNIT: unit, LABEL_INVOCATION: spec.invocation_id},
            stop_signal=service.kill_signal,
            stop_timeout_sec=service.timeout_stop_sec,
            env=env,
            mounts=mounts,
            extra=user_option(service),
            options=container.options,
            image=container.image,
            args=container.args,
        )
        if engine.kind is ContainerEngine.DOCKER:
            # docker has no --replace: the main process itself removes a leftover of the same name,
            # then becomes ``docker run`` (same pid, same scope), so the loop never waits for docker.
            # A removal that fails leaves the name taken: the run then fails with docker's reason.
            remove = shlex.join(engine.argv(*engine.rm_words(name)))
            argv = ["/bin/sh", "-c", f'{remove} >/dev/null 2>&1; exec "$@"', "sh", *argv]
        cli_env = {k: v for k, v in spec.extra_env.items() if k not in CONTAINER_ONLY}
        cli_env.update(self._engine_env)
        # The CLI runs as hasupd (root podman's storage is root's); user/group went into --user.
        cli_service = dataclasses.replace(service, user=None, group=None)
        return engine, argv, dataclasses.replace(spec, service=cli_service, extra_env=cli_env, unit_name=unit)

    async def preflight(self, services: Iterable[ServiceConfig]) -> None:
        """Check the images of the container ``services`` now, concurrently, each bounded by the
        preflight timeout, so that ``spawn`` finds the answers. An engine that is not installed is
        skipped (``spawn`` says so)."""
        checks: dict[_ImageKey, tuple[Engine, str]] = {}
        for service in services:
            if service.container is None:
                continue
            try:
                engine = self.engine(service.container.engine)
            except SpawnError:
                continue
            checks[_image_key(engine, service.container.image)] = (engine, service.container.image)
        await asyncio.gather(
            *(self._check_now(key, engine, image) for key, (engine, image) in checks.items())
        )

    def _check_image(self, engine: Engine, image: str) -> None:
        """Raise SpawnError if the last answer about ``image`` was a failure; never waits for the engine.

        Unknown, stale or failed answers are asked again in the background: the present-image answer
        of the last check is used meanwhile, and an image never checked (``preflight`` was not told
        of it) is started unchecked; the run never pulls, so a missing image ends it with exit code
        125, and the check logs why.
        """
        key = _image_key(engine, image)
        entry = self._images.get(key)
        stale = (
            entry is None or entry.error is not None or entry.checked + IMAGE_CHECK_TTL_SEC < time.monotonic()
        )
        if stale and key not in self._checking:
            self._checking.add(key)
            self._background(self._check_later(key, engine, image), f"{engine.name} image check {image}")
        if entry is not None and entry.error is not None:
            raise SpawnError(str(entry.error))

    async def _check_later(self, key: _ImageKey, engine: Engine, image: str) -> None:
        try:
            error = await self._check_now(key, engine, image)
        finally:
            self._checking.discard(key)
        if error is not None:
            log.warning("%s", error)

    async def _check_now(self, key: _ImageKey, engine: Engine, image: str) -> SpawnError | None:
        try:
            await engine.check_image(image, self._preflight_timeout)
            error = None
        except SpawnError as e:
            error = e
        self._images[key] = _ImageCheck(time.monotonic(), error)
        return error

    def _background(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        if self._task_spawner is not None:  # the daemon's TaskGroup: a bug stops hasupd
            task = self._task_spawner.spawn(_logged(coro, what), what)
        else:
            task = asyncio.get_running_loop().create_task(_logged(coro, what), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._task_spawner is None and not task.cancelled():
            task.result()  # standalone: a bug surfaces in the loop's exception handler


async def _logged(coro: Coroutine[Any, Any, None], what: str) -> None:
    """Run a background engine call; an engine failure is logged (the scope's pids still tell the truth)."""
    try:
        await coro
    except EngineError as e:
        log.warning("%s: %s", what, e)


# --------------------------------------------------------------------------- the started container


class ContainerProcess:
    """A started container service; satisfies ``hasupd.ports.Process``. The main process is
    the engine CLI."""

    def __init__(
        self,
        owner: ContainerSpawner,
        engine: Engine,
        spec: SpawnSpec,
        name: str,
        on_exit: Callable[[ExitStatus], None],
    ) -> None:
        self._owner = owner
        self.engine = engine
        self.name = name
        self.invocation_id = spec.invocation_id
        self.stop_timeout_sec = spec.service.timeout_stop_sec
        self.kill_signal = int(spec.service.kill_signal)
        self.container_id: str | None = None
        self._on_exit = on_exit
        self._cli: ExecProcess | None = None
        self._cli_exited = asyncio.Event()
        self._marker = f"INVOCATION_ID={spec.invocation_id}".encode()
        self._init: tuple[int, int] | None = None  # (pid, start time) of the container's init
        self._resolver: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._killing: asyncio.Task[None] | None = None
        self._scope: ContainerScope | None = None

    def _start(self, cli: ExecProcess) -> None:
        self._cli = cli
        self._scope = ContainerScope(self, cli.scope)
        self._resolver = self._owner._background(self._resolve(), f"{self.name}: inspect")

    @property
    def cli(self) -> ExecProcess:
        assert self._cli is not None
        return self._cli

    @property
    def pid(self) -> int:
        """The engine CLI's pid."""
        return self.cli.pid

    @property
    def scope(self) -> ContainerScope:
        assert self._scope is not None
        return self._scope

    @property
    def init_pid(self) -> int | None:
        """The container's init pid on the host, once ``inspect`` has told it."""
        return self._init[0] if self._init is not None else None

    @property
    def output_mode(self) -> OutputMode:
        return self.cli.output_mode

    @property
    def output_note(self) -> str | None:
        return self.cli.output_note

    def send_signal(self, sig: int) -> None:
        """Signal only the engine CLI (it forwards catchable signals to the container)."""
        self.cli.send_signal(sig)

    async def wait_output_closed(self) -> None:
        await self.cli.wait_output_closed()

    # ------------------------------------------------------------------ processes

    def cli_tree(self) -> set[int]:
        """Return the engine CLI and its descendants while it runs."""
        return set() if self.cli.exit_status is not None else _tree(self.pid)

    def container_pids(self) -> set[int]:
        """Return the live processes of the container (host pids)."""
        if self._init is not None:
            pid, started = self._init
            return _tree(pid) if _start_time(pid) == started else set()
        # inspect has not answered yet: what carries this start's INVOCATION_ID (but the CLI).
        return pids_with_env([self._marker]) - {self.pid}

    async def _resolve(self) -> None:
        delay = _RESOLVE_FIRST_DELAY
        while not self._cli_exited.is_set():
            try:
                found = await self.engine.inspect(self.name)
            except EngineError as e:
                log.warning("%s: %s", self.name, e)
                found = None
            if found is not None and found[2] == self.invocation_id:
                self.container_id = found[0]
                started = _start_time(found[1]) if found[1] > 0 else None
                if started is not None:
                    self._init = (found[1], started)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESOLVE_MAX_DELAY)

    def _on_cli_exit(self, status: ExitStatus) -> None:
        self._cli_exited.set()
        if self._resolver is not None:
            self._resolver.cancel()
        if self.engine.kind is ContainerEngine.DOCKER:
            self.request_stop()  # no --rm for docker: stop (a no-op if it has exited) and remove it
        self._on_exit(status)

    # ------------------------------------------------------------------ engine calls (background)

    def request_stop(self) -> None:
        """Have the engine stop the container (once per start)."""
        if self._stopping is None:
            self._stopping = self._owner._background(self._stop(), f"{self.name}: stop")

    def request_kill(self) -> None:
        """Have the engine kill and remove the container (once per start)."""
        if self._killing is None:
            self._killing = self._owner._background(self._kill(), f"{self.name}: kill")

    def request_signal(self, sig: int) -> None:
        """Have the engine send ``sig`` to the container's main process."""
        self._owner._background(self._signal(sig), f"{self.name}: kill -s {signal.Signals(sig).name}")

    async def _stop(self) -> None:
        ref = await self._reference()
        if ref is None:
            return
        await self.engine.stop(ref, self.stop_timeout_sec)
        if self.engine.kind is ContainerEngine.DOCKER:
            await self.engine.remove(ref)

    async def _kill(self) -> None:
        ref = await self._reference()
        if ref is not None:
            await self.engine.kill(ref)
            await self.engine.remove(ref)

    async def _signal(self, sig: int) -> None:
        ref = await self._reference()
        if ref is not None:
            await self.engine.kill(ref, sig)

    async def _reference(self) -> str | None:
        """Return this start's container ID, or None if no container of this start exists."""
        if self.container_id is not None:
            return self.container_id
        found = await self.engine.list_labelled(LABEL_INVOCATION, self.invocation_id)
        if not found and not self._cli_exited.is_set():
            # Asked before the CLI created it: the CLI either creates it or dies first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cli_exited.wait(), self.engine.timeout)
            found = await self.engine.list_labelled(LABEL_INVOCATION, self.invocation_id)
        if found:
            self.container_id = found[0][0]
        return self.container_id


class ContainerScope:
    """The engine CLI's scope plus the container's processes; satisfies ``hasupd.ports.Scope``."""

    def __init__(self, process: ContainerProcess, cli_scope: ScopeImpl) -> None:
        self._process = process
        self.cli_scope = cli_scope
        self._released = False

    @property
    def kind(self) -> str:
        return self.cli_scope.kind

    def pids(self) -> set[int]:
        """Return the live pids of the CLI's scope and of the container (host pids)."""
        if self._released:
            return set()
        return self.cli_scope.pids() | self._process.container_pids()

    def signal_all(self, sig: int) -> int:
        """Signal the CLI's own tree at once and have the engine stop the container (``kill_signal``) or
        signal it (any other signal) in the background; SIGCONT goes straight to every process.
        Return how many processes there are (a stop in progress counts its container's processes).

        The rest of the CLI's scope (podman's conmon and its cleanup, in cgroup mode) is the engine's:
        interrupted, it would lose the container's exit and leave it half-removed.
        """
        if sig == signal.SIGKILL:
            return self.kill_all()
        inside = self._process.container_pids()
        count = signal_each(self._process.cli_tree(), sig)
        if sig == signal.SIGCONT:
            return count + signal_each(inside, sig)
        if sig == self._process.kill_signal:
            self._process.request_stop()
        else:
            self._process.request_signal(sig)
        return count + len(inside)

    def holds(self, pid: int) -> bool:
        """Return True for the CLI's own processes (see ``ScopeImpl.holds``) and the container's."""
        return self.cli_scope.holds(pid) or pid in self._process.container_pids()

    def signal_main(self, sig: int) -> int:
        """The same as ``signal_all``: the engine's stop already signals the container's main process
        first and the rest only at its timeout; SIGCONT goes to every process."""
        count = self.signal_all(sig)
        if count and sig not in (signal.SIGKILL, signal.SIGCONT):
            self.signal_all(signal.SIGCONT)
        return count

    def kill_all(self) -> int:
        """SIGKILL the CLI's own tree and the container's processes now; the engine then kills and
        removes the container in the background (conmon, left alive, records its exit).
        Return how many processes were hit."""
        count = signal_each(self._process.container_pids(), signal.SIGKILL)
        count += signal_each(self._process.cli_tree(), signal.SIGKILL)
        self._process.request_kill()
        return count

    def release(self) -> None:
        """Release the CLI's scope; background stops and removals go on. Safe to call more than once."""
        self._released = True
        self.cli_scope.release()


# --------------------------------------------------------------------------- routing


class RoutingSpawner:
    """Implements ``hasupd.ports.Spawner``: services with ``container:`` go to ``containers``,
    all others to ``programs``."""

    def __init__(self, programs: Spawner, containers: Spawner) -> None:
        self.programs = programs
        self.containers = containers

    def spawn(self, spec: SpawnSpec, on_exit: Callable[[ExitStatus], None]) -> Process:
        """Start ``spec`` with the spawner for its kind; see ``Spawner.spawn``."""
        if spec.service.container is not None:
            return self.containers.spawn(spec, on_exit)
        return self.programs.spawn(spec, on_exit)

    def spawn_many(self, requests: Sequence[SpawnRequest]) -> list[Process | SpawnError]:
        """Start ``requests`` (see ``ManySpawner``): programs together, containers one by one."""
        outcomes: list[Process | SpawnError | None] = [None] * len(requests)
        kinds: dict[bool, list[int]] = {False: [], True: []}
        for index, (spec, _) in enumerate(requests):
            kinds[spec.service.container is not None].append(index)
        for is_container, indexes in kinds.items():
            spawner = self.containers if is_container else self.programs
            for index, outcome in zip(
                indexes, spawn_all(spawner, [requests[i] for i in indexes]), strict=True
            ):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]


# --------------------------------------------------------------------------- /proc


def _start_time(pid: int) -> int | None:
    """Return the start time (clock ticks since boot) of a live, non-zombie ``pid``, or None."""
    st = stat(pid)
    return None if st is None or st.state == "Z" else st.starttime


def _tree(root: int) -> set[int]:
    """Return ``root`` and its descendants that are alive (zombies excluded)."""
    children = Children()
    found: set[int] = set()
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in found or (st := stat(pid)) is None:
            continue
        if st.state != "Z":
            found.add(pid)
        stack.extend(children.of(pid))
    return found
