//! The `oxflow` command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use oxflow::nexmark::{self, QUERIES};
use oxflow::prelude::*;
use oxflow::runtime::sink::Sink;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "oxflow",
    version,
    about = "Oxflow: stream processing on Arrow, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a Nexmark query on the built-in generator and prints, as its last line, one JSON
    /// object: {"query","events","workers","seconds","events_per_sec","cpu_seconds",
    /// "output_rows","checkpoints","last_checkpoint_ms","state_bytes","restored_from",
    /// "already_finished"}.
    Nexmark(NexmarkArgs),
}

#[derive(clap::Args)]
struct NexmarkArgs {
    /// The query: q0, q1, q2, q5, q7 or q11.
    #[arg(long, short)]
    query: String,
    /// Events to generate (persons, auctions and bids together).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Parallel subtasks per stage (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Events per generated batch.
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Throttle: events per second of wall time (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the generator's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The generator's events per second of event time.
    #[arg(long, default_value_t = 100_000)]
    event_rate: u64,
    /// Where results go: blackhole, stdout, or file:DIR (JSON-lines files part-N.jsonl in DIR;
    /// names starting with `.` or `_` are not yet output).
    #[arg(long, default_value = "blackhole")]
    sink: String,
    /// Take checkpoints into this directory (state in RocksDB, source positions, pending
    /// output); with the file sink, output is then committed exactly once.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Milliseconds between checkpoints.
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// How many completed checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    checkpoints_retained: usize,
    /// Start from a checkpoint: `latest` (the newest valid one in --checkpoint-dir, or the
    /// beginning if there is none yet) or the path of a checkpoint or savepoint directory.
    #[arg(long)]
    restore: Option<String>,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn sink(spec: &str) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(match spec {
        "blackhole" => Arc::new(BlackholeSink::default()),
        "stdout" => Arc::new(StdoutSink),
        s if s.starts_with("file:") && s.len() > 5 => Arc::new(
            JsonFileSink::try_new(PathBuf::from(&s[5..])).context("setting up the file sink")?,
        ),
        other => bail!("unknown sink `{other}`: use blackhole, stdout or file:DIR"),
    })
}

fn run_nexmark(args: NexmarkArgs) -> anyhow::Result<()> {
    if !QUERIES.contains(&args.query.as_str()) {
        bail!(
            "unknown query `{}`: this build runs {}",
            args.query,
            QUERIES.join(", ")
        );
    }
    let workers = match args.workers {
        Some(0) => bail!("--workers must be at least 1"),
        Some(w) => w,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let config = NexmarkConfig {
        events: Some(args.events),
        event_rate: args.event_rate,
        seed: args.seed,
        batch_size: args.batch_size,
        rate_limit: args.rate,
        ..Default::default()
    };
    let mut job = nexmark::job(
        &args.query,
        Pipeline::new().with_parallelism(workers),
        config,
        sink(&args.sink)?,
    )?;
    if let Some(dir) = &args.checkpoint_dir {
        if args.checkpoint_interval_ms == 0 {
            bail!("--checkpoint-interval-ms must be at least 1");
        }
        let mut checkpoints = CheckpointConfig::new(
            dir,
            std::time::Duration::from_millis(args.checkpoint_interval_ms),
        );
        checkpoints.retained = args.checkpoints_retained.max(1);
        job = job.with_checkpoints(checkpoints);
    }
    match args.restore.as_deref() {
        None => {}
        Some("latest") if args.checkpoint_dir.is_none() => {
            bail!("--restore latest needs --checkpoint-dir")
        }
        Some("latest") => job = job.restore_from(RestoreFrom::Latest),
        Some(path) => job = job.restore_from(RestoreFrom::Path(PathBuf::from(path))),
    }
    let cpu_before = cpu_seconds();
    let report = job.execute_blocking()?;
    let cpu = cpu_seconds() - cpu_before;
    let seconds = report.elapsed.as_secs_f64();
    tracing::info!(metrics = ?report.metrics, "job finished");
    println!(
        "{}",
        serde_json::json!({
            "query": args.query,
            "events": args.events,
            "workers": workers,
            "seconds": seconds,
            "events_per_sec": args.events as f64 / seconds,
            "cpu_seconds": cpu,
            "output_rows": report.output_rows,
            "checkpoints": report.checkpoints.completed,
            "last_checkpoint_ms": report.checkpoints.last_duration.map(|d| d.as_millis() as u64),
            "state_bytes": report.checkpoints.state_bytes,
            "restored_from": report.restored_from,
            "already_finished": report.already_finished,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Warnings by default: a checkpoint passed over on restore must not go unseen.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Nexmark(args) => run_nexmark(args),
    }
}
