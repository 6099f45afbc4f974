"""What the deliveries and digest entries of one message share, stored once: both stores' layout.

A message routed to three destinations used to be written three times: its metadata and
rendered text in every delivery row, its envelope in every digest entry. An email
delivery's parts (subject, text, HTML) are ~1.7 KB, so two rows rarely shared a 4 KB
page and each delivery cost ~4 KB on disk. Now an accepted batch is packed first:

* ``messages`` — one row per message of the batch: msg_id, topic, service, timestamp,
  the metadata, and the envelope when a digest entry needs it;
* ``bodies`` — one row per distinct rendering of a message (deliveries whose templates
  rendered the same text share one), its parts as compressed JSON (zlib: ~2.5x on
  email parts, ~10-25 µs per body);
* a delivery or digest entry points at its body (``body``), and the body at its message.

Sharing is per batch: a body is only ever referenced by rows inserted in the same
transaction, so pruning a body that no row references any more can never race an
intake that is about to reference it (no cross-batch lookup, no content index). Rows
that are not one message's rendering — digests, flood summaries, rows written before
this layout — keep their parts inline (``body`` is NULL).
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fedmsg_notify.backend import Destination, Item
from fedmsg_notify.store.records import (
    MERGED_META_CAP,
    DestinationStatus,
    DigestEntry,
    NewDelivery,
    NewDigestEntry,
    _dumps,
    _dumps_text,
    _loads_text,
)

# zlib's fastest level: ~10 % less CPU than the default (6) for an email's parts, 3 % larger.
LEVEL = 1


def pack_text(value: Mapping[str, Any]) -> bytes:
    """Rendered parts or metadata (strings only), as stored in a body or message row."""
    return zlib.compress(_dumps_text(dict(value)).encode("utf-8"), LEVEL)


def pack_data(value: Mapping[str, Any]) -> bytes:
    """Bus data (an envelope): the standard library's JSON, which keeps big integers and NaN exact."""
    return zlib.compress(_dumps(dict(value)).encode("utf-8"), LEVEL)


class _Recent:
    """The decoded value of recently written or read blobs, by their bytes (bounded).

    A delivery's parts are written at intake and read back once by its worker moments
    later, and a message's metadata is read by each of its deliveries: this spares the
    decompression and JSON parsing. Keyed by content, so it can never be wrong; callers
    get a shallow copy.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: dict[bytes, dict[str, Any]] = {}
        self.lock = threading.Lock()  # the intake writer thread puts, the loop's workers get

    def put(self, blob: bytes, value: Mapping[str, Any]) -> None:
        with self.lock:
            if len(self.values) >= self.size:
                # Oldest first (dicts keep insertion order): drop the older half at once.
                for key in list(self.values)[: self.size // 2]:
                    del self.values[key]
            # As the JSON would read back: tuples (the metadata's usernames, packages) as lists.
            self.values[blob] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}

    def get(self, blob: bytes | memoryview) -> dict[str, Any] | None:
        found = self.values.get(bytes(blob))
        return None if found is None else dict(found)


RECENT = _Recent(2048)


def unpack_text(blob: bytes | memoryview) -> Any:
    found = RECENT.get(blob)
    if found is not None:
        return found
    value = _loads_text(zlib.decompress(blob).decode("utf-8"))
    if isinstance(value, dict):
        RECENT.put(bytes(blob), value)
    return value


def unpack_data(blob: bytes | memoryview) -> Any:
    return json.loads(zlib.decompress(blob).decode("utf-8"))


@dataclass(slots=True)
class PackedMessage:
    msg_id: str
    topic: str
    service: str
    timestamp: float
    meta: bytes
    envelope: bytes | None = None


@dataclass(slots=True)
class PackedBatch:
    """A batch's rows to insert: messages, bodies (by message index), then rows (by body index)."""

    messages: list[PackedMessage] = field(default_factory=list)
    bodies: list[tuple[int, bytes]] = field(default_factory=list)
    deliveries: list[tuple[NewDelivery, int]] = field(default_factory=list)
    entries: list[tuple[NewDigestEntry, int]] = field(default_factory=list)


