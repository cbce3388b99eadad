#!/usr/bin/env bash
# Commands the tests and benchmarks need from Debian, each from the package of the same name: `make test`
# asks for chromium (the dashboard tests drive it through Playwright; Playwright's own browser download is
# not used), the bench targets for wrk and hey (bench/service_load.py: throughput at saturation, latency at a
# paced rate). Installs whichever of the named commands is missing; nothing happens when all are there.
#     bash scripts/debian-tools.sh COMMAND...
set -eu
missing=""
for tool in "$@"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/bin/$tool" ] || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0
echo "installing Debian's$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq $missing >/dev/null
for tool in $missing; do command -v "$tool" >/dev/null; done
