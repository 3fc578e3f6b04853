# What the Kafka benchmarks share (sourced, not run). `bench_kafka BENCH` sets root, kafka
# (scripts/kafka.sh), work (a directory removed at exit), broker (scripts/kafka.sh's broker:
# started on a free port here and stopped at exit, unless KAFKA_PORT names one already
# running) and bin (the oxflow binary), and builds that binary and benches/BENCH.rs.
bench_kafka() {
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
  kafka=$root/scripts/kafka.sh
  work=$(mktemp -d)
  bench_kafka_started=
  trap 'rm -rf "$work"; [ -z "$bench_kafka_started" ] || "$kafka" stop' EXIT
  if [ -z "${KAFKA_PORT:-}" ]; then
    KAFKA_PORT=$("$kafka" free-port)
    export KAFKA_PORT
    "$kafka" start
    bench_kafka_started=yes
  fi
  broker=127.0.0.1:$KAFKA_PORT
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin oxflow
  cargo bench --quiet --manifest-path "$root/Cargo.toml" --bench "$1" --no-run 2>/dev/null
  bin=$CARGO_TARGET_DIR/release/oxflow
}