def pack_batch(deliveries: Sequence[NewDelivery], entries: Sequence[NewDigestEntry]) -> PackedBatch:
    """Group the (already deduplicated) rows of a batch by message and by rendering.

    Rows share a message row when msg_id, topic, service, timestamp and metadata are
    equal (the intake builds them from one message); a digest entry's message row also
    holds the envelope, and a delivery reuses any row of its message. Rows share a body
    when they share the message row and their parts are equal.
    """
    packed = PackedBatch()
    meta_json: dict[int, str] = {}  # the intake shares one metadata dict per message
    by_base: dict[tuple[Any, ...], int] = {}
    with_envelope: dict[tuple[Any, ...], int] = {}
    bodies: dict[tuple[int, str | bytes], int] = {}

    def base_key(row: NewDelivery | NewDigestEntry) -> tuple[Any, ...]:
        meta = meta_json.get(id(row.meta))
        if meta is None:
            meta = meta_json[id(row.meta)] = _dumps_text(dict(row.meta))
        return (row.msg_id, row.topic, row.service, row.timestamp, meta)

    def message_index(row: NewDelivery | NewDigestEntry, envelope: Mapping[str, Any] | None) -> int:
        base = base_key(row)
        if envelope is None:
            found = by_base.get(base)
            if found is not None:
                return found
        else:
            envelope_json = _dumps(dict(envelope))
            found = with_envelope.get((*base, envelope_json))
            if found is not None:
                return found
        meta_blob = zlib.compress(base[-1].encode("utf-8"), LEVEL)
        RECENT.put(meta_blob, row.meta)  # read back by each of the message's deliveries
        packed.messages.append(
            PackedMessage(
                row.msg_id,
                row.topic,
                row.service,
                row.timestamp,
                meta_blob,
                None if envelope is None else zlib.compress(envelope_json.encode("utf-8"), LEVEL),
            )
        )
        index = len(packed.messages) - 1
        by_base.setdefault(base, index)
        if envelope is not None:
            with_envelope[(*base, envelope_json)] = index
        return index

    def body_index(message: int, rendered: Mapping[str, str], blob: bytes | None = None) -> int:
        # Packed already (equal parts pack to equal bytes), or packed here.
        key: str | bytes = blob if blob is not None else _dumps_text(dict(rendered))
        found = bodies.get((message, key))
        if found is None:
            blob = key if isinstance(key, bytes) else zlib.compress(key.encode(), LEVEL)
            RECENT.put(blob, rendered)  # its worker reads it back in a moment
            packed.bodies.append((message, blob))
            found = bodies[(message, key)] = len(packed.bodies) - 1
        return found

    # Entries first, so a delivery of the same message reuses the row holding the envelope.
    entry_messages = [message_index(entry, entry.envelope) for entry in entries]
    for new in deliveries:
        packed.deliveries.append((new, body_index(message_index(new, None), new.rendered, new.packed)))
    for entry, message in zip(entries, entry_messages, strict=True):
        packed.entries.append((entry, body_index(message, entry.rendered)))
    return packed


def prepack(deliveries: Sequence[NewDelivery]) -> list[NewDelivery]:
    """The deliveries with their parts packed as the store keeps them, for :func:`pack_batch`.

    An intake process calls this on what it rendered, so the compression is on its core
    rather than the daemon's; deliveries with equal parts share one packing.
    """
    blobs: dict[str, bytes] = {}
    out: list[NewDelivery] = []
    for new in deliveries:
        text = _dumps_text(dict(new.rendered))
        blob = blobs.get(text)
        if blob is None:
            blob = blobs[text] = zlib.compress(text.encode("utf-8"), LEVEL)
        out.append(replace(new, packed=blob))
    return out


def rendered_of(row: Any) -> Any:
    """A delivery's or entry's parts, from its body or inline."""
    parts = row["body_parts"]
    return _loads_text(row["rendered"]) if parts is None else unpack_text(parts)


def meta_of(row: Any) -> Any:
    meta = row["body_meta"]
    return _loads_text(row["meta"]) if meta is None else unpack_text(meta)


def envelope_of(row: Any) -> Any:
    envelope = row["body_envelope"]
    return json.loads(row["envelope"]) if envelope is None else unpack_data(envelope)


