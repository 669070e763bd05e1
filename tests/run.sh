#!/usr/bin/env bash
# Runs every test of the project, installing what it needs on a fresh machine:
#   the Rust unit, property and integration tests (cargo test),
#   the page's unit tests (Node's test runner, no packages),
#   the browser suite (playwright-core driving Debian's Chromium against the release binary).
set -euo pipefail
cd "$(dirname "$0")/.."

# The stress test opens about a thousand sockets in one process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

chromium_path="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium_path" ]; then
  echo "== installing Chromium (Debian package) for the browser tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
  echo "== installing Node.js (Debian package) for the page's tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! command -v redis-server >/dev/null 2>&1; then
  # The clustered-mode tests start their own redis-server on a free loopback port.
  echo "== installing redis-server (Debian package) for the clustered-mode tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
echo "== npm ci (tests/e2e)"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)

echo "== cargo test"
cargo test
echo "== cargo build --release (the browser suite runs the release binary)"
cargo build --release
echo "== load generator smoke" && cargo bench --bench relay -- --smoke
echo "== node --test tests/web-unit"
node --test tests/web-unit/
echo "== node --test tests/e2e"
node --test --test-concurrency=1 tests/e2e/
