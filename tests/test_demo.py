"""The README's first command: `fedmsg-notify demo` runs the whole path on embedded defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
    assert len(lines) >= 20, result.stdout + result.stderr
    # The first sample is a wiki edit by Ralph: the console line says so.
    assert any("Ralph" in line or "ralph" in line for line in lines)


def test_demo_labels_each_line_and_ends_with_a_summary() -> None:
    """One labelled line per message per destination, then what was replayed, printed and left in a digest."""
    result = subprocess.run(
        [sys.executable, "-m", "fedmsg_notify", "demo", "--rate", "500"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    # split("\n"), not splitlines(): a rendered line may hold U+2028 and friends.
    lines = [line for line in result.stdout.split("\n") if line.strip()]
    *delivered, last = lines
    assert all(line.startswith(("[firehose:#fedora-firehose] ", "[desktop] ")) for line in delivered), delivered
    replayed = len([line for line in Path(_samples()).read_text(encoding="utf-8").split("\n") if line.strip()])
    firehose = [line.split("] ", 1)[1] for line in delivered if line.startswith("[firehose:")]
    desktop = [line.split("] ", 1)[1] for line in delivered if line.startswith("[desktop] ")]
    # The firehose takes every message once; a message the desktop rule also takes shows once more, labelled.
    assert len(firehose) == replayed
    assert desktop and set(desktop) <= set(firehose)
    assert last.startswith(f"demo: {replayed} messages replayed, {len(delivered)} lines printed (")
    assert "digest entries waiting: " in last and "for mail:ralph@example.org, due in 60 min" in last


def _samples() -> str:
    from fedmsg_notify.commands.demo import samples_path

    return samples_path()
