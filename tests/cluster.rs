//! One job across processes: a runtime server and `oxflow worker` processes on loopback,
//! each a real process of this build. A job's output on the cluster must be exactly the
//! same job's output in one process, also when a worker is killed with SIGKILL mid-job.

// Waiting for processes (their health, their jobs) is wall time by nature.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{committed_lines, free_port, spawn_server, Spawned};
use oxflow::client::Client;
use oxflow::spec::{CheckpointSpec, JobSpec, Registry, RestartSpec, SinkSpec};
use oxflow::Pipeline;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn spawn_worker(url: &str, token_file: &Path, data: &Path, extra: &[String]) -> Spawned {
    Spawned(
        std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
            .args(["worker", "--server", url, "--slots", "8", "--token-file"])
            .arg(token_file)
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary runs"),
    )
}

/// A server and `workers` workers, with the server's token; the workers are registered and
/// alive when this returns.
struct Cluster {
    _server: Spawned,
    workers: Vec<Spawned>,
    client: Client,
    url: String,
    token_file: std::path::PathBuf,
    root: std::path::PathBuf,
    /// Arguments every process of the cluster takes (`--checkpoint-store`).
    shared: Vec<String>,
}

impl Cluster {
    async fn start(root: &Path, workers: usize) -> Cluster {
        Cluster::start_with(root, workers, Vec::new()).await
    }

    /// A cluster whose server and workers all take `shared` too.
    async fn start_with(root: &Path, workers: usize, shared: Vec<String>) -> Cluster {
        let port = free_port();
        let data = root.join("server");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--allow-path".as_ref(),
            root.as_os_str(),
            "--worker-timeout-ms".as_ref(),
            "3000".as_ref(),
        ];
        args.extend(shared.iter().map(|a| std::ffi::OsStr::new(a.as_str())));
        let server = spawn_server(port, &data, &args);
        let url = format!("http://127.0.0.1:{port}");
        let anonymous = Client::new(&url, None).unwrap();
        let started = Instant::now();
        while anonymous
            .send(hyper::Method::GET, "/health", None)
            .await
            .is_err()
        {
            assert!(started.elapsed() < Duration::from_secs(30), "no server");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token_file = data.join("token");
        let token = std::fs::read_to_string(&token_file).unwrap();
        let client = Client::new(&url, Some(token.trim().to_string())).unwrap();
        let mut cluster = Cluster {
            _server: server,
            workers: Vec::new(),
            client,
            url,
            token_file,
            root: root.to_path_buf(),
            shared,
        };
        for _ in 0..workers {
            cluster.add_worker();
        }
        cluster.wait_alive(workers).await;
        cluster
    }

    fn add_worker(&mut self) {
        let dir = self.root.join(format!("worker-{}", self.workers.len()));
        self.workers.push(spawn_worker(
            &self.url,
            &self.token_file,
            &dir,
            &self.shared,
        ));
    }

    async fn workers(&self) -> Vec<Value> {
        let list = self
            .client
            .call(hyper::Method::GET, "/v1/workers", None)
            .await
            .unwrap();
        list["workers"].as_array().cloned().unwrap_or_default()
    }

