#!/usr/bin/env bash
# Installs the browser the UI tests drive (tests/test_ui_browser.py): Debian's `chromium`, launched by Playwright
# through executable_path (Playwright's own browser download cannot reach its host from these machines).
# Idempotent: does nothing when the browser is already there. Needs root (or sudo) and Debian's package archive.
#   FACELAKE_CHROMIUM=/path/to/chromium   use another binary (the tests read the same variable)
set -euo pipefail

CHROMIUM="${FACELAKE_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $("$CHROMIUM" --version 2>/dev/null | head -n1) at $CHROMIUM"
    exit 0
fi
if [ "$CHROMIUM" != /usr/bin/chromium ]; then
    echo "install_browser: FACELAKE_CHROMIUM=$CHROMIUM does not exist" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get here; install Chromium yourself and set FACELAKE_CHROMIUM" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_browser: run as root (apt-get install chromium)" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "install_browser: apt-get install chromium"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
"$CHROMIUM" --version 2>/dev/null