def item(row: Any) -> Item:
    """A delivery row (with ``body_parts`` and ``body_meta``, in either store) as the workers see it."""
    return Item(
        id=int(row["id"]),
        msg_id=row["msg_id"],
        destination=Destination(row["account"], row["recipient"]),
        rule=row["rule"],
        topic=row["topic"],
        service=row["service"],
        rendered=rendered_of(row),
        options=json.loads(row["options"]),
        meta=meta_of(row),
        timestamp=float(row["timestamp"]),
        count=int(row["count"]),
    )


def delivery_values(new: NewDelivery, body: int, now: float) -> tuple[Any, ...]:
    """The columns of a new delivery row that points at its body (both stores insert these, in this order)."""
    return (
        new.destination.key,
        new.destination.account,
        new.destination.to,
        new.msg_id,
        new.rule,
        new.topic,
        new.service,
        _dumps(dict(new.options)),
        new.timestamp,
        now,
        now,
        "queued" if new.error is None else "failed",
        new.error,
        None if new.error is None else now,
        body,
    )


def digest_entry(row: Any) -> DigestEntry:
    """A digest entry row (with its body columns, in either store) as a flush reads it."""
    return DigestEntry(
        id=int(row["id"]),
        msg_id=row["msg_id"],
        destination=Destination(row["account"], row["recipient"]),
        rule=row["rule"],
        rule_file=row["rule_file"],
        template=row["template"],
        options=json.loads(row["options"]),
        topic=row["topic"],
        service=row["service"],
        envelope=envelope_of(row),
        meta=meta_of(row),
        rendered=rendered_of(row),
        timestamp=float(row["timestamp"]),
        created=float(row["created"]),
    )


def digest_values(
    destination: Destination,
    rows: Sequence[Any],
    first: DigestEntry,
    rendered: Mapping[str, str],
    msg_id: str,
    now: float,
) -> tuple[Any, ...]:
    """The columns of the delivery a digest flush makes of ``rows`` (both stores insert these, in this order)."""
    total = len(rows)
    services = {row["service"] for row in rows}
    return (
        destination.key,
        destination.account,
        destination.to,
        msg_id,
        first.rule,
        first.topic if total == 1 else "",
        services.pop() if len(services) == 1 else "various",
        _dumps(dict(rendered)),
        _dumps(dict(first.options)),
        _dumps(dict(first.meta) if total == 1 else merged_meta(rows)),
        float(rows[-1]["timestamp"]),
        total,
        now,
        now,
    )


def merged_meta(rows: Sequence[Any]) -> dict[str, Any]:
    """The union of the services, usernames and packages of a digest's entries."""
    services: dict[str, None] = {}
    usernames: dict[str, None] = {}
    packages: dict[str, None] = {}
    for row in rows:
        services.setdefault(row["service"], None)
        meta = meta_of(row)
        for name in meta.get("usernames") or ():
            if len(usernames) < MERGED_META_CAP:
                usernames.setdefault(str(name), None)
        for name in meta.get("packages") or ():
            if len(packages) < MERGED_META_CAP:
                packages.setdefault(str(name), None)
    return {"services": sorted(services), "usernames": sorted(usernames), "packages": sorted(packages)}


class StatusRows:
    """The fields of each destination's :class:`DestinationStatus`, gathered from a store's status queries.

    Each store asks in its own SQL; the rows they return are read here the same way.
    """

    def __init__(self) -> None:
        self.found: dict[str, dict[str, Any]] = {}

    def entry(self, dest: str, account: str) -> dict[str, Any]:
        return self.found.setdefault(dest, {"destination": dest, "account": account})

    def add_pending_digests(self, rows: Iterable[Any]) -> None:
        """Rows of (dest, account, n, first, every): unflushed digest entries per destination."""
        for row in rows:
            e = self.entry(row["dest"], row["account"])
            e["digest_pending"] = int(row["n"])
            e["next_digest"] = None if row["every"] is None else float(row["first"]) + float(row["every"])

    def add_totals(self, rows: Iterable[Any]) -> None:
        """Rows of the destinations table: last success, sent and coalesced counts."""
        for row in rows:
            e = self.entry(row["dest"], row["account"])
            e["last_success"] = row["last_success"]
            e["sent"] = int(row["sent"])
            e["coalesced"] = int(row["coalesced"])

    def statuses(self) -> list[DestinationStatus]:
        return [DestinationStatus(**self.found[key]) for key in sorted(self.found)]
