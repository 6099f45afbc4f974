"""The README's first command: `fedmsg-notify demo` runs the whole path on embedded defaults."""

from __future__ import annotations

import subprocess
import sys


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
