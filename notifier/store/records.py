"""What goes into the store and what comes back out: the records both stores share.

The delivery stage builds :class:`NewDelivery` and :class:`NewDigestEntry` records and
reads :class:`DigestGroup`, :class:`DigestEntry` and :class:`DestinationStatus` back;
the SQLite and PostgreSQL stores write the same JSON into the same columns, with the
encoders below.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from fedmsg_notify.backend import Destination


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# Rendered parts and metadata are written once per delivery and read back once per send,
# the largest JSON the hot path handles; orjson does both ~5x faster. Only for these two,
# which hold nothing but strings (and lists of them): orjson reads integers beyond 64
# bits as floats and writes NaN as null, so bus data (digest envelopes) and options stay
# on the standard library.
def _dumps_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:  # something else after all (a non-string key): the standard library copes
        return _dumps(value)


def _loads_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. an escaped lone surrogate, which orjson refuses
        return json.loads(text)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A rendered delivery about to be accepted."""

    msg_id: str
    destination: Destination
    rule: str
    topic: str
    service: str
    rendered: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0
    # Set when routing or rendering failed: stored as a failed delivery so `status` shows it.
    error: str | None = None
    # The parts as the store keeps them (compressed JSON), when packed where they were rendered
    # (an intake process: :func:`~fedmsg_notify.store.shared.prepack`); None: the store packs them.
    packed: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewDigestEntry:
    """A message that waits for its destination's next digest."""

    msg_id: str
    destination: Destination
    rule: str
    rule_file: str
    template: str | None
    options: Mapping[str, Any]
    every: float | None
    max: int | None
    topic: str
    service: str
    envelope: Mapping[str, Any]
    meta: Mapping[str, Any]
    rendered: Mapping[str, str]
    timestamp: float


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """A stored digest entry, as a flush reads it back."""

    id: int
    msg_id: str
    destination: Destination
    rule: str
    rule_file: str
    template: str | None
    options: Mapping[str, Any]
    topic: str
    service: str
    envelope: Mapping[str, Any]
    meta: Mapping[str, Any]
    rendered: Mapping[str, str]
    timestamp: float
    created: float


@dataclass(frozen=True, slots=True)
class DigestGroup:
    """The unflushed entries of one destination: enough to decide whether a flush is due."""

    destination: Destination
    count: int
    first_created: float
    every: float | None
    max: int | None

    def due_at(self) -> float | None:
        """When this digest must go out (``None``: only when ``max`` is reached)."""
        if self.max is not None and self.count >= self.max:
            return self.first_created
        if self.every is not None:
            return self.first_created + self.every
        return None


@dataclass(frozen=True, slots=True)
class Accepted:
    """What one :meth:`Store.accept` call stored."""

    deliveries: frozenset[Destination]
    digests: frozenset[Destination]
    duplicates: int


@dataclass(frozen=True, slots=True)
class DestinationStatus:
    """One line of ``fedmsg-notify status``."""

    destination: str
    account: str
    queued: int = 0
    in_retry: int = 0
    next_retry: float | None = None
    last_retry_reason: str | None = None
    failed: int = 0
    last_failure: str | None = None
    coalesced: int = 0
    digest_pending: int = 0
    next_digest: float | None = None
    last_success: float | None = None
    sent: int = 0



# A digest mail's filter headers (X-Fedmsg-Category/-Username/-Package) name what its
# entries involve; capped so a mass rebuild cannot produce a huge header block.
MERGED_META_CAP = 50
