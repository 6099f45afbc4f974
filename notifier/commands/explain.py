"""``fedmsg-notify explain``: a dry run of matching, routing and rendering for given messages.

For each message: its computed ``meta``, every rule's verdict (matched, or the first
condition that failed), and for each destination exactly what it would receive.
Nothing is sent and no connection is opened: backends are only asked (without
starting them) how they would reshape the rendered parts — an IRC line cut to the
protocol limit, a Mastodon post with its hashtags — and that is shown as "sent".
``-`` reads JSON lines from stdin so a day of archived messages can be explained in
one run; a malformed line is reported with its line
number and the others still get explained (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from fedmsg_notify.backend import Backend, DeliveryError, Item
from fedmsg_notify.bus.envelope import MalformedMessage, Message, build_envelope, canonical_json, decode_text
from fedmsg_notify.config.model import Account, Config, load_cli_config
from fedmsg_notify.matching.rules import Route, RuleSet, Verdict
from fedmsg_notify.meta.engine import Meta

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def describe_digest(digest: dict[str, Any]) -> str:
    """``every 1h, at most 100 messages`` from a delivery's ``digest`` entry."""
    parts = []
    if digest.get("every_seconds") is not None:
        parts.append(f"every {_duration(digest['every_seconds'])}")
    if digest.get("max") is not None:
        parts.append(f"at most {digest['max']} messages")
    return ", ".join(parts)


def read_inputs(source: str, stdin: TextIO) -> Iterator[tuple[str, Any]]:
    """``(where, parsed JSON or the exception)`` for each message in a file or on stdin."""
    if source == "-":
        for number, line in enumerate(stdin, 1):
            if line.strip():
                yield from _parse_line(f"<stdin>:{number}", line)
        return
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        yield f"{source}:1", ValueError(f"cannot read file: {exc}")
        return
    try:
        yield f"{source}:1", json.loads(text)
        return
    except ValueError:
        pass
    # Not one JSON document: read it as JSON lines (an archive of messages).
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield from _parse_line(f"{source}:{number}", line)


def _parse_line(where: str, line: str) -> Iterator[tuple[str, Any]]:
    try:
        yield where, json.loads(line)
    except ValueError as exc:
        yield where, ValueError(f"invalid JSON: {exc}")


def to_message(data: Any) -> Message:
    """A bare envelope, or a sample/archive line carrying it under ``message``."""
    if isinstance(data, dict) and "topic" not in data and isinstance(data.get("message"), dict):
        data = data["message"]
    # Through the bus decoder's own checks (nesting, string length, lone surrogates), so a
    # message the daemon would drop is reported as such instead of crashing a regex.
    return decode_text(canonical_json(data))


