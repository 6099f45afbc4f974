"""The flood summary shared by chat backends (IRC, Matrix): one line for a coalesced backlog.

"backlog: 69 messages coalesced, 4 min behind - buildsys: 57 more (build.state.change),
bodhi: 12 more (update.comment)": count and lag first, so a cut line loses only the tail
of the per-service list.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from fedmsg_notify.backend import Item


def backlog_line(items: Sequence[Item], now: float | None = None) -> str:
    """How many, how far behind, and per service how many and what most of them were."""
    per_service = Counter[str]()
    kinds: dict[str, Counter[str]] = {}
    for item in items:
        per_service[item.service] += item.count
        kinds.setdefault(item.service, Counter())[kind(item)] += item.count
    parts = []
    for service, count in per_service.most_common():
        what = kinds[service].most_common(1)[0][0]
        parts.append(f"{service}: {count} more ({what})" if what else f"{service}: {count} more")
    oldest = min((item.timestamp for item in items if item.timestamp > 0), default=0.0)
    current = time.time() if now is None else now
    behind = f", {describe_age(max(0.0, current - oldest))} behind" if oldest else ""
    total = sum(per_service.values())
    return f"backlog: {total} messages coalesced{behind} - {', '.join(parts)}"


def kind(item: Item) -> str:
    """What an item was, from its topic after the service: "build.state.change"."""
    service = f".{item.service}."
    if service in item.topic:
        return item.topic.split(service, 1)[1]
    return ""


def describe_age(seconds: float) -> str:
    """A short human duration: "45 s", "3 min", "2 h", "5 days", "12 years"."""
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    days = int(seconds // 86400)
    if days >= 365:
        years = days // 365
        return f"{years} year" if years == 1 else f"{years} years"
    return f"{days} day" if days == 1 else f"{days} days"
