"""`fedmsg-notify explain` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys


def run_explain(args: argparse.Namespace) -> int:
    print("fedmsg-notify explain: not available yet", file=sys.stderr)
    return 1
