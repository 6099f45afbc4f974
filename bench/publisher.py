"""Benchmark publisher: sends N real-shaped fedmsg messages from its own process.

    python bench/publisher.py ENDPOINT COUNT [RATE]

Frames are built before the clock starts (unique msg_id per message, the sample
bodies cycled), so the publisher is never the bottleneck; RATE (messages per second)
paces a steady stream for latency measurements, with the send time in the body.
Waits for a subscriber (XPUB) before sending and prints "DONE <seconds>" at the end.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import zmq

SAMPLES = Path(__file__).resolve().parent.parent / "notifier" / "data" / "samples.jsonl"


def sample_envelopes() -> list[dict[str, object]]:
    return [json.loads(line)["message"] for line in SAMPLES.read_text().splitlines() if line.strip()]


def bench_envelope(samples: list[dict[str, object]], n: int) -> dict[str, object]:
    """The n-th benchmark message: the samples cycled, each with its own msg_id."""
    sample = samples[n % len(samples)]
    return {
        "i": n + 1,
        "msg": sample.get("msg", {}),
        "msg_id": f"2026-{uuid.UUID(int=n + 1, version=4)}",
        "timestamp": int(time.time()),
        "topic": sample["topic"],
        "username": "bench",
    }


def frames_for(count: int) -> list[tuple[bytes, dict[str, object]]]:
    samples = sample_envelopes()
    out = []
    for n in range(count):
        envelope = bench_envelope(samples, n)
        out.append((str(envelope["topic"]).encode(), envelope))
    return out


def main() -> None:
    endpoint, count = sys.argv[1], int(sys.argv[2])
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    prepared = frames_for(count)
    encoded = [] if rate else [[t, json.dumps(e, sort_keys=True, separators=(",", ":")).encode()] for t, e in prepared]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(endpoint)
    sock.recv()  # a subscription: someone is listening
    time.sleep(0.5)  # let any other subscriber finish joining
    start = time.perf_counter()
    if rate:
        interval = 1.0 / rate
        for n, (topic, envelope) in enumerate(prepared):
            target = start + n * interval
            while (delay := target - time.perf_counter()) > 0:
                time.sleep(delay)
            envelope["bench_sent"] = time.time()
            sock.send_multipart([topic, json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()])
    else:
        for frames in encoded:
            sock.send_multipart(frames)
    print(f"DONE {time.perf_counter() - start:.3f}", flush=True)
    sock.close(linger=60_000)
    ctx.term()


if __name__ == "__main__":
    main()
