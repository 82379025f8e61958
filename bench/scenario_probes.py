"""Scenario 6: the CPU cost of HTTP health probes, for every supervisor that can probe. Whether it can
is asked of the supervisor itself (``Supervisor.probe_support``), so a supervisor that gains probes is
measured without changes here."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from typing import Any

from procs import LineReader, cpu_seconds
from runner import Context
from supervisors import ServiceSpec, Supervisor


class _Health(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        # A prober may hang up once it has the status line (hasupd reads the head only).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def probes(ctx: Context) -> dict[str, Any]:
    """CPU cost of ``probe_services`` services each probed over HTTP every second, for every
    supervisor that can probe (asked of the supervisor itself, so hasupd is measured once it can)."""
    out: dict[str, Any] = {}
    for sup in ctx.supervisors:
        reason = sup.probe_support(ctx.folder(f"probe-check-{sup.name}"))
        if reason is not None:
            out[sup.name] = {"measured": False, "reason": reason}
            continue
        ctx.log(f"probes: {sup.name}, {ctx.settings.probe_services} services")
        out[sup.name] = {"measured": True, **_probe_run(ctx, sup)}
    return out


def _probe_run(ctx: Context, sup: Supervisor) -> dict[str, Any]:
    s = ctx.settings
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reader = LineReader(ctx.root / f"probe-{sup.name}.fifo")
    try:
        port = server.server_address[1]
        names = [f"svc-{i:03d}" for i in range(s.probe_services)]
        services = [
            ServiceSpec(n, ctx.programs.ready(n, reader.path), http_probe=f"http://127.0.0.1:{port}/{n}")
            for n in names
        ]
        with ctx.running(sup, "probes", services) as run:
            run.wait_ready(reader, len(names))
            time.sleep(s.idle_settle_sec)
            c0, h0, t0 = cpu_seconds(run.pid), _Health.hits, time.monotonic()
            time.sleep(s.probe_window_sec)
            c1, h1, t1 = cpu_seconds(run.pid), _Health.hits, time.monotonic()
    finally:
        reader.close()
        server.shutdown()
        server.server_close()
    return {
        "services": s.probe_services,
        "cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 3),
        "probes_per_sec": round((h1 - h0) / (t1 - t0), 1),
    }
