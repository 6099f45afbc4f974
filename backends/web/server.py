"""The daemon's HTTP server (aiohttp, on the daemon's own event loop).

Routes: ``/feeds/NAME.atom`` (Atom 1.0 via feedgen, with ETag and Last-Modified),
``/feeds/NAME/events`` (Server-Sent Events with ``Last-Event-ID`` replay, heartbeats and
a cap on concurrent clients), ``/feeds/NAME`` (an HTML page with live toasts),
``/embed.js`` and ``/web.css`` (the toast script and its style, for the page and for any
web app), ``/healthz`` and ``/metrics`` (Prometheus text format).

No access log: a request line may hold ``?token=``, and tokens never reach a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .atom import atom_feed
from .hub import HUB, Feed, FeedHub, FeedItem
from .metrics import Snapshot, SnapshotCollector
from .page import render_page

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# A client that reads slower than this many items behind is dropped (it resumes by id).
CLIENT_QUEUE = 256


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str | None = None
    max_clients: int = 100
    heartbeat: float = 15.0


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class WebServer:
    def __init__(
        self,
        settings: WebSettings,
        snapshot: Callable[[], Snapshot],
        *,
        hub: FeedHub = HUB,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.clients = 0
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(snapshot, lambda: self.clients))
        self.app = web.Application(middlewares=[self._headers])
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
                web.get("/embed.js", self.embed_js),
                web.get("/web.css", self.web_css),
                web.get(r"/feeds/{name:[^/]+}.atom", self.atom),
                web.get(r"/feeds/{name:[^/]+}/events", self.events),
                web.get(r"/feeds/{name:[^/.]+}", self.page),
            ]
        )
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._streams: set[web.StreamResponse] = set()
        self._closing = asyncio.Event()

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        log.info("web: serving feeds, /healthz and /metrics on http://%s:%s", self.settings.host, self.port)

    async def close(self) -> None:
        self._closing.set()
        if self.runner is not None:
            await self.runner.cleanup()

    # -- middleware and helpers -----------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _feed(self, request: web.Request) -> Feed:
        feed = self.hub.feeds.get(request.match_info["name"])
        if feed is None:
            raise web.HTTPNotFound(text="no such feed\n")
        return feed

    def _authorise(self, request: web.Request, feed: Feed) -> dict[str, str]:
        """CORS headers for the request's origin; 401 without a valid token on a private feed."""
        access = self.hub.feed_access(feed)
        token = request.query.get("token")
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not access.allows(token):
            raise web.HTTPUnauthorized(
                text="this feed needs a token (?token= or Authorization: Bearer)\n",
                headers={"WWW-Authenticate": 'Bearer realm="fedmsg-notify"'},
            )
        origin = request.headers.get("Origin")
        if origin and origin in access.cors_origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    def _base(self, request: web.Request) -> str:
        return (self.settings.base_url or f"{request.scheme}://{request.host}").rstrip("/")

    # -- routes ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def embed_js(self, request: web.Request) -> web.Response:
        return web.Response(body=_static("embed.js"), content_type="application/javascript", charset="utf-8")

    async def web_css(self, request: web.Request) -> web.Response:
        return web.Response(body=_static("web.css"), content_type="text/css", charset="utf-8")

    async def atom(self, request: web.Request) -> web.Response:
        feed = self._feed(request)
        headers = self._authorise(request, feed)
        etag = f'"{self.hub.epoch}-{feed.last_seq}"'
        newest = feed.items[-1].updated if feed.items else None
        headers["ETag"] = etag
        headers["Cache-Control"] = "no-cache"
        if newest is not None:
            headers["Last-Modified"] = _http_date(newest)
        if _not_modified(request, etag, newest):
            return web.Response(status=304, headers=headers)
        body = atom_feed(feed, self._base(request))
        return web.Response(body=body, headers={**headers, "Content-Type": "application/atom+xml; charset=utf-8"})

    async def page(self, request: web.Request) -> web.Response:
        feed = self._feed(request)
        headers = self._authorise(request, feed)
        token = request.query.get("token")
        html = render_page(feed, token=token)
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        feed = self._feed(request)
        headers = self._authorise(request, feed)
        if self.clients >= self.settings.max_clients:
            raise web.HTTPServiceUnavailable(
                text="too many live clients; try again later\n", headers={"Retry-After": "30"}
            )
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        try:
            resume = int(last) if last else None
        except ValueError:
            resume = None
        queue: asyncio.Queue[FeedItem] = asyncio.Queue(CLIENT_QUEUE)
        feed.listeners.add(queue)
        self.clients += 1
        response = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            # The retry hint, and a comment so a client knows the stream is open.
            await response.write(b"retry: 2000\n: open\n\n")
            sent = resume if resume is not None else feed.last_seq
            if resume is not None:
                for item in list(feed.since(resume)):
                    await response.write(_event(item))
                    sent = item.seq
            while not self._closing.is_set() and queue in feed.listeners:
                try:
                    item = await asyncio.wait_for(queue.get(), self.settings.heartbeat)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if item.seq <= sent:
                    continue
                await response.write(_event(item))
                sent = item.seq
        except ConnectionResetError:
            # The client went away; its next connection resumes from Last-Event-ID.
            return response
        finally:
            feed.listeners.discard(queue)
            self.clients -= 1
        with contextlib.suppress(Exception):
            await response.write_eof()
        return response


def _event(item: FeedItem) -> bytes:
    data = json.dumps(item.as_event(), ensure_ascii=True, separators=(",", ":"))
    return f"id: {item.seq}\nevent: item\ndata: {data}\n\n".encode()


def _http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(int(timestamp), UTC), usegmt=True)


def _not_modified(request: web.Request, etag: str, newest: float | None) -> bool:
    match = request.headers.get("If-None-Match")
    if match is not None:
        offered = {tag.strip().removeprefix("W/") for tag in match.split(",")}
        return etag in offered or "*" in offered
    since = request.headers.get("If-Modified-Since")
    if since and newest is not None:
        try:
            when = parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False
        return int(newest) <= when
    return False
