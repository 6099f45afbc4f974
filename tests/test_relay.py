"""`fedmsg-notify publish --connect` through a relay, as fedmsg-relay runs one.

fedmsg-relay is a ZeroMQ forwarder: an inbound socket publishers connect to, an outbound
one subscribers connect to (its moksha hub is not installable here, so the forwarder runs
as pyzmq's own ``zmq.proxy`` in a process of its own). The message must come out of the
relay to a subscriber exactly as published.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.childio import read_lines
from tests.conftest import free_port

TOPIC = "org.fedoraproject.dev.bodhi.update.comment"

RELAY = textwrap.dedent(
    """
    import sys, zmq
    ctx = zmq.Context()
    inbound, outbound = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    inbound.bind(sys.argv[1])
    outbound.bind(sys.argv[2])
    print("READY", flush=True)
    zmq.proxy(inbound, outbound)
    """
)


def test_publish_connect_goes_through_a_relay() -> None:
    """Messages published with --connect to the relay's inbound side reach a subscriber of its outbound side."""
    inbound, outbound = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    relay = subprocess.Popen([sys.executable, "-c", RELAY, inbound, outbound], stdout=subprocess.PIPE, text=True)
    tail = None
    try:
        assert relay.stdout is not None
        assert read_lines(relay.stdout, 1, timeout=30) == ["READY\n"]
        tail = subprocess.Popen(
            [sys.executable, "-m", "fedmsg_notify", "tail", "--endpoint", outbound, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        # The publisher connects and waits --wait seconds for the subscription to travel
        # tail -> relay -> publisher before sending (a PUB drops what nobody subscribed to).
        publish = subprocess.run(
            [sys.executable, "-m", "fedmsg_notify", "publish", "--connect", "--endpoint", inbound,
             "--topic", TOPIC, "--wait", "5"],
            input='{"n": 1}\n{"n": 2}\n', text=True, capture_output=True, timeout=60,
        )
        assert publish.returncode == 0, publish.stderr
        assert tail.stdout is not None
        received = [json.loads(line) for line in read_lines(tail.stdout, 2, timeout=30)]
    finally:
        for process in (tail, relay):
            if process is not None:
                process.kill()
                process.communicate(timeout=30)
    assert [r["msg"] for r in received] == [{"n": 1}, {"n": 2}]
    assert all(r["topic"] == TOPIC for r in received)
