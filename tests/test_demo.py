"""The README's first command: `fedmsg-notify demo` runs the whole path on embedded defaults."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

from fedmsg_notify.bus.envelope import split_topic
from fedmsg_notify.commands.demo import sample_messages


def test_demo_prints_routed_sample_messages() -> None:
    """The demo replays bundled samples through a real bus and the daemon prints them, then exits by itself."""
    result = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "demo", "--count", "30", "--rate", "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    published = [sample["topic"] for sample in sample_messages()[:30]]
    # The firehose rule prints every message once (the desktop rule some again): no message is lost.
    printed = Counter(line.split(": ", 1)[0] for line in lines)
    wanted = Counter(split_topic(topic).subtopic for topic in published)
    assert not wanted - printed, (wanted - printed, result.stdout + result.stderr)
    assert all(len(line.split(": ", 1)) == 2 and line.split(": ", 1)[1].strip() for line in lines), lines
    # The first sample is a wiki edit by Ralph: its console line is the rendered sentence.
    assert 'wiki.article.edit: ralph edited the wiki page "Messaging SIG": /* Mission */ https://this-is-a-link.org' in lines
