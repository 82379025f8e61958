"""The three supervisors behind one small interface: write a config for a list of services, give the
argv that runs the supervisor in the foreground, and say where its records and the services' output go.

Settings that make the runs comparable (stated in RESULTS.md):

* ``Policy.FAST``: restart at the supervisor's minimum delay and never give up. hasupd:
  ``restart: always``, ``restart_sec: "0"``, a start limit of 1,000,000 starts per second. supervisord:
  ``startsecs=0``, ``autorestart=true`` (it has no delay setting; its main loop polls once a second).
  circus: ``respawn``, ``max_retry=-1`` and ``check_delay=0.1`` (circus notices dead processes only
  when it polls, every ``check_delay`` seconds: 1 s by default, 5 s when read from an ini file).
* ``Policy.LIMITED``: each supervisor's default backoff, giving up after 5 starts. hasupd:
  ``start_limit: {burst: 5, interval_sec: 60s}`` (backoff from 100 ms, doubling). supervisord:
  ``startsecs=1``, ``startretries=4`` (its backoff waits 1, 2, 3 ... s). circus: ``max_retry=5``,
  ``check_delay=1``.
* Output: a file per service, rotated at 10 MiB keeping 5 (hasupd's fixed rotation, configured the
  same way for the others); stderr goes to the same file where the supervisor allows it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from procs import remove_cgroup_tree

REPO = Path(__file__).resolve().parents[1]
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_KEEP = 5
GIVE_UP_STARTS = 5
CIRCUS_FAST_CHECK_DELAY = 0.1
CIRCUS_CHECK_DELAY = 1.0


class Policy(StrEnum):
    FAST = "fast"  # minimum restart delay, never give up
    LIMITED = "limited"  # default backoff, give up after GIVE_UP_STARTS starts
    ONCE = "once"  # no restart
    DEFAULT = "default"  # the supervisor's defaults (programs that do not exit)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]
    policy: Policy = Policy.DEFAULT
    output: str = "file"  # "file", or "journal" (hasupd only)
    http_probe: str | None = None  # URL to probe every second, where the supervisor can


class Supervisor(ABC):
    """One supervisor program; ``prepare`` writes its config into a fresh folder."""

    name: ClassVar[str]
    give_up_marker: ClassVar[str | None]  # text in its log once it stopped restarting a service

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def prepare(self, folder: Path, services: Sequence[ServiceSpec]) -> list[str]:
        """Write the config for ``services`` under ``folder``; return the argv to run it in the foreground."""

    @abstractmethod
    def output_file(self, folder: Path, service: str) -> Path:
        """Return the file that a service's stdout is written to."""

    @abstractmethod
    def log_file(self, folder: Path) -> Path:
        """Return the supervisor's own log (where ``give_up_marker`` appears)."""

    def probe_support(self, folder: Path) -> str | None:
        """Return None if the supervisor can run HTTP health probes, else why not."""
        return f"{self.name} has no HTTP health probes"

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def workaround(self) -> tuple[Supervisor, str] | None:
        """Return a variant to repeat a run with after this supervisor crashed, and what it changes;
        None if there is none."""
        return None

    def cleanup(self, folder: Path, services: Sequence[ServiceSpec]) -> None:
        """Remove what the run left outside ``folder`` after the supervisor was killed (its processes
        are already gone): the short socket folder."""
        link = folder / SOCKETS
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)


SOCKETS = "sockets"


