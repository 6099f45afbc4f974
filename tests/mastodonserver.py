"""A small real HTTP server that speaks the part of the Mastodon API the backend uses.

Why not ``mastodon-mock`` (PyPI 0.6.1)? It hard-codes the 500-character limit (the
truncation test needs a low one), counts raw characters where Mastodon counts every
link as 23, and its latency fault delays *before* the handler runs, so it cannot
answer slowly *after* storing a post (the duplicate-on-retry case). It also pulls
FastAPI, SQLAlchemy and uvicorn into the test environment. This server is ~200 lines
of standard library and behaves like Mastodon where the backend depends on it:

* ``GET /api/v2/instance`` and ``/api/v1/instance`` → ``configuration.statuses``;
* ``POST /api/v1/statuses`` (form or JSON) with bearer-token auth (401), the length
  rule of Mastodon's ``StatusLengthValidator`` (422), visibility validation (422) and
  ``Idempotency-Key`` deduplication (the same key returns the stored status);
* scripted responses for the next posts: an error status with headers (429 +
  ``Retry-After`` / ``X-RateLimit-*``, 503, 422) or a slow answer after storing.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

VISIBILITIES = {"public", "unlisted", "private", "direct"}
# Mastodon's length rule (app/validators/status_length_validator.rb): links count 23,
# a remote mention counts as its local part, the content warning counts too.
URL = re.compile(r"https?://\S+")
REMOTE_MENTION = re.compile(r"@(\w+)@[\w.-]+\w")


def mastodon_length(text: str, spoiler: str = "") -> int:
    countable = REMOTE_MENTION.sub(r"@\1", URL.sub("x" * 23, text))
    return len(spoiler) + len(countable)


@dataclass
class Scripted:
    """What the server does with the next ``POST /api/v1/statuses``."""

    status: int = 200
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # Store the post, then wait this long before answering (a client timeout).
    delay_after_store: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]
    # time.monotonic() when the request arrived.
    at: float = 0.0


class MastodonServer:
    """Run with ``with MastodonServer(...) as server:``; ``server.url`` is the instance address."""

    def __init__(
        self,
        token: str = "test-token",
        max_characters: int = 500,
        *,
        v2_instance: bool = True,
        instance_status: int = 200,
    ) -> None:
        self.token = token
        self.max_characters = max_characters
        self.v2_instance = v2_instance
        self.instance_status = instance_status
        self.statuses: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self.script: deque[Scripted] = deque()
        # Headers added to every successful post (e.g. X-RateLimit-Remaining: 0).
        self.success_headers: dict[str, str] = {}
        self._keys: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="mastodon-test-server", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/api/v1/statuses"]

    def __enter__(self) -> MastodonServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()  # releases handlers sleeping in delay_after_store
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- request handling (called from handler threads) --

    def instance(self, version: str) -> tuple[int, dict[str, Any]]:
        if self.instance_status != 200:
            return self.instance_status, {"error": "instance information is unavailable"}
        if version == "v2" and not self.v2_instance:
            return 404, {"error": "Record not found"}
        statuses = {"max_characters": self.max_characters, "characters_reserved_per_url": 23}
        return 200, {"uri": "127.0.0.1", "title": "test", "configuration": {"statuses": statuses}}

    def post_status(self, headers: dict[str, str], form: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "The access token is invalid"}, {}
        with self._lock:
            scripted = self.script.popleft() if self.script else Scripted()
        if scripted.status != 200:
            return scripted.status, {"error": scripted.error or "scripted failure"}, scripted.headers
        key = headers.get("idempotency-key")
        with self._lock:
            if key and key in self._keys:
                return 200, self._keys[key], self.success_headers
        text = form.get("status", "")
        spoiler = form.get("spoiler_text", "")
        visibility = form.get("visibility", "public")
        if not text.strip():
            return 422, {"error": "Validation failed: Text can't be blank"}, {}
        if mastodon_length(text, spoiler) > self.max_characters:
            return 422, {"error": f"Validation failed: Text character limit of {self.max_characters} exceeded"}, {}
        if visibility not in VISIBILITIES:
            return 422, {"error": f"Validation failed: Visibility is not included in the list ({visibility})"}, {}
        with self._lock:
            status = {
                "id": str(100 + len(self.statuses)),
                "url": f"{self.url}/@firehose/{100 + len(self.statuses)}",
                "content": text,
                "spoiler_text": spoiler,
                "visibility": visibility,
            }
            self.statuses.append(status)
            if key:
                self._keys[key] = status
        if scripted.delay_after_store:
            self._stopping.wait(scripted.delay_after_store)
        return 200, status, {**self.success_headers, **scripted.headers}


def _handler(server: MastodonServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real instance behind nginx

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _record(self, form: dict[str, str]) -> dict[str, str]:
            headers = {k.lower(): v for k, v in self.headers.items()}
            server.requests.append(Recorded(self.command, self.path, headers, form, time.monotonic()))
            return headers

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); that is the point

        def do_GET(self) -> None:
            self._record({})
            if self.path in ("/api/v1/instance", "/api/v2/instance"):
                self._reply(*server.instance(self.path.split("/")[2]))
            else:
                self._reply(404, {"error": "Record not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if (self.headers.get("Content-Type") or "").startswith("application/json"):
                form = {k: str(v) for k, v in json.loads(raw or "{}").items()}
            else:
                form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            headers = self._record(form)
            if self.path != "/api/v1/statuses":
                self._reply(404, {"error": "Record not found"})
                return
            self._reply(*server.post_status(headers, form))

    return Handler
