"""Prometheus metrics, read from the daemon at scrape time (no counters kept twice).

The daemon hands the server a callable returning a :class:`Snapshot`; this collector
turns it into the exposition format on each scrape of ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class DestinationCounts:
    destination: str
    account: str
    sent: int = 0
    failed: int = 0
    coalesced: int = 0
    queued: int = 0
    in_retry: int = 0
    digest_pending: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    # bus name ("zeromq", "amqp") -> messages received from it
    received: dict[str, int] = field(default_factory=dict)
    # (bus, reason) -> messages refused (malformed, bad signature)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    destinations: tuple[DestinationCounts, ...] = ()
    reloads: int = 0
    # where ("process", "loop") -> intake slices routed there; intake processes ready now
    intake_slices: dict[str, int] = field(default_factory=dict)
    intake_processes_ready: int = 0


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], live_clients: Callable[[], int]) -> None:
        self.snapshot = snapshot
        self.live_clients = live_clients

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        received = CounterMetricFamily(
            "fedmsg_notify_messages_received", "Messages received from the bus", labels=["bus"]
        )
        for bus, n in sorted(snap.received.items()):
            received.add_metric([bus], n)
        yield received
        refused = CounterMetricFamily(
            "fedmsg_notify_messages_refused",
            "Messages dropped: malformed or failing signature checks",
            labels=["bus", "reason"],
        )
        for (bus, reason), n in sorted(snap.refused.items()):
            refused.add_metric([bus, reason], n)
        yield refused
        deliveries = CounterMetricFamily(
            "fedmsg_notify_deliveries",
            "Deliveries finished, by destination and outcome",
            labels=["destination", "account", "outcome"],
        )
        queued = GaugeMetricFamily(
            "fedmsg_notify_queue_depth", "Deliveries waiting to be sent", labels=["destination", "account"]
        )
        retrying = GaugeMetricFamily(
            "fedmsg_notify_retrying", "Queued deliveries waiting for a retry", labels=["destination", "account"]
        )
        digest = GaugeMetricFamily(
            "fedmsg_notify_digest_pending", "Entries waiting for the next digest", labels=["destination", "account"]
        )
        for d in snap.destinations:
            labels = [d.destination, d.account]
            deliveries.add_metric([*labels, "sent"], d.sent)
            deliveries.add_metric([*labels, "failed"], d.failed)
            deliveries.add_metric([*labels, "coalesced"], d.coalesced)
            queued.add_metric(labels, d.queued)
            retrying.add_metric(labels, d.in_retry)
            digest.add_metric(labels, d.digest_pending)
        yield deliveries
        yield queued
        yield retrying
        yield digest
        yield GaugeMetricFamily(
            "fedmsg_notify_web_live_clients", "Connected live-page (SSE) clients", value=self.live_clients()
        )
        yield CounterMetricFamily("fedmsg_notify_reloads", "Successful configuration reloads", value=snap.reloads)
        slices = CounterMetricFamily(
            "fedmsg_notify_intake_slices",
            "Intake slices matched and rendered in an intake process or on the daemon's own loop",
            labels=["where"],
        )
        for where, n in sorted(snap.intake_slices.items()):
            slices.add_metric([where], n)
        yield slices
        yield GaugeMetricFamily(
            "fedmsg_notify_intake_processes_ready",
            "Intake processes ready (intake_processes); 0 while they start or after one died",
            value=snap.intake_processes_ready,
        )
