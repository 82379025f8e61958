"""A small blocking client for etcd v3's JSON gateway (``/v3/...``), used from a worker thread.

Only what the fleet needs: lease grant / keep-alive / revoke / time-to-live, a create-if-absent
transaction, a guarded delete, range reads and authentication. Every call has a socket timeout, so a
worker thread never hangs; the event loop never calls it directly (see ``node.FleetNode``).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit


class EtcdError(Exception):
    """etcd answered with an error (a refused request); ``code`` is its gRPC status code (0: unknown)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (network, TLS handshake, a dead cluster, no raft leader)."""


class EtcdRefused(EtcdError):
    """etcd refused our credentials: a wrong user or password, or every endpoint refused the TLS
    handshake (an untrusted server certificate, a client certificate it does not accept). Retrying
    does not help until an operator fixes the configuration."""


# gRPC status codes etcd uses (google.golang.org/grpc/codes).
_UNAVAILABLE = {1, 4, 14}  # canceled, deadline exceeded, unavailable: no leader, timed out, stopping
_UNAUTHENTICATED = 16  # "invalid auth token": the simple token expired or this member does not know it yet
_REFUSED = {7}  # permission denied
_AUTH_FAILED = "authentication failed"  # a wrong user or password (code 3, invalid argument)
# etcd >= 3.4 (embed/serve.go) with --client-cert-auth and auth enabled answers this, in plain text, to a
# gateway request whose client certificate has a CommonName (a CN would name the gateway's user, not ours).
_GATEWAY_CN = b"CommonName of client sending a request against gateway"


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    lease: int


@dataclass(frozen=True)
class Snapshot:
    """A range read: the key-values under a prefix and the store revision it was read at."""

    revision: int
    kvs: tuple[KeyValue, ...]


class Etcd(Protocol):
    """What the fleet asks of etcd; ``EtcdGateway`` is the real one, the unit tests use a fake."""

    def grant(self, ttl: int) -> int: ...

    def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; return its TTL (0: the lease is gone)."""
        ...

    def revoke(self, lease: int) -> None: ...

    def time_to_live(self, lease: int) -> tuple[int, int]:
        """Return (remaining TTL, granted TTL); (-1, 0) when the lease is gone."""
        ...

    def create(self, key: str, value: str, lease: int) -> tuple[bool, int]:
        """Put ``key`` bound to ``lease`` only if it does not exist; return (created, its create revision)."""
        ...

    def delete_if(self, key: str, create_revision: int) -> bool:
        """Delete ``key`` only if it is still the one created at ``create_revision``."""
        ...

    def put(self, key: str, value: str, lease: int = 0) -> None: ...

    def delete(self, key: str) -> None: ...

    def range_prefix(self, prefix: str) -> Snapshot: ...


MIN_ATTEMPT_SEC = 0.05  # less time than this left in a call: the endpoint is not tried in this call


