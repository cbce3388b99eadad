#!/usr/bin/env bash
# import-linter reads packages from disk, but our one import name maps several top-level folders
# (pyproject.toml package-dir). Lay that mapping out as symlinks and check the contracts there.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.lint-tree/secateurs
rm -rf .lint-tree && mkdir -p "$tree"
for f in _secateurs/*.py; do ln -s "../../$f" "$tree/$(basename "$f")"; done
for d in pruning api worker db client; do [ -d "$d" ] && ln -s "../../$d" "$tree/$d"; done
PYTHONPATH=.lint-tree .venv/bin/lint-imports