    async fn wait_alive(&self, n: usize) {
        let started = Instant::now();
        loop {
            let workers = self.workers().await;
            let alive = workers.iter().filter(|w| w["state"] == "ALIVE").count();
            if alive >= n {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{alive} of {n} workers alive: {workers:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills worker `index` with SIGKILL, starts a replacement, and waits for job `id` to
    /// end, which it must after at least one restart: its last status.
    async fn kill_and_replace(&mut self, index: usize, id: &str) -> Value {
        let victim = &mut self.workers[index];
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        self.add_worker();
        let status = self
            .wait_for(id, "the job after the kill", |s| {
                state(s) != "RUNNING" && state(s) != "RESTARTING"
            })
            .await;
        assert_eq!(state(&status), "FINISHED", "{status}");
        assert!(status["restarts"].as_u64().unwrap_or(0) >= 1, "{status}");
        status
    }

    async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let status = self.client.status(id).await.unwrap();
            if done(&status) {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "{what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("")
}

/// A Nexmark table of the generator, `events` events at up to `rate` events/s.
fn nexmark(table: &str, events: u64, rate: Option<f64>) -> Value {
    let mut source = json!({ "table": table, "events": events, "event_rate": 10_000, "seed": 3 });
    if let Some(r) = rate {
        source["rate"] = json!(r);
    }
    json!({
        "source": { "nexmark": source },
        "watermarks": { "column": "date_time", "delay_ms": 2000 },
    })
}

/// Queries q5, q7, q11 and q8 (a window join) as specs, as the Nexmark driver runs them.
fn query(name: &str, events: u64, rate: Option<f64>) -> Value {
    let mut stream = nexmark(if name == "q8" { "person" } else { "bid" }, events, rate);
    stream["steps"] = match name {
        "q5" => json!([
            { "window": {
                "keys": ["auction"],
                "window": { "hopping": { "size_ms": 10000, "slide_ms": 2000 } },
                "compute": { "aggregate": ["count(auction) AS num"] } } },
            { "window": {
                "keys": ["window_start", "window_end"],
                "window": "inherited",
                "compute": { "top_n": { "order_by": "num", "n": 1 } } } }
        ]),
        "q7" => json!([
            { "select": ["auction", "bidder", "price", "date_time"] },
            { "window": {
                "window": { "tumbling": { "size_ms": 10000 } },
                "compute": { "top_n": { "order_by": "price", "n": 1 } } } }
        ]),
        "q11" => json!([
            { "window": {
                "keys": ["bidder"],
                "window": { "session": { "gap_ms": 10000 } },
                "compute": { "aggregate": ["count(auction) AS bid_count"] } } }
        ]),
        "q8" => {
            let mut auctions = nexmark("auction", events, rate);
            auctions["steps"] = json!([{ "select": ["seller", "date_time"] }]);
            json!([
                { "select": ["id", "name", "date_time"] },
                { "join": {
                    "keys": ["id"],
                    "right": auctions,
                    "right_keys": ["seller"],
                    "on": { "window": { "tumbling": { "size_ms": 10000 } } } } },
                { "window": {
                    "keys": ["id", "name"],
                    "window": "inherited",
                    "compute": { "aggregate": ["count(seller) AS auctions"] } } },
                { "select": ["id", "name", "window_start"] }
            ])
        }
        other => panic!("no query {other}"),
    };
    json!({ "parallelism": 3, "stream": stream, "sink": "stdout" })
}

fn spec(query_json: Value, out: &Path, restarts: u32) -> JobSpec {
    let mut spec: JobSpec = serde_json::from_value(query_json).unwrap();
    spec.sink = SinkSpec::file(out);
    spec.checkpoints = Some(CheckpointSpec {
        interval_ms: 200,
        min_pause_ms: None,
        retained: None,
    });
    spec.restart = Some(RestartSpec {
        max_attempts: restarts,
        initial_backoff_ms: 200,
        max_backoff_ms: 1000,
    });
    spec
}

/// The committed lines of `spec` run in this process.
fn in_one_process(spec: &JobSpec, dir: &Path) -> Vec<String> {
    let mut spec = spec.clone();
    let out = dir.join("expected");
    spec.sink = SinkSpec::file(&out);
    Pipeline::from_spec(
        &spec,
        &Registry::new(),
        Some(&dir.join("expected-checkpoints")),
    )
    .unwrap()
    .execute_blocking()
    .unwrap();
    committed_lines(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_three_workers_run_queries_as_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(tmp.path(), 3).await;

    // The worker endpoints are closed like the rest of the API, and check what they get.
    let anonymous = Client::new(&cluster.url, None).unwrap();
    let (status, _) = anonymous
        .send(hyper::Method::GET, "/v1/workers", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let bad = json!({ "address": "127.0.0.1:1", "slots": 0 });
    let (status, text) = cluster
        .client
        .send(hyper::Method::POST, "/v1/workers", Some(&bad))
        .await
        .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("slots"), "{text}");
    let (status, text) = cluster
        .client
        .send(
            hyper::Method::POST,
            "/v1/workers/w999/poll",
            Some(&json!({})),
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "{text}");

    for name in ["q5", "q7", "q11", "q8"] {
        let dir = tmp.path().join(name);
        let spec = spec(query(name, 150_000, None), &dir.join("out"), 0);
        let id = cluster.client.submit(&spec, None).await.unwrap();
        let status = cluster
            .wait_for(&id, name, |s| {
                state(s) != "RUNNING" || !s["tasks"].as_array().unwrap().is_empty()
            })
            .await;
        // Every stage's subtasks are spread over the three workers.
        let workers: std::collections::BTreeSet<String> = status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["worker"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(workers.len(), 3, "{name}: {status}");
        let status = cluster.wait_for(&id, name, |s| state(s) != "RUNNING").await;
        assert_eq!(state(&status), "FINISHED", "{name}: {status}");
        let got = committed_lines(&dir.join("out"));
        let expected = in_one_process(&spec, &dir);
        assert!(!expected.is_empty(), "{name} gave no output");
        assert_eq!(got.len(), expected.len(), "{name}");
        assert!(got == expected, "{name}: the cluster's output differs");
    }
}

/// A worker killed with SIGKILL mid-job: the attempt fails, the job restarts from its
/// latest checkpoint on the workers left and a replacement, and its files hold exactly the
/// output of an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_the_output_is_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), 3).await;
    let out = tmp.path().join("out");
    // About 8 s of input, so that the kill lands mid-job.
    let spec = spec(query("q5", 400_000, Some(50_000.0)), &out, 5);
    let id = cluster.client.submit(&spec, None).await.unwrap();
    let running = cluster
        .wait_for(&id, "checkpoints before the kill", |s| {
            s["checkpoint"]["completed"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    // The workers' counters reach the job's status.
    let records: u64 = running["operators"]
        .as_array()
        .map(|ops| {
            ops.iter()
                .map(|o| o["records_in"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert!(records > 0, "{running}");
    let status = cluster.kill_and_replace(1, &id).await;
    let failures = status["failures"].to_string();
    assert!(failures.contains("worker"), "{failures}");
    let expected = in_one_process(&spec, tmp.path());
    assert!(!expected.is_empty());
    assert!(
        committed_lines(&out) == expected,
        "the output after the kill differs"
    );
}

/// Every file under `dir` whose name ends in `.sst` (RocksDB's state files).
fn state_files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(state_files_under(&path));
        } else if path.extension().is_some_and(|e| e == "sst") {
            found.push(path);
        }
    }
    found
}

/// With a checkpoint store, the workers (each with a data directory of its own) upload
/// their subtasks' state there and restore from it: a worker killed mid-job is replaced and
/// the output is exact, with no state file in the server's checkpoint directory. Then a
/// stop with a savepoint, resubmitted at another parallelism, goes on from the savepoint:
/// each subtask downloads only the old subtasks' state overlapping its key groups, and the
/// output is that of one uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_state_in_the_checkpoint_store_and_rescale_from_a_savepoint() {
    let tmp = tempfile::tempdir().unwrap();
    let store = format!("file://{}", tmp.path().join("store").display());
    state_through_the_store(tmp.path(), store).await;
    // Stored by content, not as RocksDB's files.
    let stored = state_files_under(&tmp.path().join("store"));
    assert!(stored.is_empty(), "{stored:?}");
    let jobs = std::fs::read_dir(tmp.path().join("store/jobs")).unwrap();
    for job in jobs {
        let files = job.unwrap().path().join("files");
        assert!(std::fs::read_dir(&files).unwrap().count() > 0, "{files:?}");
    }
}

/// The same through a real S3-protocol server (`scripts/s3.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 server: scripts/s3.sh start, and the variables of scripts/s3.sh env"]
async fn s3_workers_keep_state_in_an_s3_checkpoint_store() {
    let need =
        |v: &str| std::env::var(v).unwrap_or_else(|_| panic!("needs {v}: scripts/s3.sh env"));
    let store = format!(
        "s3://{}/{}?endpoint={}",
        need("OXFLOW_S3_BUCKET"),
        common::unique("cluster"),
        need("OXFLOW_S3_ENDPOINT")
    );
    let tmp = tempfile::tempdir().unwrap();
    state_through_the_store(tmp.path(), store).await;
}

async fn state_through_the_store(root: &Path, store: String) {
    let tmp = root;
    let mut cluster = Cluster::start_with(tmp, 3, vec!["--checkpoint-store".into(), store]).await;
    let out = tmp.join("out");
    let q5 = spec(query("q5", 400_000, Some(50_000.0)), &out, 5);
    let id = cluster.client.submit(&q5, None).await.unwrap();
    cluster
        .wait_for(&id, "checkpoints before the kill", |s| {
            s["checkpoint"]["completed"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    cluster.kill_and_replace(0, &id).await;
    let expected = in_one_process(&q5, &tmp.join("reference"));
    assert!(!expected.is_empty());
    assert!(
        committed_lines(&out) == expected,
        "the output after the kill differs"
    );
    // The state went through the store, not through the server's directory.
    let server_files = state_files_under(&tmp.join("server"));
    assert!(server_files.is_empty(), "{server_files:?}");

    // Stop with a savepoint at parallelism 3, go on at 2.
    let out = tmp.join("rescaled");
    let mut first = spec(query("q7", 400_000, Some(50_000.0)), &out, 5);
    first.parallelism = Some(3);
    let id = cluster.client.submit(&first, None).await.unwrap();
    cluster
        .wait_for(&id, "checkpoints before the stop", |s| {
            s["checkpoint"]["completed"].as_u64().unwrap_or(0) >= 3
        })
        .await;
    let savepoint = cluster.client.stop(&id).await.unwrap();
    let sst = state_files_under(Path::new(&savepoint));
    assert!(
        !sst.is_empty(),
        "the savepoint holds the state: {savepoint}"
    );
    let mut second = first.clone();
    second.parallelism = Some(2);
    let id = cluster
        .client
        .submit(&second, Some(Path::new(&savepoint)))
        .await
        .unwrap();
    let status = cluster
        .wait_for(&id, "the rescaled job", |s| state(s) != "RUNNING")
        .await;
    assert_eq!(state(&status), "FINISHED", "{status}");
    let expected = in_one_process(&first, &tmp.join("reference-q7"));
    assert!(!expected.is_empty());
    assert!(
        committed_lines(&out) == expected,
        "the rescaled output differs"
    );
}
