#!/usr/bin/env bash
# Schema-driven fuzzing of the runtime server's API: schemathesis (from PyPI) generates
# requests from docs/openapi.yaml, valid and invalid ones, sends them to a real
# `oxflow server` on a free loopback port (with its token), and fails on any 5xx answer or
# any answer the document does not describe (status, content type, body schema).
#   scripts/fuzz-api.sh [MAX_EXAMPLES]    (default 150 per operation)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
examples=${1:-150}
SCHEMATHESIS_VERSION=4.32.5
if ! command -v schemathesis >/dev/null 2>&1; then
  python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Few jobs at once: the fuzzer submits many valid specs, and each runs until cancelled.
"$CARGO_TARGET_DIR/release/oxflow" server --listen "127.0.0.1:$port" --data-dir "$data" \
  --max-running-jobs 2 > "$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
token=$(cat "$data/token")
# Its cache and reports go to the scratch directory, not the clone.
cd "$data"
schemathesis run "$root/docs/openapi.yaml" \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" --seed 7 --workers 1 --request-timeout 30
if grep -q panicked "$data/server.log"; then
  echo "the server panicked:"; grep panicked "$data/server.log"; exit 1
fi
