"""The podman and docker command lines: what hasupd asks of a container engine, and what the answers mean.

``Engine`` builds and runs the calls; the functions under "what goes into run" turn a service's config
into the run command's name, environment, mounts and user. ``container.py`` drives all of it.

Every call but the preflight goes through ``run_command`` (pidfd, Reaper, a timeout, the process group
stopped on timeout). Exit codes, as the two CLIs document and as tested against podman 4.3 and docker
CLI 28 (against podman's docker-compatible API):

| call | 0 | "not found" | anything else |
| --- | --- | --- | --- |
| ``podman image exists`` | present | 1 | failure |
| ``docker image inspect`` | present | 1 + "No such image" | failure |
| ``stop``, ``kill``, ``inspect`` | done | podman 125, docker 1, + "no such container/object" | failure |
| ``rm -f`` | done (also when there was nothing) | podman 1/125, docker 1 + "no such ..." | failure |
| ``ps`` | the list | - | failure |

``run`` is the service's main process, so its exit code is the service's: the container's own code,
or 125 (the engine failed), 126 (the command cannot be invoked), 127 (the command was not found).
"""

from __future__ import annotations

import contextlib
import math
import os
import pwd
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hasupd.config.model import ContainerEngine, ServiceConfig
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper
from hasupd.host.users import UnknownIdentity, lookup_group, lookup_user
from hasupd.ports import SpawnError, SpawnSpec
from hasupd.runtimes.command import CommandResult, run_command
from hasupd.runtimes.envfile import load_environment_files

__all__ = [
    "CONTAINER_NOTIFY_SOCKET",
    "CONTAINER_ONLY",
    "ENGINE_VARIABLES",
    "FORBIDDEN_OPTIONS",
    "LABEL_DAEMON",
    "LABEL_INVOCATION",
    "LABEL_UNIT",
    "Engine",
    "EngineError",
    "check_options",
    "cleanup_stale_containers",
    "container_environment",
    "container_name",
    "engine_environment",
    "exec_argv",
    "user_option",
]

# Labels on every container hasupd runs: which daemon (its name prefix), unit and start it belongs to.
LABEL_DAEMON = "hasupd.daemon"
LABEL_UNIT = "hasupd.unit"
LABEL_INVOCATION = "hasupd.invocation"

# hasupd's own variables that configure the engine CLIs; passed through to every engine call (the
# service's own environment goes into the container, not to the CLI).
ENGINE_VARIABLES = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "XDG_RUNTIME_DIR",
)
# Where the service's notify socket is mounted inside the container (NOTIFY_SOCKET points there).
CONTAINER_NOTIFY_SOCKET = "/run/hasupd-notify.sock"
# Variables of SpawnSpec.extra_env that belong inside the container, not to the CLI.
CONTAINER_ONLY = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})
# Options that would take supervision away from hasupd or clash with what it passes itself.
FORBIDDEN_OPTIONS = ("--restart", "--rm", "--replace", "--name", "--detach", "-d", "--cidfile", "--sdnotify")
_NOT_FOUND = ("no such container", "no such object", "no such image")
# kill of a container that has already stopped: podman "container state improper", docker "is not running"
_NOT_RUNNING = ("state improper", "not running")
_NOT_FOUND_CODES = {ContainerEngine.PODMAN: frozenset({1, 125}), ContainerEngine.DOCKER: frozenset({1})}
# How long a stopped or killed engine call gets before its process group is SIGKILLed.
_KILL_AFTER_SEC = 2.0


class EngineError(Exception):
    """An engine call failed or did not answer in time; ``str(error)`` is a sentence for the operator."""


def engine_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Return the variables of ``environ`` (hasupd's own) that configure podman or docker."""
    return {key: environ[key] for key in ENGINE_VARIABLES if key in environ}


def exec_argv(
    engine: ContainerEngine | str, name: str, argv: Sequence[str], *, engine_args: Sequence[str] = ()
) -> list[str]:
    """Return the command line that runs ``argv`` inside the running container ``name`` (exec probes)."""
    return [str(engine), *engine_args, "exec", name, *argv]


def _base_environment(engine_env: Mapping[str, str]) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH}
    with contextlib.suppress(KeyError):  # a uid without a passwd entry
        env["HOME"] = pwd.getpwuid(os.geteuid()).pw_dir  # docker reads its config from there
    env.update(engine_env)
    return env


