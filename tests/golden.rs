//! Golden tests: each Nexmark query on a small fixed run of the generator, compared with the
//! expected output kept in `tests/golden/<query>.jsonl` (sorted JSON lines, as the file sink
//! writes them). Set `OXFLOW_UPDATE_GOLDEN=1` to rewrite the files after an intended change.

use oxflow::nexmark::{job, QUERIES};
use oxflow::prelude::*;
mod common;

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
    common::json_lines(&out.batches())
}

#[test]
fn nexmark_queries_match_golden_files() {
    let dir = common::repo_path("tests/golden");
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

/// Compares sorted lines, reporting sizes and a few lines missing or extra (not thousands).
fn assert_same_lines(got: &[String], expected: &[String], context: &str) {
    if got == expected {
        return;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|l| !got.contains(l))
        .take(3)
        .collect();
    let extra: Vec<&String> = got
        .iter()
        .filter(|l| !expected.contains(l))
        .take(3)
        .collect();
    panic!(
        "{context}: {} lines, {} expected; missing e.g. {missing:?}; extra e.g. {extra:?}",
        got.len(),
        expected.len()
    );
}

/// The expected lines of `query`'s golden file.
fn golden(query: &str) -> Vec<String> {
    let path = common::repo_path("tests/golden").join(format!("{query}.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// The committed output of a file sink directory, as sorted lines (in-progress files, whose
/// names start with `.`, are not output).
fn committed_lines(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        lines.extend(text.lines().map(String::from));
    }
    lines.sort();
    lines
}

/// A slow generator (2,000 events in about half a second, so that checkpoints fall between
/// batches) into a file sink, with checkpoints every 20 ms.
fn checkpointed_job(
    query: &str,
    workers: usize,
    out: &std::path::Path,
    checkpoints: &std::path::Path,
) -> Job {
    let config = NexmarkConfig {
        rate_limit: Some(4_000.0),
        ..config(50)
    };
    job(
        query,
        Pipeline::new().with_parallelism(workers),
        config,
        FileSink::try_new(out).unwrap(),
    )
    .unwrap()
    .with_checkpoints(CheckpointConfig::new(
        checkpoints,
        std::time::Duration::from_millis(20),
    ))
}

/// Runs `job` until `checkpoints` checkpoints have completed, then cancels it (an in-process
/// crash: nothing is flushed or committed). Returns whether the job finished first.
fn run_until_checkpoints(job: Job, checkpoints: u64) -> bool {
    let completed = job.metrics().counter("checkpoints.completed");
    let cancel = job.cancel_handle();
    let runner = std::thread::spawn(move || job.execute_blocking());
    while !runner.is_finished() && completed.get() < checkpoints {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    cancel.cancel();
    match runner.join().unwrap() {
        Ok(_) => true,
        Err(e) => {
            assert!(e.to_string().contains("cancelled"), "{e}");
            false
        }
    }
}

#[test]
fn checkpointed_runs_match_golden_files() {
    for query in QUERIES {
        let tmp = tempfile::tempdir().unwrap();
        let (out, checkpoints) = (tmp.path().join("out"), tmp.path().join("chk"));
        let report = checkpointed_job(query, 2, &out, &checkpoints)
            .execute_blocking()
            .unwrap();
        assert!(
            report.checkpoints.completed >= 3,
            "{query}: only {} checkpoints",
            report.checkpoints.completed
        );
        assert_eq!(
            committed_lines(&out),
            golden(query),
            "{query} with checkpoints"
        );
    }
}

/// Runs `query` attempt by attempt as `plan` says — (workers, checkpoints to wait for before
/// killing it, where state lives) — each restoring the latest checkpoint, the last to the end;
/// the committed output must be the golden file's.
fn killed_and_restored(query: &str, plan: &[(usize, u64, StateStorage)]) {
    let tmp = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (tmp.path().join("out"), tmp.path().join("chk"));
    let (last, killed) = plan.split_last().unwrap();
    for &(workers, wait, storage) in killed {
        let job = checkpointed_job(query, workers, &out, &checkpoints)
            .with_state_storage(storage)
            .restore_from(RestoreFrom::Latest);
        run_until_checkpoints(job, wait);
    }
    checkpointed_job(query, last.0, &out, &checkpoints)
        .with_state_storage(last.2)
        .restore_from(RestoreFrom::Latest)
        .execute_blocking()
        .unwrap();
    assert_same_lines(
        &committed_lines(&out),
        &golden(query),
        &format!("{query} killed and restored as {plan:?}"),
    );
}

#[test]
fn killed_and_restored_runs_match_golden_files() {
    // Rescaling up and down, and a kill before any checkpoint.
    let memory = StateStorage::Memory;
    let plans: [&[(usize, u64, StateStorage)]; 3] = [
        &[(2, 3, memory), (2, 0, memory)],
        &[
            (1, 0, memory),
            (3, 2, memory),
            (2, 4, memory),
            (1, 0, memory),
        ],
        &[(4, 5, memory), (2, 0, memory)],
    ];
    for query in QUERIES {
        for plan in plans {
            killed_and_restored(query, plan);
        }
    }
}

#[test]
fn state_in_rocksdb_matches_golden_files_straight_and_killed_and_restored() {
    // A budget so small that window state lives in RocksDB; attempts switch between that,
    // a budget nothing outgrows, and state in memory, so each restores the others'
    // checkpoints.
    let rocks = StateStorage::RocksDb {
        memory_budget: 4 << 10,
    };
    // A budget nothing outgrows: windows are copied at barriers, not spilled.
    let roomy = StateStorage::RocksDb {
        memory_budget: 1 << 30,
    };
    let memory = StateStorage::Memory;
    let plans: [&[(usize, u64, StateStorage)]; 4] = [
        &[(2, 0, rocks)],
        &[(2, 3, rocks), (3, 2, memory), (1, 0, rocks)],
        &[(1, 2, memory), (2, 0, rocks)],
        &[(2, 3, roomy), (1, 2, rocks), (3, 2, roomy), (2, 0, memory)],
    ];
    for query in QUERIES {
        for plan in plans {
            killed_and_restored(query, plan);
        }
    }
}

#[test]
fn a_savepoint_restores_to_the_same_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, checkpoints) = (tmp.path().join("out"), tmp.path().join("chk"));
    let job = checkpointed_job("q11", 2, &out, &checkpoints);
    let savepoints = job.savepoints();
    let runner = std::thread::spawn(move || job.execute_blocking());
    std::thread::sleep(std::time::Duration::from_millis(150));
    let path = savepoints
        .request("before-upgrade")
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("an answer")
        .expect("a savepoint");
    runner.join().unwrap().unwrap();
    assert_eq!(path, checkpoints.join("savepoints/before-upgrade"));
    let id = oxflow::runtime::checkpoint::load(&path)
        .unwrap()
        .manifest
        .id;
    // Going back to the savepoint drops what was committed after it and writes it again.
    let report = checkpointed_job("q11", 3, &out, &checkpoints)
        .restore_from(RestoreFrom::Path(path))
        .execute_blocking()
        .unwrap();
    assert_eq!(report.restored_from, Some(id));
    assert_same_lines(
        &committed_lines(&out),
        &golden("q11"),
        "q11 from a savepoint",
    );
    let bad = checkpointed_job("q11", 1, &out, &checkpoints)
        .savepoints()
        .request("../escape")
        .recv()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(bad.contains("savepoint name"), "{bad}");
}
