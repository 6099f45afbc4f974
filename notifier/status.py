"""`fedmsg-notify status` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys


def run_status(args: argparse.Namespace) -> int:
    print("fedmsg-notify status: not available yet", file=sys.stderr)
    return 1
