//! The RabbitMQ source and sink against a real RabbitMQ server: `scripts/rabbitmq.sh start`,
//! then `OXFLOW_RABBITMQ_URL=127.0.0.1:5672 cargo test --release --test rabbitmq -- --ignored`.
//! `scripts/test.sh` (the README's test command) and .ci/run do exactly that. Each test makes
//! its own queues, named uniquely; the outage test runs a server of its own.

// Unique names and time limits come from the wall clock; no operator logic is under test here.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{oxflow, summary};
use oxflow::connectors::rabbitmq::{
    declare_queue, drain_queue, publish_payloads, QueueKind, RabbitMqConnection,
};
use std::time::Duration;

const NEEDS: &str =
    "needs a RabbitMQ server: scripts/rabbitmq.sh start; OXFLOW_RABBITMQ_URL=127.0.0.1:5672";

fn server() -> String {
    std::env::var("OXFLOW_RABBITMQ_URL").unwrap_or_else(|_| panic!("{NEEDS}"))
}

fn declare(server: &str, kind: QueueKind, name: &str) -> String {
    let name = common::unique(name);
    declare_queue(&RabbitMqConnection::new(server), &name, kind).unwrap();
    name
}

fn drained(server: &str, queue: &str) -> Vec<String> {
    drain_queue(&RabbitMqConnection::new(server), queue, 10_000_000)
        .unwrap()
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap())
        .collect()
}

fn failed(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fills `queue` with the ordered generator's bids (q0's output), through the sink.
fn fill(server: &str, queue: &str) -> u64 {
    let gen = common::ORDERED_GENERATOR;
    let report = summary(&oxflow(
        &[
            &gen[..],
            &[
                "--query",
                "q0",
                "--sink",
                &format!("rabbitmq://{server}/{queue}"),
            ],
        ]
        .concat(),
    ));
    report["output_rows"].as_u64().unwrap()
}

/// Runs `query` reading `source` at 2 workers into a file sink: its committed lines.
fn run_query(query: &str, source: &str) -> (serde_json::Value, Vec<String>) {
    let out = tempfile::tempdir().unwrap();
    let sink = format!("file:{}", out.path().display());
    let report = summary(&oxflow(&[
        "nexmark",
        "--query",
        query,
        "--workers",
        "2",
        "--source",
        source,
        "--sink",
        &sink,
    ]));
    (report, common::committed_lines(out.path()))
}

#[test]
#[ignore = "needs a RabbitMQ server: scripts/rabbitmq.sh start; OXFLOW_RABBITMQ_URL=127.0.0.1:5672"]
fn rabbitmq_round_trip_q5_and_q7_equal_the_generator_from_a_stream() {
    let s = server();
    let stream = declare(&s, QueueKind::Stream, "bids-stream");
    let bids = fill(&s, &stream);
    assert!(bids > 10_000, "{bids}");
    for query in ["q5", "q7"] {
        let want = common::generator_lines(query);
        assert!(!want.is_empty());
        let source = format!("rabbitmq://{s}/{stream}?mode=stream&bounded=true");
        let (report, got) = run_query(query, &source);
        assert_eq!(report["events"].as_u64().unwrap(), bids);
        assert_eq!(got, want, "{query} from a RabbitMQ stream differs");
    }
}

#[test]
#[ignore = "needs a RabbitMQ server: scripts/rabbitmq.sh start; OXFLOW_RABBITMQ_URL=127.0.0.1:5672"]
fn rabbitmq_stream_restores_from_its_checkpointed_offsets() {
    let s = server();
    let stream = declare(&s, QueueKind::Stream, "restore");
    let bids = fill(&s, &stream);
    let out = tempfile::tempdir().unwrap();
    let chk = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        oxflow(
            &[
                &[
                    "nexmark",
                    "--query",
                    "q0",
                    "--workers",
                    "2",
                    "--source",
                    &format!("rabbitmq://{s}/{stream}?mode=stream&bounded=true&batch-size=500"),
                    "--sink",
                    &format!("file:{}", out.path().display()),
                    "--checkpoint-dir",
                    &chk.path().display().to_string(),
                    "--checkpoint-interval-ms",
                    "50",
                ][..],
                extra,
            ]
            .concat(),
        )
    };
    let first = summary(&run(&[]));
    assert_eq!(first["output_rows"].as_u64().unwrap(), bids);
    let lines = common::committed_lines(out.path());
    assert_eq!(lines.len() as u64, bids);
    // Restored from its last checkpoint the job reads on after the offset it holds (at most
    // what came after it), and the committed output is unchanged.
    let again = summary(&run(&["--restore", "latest"]));
    assert!(again["output_rows"].as_u64().unwrap() < bids, "{again}");
    assert_eq!(common::committed_lines(out.path()), lines);
}

