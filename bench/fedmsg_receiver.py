"""The peer: the real fedmsg library's own receive loop over the benchmark stream.

Runs under the fedmsg virtualenv: ``python bench/fedmsg_receiver.py ENDPOINT COUNT``;
prints "READY", then "RESULT <seconds> <cpu_seconds> <peak_rss_kb>" after COUNT messages.
"""

import resource
import sys
import time

import fedmsg.config
import fedmsg.core


def main():
    endpoint, count = sys.argv[1], int(sys.argv[2])
    config = dict(fedmsg.config.defaults)
    config.update(endpoints={"bench": [endpoint]}, name=None, mute=True,
                  validate_signatures=False, high_water_mark=0)
    ctx = fedmsg.core.FedMsgContext(**config)
    print("READY", flush=True)
    start = cpu0 = None
    for seen, _received in enumerate(ctx.tail_messages(), 1):
        if start is None:
            start, cpu0 = time.perf_counter(), time.process_time()
        if seen >= count:
            break
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"RESULT {elapsed:.6f} {cpu:.6f} {rss}", flush=True)


if __name__ == "__main__":
    main()
