//! The runtime server, measured: submit-to-first-output latency, status latency while a job
//! runs and another process polls, and what scraping `/metrics` and status costs a job.
//!
//! `cargo bench --bench server [-- EVENTS]` (default 20 000 000 events of q7-like work).

#![allow(clippy::disallowed_methods)]

use oxflow::client::Client;
use oxflow::server::{Server, ServerConfig};
use oxflow::spec::{
    JobSpec, Registry, SinkSpec, SourceSpec, Step, StreamSpec, WatermarkSpec, WindowCompute,
    WindowKind,
};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A stateless job (the first batch reaches the sink at once), throttled so that it runs
/// for a while.
fn pass_through(events: u64) -> JobSpec {
    let mut spec = spec(events);
    spec.stream.steps = vec![Step::Select(vec!["auction".into(), "price".into()])];
    if let SourceSpec::Nexmark { rate, .. } = &mut spec.stream.source {
        *rate = Some(1_000_000.0);
    }
    spec
}

fn spec(events: u64) -> JobSpec {
    JobSpec {
        parallelism: Some(2),
        max_parallelism: None,
        stream: StreamSpec {
            source: SourceSpec::Nexmark {
                table: "bid".into(),
                events: Some(events),
                event_rate: None,
                seed: None,
                rate: None,
            },
            watermarks: Some(WatermarkSpec {
                column: "date_time".into(),
                delay_ms: 4000,
                idle_timeout_ms: None,
                max_ahead_ms: None,
                out_of_range: None,
            }),
            steps: vec![Step::Window {
                keys: vec!["auction".into()],
                window: WindowKind::Tumbling { size_ms: 1000 },
                allowed_lateness_ms: 0,
                compute: WindowCompute::Aggregate(vec!["count(price) AS bids".into()]),
            }],
        },
        sink: SinkSpec::Blackhole,
        checkpoints: None,
        restart: None,
        state: None,
    }
}

fn sink_records(status: &Value) -> u64 {
    status["operators"]
        .as_array()
        .and_then(|ops| ops.last())
        .and_then(|o| o["records_out"].as_u64())
        .unwrap_or(0)
}

/// Runs a job to its end, polling its status every `poll` (and `/metrics` with it when
/// `scrape`); returns (seconds to the first output record, job seconds, status latencies).
async fn run(
    client: &Client,
    spec: &JobSpec,
    poll: Duration,
    scrape: bool,
) -> (f64, f64, Vec<f64>) {
    let submitted = Instant::now();
    let id = client.submit(spec, None).await.unwrap();
    let mut first_output = None;
    let mut latencies = Vec::new();
    loop {
        let asked = Instant::now();
        let status = client.status(&id).await.unwrap();
        if scrape {
            client
                .send(hyper::Method::GET, "/metrics", None)
                .await
                .unwrap();
        }
        latencies.push(asked.elapsed().as_secs_f64() * 1e3);
        if first_output.is_none() && sink_records(&status) > 0 {
            first_output = Some(submitted.elapsed().as_secs_f64());
        }
        if status["state"] == "FINISHED" {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    let status = client.status(&id).await.unwrap();
    let seconds = (status["finished_at_ms"].as_u64().unwrap()
        - status["started_at_ms"].as_u64().unwrap()) as f64
        / 1e3;
    (first_output.unwrap_or(f64::NAN), seconds, latencies)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .find(|a| a.parse::<u64>().is_ok())
        .map(|a| a.parse().unwrap())
        .unwrap_or(20_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(tmp.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let server = Server::new(Registry::new()).start(config).await.unwrap();
    let client = Client::new(&format!("http://{}", server.addr), server.token.clone()).unwrap();

    // Submit-to-first-output on a small job, five times.
    let mut first: Vec<f64> = Vec::new();
    for _ in 0..5 {
        first.push(
            run(
                &client,
                &pass_through(2_000_000),
                Duration::from_millis(1),
                false,
            )
            .await
            .0 * 1e3,
        );
    }
    println!(
        "submit to first output (ms, 5 runs): median {:.1}, max {:.1}",
        percentile(&mut first, 0.5),
        percentile(&mut first, 1.0)
    );

    // The same job three ways, side by side: status polled once a second; status and
    // /metrics polled every millisecond from this process; and, at the same time, 20 000
    // status requests from a second process-like client loop.
    let job = spec(events);
    let (_, quiet, _) = run(&client, &job, Duration::from_secs(1), false).await;
    let (_, scraped, mut lat) = run(&client, &job, Duration::from_millis(1), true).await;
    println!(
        "job of {events} events: {:.2} s polled once a second ({:.2} M events/s), {:.2} s with status + /metrics every ms ({:.2} M events/s, {:+.1} %)",
        quiet, events as f64 / quiet / 1e6, scraped, events as f64 / scraped / 1e6, (scraped / quiet - 1.0) * 100.0
    );
    println!(
        "status + /metrics latency under that polling ({} requests): p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );
    let hammer = {
        let base = format!("http://{}", server.addr);
        tokio::spawn(async move {
            let c = Client::new(&base, None).unwrap();
            let mut lat = Vec::new();
            for _ in 0..20_000 {
                let t = Instant::now();
                c.list().await.unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        })
    };
    let (_, loaded, _) = run(&client, &job, Duration::from_secs(1), false).await;
    let mut lat = hammer.await.unwrap();
    println!(
        "20 000 list requests in a loop while the job ran: p50 {:.2} ms, p99 {:.2} ms; the job took {:.2} s ({:+.1} % against quiet)",
        percentile(&mut lat, 0.5), percentile(&mut lat, 0.99), loaded, (loaded / quiet - 1.0) * 100.0
    );
    server.shutdown().await.unwrap();
}
