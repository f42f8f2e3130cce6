#!/usr/bin/env bash
# System packages the tests use: Debian's chromium (the HTML report is checked in a real headless
# browser). Installed only when missing and when we may (root + apt-get); otherwise the browser
# tests say what is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: chromium (Debian) for the HTML report tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "setup: chromium not found and cannot apt-get it; install Debian's chromium for the browser tests" >&2
fi
