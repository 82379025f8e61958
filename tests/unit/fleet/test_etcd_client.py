"""The etcd gateway client against real local sockets: every endpoint tried within one call timeout,
each failure named, the next call starting at the next endpoint, etcd's error codes sorted into
"try another member", "refused" and "an error"."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hasupd.fleet.etcd import EtcdError, EtcdGateway, EtcdRefused, EtcdUnavailable


class Gateway(ThreadingHTTPServer):
    """A stand-in for etcd's JSON gateway: answers every POST with ``status`` and ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status, self.body, self.paths = status, body, list[str]()
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Gateway

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.paths.append(self.path)
        data = json.dumps(self.server.body).encode() + b"\n"
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def serve(servers: list[Gateway], status: int, body: dict[str, Any]) -> Gateway:
    server = Gateway(status, body)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return server


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_every_endpoint_is_named_with_its_error_within_one_call_timeout() -> None:
    refused = closed_port()
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = EtcdGateway([refused, mute, refused], timeout=0.5)
        began = time.monotonic()
        with pytest.raises(EtcdUnavailable) as caught:
            client.keepalive(7)
        took = time.monotonic() - began
    message = str(caught.value)
    assert f"{refused}: [Errno 111] Connection refused" in message
    assert f"{mute}: no answer within" in message
    assert f"{refused}: not tried (the call's 0.5s were used up)" in message
    assert took < 0.8


def test_a_member_without_leader_is_skipped_and_the_next_call_starts_after_it(servers: list[Gateway]) -> None:
    no_leader = serve(servers, 503, {"error": "etcdserver: no leader", "code": 14, "message": "no leader"})
    good = serve(servers, 200, {"result": {"ID": "7", "TTL": "5"}})
    client = EtcdGateway([no_leader.url, good.url], timeout=1.0)
    assert client.keepalive(7) == 5
    assert client.keepalive(7) == 5
    assert (len(no_leader.paths), len(good.paths)) == (1, 2)  # the second call started at the good one


def test_wrong_credentials_are_refused_not_unavailable(servers: list[Gateway]) -> None:
    auth = serve(
        servers,
        400,
        {"error": "etcdserver: authentication failed, invalid user ID or password", "code": 3},
    )
    client = EtcdGateway([auth.url], timeout=1.0, username="hasupd", password="wrong")
    with pytest.raises(EtcdRefused, match="authentication failed"):
        client.grant(5)
    assert auth.paths == ["/v3/auth/authenticate"]


def test_other_errors_are_errors(servers: list[Gateway]) -> None:
    bad = serve(servers, 400, {"error": "etcdserver: requested lease not found", "code": 5})
    with pytest.raises(EtcdError) as caught:
        EtcdGateway([bad.url], timeout=1.0).time_to_live(7)
    assert type(caught.value) is EtcdError and caught.value.code == 5
