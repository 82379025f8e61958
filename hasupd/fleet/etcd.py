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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit


class EtcdError(Exception):
    """etcd answered with an error (bad credentials, a refused request)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (network, TLS handshake, a dead cluster)."""


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

    def _post_once(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        parts = urlsplit(endpoint)
        host, port = parts.hostname or "", parts.port or 2379
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
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
            message = result.get("message") or error or f"HTTP {status}"
            raise EtcdError(f"{endpoint}{path}: {message}")
        return result

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers; authenticate first when a user is configured."""
        errors = []
        for attempt in range(len(self._endpoints)):
            endpoint = self._endpoints[(self._current + attempt) % len(self._endpoints)]
            try:
                if self._username is not None and self._token is None:
                    auth = self._post_once(
                        endpoint,
                        "/v3/auth/authenticate",
                        {"name": self._username, "password": self._password},
                    )
                    self._token = str(auth.get("token", ""))
                answer = self._post_once(endpoint, path, body)
            except (OSError, http.client.HTTPException) as exc:  # includes timeouts and TLS failures
                errors.append(f"{endpoint}: {exc}")
                continue
            except EtcdError as exc:
                if "token" in str(exc) and self._username is not None:
                    self._token = None  # expired auth token: authenticate again on the next call
                raise
            self._current = (self._current + attempt) % len(self._endpoints)
            return answer
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