class Explainer:
    """Everything ``explain`` needs, loaded once for all messages."""

    def __init__(self, config: Config) -> None:
        from fedmsg_notify.meta import engine as meta_module
        from fedmsg_notify.render.renderer import Renderer

        self.config = config
        self.rules = RuleSet.load(config.rule_paths, config.accounts)
        engine_cls = getattr(meta_module, "MetaEngine", None)
        if engine_cls is not None:
            self.compute_meta: Callable[[Message], Meta] = engine_cls(config.service_paths).compute
        else:
            self.compute_meta = meta_module.compute_meta
        self.renderer = Renderer(config.template_paths)
        self._backends: dict[str, Backend | None] = {}

    def _previewer(self, account: Account) -> Backend | None:
        """An instance of the account's backend when it reshapes what it sends, else None.

        Constructing a backend opens no connection (that is ``start``'s job); one that
        cannot even be built is shown as its rendering.
        """
        if account.backend.preview is Backend.preview:
            return None
        if account.name not in self._backends:
            try:
                self._backends[account.name] = account.backend(account.name, account.options)
            except Exception as exc:
                log.debug("no preview for account %s: %s", account.name, exc)
                self._backends[account.name] = None
        return self._backends[account.name]

    def _preview(self, route: Route, message: Message, meta: Meta, rendered: Mapping[str, str]) -> dict[str, str]:
        """What the backend would put on the wire (an IRC line cut to 512 bytes, a post with hashtags...)."""
        backend = self._previewer(self.config.accounts[route.destination.account])
        if backend is None:
            return dict(rendered)
        item = Item(
            id=0,
            msg_id=message.msg_id,
            destination=route.destination,
            rule=route.rule.name,
            topic=message.topic,
            service=message.service,
            rendered=rendered,
            options=dict(route.options),
            meta=meta.as_dict(),
            timestamp=message.timestamp,
        )
        try:
            return dict(backend.preview(item))
        except DeliveryError as exc:
            return {"refused": f"{'temporary' if exc.temporary else 'permanent'} failure: {exc.reason}"}

    def explain(self, message: Message) -> dict[str, Any]:
        meta = self.compute_meta(message)
        verdicts: list[Verdict] = self.rules.explain(message, meta)
        deliveries = []
        for route in self.rules.routes(message, meta):
            backend = self.config.accounts[route.destination.account].backend
            entry: dict[str, Any] = {
                "destination": route.destination.key,
                "account": route.destination.account,
                "to": route.destination.to,
                "backend": backend.name,
                "rule": route.rule.name,
                "file": route.rule.file,
                "template": route.template,
                "options": dict(route.options),
                "digest": None,
                "rendered": self.renderer.render(backend, message, meta, route),
            }
            entry["sent"] = self._preview(route, message, meta, entry["rendered"])
            if route.digest is not None:
                entry["digest"] = {"every_seconds": route.digest.every_seconds, "max": route.digest.max}
            deliveries.append(entry)
        return {
            "msg_id": message.msg_id,
            "topic": message.topic,
            "meta": meta.as_dict(),
            "rules": [verdict.as_dict() for verdict in verdicts],
            # Rules the index cannot narrow down: tested for every message (`check --strict` refuses them).
            "index": {"rules": len(self.rules), "residual": len(self.rules.residual_rules())},
            "deliveries": deliveries,
        }


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines()) or prefix


def format_text(result: dict[str, Any]) -> str:
    lines = [f"== {result['topic']}  (msg_id {result['msg_id']})", "meta:"]
    for key, value in result["meta"].items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(value) if value else "(none)"
        lines.append(f"  {key}: {'(none)' if value is None else value}")
    index = result.get("index")
    if index is not None:
        lines.append(
            f"index: {index['rules']} rules, {index['residual']} residual (tested for every message; "
            "`check --strict` refuses them)"
        )
    lines.append("rules:")
    for verdict in result["rules"]:
        mark = "matched" if verdict["matched"] else "no     "
        reason = "" if verdict["matched"] else f": {verdict['failed']}"
        lines.append(f"  {mark} {verdict['rule']!r} ({verdict['file']}:{verdict['line']}){reason}")
    if not result["deliveries"]:
        lines.append("deliveries: none")
    else:
        lines.append("deliveries:")
    for delivery in result["deliveries"]:
        lines.append(f"  {delivery['destination']}  ({delivery['backend']}, rule {delivery['rule']!r})")
        if delivery["digest"] is not None:
            lines.append(
                f"    would be added to the digest ({describe_digest(delivery['digest'])}); alone it would read:"
            )
        shown = delivery.get("sent") or delivery["rendered"]
        for part, text in shown.items():
            if "\n" in text:
                lines.append(f"    {part}:")
                lines.append(_indent(text, "      "))
            else:
                lines.append(f"    {part}: {text}")
    return "\n".join(lines)


def run_explain(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    config = load_cli_config(getattr(args, "config", None))
    explainer = Explainer(config)
    status = 0
    first = True
    for where, data in read_inputs(args.message, stdin):
        if isinstance(data, Exception):
            print(f"{where}: {data}", file=sys.stderr)
            status = 1
            continue
        topic = getattr(args, "topic", None)
        if topic:
            # --topic: each input is a message body (what `publish --topic` takes).
            data = build_envelope(topic, data, i=1, username="explain")
        try:
            message = to_message(data)
        except MalformedMessage as exc:
            hint = "" if topic else "; for a bare message body, give its --topic"
            print(f"{where}: not a fedmsg message ({exc}){hint}; the daemon would drop it", file=sys.stderr)
            status = 1
            continue
        result = explainer.explain(message)
        if args.json:
            print(json.dumps(result, ensure_ascii=False, sort_keys=True), file=out)
        else:
            if not first:
                print(file=out)
            print(format_text(result), file=out)
        first = False
        out.flush()
    return status
