"""Real SMTP servers on loopback for the alert tests: aiosmtpd (plain, STARTTLS, implicit TLS, AUTH),
a TCP server that accepts and never answers, and a self-signed certificate made with openssl."""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Received:
    envelope_from: str
    envelope_to: list[str]
    message: EmailMessage
    login: str | None

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content())  # type: ignore[attr-defined]


@dataclass
class Mailbox:
    """What the server accepted, in order; waitable from the test thread."""

    received: list[Received] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self._cond:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), message, login)  # type: ignore[arg-type]
            )
            self._cond.notify_all()
        return "250 2.0.0 Ok: queued as test"

    def wait(
        self, count: int, timeout: float, where: Callable[[Received], bool] | None = None
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self.received if where is None or where(r)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    subjects = [r.subject for r in self.received]
                    pytest.fail(f"no {count} message(s) within {timeout}s; received: {subjects}")
                self._cond.wait(left)


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def self_signed(folder: Path) -> Cert:
    """Make a self-signed certificate for 127.0.0.1 and localhost with ``openssl req -x509``."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return Cert(cert, key)


class SmtpServer:
    """aiosmtpd in its own thread. ``mode``: "none" (plain), "starttls" (required), "tls" (implicit).
    With ``users`` AUTH is required (over TLS) and checked against them."""

    def __init__(
        self,
        port: int,
        mode: str = "none",
        cert: Cert | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.mailbox = Mailbox()
        self.logins: list[tuple[str, bool]] = []
        kwargs: dict[str, Any] = {}
        if mode == "starttls":
            assert cert is not None
            kwargs.update(tls_context=cert.server_context(), require_starttls=True)
        elif mode == "tls":
            assert cert is not None
            kwargs.update(ssl_context=cert.server_context())
        if users is not None:
            self._users = users
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=port, **kwargs)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        ok = self._users.get(user) == password
        self.logins.append((user, ok))
        # handled=False on failure: aiosmtpd answers 535 itself (anything else leaves the client waiting)
        return AuthResult(success=True, auth_data=data) if ok else AuthResult(success=False, handled=False)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(AssertionError):  # already stopped
            self._controller.stop()


class HangingServer:
    """Accepts TCP connections and never says a word (a mail server that hangs on every connection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self._held: list[socket.socket] = []
        self._sock = socket.create_server(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._held.append(conn)

    def start(self) -> HangingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()
