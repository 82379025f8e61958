"""The far side of chat, push and pager alerts, on loopback: a small HTTP server that records every JSON
POST. One class stands in for a JSON webhook, an ntfy server (Apprise posts ``{"topic", "title",
"message"}`` to its root) and a PagerDuty Events v2 endpoint (answers 202 with the dedup key).

``mode`` decides the answer: "ok" (``status``), "fail" (500), "hang" (reads the request, never
answers until released or ``HANG_MAX_SEC``). ``stop()`` takes it off the port (a receiver that is
down); ``start()`` brings it back on the same port.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

HANG_MAX_SEC = 120.0


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON
    at: float  # time.time() when it arrived


class Receiver:
    def __init__(self, port: int, status: int = 200, mode: str = "ok") -> None:
        self.port = port
        self.status = status
        self.mode = mode
        self.received: list[Post] = []
        self.attempts = 0  # every POST, answered or not
        self._cond = threading.Condition()
        self._release = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._cond:
                    receiver.attempts += 1
                    receiver._cond.notify_all()
                mode = receiver.mode
                if mode == "hang":
                    receiver._release.wait(HANG_MAX_SEC)
                    self.close_connection = True
                    return
                if mode == "garbage":  # not HTTP at all: a status line nothing can parse
                    self.wfile.write(b"GARBAGE\r\n\r\n")
                    self.close_connection = True
                    return
                if mode == "fail":
                    self._answer(500, {"status": "error", "message": "stand-in failure"})
                    return
                body = json.loads(raw) if raw else None
                with receiver._cond:
                    receiver.received.append(Post(self.path, dict(self.headers), body, time.time()))
                    receiver._cond.notify_all()
                dedup = body.get("dedup_key") if isinstance(body, dict) else None
                self._answer(receiver.status, {"status": "success", "message": "ok", "dedup_key": dedup})

            def _answer(self, status: int, data: dict[str, Any]) -> None:
                out = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._release.clear()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def set_mode(self, mode: str) -> None:
        """Answer from now on as ``mode``; a hanging request is let go (without an answer)."""
        self.mode = mode
        if mode != "hang":
            self._release.set()

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait(self, count: int, timeout: float) -> list[Post]:
        """Wait until ``count`` posts were accepted; return them all. Fail on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {count} posts within {timeout}s")
                self._cond.wait(left)
            return list(self.received)

    def wait_attempts(self, count: int, timeout: float) -> None:
        """Wait until ``count`` POSTs arrived (answered or not). Fail on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.attempts < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.attempts} of {count} attempts within {timeout}s")
                self._cond.wait(left)
