"""The dashboard's credential and TLS: a secret read from a file, checked in constant time.

A request proves it knows the secret with ``Authorization: Bearer SECRET`` (scripts) or HTTP Basic auth
with any user name and SECRET as the password (browsers ask for it, and send it with the page's live
stream too).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ssl
from pathlib import Path

from hasupd.config.model import WebConfig

NO_CREDENTIAL = "no credential"
WRONG_CREDENTIAL = "wrong credential"


class WebSetupError(Exception):
    """The dashboard cannot be served as configured (unreadable secret, bad certificate)."""


def read_secret(config: WebConfig) -> bytes | None:
    """Return the secret of ``config`` (its file's first line), or None when it names none.

    Raise WebSetupError if the file cannot be read or its first line is empty.
    """
    path = config.token_file or config.password_file
    if path is None:
        return None
    try:
        text = Path(path).read_bytes()
    except OSError as e:
        raise WebSetupError(f"cannot read {path}: {e.strerror or e}") from None
    secret = text.split(b"\n", 1)[0].rstrip(b"\r")
    if not secret:
        raise WebSetupError(f"{path}: the first line (the secret) is empty")
    return secret


def tls_context(config: WebConfig) -> ssl.SSLContext | None:
    """Return the server TLS context of ``config`` (None without ``tls``). Raise WebSetupError."""
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    except (OSError, ssl.SSLError) as e:
        raise WebSetupError(f"cannot load {config.tls.cert_file} / {config.tls.key_file}: {e}") from None
    return context


def check(header: str | None, secret: bytes) -> str | None:
    """Return None if the ``Authorization`` header carries ``secret``, else why not (``NO_CREDENTIAL``
    or ``WRONG_CREDENTIAL``). The comparison takes the same time whatever the offered secret is."""
    if not header:
        return NO_CREDENTIAL
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    offered = b""
    if scheme.lower() == "bearer":
        offered = value.encode("utf-8", "replace")
    elif scheme.lower() == "basic":
        try:
            offered = base64.b64decode(value, validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            offered = b""
    else:
        return NO_CREDENTIAL
    return None if hmac.compare_digest(offered, secret) else WRONG_CREDENTIAL


class RefusalRecords:
    """Decides which refused logins become records: at most ``per_window`` per client address and
    ``window_sec``, so that a flood of wrong guesses cannot push older records out of the rotated files.
    The refusals left out are counted and reported with that address's next record."""

    def __init__(self, per_window: int = 5, window_sec: float = 60.0, max_addresses: int = 1024) -> None:
        self._per_window = per_window
        self._window_sec = window_sec
        self._max_addresses = max_addresses
        self._seen: dict[str, tuple[float, int, int]] = {}  # address -> (window start, recorded, left out)

    def admit(self, address: str, now: float) -> int | None:
        """Return how many earlier refusals from ``address`` were left out if this one is to be recorded,
        or None if it is to be left out (and counted)."""
        start, recorded, left_out = self._seen.get(address, (now, 0, 0))
        if now - start >= self._window_sec:
            start, recorded = now, 0
        if recorded >= self._per_window:
            self._seen[address] = (start, recorded, left_out + 1)
            return None
        if address not in self._seen and len(self._seen) >= self._max_addresses:
            # Forget addresses whose window is over (bounded memory whatever the number of clients).
            self._seen = {a: s for a, s in self._seen.items() if now - s[0] < self._window_sec}
        self._seen[address] = (start, recorded + 1, 0)
        return left_out
