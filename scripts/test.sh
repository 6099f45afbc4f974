#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs it:
# Debian packages for the real servers the tests start, the project's virtualenv with
# every backend and test extra, a second virtualenv with the real fedmsg library (pinned
# to the pyOpenSSL/cryptography it works with), then ruff, mypy --strict and pytest.
# Extra arguments go to pytest.
#
# Each server the tests use has a file in scripts/setup.d/ (sourced in name order): it
# appends its Debian packages to APT_PACKAGES and may append the name of a shell
# function to SETUP_STEPS, run after the virtualenv exists (for a server of its own venv).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="ngircd dbus libdbus-1-dev libglib2.0-dev pkg-config"
SETUP_STEPS=""
PY=${PYTHON:-python3}
for part in scripts/setup.d/*.sh; do
  [ -e "$part" ] || continue
  # shellcheck source=/dev/null
  . "$part"
done

missing=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq $missing >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel >/dev/null
.venv/bin/pip install -q -e '.[test]'

# The real fedmsg, isolated: its crypto needs old pyOpenSSL/cryptography pins.
if [ ! -x .venv-fedmsg/bin/python ] || ! .venv-fedmsg/bin/python -c 'import fedmsg' 2>/dev/null; then
  "$PY" -m venv .venv-fedmsg
  .venv-fedmsg/bin/pip install -q 'fedmsg==1.1.7' 'pyOpenSSL==24.2.1' 'cryptography<44' 'pyzmq'
fi
export FEDMSG_PYTHON="$PWD/.venv-fedmsg/bin/python"

for step in $SETUP_STEPS; do
  "$step"
done

.venv/bin/ruff check notifier backends tests bench
bash scripts/typecheck.sh
# Two workers (this machine class has 2 cores; most tests wait on servers), one test file
# per worker at a time so a file's module-scoped servers are started once. TEST_WORKERS=0
# runs everything in this process.
workers=${TEST_WORKERS:-2}
if [ "$workers" = "0" ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
fi
