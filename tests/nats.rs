//! The NATS JetStream source and sink against a real nats-server: `scripts/nats.sh start`,
//! then `OXFLOW_NATS_URL=127.0.0.1:4222 cargo test --release --test nats -- --ignored`.
//! `scripts/test.sh` (the README's test command) and .ci/run do exactly that. Each test makes
//! its own streams, named uniquely; the outage test runs a server of its own.

// Unique names and time limits come from the wall clock; no operator logic is under test here.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{oxflow, summary};
use oxflow::connectors::nats::{read_payloads, NatsConnection};
use std::time::Duration;

const NEEDS: &str = "needs a NATS server: scripts/nats.sh start; OXFLOW_NATS_URL=127.0.0.1:4222";

fn server() -> String {
    std::env::var("OXFLOW_NATS_URL").unwrap_or_else(|_| panic!("{NEEDS}"))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Creates stream `name` taking `name.>` on `server`.
fn create_stream(server: &str, name: &str) {
    let server = server.to_string();
    let name = name.to_string();
    block_on(async move {
        let client = async_nats::connect(format!("nats://{server}"))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    });
}

/// Publishes `(subject, payload)` pairs, waiting for each acknowledgement.
fn publish(server: &str, messages: &[(String, String)]) {
    let server = server.to_string();
    let messages = messages.to_vec();
    block_on(async move {
        let client = async_nats::connect(format!("nats://{server}"))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        for (subject, payload) in messages {
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

fn payloads(server: &str, stream: &str) -> Vec<String> {
    read_payloads(&NatsConnection::new(server), stream, 10_000_000)
        .unwrap()
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap())
        .collect()
}

fn failed(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "needs a NATS server: scripts/nats.sh start; OXFLOW_NATS_URL=127.0.0.1:4222"]
fn nats_round_trip_q5_and_q7_equal_the_generator() {
    let s = server();
    let stream = common::unique("BIDS");
    create_stream(&s, &stream);
    let gen = common::ORDERED_GENERATOR;
    let fill = summary(&oxflow(
        &[
            &gen[..],
            &[
                "--query",
                "q0",
                "--sink",
                &format!("nats://{s}/{stream}?subject={stream}.all"),
            ],
        ]
        .concat(),
    ));
    let bids = fill["output_rows"].as_u64().unwrap();
    assert_eq!(payloads(&s, &stream).len() as u64, bids);
    for query in ["q5", "q7"] {
        let want = common::generator_lines(query);
        let actual = tempfile::tempdir().unwrap();
        let from_nats = summary(&oxflow(&[
            "nexmark",
            "--query",
            query,
            "--workers",
            "2",
            "--source",
            &format!("nats://{s}/{stream}?bounded=true"),
            "--sink",
            &format!("file:{}", actual.path().display()),
        ]));
        assert_eq!(from_nats["events"].as_u64().unwrap(), bids);
        assert!(!want.is_empty());
        assert_eq!(
            common::committed_lines(actual.path()),
            want,
            "{query} from NATS differs"
        );
    }
}

#[test]
#[ignore = "needs a NATS server: scripts/nats.sh start; OXFLOW_NATS_URL=127.0.0.1:4222"]
fn nats_subject_filters_spread_over_splits_and_restore_from_a_checkpoint() {
    let s = server();
    let stream = common::unique("SPLIT");
    create_stream(&s, &stream);
    // Three subjects, each in event-time order: three partitions over two splits.
    let mut messages = Vec::new();
    for i in 0..3000i64 {
        let subject = format!("{stream}.{}", ["a", "b", "c"][(i % 3) as usize]);
        messages.push((
            subject,
            format!(
                r#"{{"auction":{},"bidder":{i},"price":{},"date_time":"2024-01-01T00:{:02}:{:02}.000Z","extra":""}}"#,
                i % 7,
                i * 3,
                i / 60 % 60,
                i % 60
            ),
        ));
    }
    publish(&s, &messages);
    let filters = format!("{stream}.a,{stream}.b,{stream}.c");
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
                    &format!("nats://{s}/{stream}?bounded=true&subject={filters}&batch-size=100"),
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
    assert_eq!(first["output_rows"], 3000);
    let lines = common::committed_lines(out.path());
    assert_eq!(lines.len(), 3000);
    // Restored from its last checkpoint, the job reads each filter on from the sequence the
    // checkpoint holds (at most what came after it), and the committed output is unchanged.
    let again = summary(&run(&["--restore", "latest"]));
    assert!(again["output_rows"].as_u64().unwrap() < 3000, "{again}");
    assert_eq!(common::committed_lines(out.path()), lines);
}

#[test]
#[ignore = "needs a NATS server: scripts/nats.sh start; OXFLOW_NATS_URL=127.0.0.1:4222"]
fn nats_bad_records_per_policy() {
    let s = server();
    let stream = common::unique("BAD");
    create_stream(&s, &stream);
    let good =
        r#"{"auction":1,"bidder":2,"price":3,"date_time":"2024-01-01T00:00:00.000Z","extra":""}"#;
    let subject = format!("{stream}.in");
    publish(
        &s,
        &[good, "not json", r#"{"auction":"x"}"#, good].map(|p| (subject.clone(), p.to_string())),
    );
    let run = |options: &str| {
        oxflow(&[
            "nexmark",
            "--query",
            "q0",
            "--workers",
            "1",
            "--source",
            &format!("nats://{s}/{stream}?bounded=true&{options}"),
            "--sink",
            "blackhole",
        ])
    };
    let err = failed(&run("bad-records=fail"));
    assert!(
        err.contains(&format!("stream {stream} ({stream}.>) sequence 2")),
        "{err}"
    );
    assert_eq!(summary(&run("bad-records=skip"))["output_rows"], 2);
    let err = failed(&run("bad-records=sideways"));
    assert!(err.contains("bad-records=sideways"), "{err}");
    let err = failed(&run("colour=red"));
    assert!(err.contains("unknown option `colour`"), "{err}");
    // A stream that does not exist, and a server that is not there, are named.
    let missing = common::unique("MISSING");
    let err = failed(&oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--source",
        &format!("nats://{s}/{missing}?bounded=true"),
    ]));
    assert!(err.contains(&missing), "{err}");
    let err = failed(&oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--source",
        "nats://127.0.0.1:1/S?bounded=true&connect-timeout-ms=0",
    ]));
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
#[ignore = "needs a NATS server: scripts/nats.sh start; OXFLOW_NATS_URL=127.0.0.1:4222"]
fn nats_exactly_once_commit_replayed_is_deduplicated_by_the_server() {
    use oxflow::arrow::array::Int64Array;
    use oxflow::arrow::datatypes::{DataType, Field, Schema};
    use oxflow::arrow::record_batch::RecordBatch;
    use oxflow::connectors::nats::{NatsSink, NatsSinkConfig, NatsSinkGuarantee};
    use oxflow::runtime::sink::Sink;
    use oxflow::runtime::SubtaskInfo;
    use std::sync::Arc;

    let s = server();
    let stream = common::unique("EO");
    create_stream(&s, &stream);
    let spool = tempfile::tempdir().unwrap();
    let config = || NatsSinkConfig {
        connection: NatsConnection::new(&s),
        stream: stream.clone(),
        subject: format!("{stream}.out"),
        guarantee: NatsSinkGuarantee::ExactlyOnce {
            spool_dir: spool.path().to_path_buf(),
            writer_prefix: common::unique("job"),
        },
    };
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
    let batch = |v: &[i64]| {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v.to_vec()))]).unwrap()
    };
    let split = SubtaskInfo {
        index: 0,
        parallelism: 1,
        max_parallelism: 128,
    };
    let sink = NatsSink::try_new(config()).unwrap();
    let mut writer = sink.create_writer(split, schema.clone()).unwrap();
    writer.write(&batch(&[1, 2, 3])).unwrap();
    let epoch = writer.pre_commit().unwrap().unwrap();
    assert_eq!(
        sink.published(),
        0,
        "nothing is published before the commit"
    );
    // Keep the spooled epoch, as if the process died after publishing but before removing it.
    let files: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let kept = std::fs::read(&files[0]).unwrap();
    sink.commit(1, std::slice::from_ref(&epoch)).unwrap();
    assert_eq!(sink.published(), 3);
    std::fs::write(&files[0], kept).unwrap();
    drop((writer, sink));
    let restarted = NatsSink::try_new(config()).unwrap();
    restarted.commit(1, std::slice::from_ref(&epoch)).unwrap();
    assert_eq!((restarted.published(), restarted.duplicates()), (0, 3));
    // Replayed once more with the spool gone: nothing to do.
    restarted.commit(1, std::slice::from_ref(&epoch)).unwrap();
    let mut values = payloads(&s, &stream);
    values.sort();
    assert_eq!(values, [r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":3}"#]);
    // A subject the stream does not take is refused when a writer starts.
    let mut wrong = config();
    wrong.subject = "elsewhere.out".into();
    let err = NatsSink::try_new(wrong)
        .unwrap()
        .create_writer(split, schema)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("does not take subject `elsewhere.out`"),
        "{err}"
    );
}

