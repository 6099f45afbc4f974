"""``fedmsg-notify demo``: the daemon's main job end to end, on embedded defaults.

A local publisher replays the bundled sample messages (real shapes from many Fedora
services) on a free loopback port; the daemon, configured with the shipped rules and
a console account, prints each routed message as one line. Ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fedmsg_notify.bus.zeromq import Publisher
from fedmsg_notify.config.model import load_config

log = logging.getLogger(__name__)


def samples_path() -> str:
    """The bundled samples: ``notifier/data/samples.jsonl`` in a checkout, ``fedmsg_notify/data/`` installed."""
    return str(resources.files("fedmsg_notify.data").joinpath("samples.jsonl"))


def sample_messages() -> list[dict[str, Any]]:
    """The bundled samples' envelopes (``topic`` and ``msg``), in file order."""
    text = resources.files("fedmsg_notify.data").joinpath("samples.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["message"] for line in text.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_config_text(endpoint: str, state: Path) -> str:
    # The accounts the shipped rules name: firehose and desktop print on the console, mail
    # goes to a Maildir beside the demo's state (no SMTP server needed).
    accounts = "".join(f"  {name}: {{backend: console, label: true}}\n" for name in ("firehose", "desktop"))
    maildir = state.parent / "Maildir"
    accounts += f'  mail: {{backend: email, smtp: "maildir:{maildir}", from: "demo <demo@localhost>"}}\n'
    return f"bus:\n  endpoints: [{endpoint}]\naccounts:\n{accounts}state: {state}\n"


def run_demo(args: argparse.Namespace) -> int:
    from fedmsg_notify.daemon import Daemon

    if getattr(args, "samples", False):
        print(samples_path())
        return 0
    samples = sample_messages()
    if args.count:
        samples = (samples * (args.count // len(samples) + 1))[: args.count]
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="fedmsg-notify-demo-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(demo_config_text(endpoint, Path(tmp) / "state.db"), encoding="utf-8")
        config = load_config(config_path)
        daemon = Daemon(config)
        log.info("demo: replaying %d sample messages on %s at %.0f/s", len(samples), endpoint, args.rate)

        def replay() -> None:
            publisher = Publisher(endpoint, username="demo", wait=5.0)
            try:
                for sample in samples:
                    publisher.publish(sample["topic"], sample.get("msg", {}))
                    time.sleep(1.0 / args.rate)
            finally:
                publisher.close()
            time.sleep(1.0)
            loop.call_soon_threadsafe(daemon.stop)

        async def main() -> None:
            ready = asyncio.Event()
            task = asyncio.create_task(daemon.run(ready))
            await ready.wait()
            threading.Thread(target=replay, daemon=True).start()
            await task

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        except KeyboardInterrupt:
            daemon.stop()
        finally:
            loop.close()
        print(summary(len(samples), config.state_path, time.time()))
    return 0


def summary(replayed: int, state: Path, now: float) -> str:
    """What the demo did, including what it collected but did not send (digests wait for their time)."""
    from fedmsg_notify.backends.console import ConsoleBackend
    from fedmsg_notify.store.sqlite import Outbox

    printed = ConsoleBackend.printed
    per_account = ", ".join(f"{n} to {name}" for name, n in sorted(printed.items()))
    text = f"demo: {replayed} messages replayed, {sum(printed.values())} lines printed"
    text += f" ({per_account})" if per_account else ""
    try:
        store = Outbox(state, readonly=True)
    except Exception:  # no state written at all: nothing waits
        return text + "; no digest entries waiting"
    try:
        rows = [row for row in store.status(now) if row.digest_pending]
    finally:
        store.close()
    if not rows:
        return text + "; no digest entries waiting"
    waiting = []
    for row in rows:
        when = "" if row.next_digest is None else f", due in {max(0, round((row.next_digest - now) / 60))} min"
        waiting.append(f"{row.digest_pending} for {row.destination}{when}")
    return (
        text + f"; digest entries waiting: {'; '.join(waiting)} — the demo stops before they are due and its "
        "state is temporary, so they are discarded (a real daemon mails them then)"
    )
