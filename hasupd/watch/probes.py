"""Health probes of a running service: http, tcp and exec checks with Docker's semantics.

``ProbeRunner`` runs one ``HealthProbe``, with Docker's semantics for ``failures`` and
``start_period_sec``; its outcomes are ``hasupd.ports.ProbeOutcome`` values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from hasupd.config.model import HealthProbe, ProbeKind
from hasupd.host.reaper import Reaper
from hasupd.ports import ProbeOutcome, TaskSpawner
from hasupd.runtimes.command import run_command
from hasupd.watch.armed import Armed

# An exec probe that ignores SIGTERM at its timeout gets SIGKILL this much later.
EXEC_KILL_AFTER_SEC = 1.0
# Closing a connection must not stretch a check much past its timeout.
_CLOSE_WAIT_SEC = 1.0
_OUTPUT_TAIL = 400


class ProbeRunner(Armed):
    """Runs one probe: first check ``interval_sec`` after ``start`` (as Docker does), then
    ``interval_sec`` after the end of the previous one (checks never overlap), each bounded by
    ``timeout_sec``.

    Reported health starts unknown (``healthy is None``). Inside ``start_period_sec`` failures are
    not counted, and the first success ends the start period early (Docker's and podman's rule).
    After ``failures`` consecutive counted failures the outcome has ``transition=True, healthy=False``
    once; the next success reports healthy again. ``on_result`` gets every outcome, from the loop.

    http: GET over asyncio streams (HTTP/1.1, ``Connection: close``); 2xx/3xx is healthy; the
    status line and headers are read, the body is not. https uses ``ssl.create_default_context()``
    (system CAs, hostname checked). tcp: the connection is accepted. exec: ``run_command`` with
    ``env`` (None: hasupd's own) and ``reaper``, as hasupd's user; exit 0 is healthy.
    Raise ValueError if the probe's target does not parse.
    """

    def __init__(
        self,
        probe: HealthProbe,
        *,
        reaper: Reaper | None,
        on_result: Callable[[ProbeOutcome], None],
        env: Mapping[str, str] | None = None,
        tasks: TaskSpawner | None = None,
    ) -> None:
        super().__init__(tasks)
        self.probe = probe
        self._reaper = reaper
        self._on_result = on_result
        self._env = env
        self._address = _parse_target(probe)
        self.healthy: bool | None = None
        self.consecutive_failures = 0
        self.last_detail = ""
        self._start_period_ends = 0.0
        self._started_up = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm the first check; the start period begins now. Raise RuntimeError if used before."""
        self._begin(loop)
        self._start_period_ends = loop.time() + self.probe.start_period_sec
        self._arm(self.probe.interval_sec, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._loop is not None:
            what = " ".join(self.probe.argv) if self.probe.kind is ProbeKind.EXEC else self.probe.target
            self._spawn(self._run(), f"probe {self.probe.kind} {what}")

    async def _run(self) -> None:
        ok, detail = await self._check()
        loop = self._loop
        if loop is None:  # stopped while the check was finishing
            return
        transition = False
        if ok:
            self.consecutive_failures = 0
            self._started_up = True
            transition = self.healthy is not True
            self.healthy = True
        elif self._started_up or loop.time() >= self._start_period_ends:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.probe.failures and self.healthy is not False:
                transition = True
                self.healthy = False
        self.last_detail = detail
        self._on_result(ProbeOutcome(self.probe, ok, detail, self.consecutive_failures, transition))
        self._arm(self.probe.interval_sec, self._fire)

    async def _check(self) -> tuple[bool, str]:
        """Return (passed, detail) for one check; failures of the checked thing are data."""
        timeout = self.probe.timeout_sec
        if self.probe.kind is ProbeKind.EXEC:
            return await self._check_exec()
        try:
            async with asyncio.timeout(timeout):
                if self.probe.kind is ProbeKind.HTTP:
                    return await _check_http(self.probe.target, self._address)
                return await _check_tcp(self._address)
        except TimeoutError as e:
            if e.errno is None:  # ours, not the kernel's ETIMEDOUT
                return False, f"timed out after {timeout:g}s"
            return False, describe_error(e)
        except OSError as e:
            return False, describe_error(e)

    async def _check_exec(self) -> tuple[bool, str]:
        timeout = self.probe.timeout_sec
        try:
            result = await run_command(
                self.probe.argv,
                reaper=self._reaper,
                env=self._env,
                timeout=timeout,
                kill_after=EXEC_KILL_AFTER_SEC,
                max_output=64 * 1024,
            )
        except OSError as e:
            return False, f"cannot run {self.probe.argv[0]}: {describe_error(e)}"
        tail = result.tail(_OUTPUT_TAIL)
        head = f"timed out after {timeout:g}s" if result.timed_out else result.status.describe()
        return result.ok, f"{head}: {tail}" if tail else head


def _parse_target(probe: HealthProbe) -> tuple[str, int]:
    """Return (host, port) for http/tcp probes ("", 0 for exec). Raise ValueError if it is invalid."""
    if probe.kind is ProbeKind.EXEC:
        if not probe.argv:
            raise ValueError("exec probe without a command")
        return "", 0
    if probe.kind is ProbeKind.HTTP:
        parts = urlsplit(probe.target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid URL {probe.target!r}: expected http://host[:port]/path")
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    host, sep, port = probe.target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"invalid address {probe.target!r}: expected host:port or [v6]:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def describe_error(e: OSError) -> str:
    """Return a short operator-facing description of ``e`` (TLS, resolver or errno text)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host: {e.strerror}"
    if e.errno is not None:
        return os.strerror(e.errno)
    return str(e) or type(e).__name__


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # The peer may reset or dawdle; our side of the socket is closed either way.
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_WAIT_SEC)


async def _check_tcp(address: tuple[str, int]) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(*address)
    await _close(writer)
    return True, "connected"


async def _check_http(url: str, address: tuple[str, int]) -> tuple[bool, str]:
    parts = urlsplit(url)
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    reader, writer = await asyncio.open_connection(*address, ssl=tls)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc.rpartition('@')[2]}\r\n"
            "User-Agent: hasupd-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        line = b""
        try:
            line = await reader.readuntil(b"\n")
            while (await reader.readuntil(b"\n")).strip():
                pass  # the whole head: a server stuck half-way through its answer is not healthy
        except asyncio.IncompleteReadError:
            return False, "connection closed " + ("in the response head" if line else "without a response")
        except asyncio.LimitOverrunError:
            return False, "response head line longer than 64 KiB"
        version, _, rest = line.decode("latin-1").strip().partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            return False, f"not an HTTP response: {line[:60]!r}"
        return 200 <= int(code) < 400, f"HTTP {code} {reason}".rstrip()
    finally:
        await _close(writer)