#[test]
#[ignore = "needs a NATS server: scripts/nats.sh start; OXFLOW_NATS_URL=127.0.0.1:4222"]
fn nats_server_down_at_start_and_restarted_mid_job_loses_and_repeats_nothing() {
    let own = common::OwnServer::new("scripts/nats.sh", "NATS");
    let stream = common::unique("OUTAGE");
    own.run("start");
    create_stream(&own.url(), &stream);
    own.run("stop");
    // The job starts while the server is down, and the server is restarted mid-job: output is
    // exactly once (each checkpoint's epoch published once, replays deduplicated).
    let chk = tempfile::tempdir().unwrap();
    let job = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(common::ORDERED_GENERATOR)
        .args([
            "--query",
            "q0",
            "--rate",
            "40000",
            "--sink",
            &format!("nats://{}/{stream}?subject={stream}.q0", own.url()),
            "--checkpoint-dir",
            &chk.path().display().to_string(),
            "--checkpoint-interval-ms",
            "200",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    own.run("restart");
    std::thread::sleep(Duration::from_secs(2));
    own.run("restart");
    let out = job.wait_with_output().unwrap();
    let report = summary(&out);
    let mut got = payloads(&own.url(), &stream);
    got.sort();
    let want = common::generator_lines("q0");
    assert_eq!(report["output_rows"].as_u64().unwrap() as usize, want.len());
    assert_eq!(got.len(), want.len(), "exactly once through two outages");
    assert_eq!(got, want);
}
