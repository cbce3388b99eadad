#!/usr/bin/env bash
# The tests' S3 endpoint is s3rver (npm: @20minutes/s3rver), a Node.js S3 server that checks the SigV4 signature of
# every request, and the signature and expiry of presigned URLs, as S3 does (moto checks neither). Installed from
# npm into .venv/s3rver (or $1) when it is missing (by the tests' s3_stack fixture); nothing happens when it is there.
set -eu
DIR="${1:-.venv/s3rver}"
PKG="@20minutes/s3rver@5.0.0"
[ -f "$DIR/node_modules/@20minutes/s3rver/lib/s3rver.js" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "s3rver: installing Debian's nodejs and npm"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
echo "s3rver: installing $PKG into $DIR"
mkdir -p "$DIR"
npm install --no-audit --no-fund --loglevel=error --prefix "$DIR" "$PKG"
