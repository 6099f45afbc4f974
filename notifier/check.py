"""`fedmsg-notify check` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys


def run_check(args: argparse.Namespace) -> int:
    print("fedmsg-notify check: not available yet", file=sys.stderr)
    return 1
