//! The file sink and the file sources on S3 against a real S3-protocol server: `scripts/s3.sh start`, then the
//! variables of `scripts/s3.sh env` and `cargo test --release --test s3 -- --ignored`.
//! `scripts/test.sh` (the README's test command) and .ci/run do exactly that. Each test writes
//! under a prefix of its own.

// Unique names come from the wall clock; no operator logic is under test here.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{oxflow, summary};
use oxflow::connectors::object::S3Location;
use std::time::Duration;

fn location(prefix: &str) -> String {
    let need = |v: &str| {
        std::env::var(v).unwrap_or_else(|_| {
            panic!(
                "needs an S3 server: scripts/s3.sh start; the variables of scripts/s3.sh env ({v})"
            )
        })
    };
    format!(
        "s3://{}/{prefix}?endpoint={}",
        need("OXFLOW_S3_BUCKET"),
        need("OXFLOW_S3_ENDPOINT")
    )
}

/// The objects under `uri` (committed output), and all their lines, sorted.
fn objects_and_lines(uri: &str) -> (Vec<String>, Vec<String>) {
    let (loc, _) = S3Location::parse(uri).unwrap();
    // Output objects only: not the sink's commit records under `_commits/`.
    let names: Vec<String> = loc.list_files().unwrap().into_iter().map(|f| f.0).collect();
    let mut lines: Vec<String> = names
        .iter()
        .flat_map(|n| {
            String::from_utf8(loc.read(n).unwrap())
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    (names, lines)
}

#[test]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
fn s3_sink_writes_the_generators_results_in_multipart_uploads() {
    let uri = location(&common::unique("q0"));
    // q0's 276 000 bids as JSON are about 27 MB: one file of four 8 MiB parts and a last one.
    let report = summary(&oxflow(
        &[
            &common::ORDERED_GENERATOR[..],
            &["--query", "q0", "--sink", &uri],
        ]
        .concat(),
    ));
    let (names, lines) = objects_and_lines(&uri);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("part-0-") && names[0].ends_with(".jsonl"),
        "{names:?}"
    );
    assert_eq!(lines.len() as u64, report["output_rows"].as_u64().unwrap());
    assert_eq!(lines, common::generator_lines("q0"));
    // Parquet, rolled at 1 MiB, committed at checkpoints, read back by q5 from a local copy.
    let parquet = location(&common::unique("parquet"));
    let chk = tempfile::tempdir().unwrap();
    summary(&oxflow(
        &[
            &common::ORDERED_GENERATOR[..],
            &[
                "--query",
                "q0",
                "--sink",
                &format!("{parquet}&format=parquet&max-file-mb=1"),
                "--checkpoint-dir",
                &chk.path().display().to_string(),
                "--checkpoint-interval-ms",
                "100",
            ],
        ]
        .concat(),
    ));
    let (loc, _) = S3Location::parse(&parquet).unwrap();
    let names: Vec<String> = loc.list_files().unwrap().into_iter().map(|f| f.0).collect();
    assert!(
        names.len() > 1 && names.iter().all(|n| n.ends_with(".parquet")),
        "{names:?}"
    );
    // Read back from S3 itself: footers and row groups by ranged GETs.
    let q5 = tempfile::tempdir().unwrap();
    summary(&oxflow(&[
        "nexmark",
        "--query",
        "q5",
        "--workers",
        "2",
        "--source",
        &parquet,
        "--sink",
        &format!("file:{}", q5.path().display()),
    ]));
    assert_eq!(
        common::committed_lines(q5.path()),
        common::generator_lines("q5")
    );
}

#[test]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
fn s3_uploads_become_visible_at_commit_once_even_when_replayed() {
    use oxflow::arrow::array::Int64Array;
    use oxflow::arrow::datatypes::{DataType, Field, Schema};
    use oxflow::arrow::record_batch::RecordBatch;
    use oxflow::connectors::sinks::FileSink;
    use oxflow::runtime::sink::Sink;
    use oxflow::runtime::SubtaskInfo;
    use std::sync::Arc;

    let uri = location(&common::unique("commit"));
    let sink = || FileSink::s3(S3Location::parse(&uri).unwrap().0);
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
    let split = SubtaskInfo {
        index: 0,
        parallelism: 1,
        max_parallelism: 128,
    };
    let first = sink();
    let mut w = first.create_writer(split, schema).unwrap();
    w.write(&batch).unwrap();
    let pending = w.pre_commit().unwrap().unwrap();
    assert!(
        objects_and_lines(&uri).0.is_empty(),
        "nothing visible before the commit"
    );
    first.commit(1, std::slice::from_ref(&pending)).unwrap();
    // A new process replays the commit: the object is there already, and stays one.
    sink().commit(1, std::slice::from_ref(&pending)).unwrap();
    let (names, lines) = objects_and_lines(&uri);
    assert_eq!(names.len(), 1);
    assert_eq!(lines, [r#"{"a":1}"#, r#"{"a":2}"#]);
    // A made-up upload is an error naming it, not a silent success.
    let mut forged = pending.clone();
    forged["uploads"][0]["key"] = "part-9-forged.jsonl".into();
    let e = sink().commit(2, &[forged]).unwrap_err().to_string();
    assert!(e.contains("part-9-forged.jsonl"), "{e}");
}

/// The arguments of q5 on the ordered generator into `uri`, checkpointed into `chk` every
/// 200 ms, then `extra`.
fn q5_checkpointed(uri: &str, chk: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let chk = chk.display().to_string();
    let args = [
        "--query",
        "q5",
        "--sink",
        uri,
        "--checkpoint-dir",
        &chk,
        "--checkpoint-interval-ms",
        "200",
    ];
    common::ORDERED_GENERATOR
        .iter()
        .chain(&args)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// Runs oxflow with `args` for `ms` milliseconds, then kills it (SIGKILL).
fn killed_after(args: &[String], ms: u64) {
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    job.kill().unwrap();
    job.wait().unwrap();
}

/// Runs oxflow with `args` to its end; its summary.
fn run_args(args: &[String]) -> serde_json::Value {
    summary(&oxflow(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
}

#[test]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
fn s3_output_is_exactly_once_when_the_job_is_killed_and_restored() {
    let uri = location(&common::unique("killed"));
    let chk = tempfile::tempdir().unwrap();
    killed_after(
        &q5_checkpointed(&uri, chk.path(), &["--rate", "60000"]),
        2500,
    );
    let restored = run_args(&q5_checkpointed(&uri, chk.path(), &["--restore", "latest"]));
    assert!(!restored["restored_from"].is_null(), "{restored}");
    assert_eq!(objects_and_lines(&uri).1, common::generator_lines("q5"));
}

/// The machine is lost: the job is killed and its checkpoint directory deleted. Restored on
/// a fresh directory from the checkpoint store in S3, it ends with exactly the output of an
/// uninterrupted run; the store holds shared state files and the retained manifests only.
#[test]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
fn s3_checkpoint_store_restores_a_job_whose_checkpoint_directory_is_lost() {
    let uri = location(&common::unique("lost-out"));
    let store = location(&common::unique("lost-store"));
    fn stored<'a>(store: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "--checkpoint-store",
            store,
            "--checkpoints-retained",
            "2",
            "--state-memory-budget-mb",
            "8",
        ];
        a.extend(extra);
        a
    }
    let lost = tempfile::tempdir().unwrap();
    killed_after(
        &q5_checkpointed(&uri, lost.path(), &stored(&store, &["--rate", "60000"])),
        2500,
    );
    drop(lost);
    let (location, _) = S3Location::parse(&store).unwrap();
    let keys = store_keys(&location);
    let manifests = keys
        .iter()
        .filter(|k| k.ends_with("/_manifest.json"))
        .count();
    assert!((1..=2).contains(&manifests), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("files/stage")),
        "{keys:?}"
    );
    let fresh = tempfile::tempdir().unwrap();
    let restored = run_args(&q5_checkpointed(
        &uri,
        fresh.path(),
        &stored(&store, &["--restore", "latest"]),
    ));
    assert!(!restored["restored_from"].is_null(), "{restored}");
    assert_eq!(objects_and_lines(&uri).1, common::generator_lines("q5"));
}

/// Every key of a checkpoint store in S3.
fn store_keys(location: &S3Location) -> Vec<String> {
    use oxflow::runtime::store::CheckpointStore;
    CheckpointStore::list(location, "").unwrap()
}

#[test]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
fn s3_source_reads_json_lines_is_restored_mid_object_and_names_bad_input() {
    // The bids as JSON lines on S3 (one object of about 27 MB, read 8 MiB per GET).
    let input = location(&common::unique("bids"));
    summary(&oxflow(
        &[
            &common::ORDERED_GENERATOR[..],
            &["--query", "q0", "--sink", &input],
        ]
        .concat(),
    ));
    let (out, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |workers: &str, extra: &[&str]| -> Vec<String> {
        [
            "nexmark",
            "--query",
            "q0",
            "--workers",
            workers,
            "--source",
            &input,
            "--sink",
            &format!("file:{}", out.path().display()),
            "--checkpoint-dir",
            &chk.path().display().to_string(),
            "--checkpoint-interval-ms",
            "20",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    // Killed once a checkpoint is written (inside the object, most likely), then restored at
    // another parallelism: the committed output is every bid once.
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(args("2", &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let checkpointed = || {
        std::fs::read_dir(chk.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("_manifest.json").exists())
    };
    while !checkpointed() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = job.kill();
    job.wait().unwrap();
    let restored = summary(&oxflow(
        &args("1", &["--restore", "latest"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    assert!(!restored["restored_from"].is_null(), "{restored}");
    assert_eq!(
        common::committed_lines(out.path()),
        common::generator_lines("q0")
    );

    // An empty prefix, an object that is not Parquet, an unknown option: each named.
    let failed = |source: &str| {
        let out = oxflow(&["nexmark", "--query", "q0", "--source", source]);
        assert!(!out.status.success(), "{source} was read");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let empty = location(&common::unique("empty"));
    let e = failed(&empty);
    assert!(e.contains("holds no file to read"), "{e}");
    let corrupt = location(&common::unique("corrupt"));
    let (loc, _) = S3Location::parse(&corrupt).unwrap();
    loc.write_object("part-0.parquet", b"PAR1 this is no footer PAR1".to_vec())
        .unwrap();
    let e = failed(&corrupt);
    assert!(
        e.contains("part-0.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    let e = failed(&format!("{input}&colour=red"));
    assert!(e.contains("unknown option `colour`"), "{e}");
}

#[test]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
fn s3_output_stays_exactly_once_when_a_restore_falls_back_past_a_corrupt_checkpoint() {
    let uri = location(&common::unique("fallback"));
    let chk = tempfile::tempdir().unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = common::ORDERED_GENERATOR
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(
            [
                "--query",
                "q0",
                "--sink",
                &format!("{uri}&max-file-mb=1"),
                "--checkpoint-dir",
                &chk.path().display().to_string(),
                "--checkpoint-interval-ms",
                "100",
                "--checkpoints-retained",
                "10",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // Killed after a few checkpoints have committed objects.
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(args(&["--rate", "60000"]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let complete = || -> Vec<std::path::PathBuf> {
        let mut c: Vec<_> = std::fs::read_dir(chk.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("_manifest.json").exists())
            .collect();
        c.sort();
        c
    };
    let started = std::time::Instant::now();
    while complete().len() < 4 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    job.kill().unwrap();
    job.wait().unwrap();
    let before = objects_and_lines(&uri).1.len();
    // The newest manifest corrupt: the restore falls back to the one before, and what the
    // newest committed goes (the replay writes it again).
    let newest = complete().last().unwrap().join("_manifest.json");
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[5] ^= 0x20;
    std::fs::write(&newest, bytes).unwrap();
    let restored = summary(&oxflow(
        &args(&["--restore", "latest"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    assert!(!restored["restored_from"].is_null(), "{restored}");
    let lines = objects_and_lines(&uri).1;
    let mut distinct = lines.clone();
    distinct.dedup();
    assert_eq!(
        lines.len(),
        distinct.len(),
        "{} repeats ({before} lines before the restore)",
        lines.len() - distinct.len()
    );
    assert_eq!(lines, common::generator_lines("q0"));
}

#[test]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
fn s3_example_spec_reads_readings_from_s3_and_writes_parquet_there() {
    let (input, output) = (
        location(&common::unique("readings")),
        location(&common::unique("by-minute")),
    );
    let (loc, _) = S3Location::parse(&input).unwrap();
    let data = std::fs::read(common::repo_path("examples/data/readings.jsonl")).unwrap();
    loc.write_object("readings.jsonl", data).unwrap();
    let path = common::repo_path("examples/jobs/s3_readings_to_parquet.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    spec["stream"]["source"]["s3"]["uri"] = input.clone().into();
    spec["sink"]["s3"]["uri"] = output.clone().into();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let chk = dir.path().join("chk");
    let out = oxflow(&[
        "run",
        file.to_str().unwrap(),
        "--checkpoint-dir",
        chk.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (written, _) = S3Location::parse(&output).unwrap();
    let names: Vec<String> = written
        .list_files()
        .unwrap()
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.ends_with(".parquet")),
        "{names:?}"
    );
}
