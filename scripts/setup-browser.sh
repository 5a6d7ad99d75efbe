#!/usr/bin/env bash
# Browser test prerequisites: Debian's chromium (apt) and playwright-core (npm, tests/browser/).
# Idempotent. Never runs `npx playwright install`: the test drives /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  echo "[setup-browser] installing Debian chromium"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "[setup-browser] installing Debian nodejs and npm"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [[ ! -d tests/browser/node_modules/playwright-core ]]; then
  echo "[setup-browser] installing playwright-core into tests/browser"
  (cd tests/browser && npm install --no-audit --no-fund --silent)
fi
echo "[setup-browser] chromium: $(chromium --version 2>/dev/null || echo missing); playwright-core: $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"
