#!/usr/bin/env bash
# bench/service_load.py measures the API with wrk (throughput at saturation) and hey (latency at a paced rate),
# both Debian packages. Install whichever is missing; nothing happens when both are there.
set -eu
missing=""
for tool in wrk hey; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0
echo "load tools: installing Debian's$missing for bench/service_load.py"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq $missing >/dev/null
for tool in $missing; do command -v "$tool" >/dev/null; done