@dataclass(frozen=True)
class Engine:
    """One engine CLI with its global arguments and environment, as hasupd calls it."""

    kind: ContainerEngine
    path: str  # the CLI, absolute
    args: tuple[str, ...] = ()  # global arguments (podman --root/--runroot, docker --host ...)
    env: Mapping[str, str] = field(default_factory=dict)  # complete environment of every call
    timeout: float = 30.0
    reaper: Reaper | None = None

    @classmethod
    def find(
        cls,
        kind: ContainerEngine | str,
        *,
        args: Sequence[str] = (),
        engine_env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        reaper: Reaper | None = None,
    ) -> Engine:
        """Return the engine ``kind`` found in PATH (hasupd's default PATH).

        Raise SpawnError if its CLI is not installed.
        """
        kind = ContainerEngine(kind)
        env = _base_environment(engine_env or {})
        path = shutil.which(kind.value, path=env["PATH"])
        if path is None:
            raise SpawnError(f"container engine {kind.value} is not installed (not in PATH={env['PATH']})")
        return cls(kind, path, tuple(args), env, timeout, reaper)

    @property
    def name(self) -> str:
        return self.kind.value

    def argv(self, *words: str) -> list[str]:
        return [self.path, *self.args, *words]

    # ------------------------------------------------------------------ command lines

    def run_argv(
        self,
        *,
        name: str,
        labels: Mapping[str, str],
        stop_signal: int,
        stop_timeout_sec: float,
        env: Sequence[str],
        mounts: Sequence[str],
        extra: Sequence[str],
        options: Sequence[str],
        image: str,
        args: Sequence[str],
    ) -> list[str]:
        """Return the ``run`` command line that is the service's main process.

        Never a restart policy, never a pull. podman: ``--rm --replace`` (a leftover of the same name
        is replaced) and ``--sdnotify=ignore`` (the notify socket is mounted instead, see container.py).
        docker: no ``--rm`` (podman's docker API before 4.6 then reports exit code 0 for every
        container, podman#18889); hasupd removes the exited container by its ID, and a leftover of the
        same name before the run.
        """
        words = ["run", "--name", name, "--pull=never"]
        if self.kind is ContainerEngine.PODMAN:
            words += ["--rm", "--replace", "--sdnotify=ignore"]
        for key, value in labels.items():
            words += ["--label", f"{key}={value}"]
        words += [
            "--stop-signal",
            signal.Signals(stop_signal).name,
            "--stop-timeout",
            str(_seconds(stop_timeout_sec)),
        ]
        for item in env:
            words += ["--env", item]
        for mount in mounts:
            words += ["--volume", mount]
        return self.argv(*words, *extra, *options, image, *args)

    # ------------------------------------------------------------------ preflight

    async def check_image(self, image: str, timeout: float) -> None:
        """Return if ``image`` is in the engine's local storage.

        Raise SpawnError if it is not, if the engine failed, or if it did not answer within ``timeout``.
        """
        words: tuple[str, ...] = ("image", "exists", image)
        if self.kind is ContainerEngine.DOCKER:
            words = ("image", "inspect", "--format", "{{.Id}}", image)
        result = await self._preflight(words, timeout)
        code = result.status.code
        if code == 0:
            return
        err = _text(result.stderr)
        if code == 1 and (self.kind is ContainerEngine.PODMAN or "no such image" in err.lower()):
            raise SpawnError(
                f"image {image} is not in {self.name}'s local storage "
                f"(hasupd never pulls: {self.name} pull {image})"
            )
        raise SpawnError(f"{self.name} cannot check image {image}: {result.describe()}: {err}")

    async def remove_leftover(self, ref: str, timeout: float) -> None:
        """Remove container ``ref`` (running or not); nothing there is fine.

        Raise SpawnError if the engine failed or did not answer within ``timeout``.
        """
        result = await self._preflight(tuple(self.rm_words(ref)), timeout)
        code = result.status.code
        if code != 0 and not (code is not None and self._not_found(code, _text(result.stderr))):
            raise SpawnError(
                f"{self.name} cannot remove the leftover container {ref}: "
                f"{result.describe()}: {_text(result.stderr)}"
            )

    async def _preflight(self, words: Sequence[str], timeout: float) -> CommandResult:
        try:
            result = await run_command(
                self.argv(*words),
                reaper=self.reaper,
                env=self.env,
                timeout=timeout,
                kill_after=_KILL_AFTER_SEC,
                max_output=1024 * 1024,
            )
        except OSError as e:
            raise SpawnError(f"cannot run {self.path}: {e.strerror}") from e
        if result.timed_out:
            raise SpawnError(f"{self.name} did not answer within {timeout:g}s ({' '.join(words)})")
        return result

    # ------------------------------------------------------------------ calls (asynchronous)

    async def call(self, *words: str, timeout: float | None = None) -> CommandResult:
        """Run ``ENGINE ARGS WORDS`` and return how it ended.

        Raise EngineError if it cannot be started or does not end within the timeout.
        """
        argv = self.argv(*words)
        try:
            result = await run_command(
                argv,
                reaper=self.reaper,
                env=self.env,
                timeout=timeout if timeout is not None else self.timeout,
                kill_after=_KILL_AFTER_SEC,
                max_output=1024 * 1024,
            )
        except OSError as e:
            raise EngineError(f"cannot run {self.path}: {e.strerror}") from e
        if result.timed_out:
            raise EngineError(f"{self.name} {' '.join(words)}: {result.describe()}")
        return result

    async def stop(self, ref: str, timeout_sec: float) -> bool:
        """Stop container ``ref`` (its stop signal, SIGKILL after ``timeout_sec``).

        Return False if there was no such container. Raise EngineError if the engine failed.
        """
        seconds = _seconds(timeout_sec)
        result = await self.call("stop", "-t", str(seconds), ref, timeout=self.timeout + seconds)
        return self._done(result, "stop")

    async def kill(self, ref: str, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to the container's main process; return False if it was not there or not running.

        Raise EngineError if the engine failed.
        """
        result = await self.call("kill", "-s", signal.Signals(sig).name, ref)
        stderr = _text(result.stderr).lower()
        if result.status.code in _NOT_FOUND_CODES[self.kind] and any(t in stderr for t in _NOT_RUNNING):
            return False
        return self._done(result, "kill")

    async def remove(self, ref: str) -> bool:
        """Remove container ``ref`` at once, running or not; return False if it was not there.

        Raise EngineError if the engine failed.
        """
        return self._done(await self.call(*self.rm_words(ref)), "rm")

    async def inspect(self, ref: str) -> tuple[str, int, str] | None:
        """Return ``(id, init pid, invocation label)`` of container ``ref`` (pid 0: not running), or
        None if there is no such container. Raise EngineError if the engine failed."""
        fmt = f'{{{{.Id}}}} {{{{.State.Pid}}}} {{{{index .Config.Labels "{LABEL_INVOCATION}"}}}}'
        result = await self.call("inspect", "--format", fmt, ref)
        if not self._done(result, "inspect"):
            return None
        fields = _text(result.stdout).split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise EngineError(f"{self.name} inspect {ref}: unexpected answer {_text(result.stdout)!r}")
        return fields[0], int(fields[1]), fields[2] if len(fields) > 2 else ""

    async def list_labelled(self, key: str, value: str) -> list[tuple[str, str]]:
        """Return ``(id, name)`` of every container, running or not, labelled ``key=value``.

        Raise EngineError if the engine failed.
        """
        result = await self.call(
            "ps", "--all", "--no-trunc", "--filter", f"label={key}={value}", "--format", "{{.ID}} {{.Names}}"
        )
        if result.status.code != 0:
            raise EngineError(f"{self.name} ps: {result.describe()}: {result.tail()}")
        out = []
        for line in _text(result.stdout).splitlines():
            cid, _, name = line.strip().partition(" ")
            if cid:
                out.append((cid, name.strip()))
        return out

    def rm_words(self, ref: str) -> list[str]:
        """Return the words that remove container ``ref`` at once, running or not."""
        # podman rm -f stops with the stop timeout first (10 s by default); -t 0 kills at once.
        return ["rm", "-f", "-t", "0", ref] if self.kind is ContainerEngine.PODMAN else ["rm", "-f", ref]

    def _not_found(self, code: int, stderr: str) -> bool:
        lowered = stderr.lower()
        return code in _NOT_FOUND_CODES[self.kind] and any(text in lowered for text in _NOT_FOUND)

    def _done(self, result: CommandResult, what: str) -> bool:
        code = result.status.code
        if code == 0:
            return True
        if code is not None and self._not_found(code, _text(result.stderr)):
            return False
        raise EngineError(f"{self.name} {what}: {result.describe()}: {result.tail()}")


# --------------------------------------------------------------------------- what goes into run


def container_name(name_prefix: str, unit: str) -> str:
    """Return the container name of ``unit`` ("@" of instances is not allowed in container names)."""
    return name_prefix + unit.replace("@", "_I")


def check_options(options: Sequence[str]) -> None:
    """Raise SpawnError if ``options`` hold one that hasupd sets itself or that takes supervision away
    (a restart policy, detaching, another name ...)."""
    for option in options:
        flag = option.split("=", 1)[0]
        if flag in FORBIDDEN_OPTIONS:
            raise SpawnError(f"container option {option} is not allowed: hasupd sets it, or supervises")


def container_environment(spec: SpawnSpec, service: ServiceConfig) -> tuple[list[str], list[str]]:
    """Return the ``--env`` items and ``--volume`` mounts that carry the service's environment in."""
    env = [f"INVOCATION_ID={spec.invocation_id}"]
    mounts = []
    notify = spec.extra_env.get("NOTIFY_SOCKET")
    if notify is not None and notify.startswith("/"):
        mounts.append(f"{notify}:{CONTAINER_NOTIFY_SOCKET}")
        env.append(f"NOTIFY_SOCKET={CONTAINER_NOTIFY_SOCKET}")
    elif notify is not None:  # an abstract socket: reachable only with the host's network namespace
        env.append(f"NOTIFY_SOCKET={notify}")
    if "WATCHDOG_USEC" in spec.extra_env:
        env.append(f"WATCHDOG_USEC={spec.extra_env['WATCHDOG_USEC']}")
    # Values reach the CLI's environment through ExecSpawner; "--env KEY" copies them in from there.
    keys = [*load_environment_files(service.environment_files), *(key for key, _ in service.environment)]
    env.extend(dict.fromkeys(k for k in keys if k not in CONTAINER_ONLY and k != "INVOCATION_ID"))
    return env, mounts


def user_option(service: ServiceConfig) -> list[str]:
    """Return ``--user UID:GID`` for the service's user/group (resolved on the host), or nothing."""
    if service.user is None and service.group is None:
        return []
    try:
        user = lookup_user(service.user) if service.user else None
    except UnknownIdentity:
        raise SpawnError(f"user {service.user!r} does not exist") from None
    try:
        gid = lookup_group(service.group) if service.group else None
    except UnknownIdentity:
        raise SpawnError(f"group {service.group!r} does not exist") from None
    uid = user.uid if user is not None else os.geteuid()
    if gid is None:
        gid = user.gid if user is not None else os.getegid()
    return ["--user", f"{uid}:{gid}"]


async def cleanup_stale_containers(
    engine: ContainerEngine | str,
    name_prefix: str,
    *,
    engine_args: Sequence[str] = (),
    engine_env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    reaper: Reaper | None = None,
) -> list[str]:
    """Remove every container that an earlier run of this daemon left behind; return their names.

    Call it at daemon start, before any service starts and before ``Containment.cleanup_stale`` (which
    kills the old CLIs and their conmon; the engine removes a container best while its monitor lives).
    A container is ours when it carries ``hasupd.daemon=<name_prefix>`` and its name starts with
    ``name_prefix``: other daemons (other runtime dirs) and containers started by hand are left alone.
    Return [] if the engine is not installed. Raise EngineError if the engine failed.
    """
    try:
        found = Engine.find(engine, args=engine_args, engine_env=engine_env, timeout=timeout, reaper=reaper)
    except SpawnError:
        return []
    removed = []
    for cid, name in await found.list_labelled(LABEL_DAEMON, name_prefix):
        if name.startswith(name_prefix):
            await found.remove(cid)
            removed.append(name)
    return sorted(removed)


def _seconds(value: float) -> int:
    return max(0, math.ceil(value))


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip()
