#!/usr/bin/env bash
# Installs Chromium (used headless to screenshot the Great Expectations Data Docs in tests)
# when /usr/bin/chromium is missing. Quiet on success; needs root (or sudo) and apt-get.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "ensure_chromium: /usr/bin/chromium is missing and apt-get is not available; install Chromium by hand" >&2
    exit 1
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || { echo "ensure_chromium: need root or sudo to install Chromium" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium || { echo "ensure_chromium: apt-get finished but /usr/bin/chromium is still missing" >&2; exit 1; }
