#!/usr/bin/env bash
# mypy --strict on the installed namespace. The source tree maps notifier/ and backends/
# onto fedmsg_notify through setup.py's package_dir, which mypy cannot follow, so we
# lay out the same namespace with symlinks under build/typecheck and check that.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
tree=build/typecheck/fedmsg_notify
rm -rf build/typecheck && mkdir -p "$tree"
for entry in notifier/*; do
  ln -s "$root/$entry" "$tree/$(basename "$entry")"
done
ln -s "$root/backends" "$tree/backends"
MYPYPATH=build/typecheck exec "${MYPY:-.venv/bin/mypy}" -p fedmsg_notify "$@"
