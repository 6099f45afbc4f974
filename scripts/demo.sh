#!/usr/bin/env bash
# Sets up a virtualenv and runs the daemon end to end on embedded defaults: a local
# publisher replays the bundled Fedora sample messages, the shipped rules route them
# to the console, and each appears as one line. Ends by itself (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e .
exec .venv/bin/fedmsg-notify demo "$@"
