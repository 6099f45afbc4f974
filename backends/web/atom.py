"""A feed as Atom 1.0, built with feedgen (never by string concatenation)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

from feedgen.feed import FeedGenerator

from .hub import Feed

GENERATOR = "fedmsg-notify"


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def atom_feed(feed: Feed, base_url: str) -> bytes:
    """The feed's items, newest first; ``id`` of an entry is the bus message's msg_id."""
    name = quote(feed.name, safe="")
    fg = FeedGenerator()
    fg.id(f"{base_url}/feeds/{name}.atom")
    fg.title(f"fedmsg-notify: {feed.name}")
    fg.link(href=f"{base_url}/feeds/{name}.atom", rel="self", type="application/atom+xml")
    fg.link(href=f"{base_url}/feeds/{name}", rel="alternate", type="text/html")
    fg.generator(GENERATOR)
    items = feed.newest_first()
    fg.updated(_when(items[0].updated) if items else datetime.fromtimestamp(0, UTC))
    # feedgen puts entries added later first; add oldest first so the newest leads.
    for item in reversed(items):
        entry = fg.add_entry()
        entry.id(item.msg_id if ":" in item.msg_id else f"urn:fedmsg:{item.msg_id}")
        entry.title(item.title)
        if item.link:
            entry.link(href=item.link, rel="alternate")
        entry.summary(item.summary)
        entry.content(item.content, type="html")
        if item.author:
            entry.author(name=item.author)
        entry.category(term=item.category)
        entry.updated(_when(item.updated))
        entry.published(_when(item.updated))
    data: bytes = fg.atom_str(pretty=False)
    return data
