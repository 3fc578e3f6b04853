#!/usr/bin/env bash
# Prints the path of Prometheus' promtool, building it from the Go module proxy the first time
# (into ~/.cache/oxflow-tools/bin; Go comes with the machine). The metrics test pipes the
# server's /metrics into `promtool check metrics`.
set -euo pipefail
VERSION=${PROMTOOL_VERSION:-v0.316.0}
if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
bin=$HOME/.cache/oxflow-tools/bin
if [ ! -x "$bin/promtool" ]; then
  command -v go >/dev/null || { echo "go not found: promtool is built with Go" >&2; exit 1; }
  mkdir -p "$bin"
  echo "building promtool $VERSION (once)..." >&2
  GOBIN=$bin GOFLAGS=-mod=mod go install "github.com/prometheus/prometheus/cmd/promtool@$VERSION" >&2
fi
echo "$bin/promtool"
