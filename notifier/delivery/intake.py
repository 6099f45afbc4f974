"""The intake stage: a bus batch becomes stored deliveries and digest entries.

Per message: metadata → ``RuleSet.routes`` → per route either a digest entry or a
rendered delivery. The whole batch is written in ONE transaction before anything is
sent (and the (msg_id, destination) dedup log with it), so what matched survives a
crash from the moment it is acknowledged. A broken rule or template is logged with
its context and recorded as a failed delivery that ``status`` shows; it never stops
the other messages of the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fedmsg_notify.backend import Backend
from fedmsg_notify.bus.envelope import Message
from fedmsg_notify.matching.rules import Route, RuleSet
from fedmsg_notify.render.renderer import Renderer
from fedmsg_notify.store.interface import Store
from fedmsg_notify.store.records import Accepted, NewDelivery, NewDigestEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Everything a reload replaces at once: rules, templates, metadata and backend classes."""

    rules: RuleSet
    renderer: Renderer
    meta: Callable[[Message], Any]
    backends: Mapping[str, type[Backend]]


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def digest_limits(route: Route) -> tuple[float | None, int | None] | None:
    """(every seconds, max count) of a digest route; ``None`` for immediate delivery."""
    spec = route.digest
    if not spec:
        return None
    if isinstance(spec, Mapping):
        every, most = spec.get("every"), spec.get("max")
    else:
        # rules.Digest names it every_seconds (already parsed from "1h" and the like).
        every = getattr(spec, "every_seconds", getattr(spec, "every", None))
        most = getattr(spec, "max", None)
    if every is None and most is None:
        return None
    return _seconds(every), None if most is None else int(most)


def meta_dict(meta: Any) -> dict[str, Any]:
    as_dict = getattr(meta, "as_dict", None)
    return dict(as_dict()) if callable(as_dict) else {}


def _options(route: Route) -> dict[str, Any]:
    options: Any = route.options
    dump = getattr(options, "model_dump", None)
    return dict(dump()) if callable(dump) else dict(options or {})


def accept_batch(store: Store, pipeline: Pipeline, batch: Sequence[Message], now: float) -> Accepted:
    """Route, render and store one batch; return what was stored (to wake the workers)."""
    deliveries, entries = route_batch(pipeline, batch)
    if not deliveries and not entries:
        return Accepted(frozenset(), frozenset(), 0)
    return store.accept(deliveries, entries, now=now)


def route_batch(pipeline: Pipeline, batch: Sequence[Message]) -> tuple[list[NewDelivery], list[NewDigestEntry]]:
    """Route and render one batch: the rows to store (the daemon commits them in its writer thread)."""
    deliveries: list[NewDelivery] = []
    entries: list[NewDigestEntry] = []
    for message in batch:
        try:
            meta = pipeline.meta(message)
            routes = pipeline.rules.routes(message, meta)
        except Exception:
            log.exception("routing %s (%s) failed; message skipped", message.msg_id, message.topic)
            continue
        if not routes:
            continue
        # One dict per message, shared by its deliveries (the store serialises it).
        meta_values = meta_dict(meta)
        for route in routes:
            stored = _one_route(pipeline, message, meta, meta_values, route)
            if isinstance(stored, NewDigestEntry):
                entries.append(stored)
            elif stored is not None:
                deliveries.append(stored)
    return deliveries, entries


def _one_route(
    pipeline: Pipeline, message: Message, meta: Any, meta_values: dict[str, Any], route: Route
) -> NewDelivery | NewDigestEntry | None:
    destination = route.destination
    backend = pipeline.backends.get(destination.account)
    if backend is None:
        log.error("rule %s routes %s to unknown account '%s'", route.rule.name, message.msg_id, destination.account)
        return None
    error: str | None = None
    try:
        rendered = pipeline.renderer.render(backend, message, meta, route)
    except Exception as exc:
        # Recorded as a failed delivery so `status` shows it; the rest of the batch goes on.
        error = f"template error: {type(exc).__name__}: {exc}"
        log.error(
            "rendering %s for %s (rule %s in %s) failed: %s",
            message.msg_id,
            destination,
            route.rule.name,
            route.rule.file,
            error,
        )
        rendered = {}
    limits = digest_limits(route) if error is None else None
    if limits is not None:
        every, most = limits
        return NewDigestEntry(
            msg_id=message.msg_id,
            destination=destination,
            rule=route.rule.name,
            rule_file=str(route.rule.file),
            template=route.template,
            options=_options(route),
            every=every,
            max=most,
            topic=message.topic,
            service=message.service,
            envelope=message.envelope,
            meta=meta_values,
            rendered=rendered,
            timestamp=message.timestamp,
        )
    return NewDelivery(
        msg_id=message.msg_id,
        destination=destination,
        rule=route.rule.name,
        topic=message.topic,
        service=message.service,
        rendered=rendered,
        options=_options(route),
        meta=meta_values,
        timestamp=message.timestamp,
        error=error,
    )