def _describe(exc: BaseException, timeout: float) -> str:
    """Return a short text for a transport error (a socket timeout says how long it waited)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:.2g}s"
    return str(exc) or type(exc).__name__


def _tls_problem(exc: ssl.SSLError) -> str:
    """Return the TLS error with what it most likely means for an etcd client."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.verify_message or exc}: etcd's server certificate is not signed by fleet.etcd.ca_file"
    if isinstance(exc, ssl.SSLEOFError) or "alert" in str(exc):
        return (
            f"{exc}: etcd ended the handshake; with --client-cert-auth it needs fleet.etcd.cert_file and "
            f"key_file signed by its --trusted-ca-file"
        )
    return str(exc)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class EtcdGateway:
    """etcd over its gRPC gateway (JSON over HTTP/1.1); tries the endpoints in order.

    Not thread-safe: one instance per worker thread (the fleet uses one thread).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._username = username
        self._password = password
        self._token: str | None = None
        self._ssl: ssl.SSLContext | None = None
        if any(e.startswith("https:") for e in endpoints):
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if cert_file and key_file:
                self._ssl.load_cert_chain(cert_file, key_file)
        self._current = 0

    # ------------------------------------------------------------------ transport

    def _post_once(self, endpoint: str, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        parts = urlsplit(endpoint)
        host, port = parts.hostname or "", parts.port or 2379
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if self._token is not None and path != "/v3/auth/authenticate":
            headers["Authorization"] = self._token
        try:
            conn.request("POST", path, json.dumps(body), headers)
            response = conn.getresponse()
            # Streaming calls (lease keep-alive) answer one JSON object per line: the first is ours.
            data = response.readline() if path == "/v3/lease/keepalive" else response.read()
            status = response.status
        finally:
            conn.close()
        if status == 400 and _GATEWAY_CN in data:
            raise EtcdRefused(
                f"{endpoint}: etcd's JSON gateway refuses client certificates with a CommonName while "
                f"etcd's authentication is on (HTTP 400 {data.decode(errors='replace').strip()!r}): give "
                f"hasupd a client certificate without CN (e.g. subject /O=hasupd) and a user name + password"
            )
        try:
            answer = json.loads(data or b"{}")
        except ValueError as exc:
            raise EtcdError(f"{endpoint}{path}: HTTP {status}, not JSON: {data[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise EtcdError(f"{endpoint}{path}: unexpected answer {answer!r}")
        error = answer.get("error")
        result: dict[str, Any] = answer
        if isinstance(answer.get("result"), dict) and "error" not in answer:
            result = answer["result"]
        if status != 200 or error:
            # Unary calls: {"error", "code", "message"}; streams: {"error": {"grpc_code", "message"}}.
            detail = error if isinstance(error, dict) else result
            message = detail.get("message") or error or f"HTTP {status}"
            code = detail.get("grpc_code", detail.get("code", 0))
            code = code if isinstance(code, int) else 0
            if code in _UNAVAILABLE or (not code and status in (502, 503, 504)):
                raise EtcdUnavailable(f"{endpoint}: {message}", code)
            if code in _REFUSED or _AUTH_FAILED in str(message):
                raise EtcdRefused(f"{endpoint}: {message}", code)
            raise EtcdError(f"{endpoint}{path}: {message}", code)
        return result

    def _authenticated(
        self, endpoint: str, path: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """POST to ``endpoint``, authenticating first when a user is configured and has no token yet;
        an expired token is replaced once."""
        for attempt in (1, 2):
            if self._username is not None and self._token is None:
                auth = self._post_once(
                    endpoint,
                    "/v3/auth/authenticate",
                    {"name": self._username, "password": self._password},
                    timeout,
                )
                self._token = str(auth.get("token", ""))
            try:
                return self._post_once(endpoint, path, body, timeout)
            except EtcdError as exc:
                if attempt == 2 or exc.code != _UNAUTHENTICATED or self._username is None:
                    raise
                self._token = None  # expired, or issued by a member this one has not heard from yet
        raise AssertionError("not reached")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers, all of them within one call timeout.

        An endpoint that fails (no connection, no answer in time, TLS refused, no raft leader) is
        skipped, and the next call starts at the one after it, so a retry reaches another member.
        Raise ``EtcdUnavailable`` naming every endpoint tried and its error, ``EtcdRefused`` when
        etcd refused the credentials (or every endpoint the TLS handshake), ``EtcdError`` otherwise.
        """
        errors: list[str] = []
        tls_refusals = 0
        count = len(self._endpoints)
        deadline = time.monotonic() + self._timeout
        first = self._current
        for attempt in range(count):
            remaining = deadline - time.monotonic()
            index = (first + attempt) % count
            endpoint = self._endpoints[index]
            if remaining < MIN_ATTEMPT_SEC:
                errors.append(f"{endpoint}: not tried (the call's {self._timeout:.2g}s were used up)")
                continue
            try:
                answer = self._authenticated(endpoint, path, body, remaining)
            except ssl.SSLError as exc:  # an untrusted server certificate, a rejected client one
                tls_refusals += 1
                errors.append(f"{endpoint}: TLS: {_tls_problem(exc)}")
            except (OSError, http.client.HTTPException) as exc:  # includes timeouts
                errors.append(f"{endpoint}: {_describe(exc, remaining)}")
            except EtcdUnavailable as exc:
                errors.append(str(exc))
            else:
                self._current = index
                return answer
            self._current = (index + 1) % count
        if tls_refusals == count:
            raise EtcdRefused("; ".join(errors))
        raise EtcdUnavailable("; ".join(errors))

    # ------------------------------------------------------------------ the calls

    def grant(self, ttl: int) -> int:
        return int(self._post("/v3/lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        return int(self._post("/v3/lease/keepalive", {"ID": lease}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self._post("/v3/lease/revoke", {"ID": lease})
        except EtcdUnavailable:
            raise
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    def time_to_live(self, lease: int) -> tuple[int, int]:
        answer = self._post("/v3/lease/timetolive", {"ID": lease})
        return int(answer.get("TTL", -1)), int(answer.get("grantedTTL", 0))

    def create(self, key: str, value: str, lease: int) -> tuple[bool, int]:
        answer = self._post(
            "/v3/kv/txn",
            {
                "compare": [
                    {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                ],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": str(lease)}}],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
        )
        if answer.get("succeeded"):
            return True, int(answer["header"]["revision"])
        kvs = answer.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
        return False, int(kvs[0]["create_revision"]) if kvs else 0

    def delete_if(self, key: str, create_revision: int) -> bool:
        answer = self._post(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "target": "CREATE",
                        "result": "EQUAL",
                        "create_revision": str(create_revision),
                    }
                ],
                "success": [{"request_delete_range": {"key": _b64(key)}}],
            },
        )
        return bool(answer.get("succeeded"))

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self._post("/v3/kv/put", {"key": _b64(key), "value": _b64(value), "lease": str(lease)})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})

    def range_prefix(self, prefix: str) -> Snapshot:
        answer = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        kvs = tuple(
            KeyValue(
                key=_unb64(kv["key"]),
                value=_unb64(kv.get("value", "")),
                create_revision=int(kv.get("create_revision", 0)),
                lease=int(kv.get("lease", 0)),
            )
            for kv in answer.get("kvs", [])
        )
        return Snapshot(revision=int(answer["header"]["revision"]), kvs=kvs)
