//! The runtime server as its users meet it: submit, watch, savepoint, stop, resume at another
//! parallelism, cancel; a failing job restarting then FAILED while others run; a server
//! killed with SIGKILL and started again; bad requests refused with clear messages.

#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use oxflow::arrow::array::RecordBatch;
use oxflow::client::Client;
use oxflow::prelude::*;
use oxflow::server::{Server, ServerConfig};
use oxflow::spec::{
    CheckpointSpec, JobSpec, Registry, RestartSpec, SinkSpec, SourceSpec, Step, StreamSpec,
    WatermarkSpec, WindowCompute, WindowKind,
};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// q5-like: bid counts per auction in 2 s tumbling windows, from a throttled generator.
fn windowed_spec(out: &Path, events: u64, rate: Option<f64>, parallelism: usize) -> JobSpec {
    JobSpec {
        parallelism: Some(parallelism),
        max_parallelism: None,
        stream: StreamSpec {
            source: SourceSpec::Nexmark {
                table: "bid".into(),
                events: Some(events),
                event_rate: Some(10_000),
                seed: Some(1),
                rate,
            },
            watermarks: Some(WatermarkSpec {
                column: "date_time".into(),
                delay_ms: 1000,
                idle_timeout_ms: None,
                max_ahead_ms: None,
                out_of_range: None,
            }),
            steps: vec![Step::Window {
                keys: vec!["auction".into()],
                window: WindowKind::Tumbling { size_ms: 2000 },
                allowed_lateness_ms: 0,
                compute: WindowCompute::Aggregate(vec!["count(price) AS bids".into()]),
            }],
        },
        sink: SinkSpec::file(out),
        checkpoints: Some(CheckpointSpec {
            interval_ms: 100,
            min_pause_ms: None,
            retained: None,
        }),
        restart: None,
        state: None,
    }
}

/// The same job run embedded, to its end: the output a server run must equal.
fn embedded_lines(events: u64) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let spec = windowed_spec(&out, events, None, 2);
    Pipeline::from_spec(&spec, &Registry::new(), None)
        .unwrap()
        .execute_blocking()
        .unwrap();
    committed_lines(&out)
}

/// A registry with `explode`, which panics on the bid of auction 1042.
fn registry() -> Registry {
    let mut registry = Registry::new();
    let schema = oxflow::nexmark::bid_json_schema();
    registry.register_map("explode", schema.clone(), move |batch: RecordBatch| {
        let auctions = batch
            .column_by_name("auction")
            .unwrap()
            .as_any()
            .downcast_ref::<oxflow::arrow::array::Int64Array>()
            .unwrap()
            .clone();
        if auctions.iter().any(|a| a == Some(1042)) {
            panic!("explode: auction 1042");
        }
        Ok(batch)
    });
    registry
}

async fn start(dir: &Path, token: Option<&str>) -> oxflow::server::RunningServer {
    let mut config = ServerConfig::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.token = token.map(str::to_string);
    config.limits.max_body_bytes = 64 * 1024;
    // The tests write their output beside the data directory.
    config.allowed_paths = vec![dir.parent().unwrap().to_path_buf()];
    Server::new(registry()).start(config).await.unwrap()
}

