"""The feeds' last items on disk, so feeds and ``Last-Event-ID`` survive a restart.

A small SQLite file of its own next to the daemon's state (``state-web.db`` beside
``state.db``): one row per kept item, trimmed to the feed's ``keep`` on every append.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

from .hub import FeedItem

SCHEMA = """
CREATE TABLE IF NOT EXISTS feed_items (
    feed TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (feed, seq)
) WITHOUT ROWID;
"""


class FeedFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def load(self, feed: str, keep: int) -> list[FeedItem]:
        rows = self.db.execute(
            "SELECT item FROM (SELECT seq, item FROM feed_items WHERE feed = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (feed, keep),
        ).fetchall()
        return [FeedItem(**json.loads(row[0])) for row in rows]

    def append(self, feed: str, item: FeedItem, keep: int) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT OR REPLACE INTO feed_items (feed, seq, item) VALUES (?, ?, ?)",
                (feed, item.seq, json.dumps(dataclasses.asdict(item), ensure_ascii=False)),
            )
            self.db.execute("DELETE FROM feed_items WHERE feed = ? AND seq <= ?", (feed, item.seq - keep))

    def close(self) -> None:
        self.db.close()