#[test]
#[ignore = "needs a RabbitMQ server: scripts/rabbitmq.sh start; OXFLOW_RABBITMQ_URL=127.0.0.1:5672"]
fn rabbitmq_bad_records_per_policy() {
    let s = server();
    let good =
        r#"{"auction":1,"bidder":2,"price":3,"date_time":"2024-01-01T00:00:00.000Z","extra":""}"#;
    let stream = declare(&s, QueueKind::Stream, "bad");
    let payloads = [good, "not json", r#"{"auction":"x"}"#, good];
    publish_payloads(
        &RabbitMqConnection::new(&s),
        &stream,
        payloads.iter().map(|p| p.as_bytes().to_vec()).collect(),
    )
    .unwrap();
    let run = |options: &str| {
        oxflow(&[
            "nexmark",
            "--query",
            "q0",
            "--workers",
            "1",
            "--source",
            &format!("rabbitmq://{s}/{stream}?mode=stream&bounded=true&{options}"),
            "--sink",
            "blackhole",
        ])
    };
    let err = failed(&run("bad-records=fail"));
    assert!(err.contains(&format!("stream {stream} offset 1")), "{err}");
    assert_eq!(summary(&run("bad-records=skip"))["output_rows"], 2);
    let err = failed(&run("bad-records=sideways"));
    assert!(err.contains("bad-records=sideways"), "{err}");
    let err = failed(&run("colour=red"));
    assert!(err.contains("unknown option `colour`"), "{err}");
    // A queue that does not exist, a sink with nowhere to route, and a server that is not
    // there are named.
    let missing = common::unique("missing");
    let err = failed(&oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--source",
        &format!("rabbitmq://{s}/{missing}?bounded=true"),
    ]));
    assert!(err.contains(&missing), "{err}");
    let err = failed(&oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--events",
        "1000",
        "--sink",
        &format!("rabbitmq://{s}/{missing}"),
    ]));
    assert!(err.contains(&missing), "{err}");
    let err = failed(&oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--source",
        "rabbitmq://127.0.0.1:1/q?bounded=true&connect-timeout-ms=0",
    ]));
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
#[ignore = "needs a RabbitMQ server: scripts/rabbitmq.sh start; OXFLOW_RABBITMQ_URL=127.0.0.1:5672"]
fn rabbitmq_server_restarted_mid_job_loses_nothing_and_counts_its_duplicates() {
    let own = common::OwnServer::new("scripts/rabbitmq.sh", "RABBITMQ");
    own.run("start");
    let queue = declare(&own.url(), QueueKind::Quorum, "outage");
    // The sink publishes with confirms through a server restart: at least once, so every
    // bid arrives, and a batch resent after the outage may arrive twice.
    let job = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(common::ORDERED_GENERATOR)
        .args([
            "--query",
            "q0",
            "--rate",
            "20000",
            "--sink",
            &format!("rabbitmq://{}/{queue}", own.url()),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    own.run("restart");
    let out = job.wait_with_output().unwrap();
    let report = summary(&out);
    let want = common::generator_lines("q0");
    assert_eq!(report["output_rows"].as_u64().unwrap() as usize, want.len());
    let mut got = drained(&own.url(), &queue);
    let total = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got, want, "every bid, through the restart");
    eprintln!(
        "rabbitmq outage: {} duplicates of {} messages",
        total - want.len(),
        want.len()
    );
}

#[test]
#[ignore = "needs a RabbitMQ server: scripts/rabbitmq.sh start; OXFLOW_RABBITMQ_URL=127.0.0.1:5672"]
fn rabbitmq_round_trip_q5_and_q7_equal_the_generator_from_queues_which_end_empty() {
    let s = server();
    // q5 from a quorum queue with checkpoints: acknowledged as they complete, the last at
    // the end of input; q7 from a classic queue without: acknowledged as emitted.
    for (query, kind, checkpoints) in [
        ("q5", QueueKind::Quorum, true),
        ("q7", QueueKind::Classic, false),
    ] {
        let queue = declare(&s, kind, "bids-queue");
        let bids = fill(&s, &queue);
        let chk = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut args = vec![
            "nexmark".to_string(),
            "--query".into(),
            query.into(),
            "--workers".into(),
            "2".into(),
            "--source".into(),
            format!("rabbitmq://{s}/{queue}?mode=queue&bounded=true"),
            "--sink".into(),
            format!("file:{}", out.path().display()),
        ];
        if checkpoints {
            args.extend([
                "--checkpoint-dir".into(),
                chk.path().display().to_string(),
                "--checkpoint-interval-ms".into(),
                "100".into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = summary(&oxflow(&args));
        assert_eq!(report["events"].as_u64().unwrap(), bids, "{query}");
        assert_eq!(
            common::committed_lines(out.path()),
            common::generator_lines(query),
            "{query} from a RabbitMQ {kind:?} queue differs"
        );
        assert!(
            drained(&s, &queue).is_empty(),
            "{query}: every message read is acknowledged by the end"
        );
    }
}

#[test]
#[ignore = "needs a RabbitMQ server: scripts/rabbitmq.sh start; OXFLOW_RABBITMQ_URL=127.0.0.1:5672"]
fn rabbitmq_queue_messages_are_acknowledged_only_by_a_completed_checkpoint() {
    let s = server();
    let queue = declare(&s, QueueKind::Classic, "unacked");
    fill(&s, &queue);
    let (out, chk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let run = |bounded: bool, interval_ms: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"));
        c.args([
            "nexmark",
            "--query",
            "q0",
            "--workers",
            "2",
            "--source",
            &format!("rabbitmq://{s}/{queue}?mode=queue&bounded={bounded}"),
            "--sink",
            &format!("file:{}", out.path().display()),
            "--checkpoint-dir",
            &chk.path().display().to_string(),
            "--checkpoint-interval-ms",
            interval_ms,
        ]);
        c
    };
    // A job whose first checkpoint is ten minutes away reads, writes in-progress files, and
    // is killed: it acknowledged nothing, so the server delivers every message again.
    let mut job = run(false, "600000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let written = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    while written(out.path()) < 100_000 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    job.kill().unwrap();
    job.wait().unwrap();
    assert!(
        written(out.path()) >= 100_000,
        "the job read from the queue"
    );
    assert!(common::committed_lines(out.path()).is_empty());
    // The next run, with checkpoints, gets every bid, exactly once here, and leaves the queue
    // empty.
    let report = summary(&run(true, "100").output().unwrap());
    let want = common::generator_lines("q0");
    assert_eq!(report["output_rows"].as_u64().unwrap() as usize, want.len());
    assert_eq!(common::committed_lines(out.path()), want);
    assert!(drained(&s, &queue).is_empty());
}
