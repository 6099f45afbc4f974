"""``publish`` and ``tail`` on the AMQP bus (fedora-messaging's wire format)."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

from fedmsg_notify.bus.amqp import AmqpSettings, AmqpSubscriber
from fedmsg_notify.bus.amqp_publish import AmqpPublisher


def schema_headers(schema: str, topic: str, body: Any) -> dict[str, Any]:
    """The headers fedora-messaging itself would send for ``schema`` (users, packages, …), when it is installed."""
    try:
        from fedora_messaging import message
    except ImportError:
        return {}
    cls = message.get_class(schema)
    if cls is message.Message and schema != "base.message":
        return {}
    try:
        instance = cls(topic=topic, body=body)
        instance.validate()
    except Exception as exc:
        raise ValueError(f"the body does not validate against schema {schema}: {exc}") from None
    headers: dict[str, Any] = dict(instance._headers)
    return headers


def publish_amqp(args: argparse.Namespace, msgs: list[tuple[str, Any]]) -> int:
    """Publish ``msgs`` ((topic, body) pairs) on ``--amqp URL`` as fedora-messaging does; ``-v`` prints ids."""
    # With --amqp, --cert/--key are the TLS client certificate (fedora-messaging does not sign).
    settings = AmqpSettings(
        url=args.amqp,
        ca_cert=Path(args.ca_cert) if args.ca_cert else None,
        cert=Path(args.cert) if args.cert else None,
        key=Path(args.key) if args.key else None,
    )

    async def run() -> None:
        publisher = AmqpPublisher(args.amqp, exchange=args.exchange, ssl_context=settings.ssl_context())
        try:
            for topic, msg in msgs:
                headers = schema_headers(args.schema, topic, msg)
                msg_id = await publisher.publish(topic, msg, schema=args.schema, headers=headers)
                if args.verbose:
                    print(msg_id)
        finally:
            await publisher.close()

    try:
        asyncio.run(run())
    except ValueError as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"publish: cannot publish to {settings.redacted_url}: {exc}", file=sys.stderr)
        return 1
    return 0


async def tail_amqp(settings: AmqpSettings, globs: list[str], as_json: bool) -> None:
    """Print every message of an exclusive queue bound like the config says (acknowledged once printed)."""
    from fedmsg_notify.meta.engine import compute_meta
    from fedmsg_notify.render.sanitize import one_line, plain_text

    subscriber = AmqpSubscriber(settings)
    try:
        async for batch in subscriber.batches():
            for message in batch.messages:
                if not any(fnmatch.fnmatchcase(message.topic, g) for g in globs):
                    continue
                if as_json:
                    print(json.dumps(message.envelope, sort_keys=True), flush=True)
                else:
                    meta = compute_meta(message)
                    link = f" {meta.link}" if meta.link else ""
                    print(one_line(plain_text(f"{message.topic} {meta.subtitle}{link}")), flush=True)
            await batch.ack()
    finally:
        await subscriber.close()