async fn wait_for(client: &Client, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let status = client.status(id).await.unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_savepoint_stop_resume_at_another_parallelism_and_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tmp.path().join("data"), None).await;
    let client = Client::new(&format!("http://{}", server.addr), server.token.clone()).unwrap();
    let out = tmp.path().join("out");
    const EVENTS: u64 = 200_000;

    let id = client
        .submit(&windowed_spec(&out, EVENTS, Some(40_000.0), 2), None)
        .await
        .unwrap();
    let status = wait_for(&client, &id, "checkpoints", |s| {
        s["checkpoint"]["completed"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(state(&status), "RUNNING");
    let operators = status["operators"].as_array().unwrap();
    assert!(
        operators
            .iter()
            .any(|o| o["records_in"].as_u64().unwrap_or(0) > 0),
        "{status}"
    );
    assert!(
        operators
            .iter()
            .any(|o| o["watermark_ms"].as_i64().is_some()),
        "{status}"
    );
    // What the dashboard draws: the plan, figures per subtask, the checkpoint history.
    let plan = &status["plan"]["stages"];
    assert_eq!(plan.as_array().map(Vec::len), Some(2), "{status}");
    assert!(plan[0]["source"].is_string(), "{status}");
    assert_eq!(
        plan[1]["inputs"][0]["exchange"], "hash(auction)",
        "{status}"
    );
    assert_eq!(plan[1]["sink"], "file", "{status}");
    for stage in operators {
        assert_eq!(
            stage["subtasks"].as_array().map(Vec::len),
            Some(2),
            "{stage}"
        );
        let per_subtask: u64 = stage["subtasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["records_in"].as_u64().unwrap())
            .sum();
        // Read one after the other while the job runs: the subtasks' sum trails a little.
        assert!(per_subtask <= stage["records_in"].as_u64().unwrap() + 100_000);
    }
    let history = status["checkpoint_history"].as_array().unwrap();
    assert!(
        history.iter().any(|c| c["status"] == "COMPLETED"
            && c["state_bytes"].as_u64() > Some(0)
            && c["triggered_at_ms"].as_u64() > Some(1_600_000_000_000)),
        "{status}"
    );
    assert!(status["sampled_at_ms"].as_u64().is_some() && status["uptime_ms"].as_u64().is_some());
    let listed = client.list().await.unwrap();
    assert!(listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));

    let savepoint = client.savepoint(&id).await.unwrap();
    assert!(
        Path::new(&savepoint).join("_manifest.json").exists() || Path::new(&savepoint).exists()
    );
    let stopped_at = client.stop(&id).await.unwrap();
    let stopped = client.status(&id).await.unwrap();
    assert_eq!(state(&stopped), "STOPPED");
    let savepoints = stopped["checkpoint_history"].as_array().unwrap();
    assert!(
        savepoints.iter().filter(|c| c["savepoint"] == true).count() >= 2,
        "{stopped}"
    );

    // Resume from the stop's savepoint at parallelism 1, unthrottled, into the same output.
    let resumed = client
        .submit(
            &windowed_spec(&out, EVENTS, None, 1),
            Some(Path::new(&stopped_at)),
        )
        .await
        .unwrap();
    wait_for(&client, &resumed, "the resumed job", |s| {
        state(s) == "FINISHED"
    })
    .await;
    assert_eq!(committed_lines(&out), embedded_lines(EVENTS));

    // Cancel: a long job goes to CANCELLED and can no longer be cancelled.
    let long = client
        .submit(
            &windowed_spec(&tmp.path().join("long"), 10_000_000, Some(10_000.0), 2),
            None,
        )
        .await
        .unwrap();
    wait_for(&client, &long, "running", |s| state(s) == "RUNNING").await;
    // A job that has not ended cannot be resumed (two instances would write one sink)...
    let resume = |id: String| {
        let client = &client;
        async move {
            client
                .send(
                    hyper::Method::POST,
                    &format!("/v1/jobs/{id}/resume"),
                    Some(&serde_json::json!({})),
                )
                .await
                .unwrap()
        }
    };
    let (code, body) = resume(long.clone()).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("stop it first"), "{body}");
    let answer = client.cancel(&long).await.unwrap();
    assert_eq!(answer["state"], "CANCELLED");
    let again = client.cancel(&long).await.unwrap_err().to_string();
    assert!(
        again.contains("409") && again.contains("already Cancelled"),
        "{again}"
    );
    // ...and one cancelled without a savepoint has nothing to resume from.
    let (code, body) = resume(long.clone()).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("not stopped with a savepoint"), "{body}");

    let metrics = client
        .send(hyper::Method::GET, "/metrics", None)
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains(&format!("oxflow_job_restarts_total{{job=\"{id}\"}} 0")),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_restarts_with_backoff_then_fails_while_others_run() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tmp.path().join("data"), None).await;
    let client = Client::new(&format!("http://{}", server.addr), server.token.clone()).unwrap();
    let mut failing = windowed_spec(&tmp.path().join("failing"), 100_000, None, 2);
    failing.stream.steps.insert(
        0,
        Step::Select(vec![
            "auction".into(),
            "bidder".into(),
            "price".into(),
            "date_time".into(),
            "extra".into(),
        ]),
    );
    failing.stream.steps.insert(1, Step::Map("explode".into()));
    failing.restart = Some(RestartSpec {
        max_attempts: 2,
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
    });
    let started = Instant::now();
    let bad = client.submit(&failing, None).await.unwrap();
    let good = client
        .submit(
            &windowed_spec(&tmp.path().join("good"), 100_000, None, 2),
            None,
        )
        .await
        .unwrap();
    let status = wait_for(&client, &bad, "the failing job", |s| state(s) == "FAILED").await;
    // Two restarts, after 100 and 200 ms of backoff.
    assert_eq!(status["restarts"], 2, "{status}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let failure = status["failure"].as_str().unwrap();
    assert!(failure.contains("explode: auction 1042"), "{failure}");
    // Every failed attempt is kept, with its number and cause.
    let failures = status["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{status}");
    let attempts: Vec<u64> = failures
        .iter()
        .map(|f| f["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(failures.iter().all(|f| f["cause"]
        .as_str()
        .unwrap()
        .contains("explode: auction 1042")));
    wait_for(&client, &good, "the good job", |s| state(s) == "FINISHED").await;
    assert_eq!(
        committed_lines(&tmp.path().join("good")),
        embedded_lines(100_000)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx_answers_and_the_server_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tmp.path().join("data"), Some("s3cret")).await;
    let base = format!("http://{}", server.addr);
    let anonymous = Client::new(&base, None).unwrap();
    let wrong = Client::new(&base, Some("guess".into())).unwrap();
    let client = Client::new(&base, Some("s3cret".into())).unwrap();
    let (status, body) = anonymous
        .send(hyper::Method::GET, "/health", None)
        .await
        .unwrap();
    assert_eq!((status, body.contains("ok")), (200, true));
    let (status, body) = anonymous
        .send(hyper::Method::GET, "/v1/jobs", None)
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let (status, _) = wrong
        .send(hyper::Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 401);

    let spec = |steps: &str| {
        format!(
            r#"{{"spec": {{"stream": {{"source": {{"nexmark": {{"table": "bid", "events": 1000}}}}, "steps": [{steps}]}}, "sink": "blackhole"}}}}"#
        )
    };
    // A body that is not JSON (sent as a JSON string): the parser's message.
    let (status, body) = post(&client, "{\"spec\": ".into()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid request body"), "{body}");
    let (status, body) = post(&client, spec(r#"{"flatten": "x"}"#)).await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown variant `flatten`"), "{body}");
    let (status, body) = post(&client, spec(r#"{"map": "nope"}"#)).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("no function `nope` is registered; registered: [explode]"),
        "{body}"
    );
    let (status, body) = post(&client, spec(r#"{"filter": "price >>> 3"}"#)).await;
    assert_eq!(status, 400);
    assert!(body.contains("step 1 (filter)"), "{body}");
    let (status, body) = post(&client, spec(r#"{"select": ["nope"]}"#)).await;
    assert_eq!(status, 400);
    assert!(body.contains("nope"), "{body}");
    let (status, body) = post(
        &client,
        r#"{"spec": {"stream": {"source": {"nexmark": {"table": "bid"}}}}}"#.into(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("missing field `sink`"), "{body}");
    let (status, body) = post(
        &client,
        spec(&format!(
            r#"{{"filter": "extra = '{}'"}}"#,
            "x".repeat(100_000)
        )),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 65536 bytes"), "{body}");
    let (status, body) = client
        .send(hyper::Method::GET, "/v1/jobs/nope", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("no job `nope`"), "{body}");
    let (status, _) = client
        .send(hyper::Method::PUT, "/v1/jobs", None)
        .await
        .unwrap();
    assert_eq!(status, 405);
    // Unharmed: a good job still runs to its end.
    let id = client
        .submit(
            &windowed_spec(&tmp.path().join("ok"), 20_000, None, 2),
            None,
        )
        .await
        .unwrap();
    wait_for(&client, &id, "a good job after bad requests", |s| {
        state(s) == "FINISHED"
    })
    .await;
    server.shutdown().await.unwrap();
}

#[test]
fn a_server_killed_with_sigkill_resumes_its_jobs_with_exactly_once_output() {
    killed_server_resumes(false);
}

/// A server whose job's checkpoints were lost with its data directory's copy (SIGKILL, then
/// the job's checkpoint directory deleted) resumes the job from the server's checkpoint
/// store: its checkpoint ids go on past those before the kill (a start from the beginning
/// would number them from 1 again), and the output is exactly once.
#[test]
fn a_server_resumes_a_job_from_its_checkpoint_store_when_the_local_copies_are_lost() {
    killed_server_resumes(true);
}

/// Kills a server (SIGKILL) while its job runs, with checkpoints (and with `store`, a
/// checkpoint store and the job's checkpoint directory deleted after the kill), restarts it,
/// and checks that the job finishes on its own with exactly-once output.
fn killed_server_resumes(store: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    let store_uri = format!("file://{}", tmp.path().join("store").display());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = || {
        let mut extra: Vec<&std::ffi::OsStr> =
            vec!["--allow-path".as_ref(), tmp.path().as_os_str()];
        if store {
            extra.push("--checkpoint-store".as_ref());
            extra.push(store_uri.as_ref());
        }
        spawn_server(port, &data, &extra)
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut server = serve();
    let anonymous = Client::new(&url, None).unwrap();
    runtime.block_on(wait_healthy(&anonymous));
    // The server made its token on first start; the restarted one keeps it.
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    let client = Client::new(&url, Some(token.trim().to_string())).unwrap();
    const EVENTS: u64 = 300_000;
    let (id, before) = runtime.block_on(async {
        let id = client
            .submit(&windowed_spec(&out, EVENTS, Some(60_000.0), 2), None)
            .await
            .unwrap();
        let status = wait_for(&client, &id, "checkpoints before the kill", |s| {
            s["checkpoint"]["completed"].as_u64().unwrap_or(0) >= 3
        })
        .await;
        (id, status["checkpoint"]["last_id"].as_u64().unwrap_or(0))
    });
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    if store {
        let local = data.join("jobs").join(&id).join("checkpoints");
        assert!(local.exists(), "{}", local.display());
        std::fs::remove_dir_all(&local).unwrap();
    }
    let mut server = serve();
    runtime.block_on(async {
        wait_healthy(&client).await;
        let status = wait_for(&client, &id, "the resumed job", |s| state(s) == "FINISHED").await;
        assert_eq!(status["restarts"], 0, "{status}");
        // The resumed attempt's checkpoints (its history starts with the resume).
        let first = status["checkpoint_history"][0]["id"].as_u64().unwrap_or(0);
        assert!(
            first > before,
            "checkpoint ids went from {before} to {first}: {status}"
        );
    });
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(committed_lines(&out), embedded_lines(EVENTS));
}

/// Posts `body` to /v1/jobs: as JSON if it parses, else as a JSON string.
async fn post(c: &Client, body: String) -> (u16, String) {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    c.send(hyper::Method::POST, "/v1/jobs", Some(&body))
        .await
        .unwrap()
}

async fn wait_healthy(client: &Client) {
    let started = Instant::now();
    while client
        .send(hyper::Method::GET, "/health", None)
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// deploy/grafana/oxflow-dashboard.json, checked against a live scrape: every panel has a
/// query, every query parses as PromQL (`promtool check rules`, with Grafana's variables put
/// in as Grafana would), and names only families this server exports.
fn check_grafana_dashboard(promtool: &str, scrape: &str, tmp: &Path) {
    let file = common::repo_path("deploy/grafana/oxflow-dashboard.json");
    let path = file.display();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .expect("the dashboard is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(36),
        "{path}: schemaVersion"
    );
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 6,
        "throughput, backpressure, lag, checkpoints, restarts"
    );
    let mut rules = String::from("groups:\n  - name: grafana-dashboard\n    rules:\n");
    for (i, panel) in panels.iter().enumerate() {
        let title = panel["title"].as_str().unwrap_or("");
        for key in ["id", "type", "title", "gridPos", "datasource", "targets"] {
            assert!(!panel[key].is_null(), "panel {i} ({title}) has no {key}");
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel `{title}` has no query");
        for (k, target) in targets.iter().enumerate() {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*");
            let families = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("oxflow_"));
            for family in families {
                assert!(
                    scrape.contains(&format!("# TYPE {family} ")),
                    "panel `{title}` asks for {family}, which /metrics does not export"
                );
            }
            rules.push_str(&format!(
                "      - record: dashboard:panel{i}:{k}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let file = tmp.join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool: scripts/test.sh sets OXFLOW_PROMTOOL (scripts/promtool.sh)"]
async fn metrics_pass_promtool_check_metrics() {
    let promtool = std::env::var("OXFLOW_PROMTOOL").expect("OXFLOW_PROMTOOL: the path of promtool");
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tmp.path().join("data"), None).await;
    let client = Client::new(&format!("http://{}", server.addr), server.token.clone()).unwrap();
    // Two windowed stages of the same name, checkpoints, watermarks per subtask.
    let mut spec = windowed_spec(&tmp.path().join("out"), 400_000, Some(50_000.0), 2);
    spec.stream.steps.push(Step::Window {
        keys: vec!["window_start".into(), "window_end".into()],
        window: WindowKind::Inherited,
        allowed_lateness_ms: 0,
        compute: WindowCompute::TopN {
            order_by: "bids".into(),
            n: 1,
        },
    });
    let id = client.submit(&spec, None).await.unwrap();
    wait_for(&client, &id, "a checkpoint", |s| {
        s["checkpoint"]["completed"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let (status, text) = client
        .send(hyper::Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    for family in [
        "oxflow_stage_records_in_total",
        "oxflow_subtask_watermark_seconds",
        "oxflow_checkpoint_last_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}: {text}"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}: {text}"
        );
    }
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    check_grafana_dashboard(&promtool, &text, tmp.path());
    client.cancel(&id).await.unwrap();
    server.shutdown().await.unwrap();
}

/// A Flink SQL script posted as `{"sql": ...}` runs as a job; a table whose path is outside
/// what the server allows is refused with 403 before anything reads or makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_script_is_submitted_planned_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tmp.path().join("data"), Some("s3cret")).await;
    let client = Client::new(&format!("http://{}", server.addr), Some("s3cret".into())).unwrap();
    let ddl = std::fs::read_to_string(common::repo_path("examples/sql/nexmark-ddl.sql"))
        .unwrap()
        .replace("'events.num' = '10000000'", "'events.num' = '20000'");
    let out = tmp.path().join("sql-out");
    let script = format!(
        "{ddl}\nCREATE TABLE sink (auction BIGINT, price BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\nINSERT INTO sink SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0;",
        out.display()
    );
    let (status, body) = post(&client, serde_json::json!({ "sql": script }).to_string()).await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&client, &id, "the SQL job finishes", |s| {
        state(s) == "FINISHED"
    })
    .await;
    // The same query with the Rust API on the same generator.
    let results = CollectSink::new();
    let config = NexmarkConfig {
        events: Some(20_000),
        ..Default::default()
    };
    oxflow::nexmark::job("q2", Pipeline::new(), config, results.clone())
        .unwrap()
        .execute_blocking()
        .unwrap();
    let expected = json_lines(&results.batches());
    assert!(!expected.is_empty());
    assert_eq!(committed_lines(&out), expected);

    let outside = tempfile::tempdir().unwrap();
    let forbidden = outside.path().join("made-by-planning");
    let script = format!(
        "{ddl}\nCREATE TABLE sink (auction BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\nINSERT INTO sink SELECT auction FROM bid;",
        forbidden.display()
    );
    let (status, body) = post(&client, serde_json::json!({ "sql": script }).to_string()).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("table `sink`"), "{body}");
    assert!(!forbidden.exists(), "planning made {}", forbidden.display());
    let (status, body) = client
        .send(
            hyper::Method::POST,
            "/v1/jobs",
            Some(&serde_json::json!({ "sql": "SELECT FROM" })),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = client
        .send(
            hyper::Method::POST,
            "/v1/jobs",
            Some(&serde_json::json!({})),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("exactly one of `spec`"), "{body}");
}
