"""Mail for alerts: the MIME message of a spooled alert, and delivery over SMTP with aiosmtplib.

Works with aiosmtplib 2.0 (Debian 12) and the newest 5.x. Both spell the options the same way
(``use_tls``, ``start_tls``, ``tls_context``, ``timeout``, ``local_hostname``) and have the same
``connect``/``login``/``mail``/``rcpt``/``data``/``rset``/``quit`` calls; the differences that matter
are handled by always passing two things explicitly:

- ``local_hostname``: 2.0 otherwise calls ``socket.getfqdn()`` on the event loop (a DNS lookup that
  can block for seconds); 5.x moves it to a thread. Here it is looked up once, in a thread.
- ``tls_context``: 2.0 otherwise builds the SSL context (reading the CA bundle) on the event loop;
  here it is built in a worker thread, with ``ca_file`` as the only trusted CA when it is given.
- ``start_tls=False`` for ``tls: none``: both treat the default ``None`` as "upgrade when the server
  offers STARTTLS", which is not what ``none`` says.

Reply codes (SMTP's exit-code table): 2xx accepted; 4xx temporary and 5xx permanent refusals are
both kept and retried (a permanent refusal is often a configuration the operator will fix), and
every refusal names the code. Every step has ``smtp.timeout_sec``; each call is also bounded as a
whole, so no server can hold a delivery forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hasupd.alerts.spool import SpoolEntry
from hasupd.config.model import SmtpConfig, TlsMode

if TYPE_CHECKING:
    # Imported where a mail is first sent (SmtpMailer.session): a config without an email channel
    # never loads aiosmtplib.
    import aiosmtplib

QUIT_TIMEOUT_SEC = 5.0


class DeliveryError(Exception):
    """A delivery attempt failed.

    ``session`` is True when the connection, TLS or login failed (every message of the channel would
    fail the same way), False when the server refused this message only.
    """

    def __init__(self, message: str, *, session: bool) -> None:
        super().__init__(message)
        self.session = session


@dataclass(frozen=True)
class Accepted:
    """The server took the message (250 to DATA) for every recipient except ``refused``."""

    response: str  # "250 2.0.0 Ok: queued as ..."
    refused: dict[str, str]  # recipient -> "550 no such user"


class MailSession(Protocol):
    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> Accepted:
        """Send one message. Return what the server accepted. Raise DeliveryError."""
        ...


class Mailer(Protocol):
    def session(self, smtp: SmtpConfig) -> AbstractAsyncContextManager[MailSession]:
        """Return a connected, logged-in session. Entering raises DeliveryError (session=True)."""
        ...


def render(entry: SpoolEntry, dropped: int = 0) -> bytes:
    """Return the RFC 5322 message of ``entry`` (7-bit clean), with a note about ``dropped`` older
    alerts at the top of the body when there were any."""
    # Here: the email package (~0.5 MB) is loaded with the first alert, not with every hasupd.
    import email.policy  # noqa: PLC0415
    import email.utils  # noqa: PLC0415
    from email.message import EmailMessage  # noqa: PLC0415

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = entry.sender
    msg["To"] = ", ".join(entry.to or entry.recipients)
    msg["Subject"] = entry.subject
    msg["Date"] = email.utils.formatdate(entry.created, localtime=True)
    msg["Message-ID"] = entry.message_id
    if entry.in_reply_to:
        msg["In-Reply-To"] = entry.in_reply_to
        msg["References"] = entry.in_reply_to
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to alerts
    msg["X-Hasupd-Kind"] = entry.kind
    if entry.service:
        msg["X-Hasupd-Service"] = entry.service
    if entry.incident:
        msg["X-Hasupd-Incident"] = entry.incident
    body = entry.body
    if dropped:
        body = (
            f"NOTE: {dropped} older alert(s) were dropped: the spool was full while mail could not "
            f"be delivered (see alert.dropped records).\n\n{body}"
        )
    plain = body.isascii() and all(len(line) <= 900 for line in body.splitlines())
    msg.set_content(body, charset="utf-8", cte="7bit" if plain else "quoted-printable")
    return msg.as_bytes()


def _read_password(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def _describe(error: BaseException) -> str:
    import aiosmtplib  # noqa: PLC0415  (see TYPE_CHECKING above)

    if isinstance(error, aiosmtplib.SMTPResponseException):
        return f"{error.code} {error.message}".strip()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class _Session:
    def __init__(self, client: aiosmtplib.SMTP, bound: float) -> None:
        self._client = client
        self._bound = bound

    async def send(self, sender: str, recipients: Sequence[str], message: bytes) -> Accepted:
        import aiosmtplib  # noqa: PLC0415  (imported already by SmtpMailer.session)

        refused: dict[str, str] = {}
        try:
            async with asyncio.timeout(self._bound * (2 + len(recipients))):
                try:
                    await self._client.mail(sender)
                    for recipient in recipients:
                        try:
                            await self._client.rcpt(recipient)
                        except aiosmtplib.SMTPRecipientRefused as e:
                            refused[recipient] = _describe(e)
                    if len(refused) == len(recipients):
                        raise DeliveryError(
                            "every recipient refused: " + "; ".join(f"{r}: {m}" for r, m in refused.items()),
                            session=False,
                        )
                    response = await self._client.data(message)
                except aiosmtplib.SMTPSenderRefused as e:
                    raise DeliveryError(f"sender {sender} refused: {_describe(e)}", session=False) from None
                except aiosmtplib.SMTPDataError as e:
                    raise DeliveryError(f"message refused: {_describe(e)}", session=False) from None
        except DeliveryError:
            await self._reset()
            raise
        except TimeoutError:
            raise DeliveryError(f"while sending: no answer within {self._bound:g}s", session=True) from None
        except (aiosmtplib.SMTPException, OSError) as e:
            # The connection broke in the middle of a transaction.
            raise DeliveryError(f"while sending: {_describe(e)}", session=True) from None
        return Accepted(response=f"{response.code} {response.message}".strip(), refused=refused)

    async def _reset(self) -> None:
        import aiosmtplib  # noqa: PLC0415

        try:
            async with asyncio.timeout(self._bound):
                await self._client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._client.close()


class SmtpMailer:
    """Delivers over SMTP with aiosmtplib: tls none|starttls|tls, AUTH with the password read from
    ``password_file`` at connect time (never kept), a custom CA (``ca_file``), per-step timeouts."""

    def __init__(self, local_hostname: str | None = None) -> None:
        self._local_hostname = local_hostname  # None: this host's FQDN, looked up once

    async def _helo_name(self, timeout: float) -> str:
        if self._local_hostname is None:
            try:
                # In a thread: a DNS lookup that can take seconds (aiosmtplib 2.0 would block the loop).
                fqdn = await asyncio.wait_for(asyncio.to_thread(socket.getfqdn), timeout)
            except TimeoutError:
                return socket.gethostname()  # try again next time
            self._local_hostname = fqdn if "." in fqdn else socket.gethostname()
        return self._local_hostname

    @asynccontextmanager
    async def session(self, smtp: SmtpConfig) -> AsyncIterator[MailSession]:
        """Connect (and log in); yield a session; QUIT at the end. Raise DeliveryError(session=True)."""
        import aiosmtplib  # noqa: PLC0415  (see TYPE_CHECKING above)

        where = f"{smtp.host}:{smtp.port}"
        password = None
        try:
            if smtp.password_file is not None:
                password = await asyncio.to_thread(_read_password, smtp.password_file)
            context = (
                None if smtp.tls is TlsMode.NONE else await asyncio.to_thread(_tls_context, smtp.ca_file)
            )
        except (OSError, ssl.SSLError, UnicodeDecodeError) as e:
            raise DeliveryError(
                f"cannot prepare the connection to {where}: {_describe(e)}", session=True
            ) from None
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            timeout=smtp.timeout_sec,
            use_tls=smtp.tls is TlsMode.TLS,
            start_tls=smtp.tls is TlsMode.STARTTLS,
            tls_context=context,
            local_hostname=await self._helo_name(smtp.timeout_sec),
        )
        stage = "connect"
        try:
            # connect = TCP + greeting (+ TLS handshake, + STARTTLS): a few timed steps.
            async with asyncio.timeout(smtp.timeout_sec * 4):
                await client.connect()
                if smtp.username is not None:
                    stage = "log in"
                    await client.login(smtp.username, password or "")
        except aiosmtplib.SMTPAuthenticationError as e:
            client.close()
            raise DeliveryError(
                f"authentication as {smtp.username} at {where} failed: {_describe(e)}", session=True
            ) from None
        except TimeoutError:
            client.close()
            raise DeliveryError(
                f"cannot {stage} at {where}: no answer within {smtp.timeout_sec:g}s", session=True
            ) from None
        except (aiosmtplib.SMTPException, OSError) as e:
            client.close()
            raise DeliveryError(f"cannot {stage} at {where}: {_describe(e)}", session=True) from None
        done = False
        try:
            yield _Session(client, smtp.timeout_sec)
            done = True
        finally:
            # QUIT only after a clean end: after an error or a cancellation (hasupd stopping) the
            # connection is just closed, without waiting for a server that may not answer.
            if done and client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    async with asyncio.timeout(min(smtp.timeout_sec, QUIT_TIMEOUT_SEC)):
                        await client.quit()
            client.close()
