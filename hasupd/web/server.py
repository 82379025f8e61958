"""The read-only dashboard: aiohttp on hasupd's own event loop, pages from jinja2 templates, live
updates as server-sent events (``hasupd.web.live``).

Only ``GET`` and ``HEAD`` are routed: the dashboard changes nothing (state-changing requests stay with
``hasupctl`` and its roles). With a credential configured every request needs it (``hasupd.web.auth``);
a wrong one is answered 401 and recorded (``web.login_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
import psutil
from aiohttp import web

from hasupd import events as ev
from hasupd.config.model import WebConfig
from hasupd.config.validate_web import is_loopback
from hasupd.control.context import CommandError, Context
from hasupd.observe.service_output import JournalctlError
from hasupd.web import auth, charts, views
from hasupd.web.filters import FILTERS
from hasupd.web.live import KEEPALIVE_SEC, LiveFeed, sse

HERE = Path(__file__).resolve().parent
STATIC = {"dashboard.css": "text/css", "live.js": "text/javascript"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@-]*$")
_INCIDENT_RE = re.compile(r"^[0-9a-f]{1,64}$")
_GROUP_RE = re.compile(r"^[0-9a-f]{12}$")  # an error group's id (hasupctl errors)
CLEANUP_TIMEOUT_SEC = 5.0
MAX_LIVE_PAGES = 64  # open live streams; each holds a queue of up to CLIENT_QUEUE messages
# No inline script or style runs: the pages' own script and style sheet only.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def split_listen(listen: str) -> tuple[str, int]:
    """Return (host, port) of a validated "host:port" or "[v6]:port"."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Dashboard:
    """Serves ``config`` from the control context ``ctx`` until cancelled."""

    def __init__(self, config: WebConfig, ctx: Context, bus: ev.EventBus) -> None:
        self.config = config
        self.ctx = ctx
        self.bus = bus
        self.started = psutil.Process().create_time()  # hasupd's start (a re-exec keeps the pid)
        self.feed: LiveFeed | None = None
        self._secret: bytes | None = None
        self._refusals = auth.RefusalRecords()
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(HERE / "templates")),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters.update(FILTERS)

    # ------------------------------------------------------------------ serving

    def app(self) -> web.Application:
        """Return the aiohttp application (routes and middlewares)."""
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.overview)
        app.router.add_get("/service/{name}", self.service)
        app.router.add_get("/incident/{id}", self.incident)
        app.router.add_get("/errors", self.errors)
        app.router.add_get("/errors/{group}", self.error_group)
        app.router.add_get("/backups", self.backups)
        app.router.add_get("/live", self.live)
        app.router.add_get("/api/overview", self.overview_json)
        app.router.add_get("/static/{file}", self.static)
        app.router.add_get("/favicon.ico", self.favicon)
        return app

    async def run(self) -> None:
        """Serve until cancelled. A dashboard that cannot be served (secret, certificate, address) is
        recorded as ``web.unavailable``; this returns and supervision goes on."""
        listen = self.config.listen
        host, port = split_listen(listen)
        try:
            self._secret = auth.read_secret(self.config)
            tls = auth.tls_context(self.config)
        except auth.WebSetupError as e:
            self.bus.publish(ev.WebUnavailable(address=listen, error=str(e)))
            return
        feed = self.feed = LiveFeed(self.bus, self._rows, self._backup_rows, self._summary)
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_address=True)
            try:
                await site.start()
            except OSError as e:
                self.bus.publish(ev.WebUnavailable(address=listen, error=e.strerror or str(e)))
                return
            self.bus.publish(ev.WebListening(url=f"{'https' if tls else 'http'}://{listen}/"))
            await feed.run()
        finally:
            feed.close()  # open live streams end, so the cleanup does not wait for them
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.cleanup(), CLEANUP_TIMEOUT_SEC)

    def _host_allowed(self, request: web.Request) -> bool:
        """Return True if the request's Host names a loopback address (or the configured host).

        Without a credential (a loopback dashboard) this is what stops DNS rebinding: a web page from
        elsewhere whose name was made to resolve to 127.0.0.1 still sends its own name as Host.
        """
        name = request.host.lower()
        if not name.endswith("]"):
            name = name.rpartition(":")[0] or name
        name = name.strip("[]")
        return is_loopback(name) or name == split_listen(self.config.listen)[0].lower()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._secret is None and not self._host_allowed(request):
            return web.Response(status=421, text="421: unknown host name for this dashboard\n")
        if self._secret is not None:
            refused = auth.check(request.headers.get("Authorization"), self._secret)
            if refused is not None:
                if refused == auth.WRONG_CREDENTIAL:
                    self._record_refusal(request, refused)
                return web.Response(
                    status=401,
                    text="401: this dashboard needs its token (Authorization: Bearer, or Basic auth)\n",
                    headers={"WWW-Authenticate": 'Basic realm="hasupd", charset="UTF-8"', **SECURITY_HEADERS},
                )
        try:
            response = await handler(request)
        except (JournalctlError, OSError, CommandError, sqlite3.Error) as e:
            response = self._page("error.html", status=503, message=f"cannot read what this page shows: {e}")
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    def _record_refusal(self, request: web.Request, reason: str) -> None:
        remote = str(request.remote)
        suppressed = self._refusals.admit(remote, time.monotonic())
        if suppressed is not None:  # else a flood: counted, and told with the next record
            self.bus.publish(
                ev.WebLoginFailed(remote=remote, path=request.path, reason=reason, suppressed=suppressed)
            )

    def _page(self, template: str, status: int = 200, **values: Any) -> web.Response:
        values.setdefault("version", self.ctx.reloader.daemon_info().get("version"))
        body = self._templates.get_template(template).render(**values)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _not_found(self, what: str) -> web.Response:
        return self._page("error.html", status=404, message=what)

    # ------------------------------------------------------------------ data for the live feed

    def _rows(self, units: list[str]) -> list[dict[str, Any]]:
        return [views.unit_row(self.ctx, u) for u in units if u in self.ctx.manager.services]

    async def _backup_rows(self) -> list[dict[str, Any]]:
        return await views.backup_rows(self.ctx)

    def _summary(self) -> dict[str, Any]:
        return views.daemon_summary(self.ctx, self.started)

    # ------------------------------------------------------------------ pages

    async def overview(self, request: web.Request) -> web.Response:
        return self._page("overview.html", page="overview", **await views.overview(self.ctx, self.started))

    async def overview_json(self, request: web.Request) -> web.Response:
        data = await views.overview(self.ctx, self.started)
        return web.Response(text=json.dumps(data, default=str), content_type="application/json")

    async def service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = await views.service_page(self.ctx, name) if _NAME_RE.match(name) else None
        if found is None:
            return self._not_found(f"no such service: {name}")
        now = found["now"]
        hours = [time.strftime("%H:00", time.localtime(now - (23 - i) * 3600)) for i in range(24)]
        days = [time.strftime("%m-%d", time.localtime(now - (29 - i) * 86400)) for i in range(30)]
        series = (("exits", "s-bad", "exits"), ("starts", "s-info", "starts"))
        return self._page(
            "service.html",
            page="service",
            **found,
            day_chart=charts.bars(found["day"], hours, series, f"{name}: exits and starts, last 24 hours"),
            month_chart=charts.bars(found["month"], days, series, f"{name}: exits and starts, last 30 days"),
        )

    async def incident(self, request: web.Request) -> web.Response:
        incident = request.match_info["id"]
        found = await views.incident_page(self.ctx, incident) if _INCIDENT_RE.match(incident) else None
        if found is None:
            return self._not_found(f"no records of incident {incident}")
        return self._page("incident.html", page="incident", **found)

    def _error_range(self, request: web.Request) -> str:
        """Return the range the request asks for (one of ``views.ERROR_RANGES``; the default if not)."""
        label = request.query.get("range", views.DEFAULT_ERROR_RANGE)
        return label if label in views.ERROR_RANGES else views.DEFAULT_ERROR_RANGE

    async def errors(self, request: web.Request) -> web.Response:
        """The ranking of ``hasupctl errors --since RANGE``, as a chart and a table."""
        label = self._error_range(request)
        if self.ctx.records is None and self.ctx.errors is None:
            return self._not_found("this hasupd keeps no records or error groups it can read back")
        groups = await views.errors_page(self.ctx, label)
        items = [(views.error_label(g), int(g["count"])) for g in groups[:20]]
        return self._page(
            "errors.html",
            page="errors",
            groups=groups,
            ranges=views.ERROR_RANGES,
            selected=label,
            chart=charts.ranking(items, f"most common errors, last {label}"),
        )

    async def error_group(self, request: web.Request) -> web.Response:
        """One group: ``hasupctl errors show GROUP`` (its samples, the incidents it appeared in)."""
        group = request.match_info["group"]
        label = self._error_range(request)
        found = await views.error_group_page(self.ctx, group, label) if _GROUP_RE.match(group) else None
        if found is None:
            return self._not_found(f"no error group {group} (in the last {label})")
        return self._page("error_group.html", page="errors", g=found, selected=label)

    async def backups(self, request: web.Request) -> web.Response:
        jobs = await views.backups_page(self.ctx)
        for job in jobs:
            sizes = job["sizes"][-30:]
            labels = [time.strftime("%m-%d %H:%M", time.localtime(s["ts"])) for s in sizes]
            job["size_chart"] = charts.bars(
                [{"bytes": s["bytes"]} for s in sizes],
                labels,
                (("bytes", "s-ok", "bytes added"),),
                f"{job['job']}: bytes added per backup",
            )
        return self._page("backups.html", page="backups", jobs=jobs)

    async def live(self, request: web.Request) -> web.StreamResponse:
        """The live stream: the whole overview first, then only what changes."""
        assert self.feed is not None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **SECURITY_HEADERS})
        await response.prepare(request)
        queue = self.feed.connect(MAX_LIVE_PAGES)
        try:
            first = await views.overview(self.ctx, self.started)
            await response.write(sse({"full": True, **first}))
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE_SEC)
                except TimeoutError:
                    data = b": keepalive\n\n"
                if data is None:
                    break
                await response.write(data)
        except ConnectionError:
            pass  # the page was closed
        finally:
            self.feed.disconnect(queue)
        return response

    async def favicon(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)  # none: browsers ask, and a 404 would fill their consoles

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in STATIC:
            return self._not_found(f"no such file: {name}")
        return web.Response(body=(HERE / "static" / name).read_bytes(), content_type=STATIC[name])
