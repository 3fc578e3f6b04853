//! Golden tests: each Nexmark query on a small fixed run of the generator, compared with the
//! expected output kept in `tests/golden/<query>.jsonl` (sorted JSON lines, as the file sink
//! writes them). Set `OXFLOW_UPDATE_GOLDEN=1` to rewrite the files after an intended change.

use oxflow::connectors::json::encode_json_lines;
use oxflow::nexmark::{job, QUERIES};
use oxflow::prelude::*;
use std::path::PathBuf;

fn config(batch_size: usize) -> NexmarkConfig {
    // 2,000 events at 100 events/s of event time: 20 s, several windows and sessions.
    NexmarkConfig {
        events: Some(2_000),
        event_rate: 100,
        seed: 42,
        batch_size,
        ..Default::default()
    }
}

fn run(query: &str, workers: usize, batch_size: usize) -> Vec<String> {
    let out = CollectSink::new();
    job(
        query,
        Pipeline::new().with_parallelism(workers),
        config(batch_size),
        out.clone(),
    )
    .unwrap()
    .execute_blocking()
    .unwrap();
    let mut bytes = Vec::new();
    for b in out.batches() {
        encode_json_lines(&b, &mut bytes).unwrap();
    }
    let mut lines: Vec<String> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn nexmark_queries_match_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for query in QUERIES {
        let path = dir.join(format!("{query}.jsonl"));
        let got = run(query, 1, 8192);
        if std::env::var_os("OXFLOW_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got.join("\n") + "\n").unwrap();
        }
        let expected: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run with OXFLOW_UPDATE_GOLDEN=1 to create it)",
                    path.display()
                )
            })
            .lines()
            .map(String::from)
            .collect();
        assert!(!expected.is_empty(), "{query}: empty golden file");
        assert_eq!(got, expected, "{query} at 1 worker");
        for (workers, batch_size) in [(2, 7), (3, 100), (4, 1)] {
            assert_eq!(
                run(query, workers, batch_size),
                expected,
                "{query} at {workers} workers, batch size {batch_size}"
            );
        }
    }
}
