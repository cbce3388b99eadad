#!/usr/bin/env bash
# bench/service_load.py measures status-poll throughput with wrk (Debian's package). Install it when it is
# missing; nothing happens when it is there.
set -eu
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
echo "wrk: installing Debian's wrk for bench/service_load.py"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq wrk >/dev/null
command -v wrk >/dev/null
