"""Glue between the daemon and the web backend's HTTP server (started when ``web:`` is set).

The server itself lives with the backend (:mod:`fedmsg_notify.backends.web.server`) and
knows nothing of the daemon: it gets its settings and a callable that reads the
daemon's counters at scrape time. aiohttp is imported only when ``web:`` is configured,
so a daemon without the ``web`` extra runs everything else.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedmsg_notify.backend import install_hint
from fedmsg_notify.config.model import Config, WebSection
from fedmsg_notify.config.yaml_positions import Position, Problem, ProblemsError

if TYPE_CHECKING:
    from fedmsg_notify.backends.web.metrics import Snapshot
    from fedmsg_notify.backends.web.server import WebServer
    from fedmsg_notify.matching.rules import RuleSet

log = logging.getLogger(__name__)


class Observed(Protocol):
    """What the snapshot reads from the daemon (the daemon's own attributes)."""

    store: Any
    subscriber: Any
    verifier: Any
    reloads: int
    router: Any
    _saved_malformed: Counter[str]
    _saved_refused: Counter[str]


def feed_file_path(config: Config) -> Path:
    """Where the feeds' kept items live: beside the daemon's state (``state.db`` → ``state-web.db``)."""
    state = config.state_path
    return state.with_name(f"{state.stem}-web{state.suffix or '.db'}")


def attach_feed_file(config: Config) -> None:
    from fedmsg_notify.backends.web import WebBackend
    from fedmsg_notify.backends.web.persist import FeedFile

    if WebBackend.hub.file is None:
        path = feed_file_path(config)
        try:
            WebBackend.hub.attach(FeedFile(path))
        except (OSError, sqlite3.Error) as exc:
            raise ProblemsError([Problem(Position(config.source, 1, 1), f"web: cannot open {path}: {exc}")]) from exc


def declare_feeds(config: Config, rules: RuleSet) -> None:
    """Make every feed a rule routes to exist (empty) so readers can subscribe before its first item."""
    from fedmsg_notify.backends.web import WebBackend

    for rule in rules.rules:
        for route in rule.routes:
            account = config.accounts.get(route.destination.account)
            if account is not None and issubclass(account.backend, WebBackend) and route.destination.to:
                WebBackend.hub.declare(route.destination.to, account.name)


def snapshot_of(daemon: Observed, now: Callable[[], float]) -> Callable[[], Snapshot]:
    from fedmsg_notify.backends.web.metrics import DestinationCounts, Snapshot

    def take() -> Snapshot:
        stored: Mapping[str, int] = daemon.store.counters() if daemon.store is not None else {}
        refused: Counter[tuple[str, str]] = Counter()
        for name, value in stored.items():
            kind, _, reason = name.partition(".")
            if kind in ("malformed", "signature"):
                refused["zeromq", f"{kind}.{reason}"] += value
        # Counted since the last save: the store has the rest.
        if daemon.subscriber is not None:
            for reason, n in (Counter(daemon.subscriber.malformed) - daemon._saved_malformed).items():
                refused["zeromq", f"malformed.{reason}"] += n
        if daemon.verifier is not None:
            for reason, n in (Counter(daemon.verifier.rejected) - daemon._saved_refused).items():
                refused["zeromq", f"signature.{reason}"] += n
        received = {"zeromq": int(daemon.subscriber.received)} if daemon.subscriber is not None else {}
        destinations = tuple(
            DestinationCounts(
                destination=s.destination,
                account=s.account,
                sent=s.sent,
                failed=s.failed,
                coalesced=s.coalesced,
                queued=s.queued,
                in_retry=s.in_retry,
                digest_pending=s.digest_pending,
            )
            for s in (daemon.store.status(now()) if daemon.store is not None else ())
        )
        router = daemon.router
        return Snapshot(
            received=received,
            refused=dict(refused),
            destinations=destinations,
            reloads=daemon.reloads,
            intake_slices={"process": router.routed_remote, "loop": router.routed_local},
            intake_processes_ready=router.processes if router.ready else 0,
        )

    return take


async def start_web(section: WebSection, source: str, snapshot: Callable[[], Snapshot]) -> WebServer | None:
    """Start the server; None (and a logged error naming the extra) if aiohttp is missing."""
    try:
        from fedmsg_notify.backends.web.server import WebServer, WebSettings
    except ImportError as exc:
        log.error("web: %s; install it with: %s", exc, install_hint("web"))
        return None
    host, _, port = section.listen.rpartition(":")
    settings = WebSettings(
        host=host.strip("[]"),
        port=int(port),
        base_url=section.base_url,
        max_clients=section.max_clients,
        heartbeat=section.heartbeat,
    )
    server = WebServer(settings, snapshot)
    try:
        await server.start()
    except OSError as exc:
        raise ProblemsError(
            [Problem(Position(source, 1, 1), f"web: cannot listen on {section.listen}: {exc}")]
        ) from exc
    return server
