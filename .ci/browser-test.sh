#!/usr/bin/env bash
# The Webhooks page in a real headless browser: builds cdrhook, then
# .ci/browser-test.py starts a receiver and the daemon (HTTP listener on a
# loopback port, with a token), and drives Debian's Chromium through the
# DevTools protocol: the page loads, lists the attempts, and a Resend click
# makes exactly one new request at the receiver.
#
# Installs chromium and python3-websocket with apt-get when they are missing
# (as root). Never skips: without a Chromium that runs, it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Debian's module, for Debian's python (another python3 may come first on PATH).
/usr/bin/python3 -c 'import websocket' >/dev/null 2>&1 || missing+=(python3-websocket)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "FAIL the browser test needs ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
    exit 1
  fi
fi

cargo build --quiet --bin cdrhook
exec /usr/bin/python3 .ci/browser-test.py target/debug/cdrhook
