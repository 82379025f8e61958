"""The web dashboard with 500 services: how fast the overview is served, and hasupd's idle CPU with one
page open (live stream connected) side by side with no page open.

    python bench/dashboard.py                      # 500 services, 3 rounds of 30 s each way, a real browser
    python bench/dashboard.py --client sse         # a bare server-sent-events reader instead of Chromium
    python bench/dashboard.py --services 50 --rounds 1 --window 10   # a quick look

Any Python with hasupd's dependencies runs it (hasupd runs on the same interpreter, from this
repository); ``--client browser`` needs selenium and Debian's chromium + chromium-driver. Rounds alternate
(closed, open, closed, open, ...) so that a change in the machine's load hits both sides. It prints one
JSON document: timings (wall clock, and hasupd's CPU per request), CPU per window, and how busy the
rest of the machine was meanwhile (other processes share the 2 cores; a busy machine slows the wall-clock
serving times, not hasupd's own CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return utime + stime of process ``pid`` in seconds."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """Return the busy CPU seconds of all cores so far (user, nice, system, irq, softirq)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[float, int]:
    """Return (seconds, bytes) of one GET of ``url`` on a new connection."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return time.perf_counter() - start, len(body)


@contextmanager
def hasupd(work: Path, services: int, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run hasupd with ``services`` sleeping services and the dashboard on ``port``."""
    etc = work / "etc"
    (etc / "services.d").mkdir(parents=True)
    (etc / "hasupd.yaml").write_text(f'web: {{listen: "127.0.0.1:{port}"}}\n')
    for i in range(services):
        (etc / "services.d" / f"svc{i:03d}.yaml").write_text('command: ["/bin/sleep", "100000"]\n')
    argv = [sys.executable, "-m", "hasupd", "run", "--config-dir", str(etc), "--state-dir", str(work / "s"),
            "--runtime-dir", str(work / "r"), "--log-target", "stderr", "--log-format", "json",
            "--no-watch"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(work / "records.jsonl", "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_running(base: str, services: int, timeout: float) -> float:
    """Wait until the dashboard shows every service running; return how long that took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(base + "/api/overview", timeout=10) as response:
                units = json.load(response)["units"]
            if sum(u["state"] == "running" for u in units) == services:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"not all {services} services running within {timeout:g}s")


class SseReader:
    """A bare live-stream client in a thread: reads /live until closed, counting bytes."""

    def __init__(self, base: str) -> None:
        self.bytes = 0
        self._response = urllib.request.urlopen(base + "/live", timeout=60)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := self._response.read1(65536):
                self.bytes += len(chunk)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self._response.close()
        self._thread.join(5)


class BrowserPage:
    """Chromium (headless, selenium) with the overview open and its live stream connected."""

    def __init__(self, base: str) -> None:
        # Only --client browser needs selenium.
        from selenium import webdriver  # noqa: PLC0415
        from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--window-size=1280,900"):  # fmt: skip
            options.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        self.driver.get(base + "/")
        deadline = time.monotonic() + 30
        while self.driver.find_element("id", "live-status").text != "live":
            if time.monotonic() > deadline:
                raise SystemExit("the page's live stream did not connect within 30 s")
            time.sleep(0.1)

    def close(self) -> None:
        self.driver.quit()


def window(pid: int, seconds: float) -> dict[str, float]:
    """Return hasupd's CPU (% of one core) and the machine's busy cores over ``seconds``."""
    t0, c0, m0 = time.monotonic(), cpu_seconds(pid), machine_busy()
    time.sleep(seconds)
    t1, c1, m1 = time.monotonic(), cpu_seconds(pid), machine_busy()
    return {
        "seconds": round(t1 - t0, 2),
        "hasupd_cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 3),
        "machine_busy_cores": round((m1 - m0) / (t1 - t0), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (closed, open) windows")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per CPU window")
    parser.add_argument("--requests", type=int, default=30, help="GETs of the overview")
    # Past the 30 s after which each run counts as stable (one service.stable record per service).
    parser.add_argument("--settle", type=float, default=35.0, help="seconds after all run, before measuring")
    parser.add_argument("--client", choices=("browser", "sse"), default="browser")
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {
        "command": "python bench/dashboard.py " + " ".join(sys.argv[1:]),
        "services": args.services,
        "client": args.client,
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    with tempfile.TemporaryDirectory(prefix="hdash-") as tmp, hasupd(Path(tmp), args.services, port) as proc:
        out["all_running_after_sec"] = round(wait_running(base, args.services, 120), 2)
        time.sleep(args.settle)
        for path in ("/", "/api/overview"):
            times, size = [], 0
            cpu_before = cpu_seconds(proc.pid)
            for _ in range(args.requests):
                took, size = get(base + path)
                times.append(took * 1000)
            cpu = cpu_seconds(proc.pid) - cpu_before
            times.sort()
            out[f"GET {path}"] = {
                "bytes": size,
                # hasupd's own CPU per request: what the wall time would be on an idle core.
                "hasupd_cpu_ms_per_request": round(1000 * cpu / args.requests, 1),
                "median_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
                "max_ms": round(times[-1], 1),
            }
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            closed = window(proc.pid, args.window)
            page = BrowserPage(base) if args.client == "browser" else SseReader(base)
            time.sleep(2)  # the page's first load and its initial full message are not idle
            opened = window(proc.pid, args.window)
            page.close()
            time.sleep(2)
            rounds.append({"closed": closed, "open": opened})
        out["rounds"] = rounds
        for side in ("closed", "open"):
            values = [r[side]["hasupd_cpu_pct"] for r in rounds]
            out[f"idle_cpu_pct_{side}_median"] = round(statistics.median(values), 3)
            out[f"idle_cpu_pct_{side}_max"] = max(values)
    out["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    if shutil.which("chromium") is None and "--client" not in sys.argv:
        sys.argv += ["--client", "sse"]
    main()
