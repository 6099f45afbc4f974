"""The ``fedmsg-notify`` command line.

Exit codes: 0 success, 1 invalid input or failure, 2 usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from fedmsg_notify import __version__
from fedmsg_notify.config.model import load_cli_config
from fedmsg_notify.config.redact import install_log_redaction
from fedmsg_notify.config.yaml_positions import ProblemsError

log = logging.getLogger("fedmsg_notify")


def _print_problems(exc: ProblemsError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from fedmsg_notify.daemon import Daemon

    config = load_cli_config(args.config)
    daemon = Daemon(config)
    asyncio.run(daemon.run())
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from fedmsg_notify.bus.zeromq import Publisher

    if args.msg is not None and args.msg != "-":
        payloads = [args.msg]
    else:
        payloads = [line for line in sys.stdin if line.strip()]
    msgs: list[tuple[str, Any]] = []
    for number, text in enumerate(payloads, 1):
        where = "--msg" if args.msg not in (None, "-") else f"<stdin>:{number}"
        try:
            data = json.loads(text)
        except ValueError as exc:
            print(f"{where}: invalid JSON: {exc}", file=sys.stderr)
            return 1
        if args.topic:
            msgs.append((args.topic, data))
            continue
        # No --topic: each input is a full envelope, or a sample/archive line carrying one
        # under "message" (the format of the bundled samples).
        if isinstance(data, dict) and "topic" not in data and isinstance(data.get("message"), dict):
            data = data["message"]
        if not (isinstance(data, dict) and isinstance(data.get("topic"), str) and data["topic"] and "msg" in data):
            print(
                f"{where}: without --topic each input must be a full envelope with 'topic' and 'msg' "
                "(or a sample line with it under 'message'); give --topic to publish message bodies",
                file=sys.stderr,
            )
            return 1
        msgs.append((data["topic"], data["msg"]))
    if args.amqp:
        from fedmsg_notify.commands.amqp_cmds import publish_amqp

        return publish_amqp(args, msgs)
    signer = None
    if args.cert or args.key:
        from fedmsg_notify.bus.signatures import SignatureConfigError, Signer

        if not (args.cert and args.key):
            print("publish: --cert and --key go together", file=sys.stderr)
            return 1
        try:
            signer = Signer(args.cert, args.key)
        except SignatureConfigError as exc:
            print(f"publish: {exc}", file=sys.stderr)
            return 1
    wait = 0.0 if args.no_wait else args.wait
    publisher = Publisher(args.endpoint, bind=not args.connect, username=args.username, wait=wait, signer=signer)
    printing = args.verbose or args.print_ids
    try:
        for topic, msg in msgs:
            envelope = publisher.publish(topic, msg)
            if printing:
                try:
                    print(envelope["msg_id"], flush=True)
                except BrokenPipeError:
                    # `publish -v | head`: the reader left; the messages still go out.
                    _silence_stdout()
                    printing = False
    finally:
        publisher.close()
    if publisher.unheard:
        print(
            f"publish: {publisher.unheard} of {publisher.sent} messages went out with no subscriber listening "
            f"on {args.endpoint} (waited {wait:g} s); they are lost. Is the daemon running and subscribed to it?",
            file=sys.stderr,
        )
        return 0 if args.no_wait else 1
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from fedmsg_notify.bus.zeromq import Subscriber

    globs = args.topic or ["*"]
    amqp = None
    if args.amqp:
        from fedmsg_notify.bus.amqp import AmqpSettings

        amqp = AmqpSettings(url=args.amqp)
    elif not args.endpoint:
        config = load_cli_config(args.config)
        if config.amqp is not None and not config.endpoints:
            # An exclusive queue of our own: tail must not take messages from the daemon's queue.
            from dataclasses import replace

            amqp = replace(config.amqp, queue=None, passive_declares=False)
    if amqp is not None:
        from fedmsg_notify.commands.amqp_cmds import tail_amqp

        try:
            asyncio.run(tail_amqp(amqp, globs, args.json))
        except KeyboardInterrupt:
            pass
        return 0
    if args.endpoint:
        endpoints: Sequence[str] = args.endpoint
        prefixes: Sequence[str] = ("",)
    else:
        endpoints, prefixes = config.endpoints, config.subscribe

    async def tail() -> None:
        subscriber = Subscriber(endpoints, prefixes)
        try:
            async for message in subscriber.messages():
                if not any(fnmatch.fnmatchcase(message.topic, g) for g in globs):
                    continue
                if args.json:
                    print(json.dumps(message.envelope, sort_keys=True), flush=True)
                else:
                    from fedmsg_notify.meta.engine import compute_meta

                    meta = compute_meta(message)
                    link = f" {meta.link}" if meta.link else ""
                    from fedmsg_notify.render.sanitize import one_line, plain_text

                    # Bus content must not drive the terminal (escape sequences) or fake extra lines.
                    print(one_line(plain_text(f"{message.topic} {meta.subtitle}{link}")), flush=True)
        finally:
            subscriber.close()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fedmsg_notify.commands.check import run_check

    return run_check(args)


def cmd_explain(args: argparse.Namespace) -> int:
    from fedmsg_notify.commands.explain import run_explain

    return run_explain(args)


def cmd_status(args: argparse.Namespace) -> int:
    from fedmsg_notify.commands.status import run_status

    return run_status(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from fedmsg_notify.commands.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmsg-notify", description="Notification fan-out daemon for fedmsg buses.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="configuration file (default: $FEDMSG_NOTIFY_CONFIG, "
            "/etc/fedmsg-notify/config.yaml, ~/.config/fedmsg-notify/config.yaml, embedded defaults)",
        )

    p = sub.add_parser("run", help="run the daemon in the foreground")
    config_opt(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate config, rules and templates")
    config_opt(p)
    p.add_argument("--strict", action="store_true", help="also refuse rules the index cannot narrow down (residual)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="dry run: which rules match a message and what each destination gets")
    config_opt(p)
    p.add_argument(
        "message",
        metavar="MESSAGE.json|-",
        help="a file of envelopes ({topic, msg, timestamp, ...}) or sample lines ({message: envelope}, "
        "as in the bundled samples), one JSON document or JSON lines; - reads stdin",
    )
    p.add_argument(
        "--topic", metavar="TOPIC", help="the inputs are message bodies (as `publish --topic` takes) on this topic"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("tail", help="print messages from the bus")
    config_opt(p)
    p.add_argument("--endpoint", action="append", metavar="URL", help="endpoint to connect to (repeatable)")
    p.add_argument("--topic", action="append", metavar="GLOB", help="only topics matching this glob (repeatable)")
    p.add_argument("--json", action="store_true", help="print each envelope as JSON")
    p.add_argument("--amqp", metavar="URL", help="read an AMQP broker (fedora-messaging) instead, on amq.topic")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("publish", help="publish fedmsg-compatible messages (the fedmsg-logger job)")
    p.add_argument(
        "--endpoint", default="tcp://127.0.0.1:9940", metavar="URL", help="endpoint to bind (default %(default)s)"
    )
    p.add_argument("--connect", action="store_true", help="connect to a relay's inbound endpoint instead of binding")
    p.add_argument(
        "--topic",
        help="full topic, e.g. org.fedoraproject.dev.logger.log; the inputs are then message bodies. "
        "Without it each input is a full envelope ({topic, msg, ...}) or a sample line "
        "({message: envelope}, as in the bundled samples, see `demo --samples`)",
    )
    p.add_argument("--msg", metavar="JSON", help="one message; omit or '-' to read JSON lines from stdin")
    p.add_argument("--username", default="fedmsg-notify", help="envelope username (default %(default)s)")
    p.add_argument("-v", "--print-ids", action="store_true", help="print each sent message's msg_id on stdout")
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="wait up to this long for a subscriber before sending; sending stops waiting as soon as "
        "one is there (default %(default)s). Exit status 1 if messages went out with no subscriber",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="send at once, fire-and-forget: messages no one hears are lost, and the exit status stays 0",
    )
    p.add_argument("--cert", metavar="FILE", help="sign as fedmsg does (x509) with this PEM certificate...")
    p.add_argument("--key", metavar="FILE", help="...and this unencrypted PEM RSA private key")
    p.add_argument("--amqp", metavar="URL", help="publish to this AMQP broker in fedora-messaging's wire format")
    p.add_argument("--schema", default="base.message", help="fedora-messaging schema name (with --amqp)")
    p.add_argument("--exchange", default="amq.topic", help="AMQP exchange (with --amqp; default %(default)s)")
    p.add_argument("--ca-cert", metavar="FILE", help="CA of an amqps:// broker (with --amqp)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("status", help="queues, digests, last deliveries and failures per destination")
    config_opt(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("demo", help="run the daemon end to end on embedded defaults with a local publisher")
    p.add_argument("--count", type=int, default=0, metavar="N", help="messages to replay (default: every sample)")
    p.add_argument("--rate", type=float, default=20.0, metavar="PER_SECOND", help="replay pace (default %(default)s)")
    p.add_argument(
        "--samples", action="store_true", help="print the path of the bundled sample messages (JSON lines) and exit"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit flush cannot raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_log_redaction()
    try:
        code = int(args.func(args))
        # Flush here, not at interpreter exit, so a closed pipe is caught below.
        sys.stdout.flush()
        return code
    except ProblemsError as exc:
        return _print_problems(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fedmsg-notify tail | head` and the like: the reader is gone, which is no error of ours.
        _silence_stdout()
        return 0