def socket_dir(folder: Path) -> Path:
    """Return a new folder with a short path for unix sockets, linked from ``folder/sockets``.

    A unix socket path must fit in 108 bytes; run folders under a deep temp dir (pytest's) do not.
    ``Supervisor.cleanup`` removes it. It is on a tmpfs where there is one (/dev/shm), as /run (where
    hasupd keeps its sockets when installed) is on every systemd host.
    """
    shm = Path("/dev/shm")
    short = Path(
        tempfile.mkdtemp(prefix="hb-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
    )
    (folder / SOCKETS).symlink_to(short)
    return short


def _bindir() -> Path:
    return Path(sys.executable).parent


# --------------------------------------------------------------------------- hasupd


class Hasupd(Supervisor):
    """hasupd from a source folder (the repository by default, or an exported commit), run with
    ``python -m hasupd`` and that folder first on PYTHONPATH. The harness never imports it: the
    working tree may be mid-edit while a snapshot is measured."""

    name = "hasupd"
    give_up_marker = '"service.failed"'

    def __init__(self, python: str = sys.executable, src: Path = REPO, label: str | None = None) -> None:
        self.python = python
        self.src = src
        self.label = label  # how ``src`` was made, when it is not the working tree
        self.containment = "-"  # from the first run's daemon.started record
        self.recursion_limit: int | None = None  # set only by workaround()

    def workaround(self) -> tuple[Supervisor, str] | None:
        """Many services that start at once recurse once per service (Manager._start_ready ->
        Service.start -> a state event -> Manager._on_event -> Manager._start_ready ...), which exceeds
        Python's recursion limit of 1000 near 120 services. The variant raises the limit."""
        if self.recursion_limit is not None:
            return None
        variant = copy.copy(self)
        variant.recursion_limit = 20_000
        return variant, "hasupd run with sys.setrecursionlimit(20000) (the code unchanged)"

    def byte_compile(self) -> None:
        """Write the .pyc files of ``src`` (as installing the .deb does, and as pip did for supervisord
        and circus): else, with PYTHONDONTWRITEBYTECODE set, every launch compiles hasupd anew."""
        subprocess.run([self.python, "-m", "compileall", "-q", str(self.src / "hasupd")], check=True)

    def version(self) -> str:
        init = (self.src / "hasupd" / "__init__.py").read_text()
        match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", init)
        version = match.group(1) if match else "?"
        if self.label is not None:
            return f"{version} ({self.label})"
        # safe.directory: the tree may belong to another user than the one running the bench (root).
        git = ["git", "-c", f"safe.directory={self.src.resolve()}", "-C", str(self.src)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "hasupd"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"{version} (working tree at {commit or '?'}{' + uncommitted changes' if dirty else ''})"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.src)  # this hasupd, whatever the interpreter has installed
        return env

    def service_body(self, spec: ServiceSpec) -> dict[str, object]:
        body: dict[str, object] = {
            "command": list(spec.argv),
            "output": spec.output,
            "timeout_stop_sec": "1s",
        }
        match spec.policy:
            case Policy.FAST:
                body.update(
                    restart="always", restart_sec="0", start_limit={"burst": 1_000_000, "interval_sec": "1s"}
                )
            case Policy.LIMITED:
                body.update(
                    restart="on-failure", start_limit={"burst": GIVE_UP_STARTS, "interval_sec": "60s"}
                )
            case Policy.ONCE:
                body.update(restart="no")
            case Policy.DEFAULT:
                pass
        if spec.http_probe is not None:
            body["health"] = [{"http": spec.http_probe, "interval_sec": "1s", "timeout_sec": "1s"}]
        return body

    def prepare(self, folder: Path, services: Sequence[ServiceSpec]) -> list[str]:
        config = folder / "config"
        (config / "services.d").mkdir(parents=True, exist_ok=True)
        (config / "hasupd.yaml").write_text("{}\n")
        for spec in services:  # JSON is YAML
            (config / "services.d" / f"{spec.name}.yaml").write_text(json.dumps(self.service_body(spec)))
        if self.recursion_limit is None:
            entry = [self.python, "-m", "hasupd"]
        else:
            code = (
                f"import runpy, sys; sys.setrecursionlimit({self.recursion_limit}); "
                "runpy.run_module('hasupd', run_name='__main__', alter_sys=True)"
            )
            entry = [self.python, "-c", code]
        return [
            *entry,
            "run",
            "--config-dir",
            str(config),
            "--state-dir",
            str(folder / "state"),
            "--runtime-dir",
            str(socket_dir(folder)),  # control.sock and notify/NAME.sock live there
            "--log-target",
            "stderr",
            "--log-format",
            "json",
        ]

    def output_file(self, folder: Path, service: str) -> Path:
        return folder / "state" / "logs" / f"{service}.log"

    def log_file(self, folder: Path) -> Path:
        return folder / "supervisor.out"

    def probe_support(self, folder: Path) -> str | None:
        """Ask ``hasupd check-config`` whether it accepts an HTTP probe: the scenario runs by itself
        once health probes land."""
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            spec = ServiceSpec("probe", ("/bin/sleep", "infinity"), http_probe="http://127.0.0.1:9/health")
            argv = self.prepare(Path(scratch), [spec])
            self.cleanup(Path(scratch), [spec])  # nothing ran; this removes the socket folder
            check = [
                *argv[: argv.index("run")],
                "check-config",
                "--config-dir",
                argv[argv.index("--config-dir") + 1],
            ]
            done = subprocess.run(  # cwd: python -m puts it first on sys.path, before PYTHONPATH
                check, capture_output=True, text=True, env=self.env(), cwd=scratch, timeout=60, check=False
            )
        if done.returncode == 0:
            return None
        first = (done.stderr.strip().splitlines() or ["check-config failed"])[0]
        return f"hasupd check-config rejects health probes: {first.split(': ', 1)[-1]}"

    def cleanup(self, folder: Path, services: Sequence[ServiceSpec]) -> None:
        """Remove the cgroups of this run: the parent that hasupd named in its daemon.started record."""
        containment = _containment(self.log_file(folder))
        if self.containment == "-":
            self.containment = containment
        match = re.match(r"cgroup v2 under (\S+) \(root layout", containment)
        if match:  # only its own parent: in the delegated layout the parent is the harness's cgroup too
            remove_cgroup_tree(Path(match.group(1)))
        super().cleanup(folder, services)


def _containment(log: Path) -> str:
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines()[:20]:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == "daemon.started":
                    # The spawn path too (clone3 or the subprocess fallback), since it is what the
                    # restart and start-up numbers depend on.
                    spawn = f"; spawn: {record['spawn']}" if record.get("spawn") else ""
                    return f"{record.get('containment', '-')}{spawn}"
    return "-"


# --------------------------------------------------------------------------- supervisord


def _ini(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in values


class Supervisord(Supervisor):
    name = "supervisord"
    give_up_marker = "gave up:"

    def version(self) -> str:
        return importlib.metadata.version("supervisor")

    def prepare(self, folder: Path, services: Sequence[ServiceSpec]) -> list[str]:
        logs = folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        lines = [
            "[supervisord]",
            "nodaemon=true",
            f"logfile={_ini(str(self.log_file(folder)))}",
            f"pidfile={_ini(str(folder / 'supervisord.pid'))}",
            f"childlogdir={_ini(str(logs))}",
            "loglevel=info",
        ]
        if os.geteuid() == 0:
            lines.append("user=root")
        for spec in services:
            if spec.output != "file":
                raise ValueError(f"supervisord cannot send output to {spec.output}")
            autorestart, startsecs, retries = {
                Policy.FAST: ("true", 0, 1_000_000),
                Policy.LIMITED: ("unexpected", 1, GIVE_UP_STARTS - 1),
                Policy.ONCE: ("false", 0, 0),
                Policy.DEFAULT: ("unexpected", 1, 3),
            }[spec.policy]
            lines += [
                f"[program:{spec.name}]",
                f"command={_ini(shlex.join(spec.argv))}",
                "autostart=true",
                f"autorestart={autorestart}",
                f"startsecs={startsecs}",
                f"startretries={retries}",
                "stopwaitsecs=1",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={_ini(str(self.output_file(folder, spec.name)))}",
                f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
                f"stdout_logfile_backups={LOG_KEEP}",
            ]
        conf = folder / "supervisord.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [str(_bindir() / "supervisord"), "-c", str(conf)]

    def output_file(self, folder: Path, service: str) -> Path:
        return folder / "logs" / f"{service}.log"

    def log_file(self, folder: Path) -> Path:
        return folder / "supervisord.log"


# --------------------------------------------------------------------------- circus


class Circus(Supervisor):
    name = "circus"
    # circus counts only failures to spawn (exec errors) against max_retry: a program that starts and
    # exits at once is respawned forever, so there is nothing to wait for.
    give_up_marker = None

    def version(self) -> str:
        return importlib.metadata.version("circus")

    def prepare(self, folder: Path, services: Sequence[ServiceSpec]) -> list[str]:
        logs = folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        fast = any(s.policy is Policy.FAST for s in services)
        sockets = socket_dir(folder)
        lines = [
            "[circus]",
            f"check_delay = {CIRCUS_FAST_CHECK_DELAY if fast else CIRCUS_CHECK_DELAY}",
            f"endpoint = ipc://{sockets / 'control.sock'}",
            f"pubsub_endpoint = ipc://{sockets / 'pubsub.sock'}",
            "statsd = False",
        ]
        for spec in services:
            if spec.output != "file":
                raise ValueError(f"circus cannot send output to {spec.output}")
            respawn, retries = {
                Policy.FAST: ("True", -1),
                Policy.LIMITED: ("True", GIVE_UP_STARTS),
                Policy.ONCE: ("False", 5),  # max_retry 0 would never even spawn
                Policy.DEFAULT: ("True", 5),
            }[spec.policy]
            lines += [
                f"[watcher:{spec.name}]",
                f"cmd = {shlex.join(spec.argv)}",
                "numprocesses = 1",
                "copy_env = True",
                f"respawn = {respawn}",
                f"max_retry = {retries}",
                "graceful_timeout = 1",
            ]
            for stream, path in (
                ("stdout", self.output_file(folder, spec.name)),
                ("stderr", logs / f"{spec.name}.err"),  # two FileStreams on one file would race on rotation
            ):
                lines += [
                    f"{stream}_stream.class = FileStream",
                    f"{stream}_stream.filename = {path}",
                    f"{stream}_stream.max_bytes = {LOG_MAX_BYTES}",
                    f"{stream}_stream.backup_count = {LOG_KEEP}",
                ]
        conf = folder / "circus.ini"
        conf.write_text("\n".join(lines) + "\n")
        return [
            str(_bindir() / "circusd"),
            "--log-level",
            "info",
            "--log-output",
            str(self.log_file(folder)),
            str(conf),
        ]

    def output_file(self, folder: Path, service: str) -> Path:
        return folder / "logs" / f"{service}.log"

    def log_file(self, folder: Path) -> Path:
        return folder / "circus.log"


class HasupdSubprocess(Hasupd):
    """The same hasupd on its fallback spawn path (``--no-clone3``: subprocess, the child joins its
    cgroup in a preexec_fn), for an A/B of the spawn path in one run: ``--only hasupd,hasupd-subprocess``."""

    name = "hasupd-subprocess"

    def prepare(self, folder: Path, services: Sequence[ServiceSpec]) -> list[str]:
        return [*super().prepare(folder, services), "--no-clone3"]


ALL: dict[str, type[Supervisor]] = {
    "hasupd": Hasupd,
    "supervisord": Supervisord,
    "circus": Circus,
    "hasupd-subprocess": HasupdSubprocess,
}
