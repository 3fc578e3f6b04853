//! The server closed and bounded by default, each rule through the real HTTP server: the
//! token it makes and requires, JSON-only POSTs, Host checks against DNS rebinding, no CORS,
//! paths and Kafka properties of submitted specs, secrets kept out of answers, the limits,
//! cancellation of a job in a hot loop, and no crash loop after a server dies.

#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use oxflow::client::Client;
use oxflow::server::{Limits, RunningServer, Server, ServerConfig};
use oxflow::spec::Registry;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

async fn start(data: &Path, configure: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::new(data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    configure(&mut config);
    Server::new(Registry::new()).start(config).await.unwrap()
}

/// One raw HTTP/1.1 request, headers as given (so Host and Content-Type are the test's):
/// the status and the whole answer (headers and body).
fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text
}

fn client(server: &RunningServer) -> Client {
    Client::new(&format!("http://{}", server.addr), server.token.clone()).unwrap()
}

/// Submits `spec` (JSON); the status and answer.
async fn submit(c: &Client, spec: Value) -> (u16, Value) {
    let (status, body) = c
        .send(
            hyper::Method::POST,
            "/v1/jobs",
            Some(&json!({ "spec": spec })),
        )
        .await
        .unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn bids(steps: Value) -> Value {
    json!({"stream": {"source": {"nexmark": {"table": "bid"}}, "steps": steps}, "sink": "blackhole"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_makes_a_private_token_keeps_it_and_requires_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = start(&data, |_| {}).await;
    let token = server.token.clone().expect("a token by default");
    let file = data.join("token");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is readable by its owner alone");
    assert!(token.len() >= 32, "{token}");
    let addr = server.addr;
    let host = format!("127.0.0.1:{}", addr.port());
    let (status, _) = raw(addr, &request("GET", "/health", &[("Host", &host)], ""));
    assert_eq!(status, 200, "/health needs no token");
    for path in ["/v1/jobs", "/metrics", "/v1/jobs/x"] {
        let (status, body) = raw(addr, &request("GET", path, &[("Host", &host)], ""));
        assert_eq!(status, 401, "{path}: {body}");
    }
    let wrong = format!("Bearer {}x", &token[..token.len() - 1]);
    let (status, _) = raw(
        addr,
        &request(
            "GET",
            "/v1/jobs",
            &[("Host", &host), ("Authorization", &wrong)],
            "",
        ),
    );
    assert_eq!(status, 401, "a token one character off");
    let right = format!("Bearer {token}");
    let (status, _) = raw(
        addr,
        &request(
            "GET",
            "/v1/jobs",
            &[("Host", &host), ("Authorization", &right)],
            "",
        ),
    );
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
    // Started again on the same data directory: the same token.
    let again = start(&data, |_| {}).await;
    assert_eq!(again.token.as_deref(), Some(token.as_str()));
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_takes_the_token_once_into_an_httponly_strict_cookie() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(&tmp.path().join("data"), |_| {}).await;
    let token = server.token.clone().unwrap();
    let addr = server.addr;
    let host = ("Host", "127.0.0.1");
    // The page and its scripts need no token (they hold no data) and run under a strict CSP.
    let (status, page) = raw(addr, &request("GET", "/", &[host], ""));
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("text/html") && page.contains("/ui/app.js"),
        "{page}"
    );
    assert!(page.contains("script-src 'self'") && page.contains("frame-ancestors 'none'"));
    let (status, script) = raw(addr, &request("GET", "/ui/app.js", &[host], ""));
    assert_eq!(status, 200);
    assert!(script.contains("text/javascript") && script.contains("nosniff"));
    assert_eq!(
        raw(addr, &request("GET", "/ui/../token", &[host], "")).0,
        404
    );
    assert_eq!(
        raw(addr, &request("GET", "/ui/nothing.js", &[host], "")).0,
        404
    );
    // A wrong token opens nothing; the right one sets the cookie.
    let json = ("Content-Type", "application/json");
    let (status, answer) = raw(
        addr,
        &request(
            "POST",
            "/v1/session",
            &[host, json],
            r#"{"token": "guess"}"#,
        ),
    );
    assert_eq!(status, 401, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("set-cookie"),
        "{answer}"
    );
    let body = json!({ "token": token }).to_string();
    let (status, answer) = raw(addr, &request("POST", "/v1/session", &[host, json], &body));
    assert_eq!(status, 200, "{answer}");
    let cookie_line = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {answer}"));
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"),
        "{cookie_line}"
    );
    let cookie = format!("oxflow_token={token}");
    // The cookie stands for the token on the API...
    let (status, jobs) = raw(
        addr,
        &request("GET", "/v1/jobs", &[host, ("Cookie", &cookie)], ""),
    );
    assert_eq!(status, 200, "{jobs}");
    let (status, _) = raw(
        addr,
        &request(
            "GET",
            "/v1/jobs",
            &[host, ("Cookie", "oxflow_token=guess")],
            "",
        ),
    );
    assert_eq!(status, 401);
    // ...and still only with JSON bodies (no cross-site form can post with it).
    let (status, _) = raw(
        addr,
        &request(
            "POST",
            "/v1/jobs",
            &[host, ("Cookie", &cookie), ("Content-Type", "text/plain")],
            "{}",
        ),
    );
    assert_eq!(status, 415);
    // ?token= moves a right token into the cookie and drops it from the address.
    let (status, answer) = raw(
        addr,
        &request("GET", &format!("/?token={token}"), &[host], ""),
    );
    assert_eq!(status, 303, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("location: /\r\n"),
        "{answer}"
    );
    assert!(answer.contains("HttpOnly"), "{answer}");
    assert_eq!(
        raw(addr, &request("GET", "/?token=guess", &[host], "")).0,
        401
    );
    // Signing out clears it.
    let (status, answer) = raw(addr, &request("DELETE", "/v1/session", &[host], ""));
    assert_eq!(status, 200);
    assert!(answer.contains("Max-Age=0"), "{answer}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_takes_an_explicit_choice_and_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(tmp.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.no_auth = true;
    let err = Server::new(Registry::new())
        .start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("--no-auth is refused") && err.contains("loopback"),
        "{err}"
    );
    let server = start(tmp.path(), |c| c.no_auth = true).await;
    assert!(server.token.is_none());
    let (status, _) = client(&server)
        .send(hyper::Method::GET, "/v1/jobs", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        !tmp.path().join("token").exists(),
        "no token made without auth"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_must_be_json_hosts_loopback_and_no_cors_header_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |_| {}).await;
    let addr = server.addr;
    let auth = format!("Bearer {}", server.token.clone().unwrap());
    let host = format!("localhost:{}", addr.port());
    let spec = json!({"spec": bids(json!([]))}).to_string();
    // A "simple" cross-site request: text/plain or a form, which a browser sends without
    // asking first.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, body) = raw(
            addr,
            &request(
                "POST",
                "/v1/jobs",
                &[
                    ("Host", &host),
                    ("Authorization", &auth),
                    ("Content-Type", content_type),
                ],
                &spec,
            ),
        );
        assert_eq!(status, 415, "{content_type}: {body}");
    }
    let (status, _) = raw(
        addr,
        &request(
            "POST",
            "/v1/jobs",
            &[("Host", &host), ("Authorization", &auth)],
            &spec,
        ),
    );
    assert_eq!(status, 415, "a body without a Content-Type");
    // DNS rebinding: a page whose name now resolves to 127.0.0.1 still sends its own Host.
    for evil in [
        "evil.example",
        "evil.example:8081",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
    ] {
        let (status, body) = raw(
            addr,
            &request(
                "GET",
                "/v1/jobs",
                &[("Host", evil), ("Authorization", &auth)],
                "",
            ),
        );
        assert_eq!(status, 403, "{evil}: {body}");
        assert!(body.contains("loopback"), "{body}");
    }
    for good in [
        host.as_str(),
        "127.0.0.1",
        "127.0.0.5:1",
        "[::1]:8081",
        "app.localhost",
    ] {
        let (status, body) = raw(
            addr,
            &request(
                "GET",
                "/v1/jobs",
                &[("Host", good), ("Authorization", &auth)],
                "",
            ),
        );
        assert_eq!(status, 200, "{good}: {body}");
    }
    // A CORS preflight gets no permission, and no answer carries a CORS header.
    let (_, answer) = raw(
        addr,
        &request(
            "OPTIONS",
            "/v1/jobs",
            &[
                ("Host", &host),
                ("Origin", "http://evil.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            "",
        ),
    );
    assert!(
        !answer.to_ascii_lowercase().contains("access-control-"),
        "{answer}"
    );
    let (status, answer) = raw(
        addr,
        &request(
            "GET",
            "/v1/jobs",
            &[
                ("Host", &host),
                ("Authorization", &auth),
                ("Origin", "http://evil.example"),
            ],
            "",
        ),
    );
    assert_eq!(status, 200);
    assert!(
        !answer.to_ascii_lowercase().contains("access-control-"),
        "{answer}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_paths_stay_under_the_data_directory_or_an_allowed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let allowed = tmp.path().join("shared");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(allowed.join("in.jsonl"), "{\"a\":1}\n").unwrap();
    let server = start(&data, |c| c.allowed_paths = vec![allowed.clone()]).await;
    let c = client(&server);
    let file_source =
        |path: &str| json!({"stream": {"source": {"file": {"path": path}}}, "sink": "blackhole"});
    for path in [
        "/etc/passwd",
        "/root/.ssh/id_rsa",
        "../../etc/passwd",
        "in/../../x",
    ] {
        let (status, body) = submit(&c, file_source(path)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(path), "{body}");
    }
    let sink = json!({"stream": {"source": {"nexmark": {"table": "bid", "events": 10}}},
                      "sink": {"file": {"path": "/tmp/elsewhere"}}});
    let (status, body) = submit(&c, sink).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = c
        .send(
            hyper::Method::POST,
            "/v1/jobs",
            Some(&json!({"spec": bids(json!([])), "restore_from": "/etc"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    // Under an allowed directory: accepted (and it runs).
    let path = allowed.join("in.jsonl");
    let (status, body) = submit(&c, file_source(path.to_str().unwrap())).await;
    assert_eq!(status, 201, "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_properties_pass_an_allow_list_and_secrets_never_show() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |_| {}).await;
    let c = client(&server);
    let to_kafka = |query: &str| {
        json!({"stream": {"source": {"nexmark": {"table": "bid", "events": 10}}},
               "sink": {"kafka": {"uri": format!("kafka://127.0.0.1:1/out?{query}")}}})
    };
    let (status, body) = submit(
        &c,
        to_kafka("plugin.library.paths=/tmp/evil.so&sasl.password=hunter2"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(text.contains("plugin.library.paths"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    for refused in [
        "sasl.kerberos.kinit.cmd=touch%20/tmp/x",
        "ssl.engine.location=/tmp/e.so",
    ] {
        let (status, body) = submit(&c, to_kafka(refused)).await;
        assert_eq!(status, 400, "{refused}: {body}");
    }
    let (status, body) = submit(&c, to_kafka("ssl.ca.location=/etc/ssl/certs/ca.pem")).await;
    assert_eq!(status, 403, "{body}");
    // Allowed, with a secret: the secret is in no answer.
    let (status, body) = submit(
        &c,
        to_kafka("security.protocol=SASL_PLAINTEXT&sasl.mechanism=PLAIN&sasl.username=u&sasl.password=hunter2&connect-timeout-ms=0"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let status = c.status(&id).await.unwrap();
        let list = c.list().await.unwrap();
        for shown in [status.to_string(), list.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        if status["failure"].is_string() || started.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = c.cancel(&id).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_what_would_exhaust_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |c| {
        c.limits = Limits {
            max_running_jobs: 1,
            max_body_bytes: 4096,
            ..Limits::default()
        }
    })
    .await;
    let c = client(&server);
    let hop = |size_ms: u64, slide_ms: u64| {
        bids(json!([{"window": {"keys": ["auction"],
            "window": {"hopping": {"size_ms": size_ms, "slide_ms": slide_ms}},
            "compute": {"aggregate": ["count(price) AS n"]}}}]))
    };
    // The finding: a year of windows sliding by 1 ms took the server to 11 GB.
    let (status, body) = submit(&c, hop(365 * 24 * 3600 * 1000, 1)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("--max-window-panes"), "{body}");
    let mut many = bids(json!([]));
    many["parallelism"] = json!(300);
    many["max_parallelism"] = json!(1024);
    let (status, body) = submit(&c, many).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("--max-subtasks-per-job"),
        "{body}"
    );
    let mut often = bids(json!([]));
    often["checkpoints"] = json!({"interval_ms": 1});
    let (status, body) = submit(&c, often).await;
    assert_eq!(status, 400, "{body}");
    let mut retries = bids(json!([]));
    retries["restart"] = json!({"max_attempts": 1000000});
    let (status, body) = submit(&c, retries).await;
    assert_eq!(status, 400, "{body}");
    let big = json!({"spec": bids(json!([{"filter": "x".repeat(5000)}]))});
    let (status, body) = c
        .send(hyper::Method::POST, "/v1/jobs", Some(&big))
        .await
        .unwrap();
    assert_eq!(status, 413, "{body}");
    // One job running: a second one waits its turn.
    let (status, body) = submit(&c, bids(json!([]))).await;
    assert_eq!(status, 201, "{body}");
    let first = body["id"].as_str().unwrap().to_string();
    let (status, body) = submit(&c, bids(json!([]))).await;
    assert_eq!(status, 429, "{body}");
    c.cancel(&first).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_job_busy_firing_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), |_| {}).await;
    let c = client(&server);
    // As many windows per record as the limit allows, on an unbounded generator: each
    // watermark fires thousands of windows.
    let spec = json!({"parallelism": 1,
        "stream": {"source": {"nexmark": {"table": "bid"}},
                   "watermarks": {"column": "date_time", "delay_ms": 0},
                   "steps": [{"window": {"keys": ["auction"],
                       "window": {"hopping": {"size_ms": 10000, "slide_ms": 1}},
                       "compute": {"aggregate": ["count(price) AS n"]}}}]},
        "sink": "blackhole"});
    let (status, body) = submit(&c, spec).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answer = c.cancel(&id).await.unwrap();
    assert_eq!(answer["state"], "CANCELLED", "{answer}");
    server.shutdown().await.unwrap();
}

#[test]
fn a_job_that_keeps_killing_its_server_is_failed_not_resumed_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = || spawn_server(port, &data, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let healthy = |client: &Client| {
        runtime.block_on(async {
            let started = Instant::now();
            while client
                .send(hyper::Method::GET, "/health", None)
                .await
                .is_err()
            {
                assert!(started.elapsed() < Duration::from_secs(30), "no server");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut server = serve();
    healthy(&Client::new(&url, None).unwrap());
    let token = std::fs::read_to_string(data.join("token")).unwrap();
    let c = Client::new(&url, Some(token.trim().to_string())).unwrap();
    let mut spec = bids(json!([]));
    spec["restart"] = json!({"max_attempts": 2});
    let id = runtime.block_on(async {
        let (status, body) = submit(&c, spec).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    });
    // Each kill stands for the job taking its server down (out of memory, say).
    let mut states = Vec::new();
    for _ in 0..3 {
        server.kill().unwrap();
        server.wait().unwrap();
        server = serve();
        healthy(&c);
        let status = runtime.block_on(c.status(&id)).unwrap();
        states.push(status["state"].as_str().unwrap().to_string());
        if states.last().unwrap() == "FAILED" {
            assert!(
                status["failure"].as_str().unwrap().contains("not resumed"),
                "{status}"
            );
            break;
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(states, ["RUNNING", "RUNNING", "FAILED"]);
}
