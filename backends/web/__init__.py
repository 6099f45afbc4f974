"""The ``web`` backend: Atom feeds and live pages served by the daemon's HTTP server.

An account ``{backend: web}`` owns feeds; a destination ``{via: ACCOUNT, to: FEED}``
appends each match to the feed ``FEED``, which keeps its last ``keep`` items (default
100). Items are rendered through ``templates/web/`` into a title, a link, a summary and
HTML content (autoescaped). The server (:mod:`.server`, started by the daemon when the
config has a top-level ``web:`` section) serves them at ``/feeds/FEED.atom``,
``/feeds/FEED/events`` (Server-Sent Events) and ``/feeds/FEED`` (a page with toasts).

A feed is public unless its account names ``token_file`` (one token per line); readers
then send ``?token=`` or ``Authorization: Bearer``. Tokens are secrets: they live in
files and are never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from fedmsg_notify.backend import AccountOptions, Backend, Item, PermanentFailure, TemporaryFailure
from fedmsg_notify.config.redact import register_secret
from pydantic import Field, field_validator

from .hub import HUB, Access, FeedHub, FeedItem

SAFE_SCHEMES = ("https://", "http://")


def safe_link(link: str | None) -> str | None:
    """Only http(s) links become links anywhere on the web side; anything else is dropped."""
    if not link:
        return None
    link = link.strip()
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in link):
        return None
    return link if link.lower().startswith(SAFE_SCHEMES) else None


class WebAccount(AccountOptions):
    keep: int = Field(default=100, ge=1, le=100_000, description="items kept per feed")
    token_file: str | None = Field(default=None, description="file of reader tokens, one a line")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed to read the feeds")

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_absolute():
            # The daemon runs from / under systemd; a relative path would point elsewhere than `check` looked.
            raise ValueError(f"token_file must be an absolute path, got '{value}'")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                raise ValueError(f"CORS origin {origin!r} is not scheme://host[:port] (no path)")
        return value


class WebBackend(Backend):
    name: ClassVar[str] = "web"
    parts: ClassVar[tuple[str, ...]] = ("title", "link", "summary", "content")
    # The link may be empty (a message without one), so it is no line part; safe_link vets it.
    line_parts: ClassVar[frozenset[str]] = frozenset({"title", "summary"})
    html_parts: ClassVar[frozenset[str]] = frozenset({"content"})
    # Appending to memory: no remote end to spare.
    rate: ClassVar[float] = 10_000.0
    burst: ClassVar[int] = 10_000
    retry_cap: ClassVar[float | None] = 60.0
    needs_recipient: ClassVar[bool] = True
    extra: ClassVar[str | None] = "web"
    Account: ClassVar[type[AccountOptions]] = WebAccount
    hub: ClassVar[FeedHub] = HUB

    @property
    def options(self) -> WebAccount:
        assert isinstance(self.account, WebAccount)
        return self.account

    async def start(self) -> None:
        tokens: tuple[str, ...] = ()
        if self.options.token_file:
            path = Path(self.options.token_file).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise TemporaryFailure(f"token_file {path}: {exc.strerror or exc}") from exc
            tokens = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
            if not tokens:
                raise PermanentFailure(f"token_file {path} holds no token")
            for token in tokens:
                # Masked in every log line from here on, like every other secret.
                register_secret(token)
        access = Access(tokens=tokens, cors_origins=tuple(self.options.cors_origins))
        self.hub.register(self.account_name, access, self.options.keep)

    async def send(self, item: Item) -> None:
        to = item.destination.to
        if not to:
            raise PermanentFailure("a web destination needs 'to: <feed name>'")
        feed = self.hub.declare(to, self.account_name)
        agent = item.meta.get("agent")
        self.hub.append(
            feed,
            FeedItem(
                seq=feed.last_seq + 1,
                msg_id=item.msg_id,
                title=item.rendered.get("title", "") or item.topic,
                link=safe_link(item.rendered.get("link")),
                summary=item.rendered.get("summary", ""),
                content=item.rendered.get("content", ""),
                author=agent if isinstance(agent, str) and agent else None,
                category=item.service,
                updated=item.timestamp,
            ),
        )


__all__ = ["WebAccount", "WebBackend", "safe_link"]
