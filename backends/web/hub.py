"""Feeds kept in memory for the web server: the last N items of each, and live listeners.

The ``web`` backend appends to a feed; the HTTP server (:mod:`.server`) reads feeds and
subscribes to new items. Both run on the daemon's event loop, so no locking is needed.
Every item gets a sequence number, unique within the feed for the life of the process:
the SSE event id a reconnecting client sends back as ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class FeedItem:
    seq: int
    msg_id: str
    title: str
    link: str | None
    summary: str
    content: str
    author: str | None
    category: str
    updated: float

    def as_event(self) -> dict[str, Any]:
        """What SSE clients receive (the page and embed.js put it in the DOM as text only)."""
        return {
            "id": self.seq,
            "msg_id": self.msg_id,
            "title": self.title,
            "link": self.link,
            "summary": self.summary,
            "author": self.author,
            "category": self.category,
            "updated": self.updated,
        }


class ItemFile(Protocol):
    """Where kept items survive a restart (:class:`.persist.FeedFile`)."""

    def load(self, feed: str, keep: int) -> list[FeedItem]: ...

    def append(self, feed: str, item: FeedItem, keep: int) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Access:
    """Who may read an account's feeds: everyone, or holders of one of its tokens."""

    tokens: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()

    @property
    def public(self) -> bool:
        return not self.tokens

    def allows(self, offered: str | None) -> bool:
        if self.public:
            return True
        if not offered:
            return False
        given = offered.encode("utf-8")
        # Every token is compared, in constant time each, whatever matches first.
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(given, token.encode("utf-8"))
        return ok


@dataclass(slots=True)
class Feed:
    name: str
    account: str
    keep: int = 100
    items: deque[FeedItem] = field(default_factory=deque)
    listeners: set[asyncio.Queue[FeedItem]] = field(default_factory=set)
    last_seq: int = 0

    def add(self, item: FeedItem) -> None:
        self.items.append(item)
        while len(self.items) > self.keep:
            self.items.popleft()
        self.last_seq = item.seq
        for queue in list(self.listeners):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                # A client that does not read loses the stream; it reconnects with Last-Event-ID.
                self.listeners.discard(queue)

    def newest_first(self) -> list[FeedItem]:
        return list(reversed(self.items))

    def since(self, seq: int) -> Iterator[FeedItem]:
        return (item for item in self.items if item.seq > seq)


class FeedHub:
    def __init__(self) -> None:
        self.feeds: dict[str, Feed] = {}
        self.access: dict[str, Access] = {}
        self.keep: dict[str, int] = {}
        # Changes on every start, so an ETag from before a restart never matches by accident.
        self.epoch = secrets.token_hex(4)
        # Where kept items go so they survive a restart (set when the web server runs).
        self.file: ItemFile | None = None

    def attach(self, file: ItemFile) -> None:
        """Keep items in ``file`` from now on; feeds declared before it are reloaded from it."""
        self.file = file
        for feed in self.feeds.values():
            if not feed.items:
                self._load(feed)

    def _load(self, feed: Feed) -> None:
        if self.file is None:
            return
        feed.items.extend(self.file.load(feed.name, feed.keep))
        if feed.items:
            feed.last_seq = feed.items[-1].seq

    def append(self, feed: Feed, item: FeedItem) -> None:
        """Add ``item`` (stored first, when a file is attached), then tell the live listeners."""
        if self.file is not None:
            self.file.append(feed.name, item, feed.keep)
        feed.add(item)

    def register(self, account: str, access: Access, keep: int) -> None:
        self.access[account] = access
        self.keep[account] = keep
        for feed in self.feeds.values():
            if feed.account == account:
                feed.keep = keep
                while len(feed.items) > keep:
                    feed.items.popleft()

    def declare(self, name: str, account: str) -> Feed:
        feed = self.feeds.get(name)
        if feed is None or feed.account != account:
            old = feed
            feed = Feed(name=name, account=account, keep=self.keep.get(account, 100))
            if old is not None:
                feed.items, feed.last_seq, feed.listeners = old.items, old.last_seq, old.listeners
            else:
                self._load(feed)
            self.feeds[name] = feed
        return feed

    def feed_access(self, feed: Feed) -> Access:
        # An account that has not started yet (token file unreadable) keeps its feeds closed.
        return self.access.get(feed.account) or Access(tokens=(secrets.token_hex(32),))

    def clear(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.feeds.clear()
        self.access.clear()
        self.keep.clear()


HUB = FeedHub()
