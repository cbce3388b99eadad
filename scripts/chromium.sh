#!/usr/bin/env bash
# The dashboard tests drive Debian's chromium through Playwright (Playwright's own browser download is not
# used). Install it when it is missing; nothing happens when it is there.
set -eu
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
echo "chromium: installing Debian's chromium for the dashboard tests"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
