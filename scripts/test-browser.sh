#!/usr/bin/env bash
# The dashboard in a real browser: Debian's Chromium (installed with apt-get when missing),
# driven by Playwright (playwright-core, pinned in tests/browser/package-lock.json; it
# downloads no browser) against `oxflow server` built from this tree, in the shared target
# directory. SCREENSHOTS=DIR keeps a picture of each page (docs/screenshots/ holds the last).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "no Chromium at $chromium: install Debian's chromium package (or set CHROMIUM)" >&2
    exit 1
  fi
fi
command -v node >/dev/null || { echo "node not found: the browser test needs Node.js 20 or newer" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
(cd "$root/tests/browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
cd "$root/tests/browser"
OXFLOW_BIN="$CARGO_TARGET_DIR/release/oxflow" CHROMIUM="$chromium" \
  node --test --test-reporter=spec dashboard.test.mjs
