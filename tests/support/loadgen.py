"""A small HTTP load generator for loopback tests: counts refused connections and failed requests."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    refused: int = 0  # ECONNREFUSED: nothing was listening
    failed: int = 0  # no good answer, even after the one retry below
    retried: int = 0  # reset before any response byte, retried once (as HTTP clients do for GET)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] if data else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "failed": self.failed,
            "retried_after_reset": self.retried,
            "p50_ms": round(self.percentile(0.50) * 1000, 2),
            "p99_ms": round(self.percentile(0.99) * 1000, 2),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 2),
        }


def _get(port: int, timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Load:
    """``workers`` threads each sending one GET after another (a new connection each) until stopped."""

    def __init__(self, port: int, workers: int = 4, timeout: float = 20.0) -> None:
        self.port = port
        self.timeout = timeout
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            outcome, retried = self._one()
            elapsed = time.monotonic() - started
            with self._lock:
                self.result.requests += 1
                self.result.retried += retried
                self.result.latencies.append(elapsed)
                if outcome == "refused":
                    self.result.refused += 1
                    self.result.failed += 1
                elif outcome != "ok":
                    self.result.failed += 1
                    self.result.errors.append(outcome)

    def _one(self) -> tuple[str, int]:
        for attempt in range(2):
            try:
                status = _get(self.port, self.timeout)
            except ConnectionRefusedError:
                return "refused", attempt
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as error:
                # The instance that had accepted this connection was killed before answering: no byte
                # of a response came, so the GET is safe to send again.
                if attempt == 0:
                    continue
                return f"reset twice: {error!r}", attempt
            except (OSError, http.client.HTTPException) as error:
                return f"error: {error!r}", attempt
            return ("ok" if status == 200 else f"HTTP {status}"), attempt
        return "unreachable", 1
