"""Runs under the real fedmsg (its own virtualenv): a publisher or a tail, for interop tests.

    python fedmsg_peer.py publish ENDPOINT TOPIC MSG_JSON COUNT
    python fedmsg_peer.py tail ENDPOINT COUNT      # prints one JSON line per message

fedmsg.init() insists on a config directory; building the context from fedmsg's own
defaults plus our endpoint is what the library does internally.
"""

import json
import os
import sys

import fedmsg.config
import fedmsg.core


def context(endpoint, publish):
    config = dict(fedmsg.config.defaults)
    config.update(
        endpoints={"peer.host": [endpoint]},
        name="peer.host" if publish else None,
        sign_messages=False,
        validate_signatures=False,
        topic_prefix="org.fedoraproject",
        environment="dev",
        # How long the publisher waits after binding for subscribers to (re)connect.
        post_init_sleep=float(os.environ.get("FEDMSG_PEER_SLEEP", "1.0")),
        mute=not publish,
    )
    return fedmsg.core.FedMsgContext(**config)


def main():
    mode, endpoint = sys.argv[1], sys.argv[2]
    if mode == "publish":
        topic, msg, count = sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
        ctx = context(endpoint, publish=True)
        for n in range(count):
            ctx.publish(topic=topic, msg=dict(msg, n=n), modname="peer")
        ctx.destroy()
    elif mode == "tail":
        count = int(sys.argv[3])
        ctx = context(endpoint, publish=False)
        print("READY", flush=True)
        for n, (_name, _ep, topic, msg) in enumerate(ctx.tail_messages(), 1):
            print(json.dumps({"topic": topic, "msg": msg}), flush=True)
            if n >= count:
                break
    else:
        raise SystemExit("usage: fedmsg_peer.py publish|tail ...")


if __name__ == "__main__":
    main()
