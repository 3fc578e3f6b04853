//! The `oxflow` command line.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use oxflow::connectors::kafka::{KafkaSourceConfig, KafkaUri, RecordFormat};
use oxflow::connectors::nats::{NatsSource, NatsSourceConfig, NatsUri};
use oxflow::nexmark::{self, QUERIES};
use oxflow::prelude::*;
use oxflow::runtime::sink::Sink;
use oxflow::server::Limits;
use oxflow::spec::{SinkSpec, StateSpec};
use std::path::{Path, PathBuf};
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
    /// Runs a Nexmark query on the built-in generator (or on bids from Kafka, or tables from files) and prints, as its last line, one JSON
    /// object: {"query","events","workers","seconds","events_per_sec","cpu_seconds",
    /// "output_rows","checkpoints","last_checkpoint_ms","state_bytes","restored_from",
    /// "already_finished"}.
    Nexmark(NexmarkArgs),
    /// Writes the generator's people, auctions and bids as JSON lines under OUT (`person/`,
    /// `auction/`, `bid/`), for `nexmark --source file:OUT` and for other systems to read the
    /// same events; prints the rows of each table as one JSON object.
    NexmarkTables(TablesArgs),
    /// Runs a job spec (JSON, as `submit` sends) embedded, without a server, and prints the
    /// same final JSON line as `nexmark` ("job" in place of "query").
    Run(RunArgs),
    /// Runs Flink SQL embedded, as Flink's SQL client does: CREATE TABLE, CREATE [TEMPORARY]
    /// VIEW, SET and one INSERT INTO (docs/sql.md), from files (-f) then statements (-e);
    /// prints each EXPLAIN's plan, then the same final JSON line as `nexmark` ("sql" in place
    /// of "query").
    Sql(SqlArgs),
    /// Checks a job spec without running it: prints its dataflow (stages, operators,
    /// exchanges) as JSON, or says what is wrong and where.
    Validate {
        /// The spec file.
        spec: PathBuf,
    },
    /// Runs the runtime server: jobs submitted as JSON specs over REST (docs/server.md).
    Server(ServerArgs),
    /// Runs a worker: registers with a server and runs the tasks of jobs it is given, which
    /// exchange records with other workers over Arrow Flight (docs/design/cluster.md).
    Worker(WorkerArgs),
    /// Prints the server's API as OpenAPI (what docs/openapi.yaml holds).
    Openapi,
    /// Submits a job spec (JSON) to a server; prints the job's id.
    Submit {
        /// The spec file.
        spec: PathBuf,
        /// Start from this savepoint or checkpoint directory.
        #[arg(long)]
        restore: Option<PathBuf>,
        #[command(flatten)]
        server: ServerOptions,
    },
    /// Lists a server's jobs.
    List {
        #[command(flatten)]
        server: ServerOptions,
    },
    /// Shows a job: state, restarts, operators, watermarks, checkpoints, failure.
    Status {
        /// The job's id.
        id: String,
        #[command(flatten)]
        server: ServerOptions,
    },
    /// Takes a savepoint of a running job; prints its path.
    Savepoint {
        /// The job's id.
        id: String,
        #[command(flatten)]
        server: ServerOptions,
    },
    /// Stops a job with a savepoint; prints the savepoint's path (resume with submit --restore).
    Stop {
        /// The job's id.
        id: String,
        #[command(flatten)]
        server: ServerOptions,
    },
    /// Cancels a job.
    Cancel {
        /// The job's id.
        id: String,
        #[command(flatten)]
        server: ServerOptions,
    },
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Where the worker keeps its tasks' working state.
    #[arg(long, default_value = "oxflow-worker")]
    data_dir: PathBuf,
    /// Where its Flight service listens for other workers' streams (loopback by default;
    /// port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// The address other workers reach it at, if not --listen's.
    #[arg(long)]
    advertise: Option<std::net::SocketAddr>,
    /// How many tasks it offers.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// The server's checkpoint store (the same --checkpoint-store, credentials from this
    /// worker's environment): its tasks upload their state there and restore from it.
    #[arg(long)]
    checkpoint_store: Option<String>,
    #[command(flatten)]
    server: ServerOptions,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
    /// Where jobs, their status and their checkpoints are kept.
    #[arg(long, default_value = "oxflow-data")]
    data_dir: PathBuf,
    /// A file holding the bearer token every endpoint but /health requires (default: the
    /// token in DATA_DIR/token, made on first start, mode 0600).
    #[arg(long, conflicts_with = "no_auth")]
    token_file: Option<PathBuf>,
    /// Require no token; refused unless --listen is a loopback address.
    #[arg(long)]
    no_auth: bool,
    /// A directory (besides the data directory) that submitted specs may read and write;
    /// repeatable.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_paths: Vec<PathBuf>,
    /// Also keep every job's completed checkpoints here, under jobs/<id>/ (uploaded
    /// incrementally, before their output is committed), so that jobs survive the loss of
    /// the data directory: s3://BUCKET/PREFIX[?endpoint=URL&region=R] or file:///DIR.
    #[arg(long)]
    checkpoint_store: Option<String>,
    /// Jobs running or restarting at once.
    #[arg(long, default_value_t = Limits::default().max_running_jobs)]
    max_running_jobs: usize,
    /// Subtasks of one job, over all its stages.
    #[arg(long, default_value_t = Limits::default().max_subtasks_per_job)]
    max_subtasks_per_job: usize,
    /// Windows one record of a hopping window may belong to (size / slide).
    #[arg(long, default_value_t = Limits::default().max_window_panes)]
    max_window_panes: u64,
    /// The shortest checkpoint interval a job may ask for.
    #[arg(long, default_value_t = Limits::default().min_checkpoint_interval.as_millis() as u64)]
    min_checkpoint_interval_ms: u64,
    /// The most restarts a job's restart strategy may allow.
    #[arg(long, default_value_t = Limits::default().max_restart_attempts)]
    max_restart_attempts: u32,
    /// The shortest first restart backoff a job may ask for.
    #[arg(long, default_value_t = Limits::default().min_restart_backoff.as_millis() as u64)]
    min_restart_backoff_ms: u64,
    /// The longest restart backoff a job may ask for.
    #[arg(long, default_value_t = Limits::default().max_restart_backoff.as_millis() as u64)]
    max_restart_backoff_ms: u64,
    /// The largest request body, in bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// The longest line a file source of a submitted job reads, in bytes.
    #[arg(long, default_value_t = Limits::default().max_line_bytes)]
    max_line_bytes: usize,
    /// How long a request may take (a savepoint waits for its checkpoint within it).
    #[arg(long, default_value_t = Limits::default().request_timeout.as_millis() as u64)]
    request_timeout_ms: u64,
    /// A worker not heard from for this long is lost: the attempts it ran restart from
    /// their latest checkpoint on the workers left.
    #[arg(long, default_value_t = 5000)]
    worker_timeout_ms: u64,
}

impl ServerArgs {
    fn limits(&self) -> Limits {
        use std::time::Duration;
        Limits {
            max_running_jobs: self.max_running_jobs,
            max_subtasks_per_job: self.max_subtasks_per_job,
            max_window_panes: self.max_window_panes,
            min_checkpoint_interval: Duration::from_millis(self.min_checkpoint_interval_ms),
            max_restart_attempts: self.max_restart_attempts,
            min_restart_backoff: Duration::from_millis(self.min_restart_backoff_ms),
            max_restart_backoff: Duration::from_millis(self.max_restart_backoff_ms),
            max_body_bytes: self.max_body_bytes,
            max_line_bytes: self.max_line_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// The spec file.
    spec: PathBuf,
    /// Take the checkpoints the spec's `checkpoints` asks for into this directory (state,
    /// source positions, pending output: with the file or Kafka sink, output is then
    /// committed exactly once).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Start from a checkpoint: `latest` (the newest valid one in --checkpoint-dir, or the
    /// beginning if there is none yet) or the path of a checkpoint or savepoint directory.
    #[arg(long)]
    restore: Option<String>,
}

#[derive(clap::Args)]
struct SqlArgs {
    /// A file of statements separated by `;` (repeatable; run in order).
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Statements given inline (repeatable; run after the files).
    #[arg(short = 'e', long = "execute")]
    statements: Vec<String>,
    /// Take checkpoints (at SET 'execution.checkpointing.interval') into this directory.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Start from a checkpoint: `latest` (in --checkpoint-dir) or a checkpoint or savepoint
    /// directory.
    #[arg(long)]
    restore: Option<String>,
    /// Print the job's spec (JSON, as `oxflow submit` takes) instead of running it.
    #[arg(long)]
    print_spec: bool,
}

fn run_sql(args: &SqlArgs) -> anyhow::Result<()> {
    if args.files.is_empty() && args.statements.is_empty() {
        bail!("give statements with -f FILE or -e \"STATEMENTS\"");
    }
    let mut session = oxflow::sql::SqlSession::default();
    let mut outputs = Vec::new();
    let mut label = "sql".to_string();
    for file in &args.files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        outputs.extend(
            session
                .execute(&text)
                .with_context(|| format!("in {}", file.display()))?,
        );
        if let Some(stem) = file.file_stem() {
            label = stem.to_string_lossy().into_owned();
        }
    }
    for (i, text) in args.statements.iter().enumerate() {
        outputs.extend(
            session
                .execute(text)
                .with_context(|| format!("in -e statement {}", i + 1))?,
        );
    }
    let mut jobs = Vec::new();
    for output in outputs {
        match output {
            oxflow::sql::SqlOutput::Explain(plan) => emit(plan)?,
            oxflow::sql::SqlOutput::Job(spec) => jobs.push(*spec),
        }
    }
    let spec = match jobs.len() {
        0 => return Ok(()),
        1 => jobs.remove(0),
        n => bail!("{n} INSERT INTO statements: running several as one job (a statement set) is not supported yet"),
    };
    if args.print_spec {
        return print_json(&serde_json::to_value(&spec)?);
    }
    if spec.checkpoints.is_some() && args.checkpoint_dir.is_none() {
        eprintln!("SET 'execution.checkpointing.interval' is given, but no --checkpoint-dir: running without checkpoints");
    }
    if spec.checkpoints.is_none() && args.checkpoint_dir.is_some() {
        bail!("--checkpoint-dir is given, but the script does not SET 'execution.checkpointing.interval'");
    }
    let job = session.job(&spec, args.checkpoint_dir.as_deref())?;
    let job = restore(job, args.restore.as_deref(), args.checkpoint_dir.is_some())?;
    let workers = spec.parallelism.unwrap_or(1);
    // The generator's events, all kinds, as `nexmark` counts them.
    let events = match &spec.stream.source {
        oxflow::spec::SourceSpec::Nexmark { events, .. } => *events,
        _ => None,
    };
    execute_and_report(job, ("sql", &label), workers, events)
}

/// Reads and parses a spec file; errors say which file and where in it.
fn read_spec(path: &Path) -> anyhow::Result<oxflow::spec::JobSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a job spec", path.display()))
}

/// Builds the job of a spec file, as a server would (the same checks).
fn spec_job(
    path: &Path,
    checkpoint_dir: Option<&Path>,
) -> anyhow::Result<(oxflow::spec::JobSpec, Job)> {
    let spec = read_spec(path)?;
    let job = Pipeline::new()
        .job_from_spec(&spec, &oxflow::spec::Registry::new(), checkpoint_dir)
        .with_context(|| format!("{} does not make a job", path.display()))?;
    Ok((spec, job))
}

fn validate(path: &Path) -> anyhow::Result<()> {
    let (_, job) = spec_job(path, None)?;
    print_json(&serde_json::json!({
        "valid": true,
        "subtasks": job.subtasks(),
        "plan": job.plan(),
    }))
}

fn run_spec(args: &RunArgs) -> anyhow::Result<()> {
    let (spec, job) = spec_job(&args.spec, args.checkpoint_dir.as_deref())?;
    match (&spec.checkpoints, &args.checkpoint_dir) {
        (None, Some(dir)) => bail!(
            "--checkpoint-dir {} is given, but the spec sets no `checkpoints` (add \"checkpoints\": {{\"interval_ms\": 1000}})",
            dir.display()
        ),
        (Some(_), None) => eprintln!(
            "the spec asks for checkpoints, but no --checkpoint-dir is given: running without them (output is committed at the end)"
        ),
        _ => {}
    }
    let job = restore(job, args.restore.as_deref(), args.checkpoint_dir.is_some())?;
    let label = args.spec.file_stem().map_or_else(
        || args.spec.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let workers = spec.parallelism.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    execute_and_report(job, ("job", &label), workers, None)
}

/// Applies `--restore`.
fn restore(job: Job, restore: Option<&str>, has_checkpoint_dir: bool) -> anyhow::Result<Job> {
    Ok(match restore {
        None => job,
        Some("latest") if !has_checkpoint_dir => bail!("--restore latest needs --checkpoint-dir"),
        Some("latest") => job.restore_from(RestoreFrom::Latest),
        Some(path) => job.restore_from(RestoreFrom::Path(PathBuf::from(path))),
    })
}

/// Runs `job` (with progress on stderr when it is a terminal) and prints the summary line:
/// `{"<what>": name, "events", "workers", "seconds", "events_per_sec", "cpu_seconds", ...}`.
/// `events` is what the caller knows was generated; else what the sources read.
fn execute_and_report(
    job: Job,
    (what, name): (&str, &str),
    workers: usize,
    events: Option<u64>,
) -> anyhow::Result<()> {
    let progress = oxflow::progress::Progress::start(&job, events);
    let cpu_before = oxflow::process_cpu_seconds();
    let report = job.execute_blocking();
    drop(progress);
    let report = report?;
    let cpu = oxflow::process_cpu_seconds() - cpu_before;
    let seconds = report.elapsed.as_secs_f64();
    let events = events.unwrap_or_else(|| {
        report
            .metrics
            .iter()
            .filter(|(name, _)| {
                oxflow::runtime::metrics::StageFigure::parse(name)
                    .is_some_and(|f| f.stage.starts_with("source-") && f.figure == "records_in")
            })
            .map(|(_, v)| v)
            .sum()
    });
    tracing::info!(metrics = ?report.metrics, "job finished");
    emit(serde_json::json!({
        what: name,
        "events": events,
        "workers": workers,
        "seconds": seconds,
        "events_per_sec": events as f64 / seconds,
        "cpu_seconds": cpu,
        "output_rows": report.output_rows,
        "checkpoints": report.checkpoints.completed,
        "last_checkpoint_ms": report.checkpoints.last_duration.map(|d| d.as_millis() as u64),
        "state_bytes": report.checkpoints.state_bytes,
        "restored_from": report.restored_from,
        "already_finished": report.already_finished,
    }))
}

#[derive(clap::Args)]
struct ServerOptions {
    /// The server's URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    server: String,
    /// A file holding the server's bearer token (default: $OXFLOW_TOKEN, else none; a
    /// server's own token is in its DATA_DIR/token).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn read_token(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    path.map(|p| {
        let token = std::fs::read_to_string(p)
            .with_context(|| format!("reading the token file {}", p.display()))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            bail!("the token file {} is empty", p.display());
        }
        Ok(token)
    })
    .transpose()
}

/// The token of `--token-file`, else of `$OXFLOW_TOKEN`, else none.
fn token_of(options: &ServerOptions) -> anyhow::Result<Option<String>> {
    Ok(match read_token(options.token_file.as_deref())? {
        Some(t) => Some(t),
        None => std::env::var("OXFLOW_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()),
    })
}

fn client(options: &ServerOptions) -> anyhow::Result<oxflow::client::Client> {
    Ok(oxflow::client::Client::new(
        &options.server,
        token_of(options)?,
    )?)
}

/// Runs `request`, showing on stderr how long it has been in flight (savepoints and stops
/// wait for a checkpoint to complete).
#[allow(clippy::disallowed_methods)] // wall time shown to the user, not job logic
async fn with_progress<T>(
    what: &str,
    request: impl std::future::Future<Output = oxflow::Result<T>>,
) -> anyhow::Result<T> {
    use std::io::Write;
    let started = std::time::Instant::now();
    tokio::pin!(request);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tokio::select! {
            result = &mut request => {
                eprintln!("\r{what}: done in {:.1} s   ", started.elapsed().as_secs_f64());
                return Ok(result?);
            }
            _ = tick.tick() => {
                eprint!("\r{what}: waiting for the checkpoint... {:.1} s", started.elapsed().as_secs_f64());
                let _ = std::io::stderr().flush();
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let mut config = oxflow::server::ServerConfig::new(&args.data_dir);
    config.listen = args.listen;
    config.token = read_token(args.token_file.as_deref())?;
    config.no_auth = args.no_auth;
    config.allowed_paths = args.allow_paths.clone();
    config.limits = args.limits();
    config.worker_timeout = std::time::Duration::from_millis(args.worker_timeout_ms.max(100));
    if let Some(uri) = &args.checkpoint_store {
        config.checkpoint_store = Some(oxflow::connectors::object::checkpoint_store(uri)?);
    }
    runtime()?.block_on(async {
        let server = oxflow::server::Server::new(oxflow::spec::Registry::new())
            .start(config)
            .await?;
        eprintln!("oxflow server listening on http://{}", server.addr);
        match (&server.token, &args.token_file) {
            (None, _) => eprintln!("no authentication (--no-auth)"),
            (Some(_), Some(file)) => eprintln!("clients need the token of {}", file.display()),
            (Some(_), None) => eprintln!(
                "clients need the token in {} (--token-file, or OXFLOW_TOKEN)",
                args.data_dir.join(oxflow::server::TOKEN_FILE).display()
            ),
        }
        server.wait().await?;
        Ok(())
    })
}

fn work(args: &WorkerArgs) -> anyhow::Result<()> {
    let token = token_of(&args.server)?;
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let config = oxflow::cluster::WorkerConfig {
        server: args.server.server.clone(),
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        advertise: args.advertise,
        slots: args.slots,
        token,
        checkpoint_store: args
            .checkpoint_store
            .as_deref()
            .map(oxflow::connectors::object::checkpoint_store)
            .transpose()?,
    };
    runtime()?.block_on(oxflow::cluster::run_worker(
        config,
        oxflow::spec::Registry::new(),
    ))?;
    Ok(())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    emit(serde_json::to_string_pretty(value)?)
}

/// Writes `text` and a newline to stdout. A reader that has gone (`oxflow validate | head`)
/// ends the output quietly instead of panicking as `println!` would.
fn emit(text: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written.context("writing to stdout")?),
    }
}

#[derive(clap::Args)]
struct TablesArgs {
    /// Directory to write (must not hold output yet).
    #[arg(long)]
    out: PathBuf,
    /// Events to generate (all kinds).
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Parallel writers (one part file each per table).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The generator's events per second of event time.
    #[arg(long, default_value_t = 100_000)]
    event_rate: u64,
    /// Seed of the generator's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn write_tables(args: &TablesArgs) -> anyhow::Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if nexmark::is_tables_dir(&args.out) {
        bail!(
            "{} already holds tables; choose a new directory",
            args.out.display()
        );
    }
    let config = NexmarkConfig {
        events: Some(args.events),
        event_rate: args.event_rate,
        seed: args.seed,
        ..Default::default()
    };
    let written = nexmark::write_tables(
        Pipeline::new().with_parallelism(args.workers),
        config,
        &args.out,
    )?;
    let counts: serde_json::Map<String, serde_json::Value> = written
        .into_iter()
        .map(|(table, rows)| (format!("{table:?}").to_lowercase(), rows.into()))
        .collect();
    emit(serde_json::Value::Object(counts))
}

#[derive(clap::Args)]
struct NexmarkArgs {
    /// The query: q0, q1, q2, q3, q4, q5, q7, q8 or q11; `all` runs each in turn (one JSON
    /// line each).
    #[arg(long, short)]
    query: String,
    /// Events to generate (persons, auctions and bids together; default 10000000). With a
    /// Kafka source: end after this many records (default: read until stopped).
    #[arg(long)]
    events: Option<u64>,
    /// Where bids come from: `generator`; `kafka://HOST:PORT/TOPIC[?options]` (JSON
    /// objects with q0's columns; options such as `group=G`, `start=earliest|latest|MILLIS`,
    /// `bad-records=fail|skip|dead-letter:TOPIC`, `connect-timeout-ms=N`, and librdkafka
    /// properties such as `security.protocol=SASL_SSL`); `nats://HOST:PORT/STREAM[?options]`
    /// (JSON messages with q0's columns; options `subject=FILTERS`, `bounded=true`,
    /// `start=earliest|latest`, `bad-records=fail|skip`); `rabbitmq://HOST:PORT/QUEUE[,QUEUE]
    /// [?options]` (streams of JSON messages with q0's columns, read by offset, or with
    /// `mode=queue` classic and quorum queues acknowledged at checkpoints; options
    /// `bounded=true`, `start=first|last|next`, `prefetch=N`, `vhost=V`,
    /// `bad-records=fail|skip`); `s3://BUCKET/PREFIX[?endpoint=URL&region=R]` (the objects
    /// directly under the prefix, hidden ones left out, as for files); or `file:PATH`, JSON
    /// lines or Parquet files (by extension) with q0's columns in a file, or in the `part-*`
    /// files of a directory (a file sink's output); a directory written by `nexmark-tables`
    /// gives every table (for q3, q4 and q8 too).
    #[arg(long, default_value = "generator")]
    source: String,
    /// Watermark delay (bounded out-of-orderness) of bids, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    watermark_delay_ms: u64,
    /// Mark a source split or Kafka partition idle after this long without records (it then
    /// stops holding the watermark back).
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Parallel subtasks per stage (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Events per generated batch.
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// Throttle: events (or Kafka records) per second of wall time (default: as fast as
    /// possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the generator's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The generator's events per second of event time.
    #[arg(long, default_value_t = 100_000)]
    event_rate: u64,
    /// Where results go: blackhole, stdout, file:DIR (JSON-lines files part-N.jsonl in DIR;
    /// names starting with `.` or `_` are not yet output; options `format=parquet`,
    /// `max-file-mb=N`, `rollover-ms=N`), kafka://HOST:PORT/TOPIC (JSON records; exactly
    /// once with --checkpoint-dir, else at least once; options `key=COLS`,
    /// `guarantee=none|at-least-once|exactly-once`, `transactional-id=PREFIX`), or
    /// nats://HOST:PORT/STREAM?subject=S (JSON messages; exactly once within the stream's
    /// duplicate window with --checkpoint-dir, else at least once), or
    /// rabbitmq://HOST:PORT/QUEUE[?exchange=X&routing-key=K] (JSON messages with publisher
    /// confirms: at least once), or
    /// s3://BUCKET/PREFIX[?endpoint=URL&region=R] (the file sink's files as multipart uploads
    /// completed at checkpoints; the file options too; credentials from AWS_* variables).
    #[arg(long, default_value = "blackhole")]
    sink: String,
    /// Take checkpoints into this directory (state in RocksDB, source positions, pending
    /// output); with the file sink, output is then committed exactly once.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Milliseconds from one checkpoint's start to the next one's.
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// Least milliseconds from the end of one checkpoint to the start of the next.
    #[arg(long, default_value_t = 0)]
    checkpoint_min_pause_ms: u64,
    /// How many completed checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    checkpoints_retained: usize,
    /// Also keep completed checkpoints here, uploaded (incrementally, by file) before their
    /// output is committed, so that the job survives the loss of this machine:
    /// s3://BUCKET/PREFIX[?endpoint=URL&region=R] or file:///DIR. `--restore latest` then
    /// takes the newest of the store and --checkpoint-dir.
    #[arg(long)]
    checkpoint_store: Option<String>,
    /// Start from a checkpoint: `latest` (the newest valid one in --checkpoint-dir, or the
    /// beginning if there is none yet) or the path of a checkpoint or savepoint directory.
    #[arg(long)]
    restore: Option<String>,
    /// Keep the state of windows, sessions, running aggregates, joins and top-N in RocksDB with
    /// at most this many MiB in memory per operator subtask, so state may be larger than memory
    /// (default: all state in memory).
    #[arg(long)]
    state_memory_budget_mb: Option<u64>,
}

/// The sink a `--sink` argument names.
fn sink(spec: &str, checkpoint_dir: Option<&PathBuf>) -> anyhow::Result<Arc<dyn Sink>> {
    let spec = match spec {
        "blackhole" => SinkSpec::Blackhole,
        "stdout" => SinkSpec::Stdout,
        s if s.starts_with("file:") && s.len() > 5 => file_sink_spec(&s[5..])?,
        s if s.starts_with("kafka://") => SinkSpec::Kafka { uri: s.to_string() },
        s if s.starts_with("nats://") => SinkSpec::Nats { uri: s.to_string() },
        s if s.starts_with("rabbitmq://") => SinkSpec::RabbitMq { uri: s.to_string() },
        s if s.starts_with("s3://") => s3_sink_spec(s)?,
        other => bail!(
            "unknown sink `{other}`: use blackhole, stdout, file:DIR[?format=parquet], s3://BUCKET/PREFIX, kafka://HOST:PORT/TOPIC, nats://HOST:PORT/STREAM or rabbitmq://HOST:PORT/QUEUE"
        ),
    };
    oxflow::spec::build_sink(&spec, checkpoint_dir.map(|d| d.as_path()))
        .context("setting up the sink")
}

/// The file sink's options of a `--sink` query: format, max-file-mb, rollover-ms; other keys
/// are handed to `other` (an error for a local directory, the location's own for S3).
type FileOptions = (Option<String>, Option<u64>, Option<u64>);

fn file_sink_options(
    query: &str,
    mut other: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<FileOptions> {
    let (mut format, mut max_file_mb, mut rollover_ms) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("sink option `{pair}` is not key=value"))?;
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("sink option {key}={value} is not a number"))
        };
        match key {
            "format" => format = Some(value.to_string()),
            "max-file-mb" => max_file_mb = Some(number()?),
            "rollover-ms" => rollover_ms = Some(number()?),
            _ => other(pair)?,
        }
    }
    Ok((format, max_file_mb, rollover_ms))
}

/// `file:DIR[?format=json|parquet&max-file-mb=N&rollover-ms=N]`, without the `file:`.
fn file_sink_spec(arg: &str) -> anyhow::Result<SinkSpec> {
    let (dir, query) = arg.split_once('?').unwrap_or((arg, ""));
    let (format, max_file_mb, rollover_ms) = file_sink_options(query, |pair| {
        bail!("unknown file sink option `{pair}`; options are format, max-file-mb, rollover-ms")
    })?;
    Ok(SinkSpec::File {
        path: PathBuf::from(dir),
        format,
        max_file_mb,
        rollover_ms,
    })
}

/// `s3://BUCKET/PREFIX[?endpoint=URL&region=R&format=..&max-file-mb=N&rollover-ms=N]`: the
/// file sink's options are taken out, the location's stay in the URI.
fn s3_sink_spec(arg: &str) -> anyhow::Result<SinkSpec> {
    let (location, query) = arg.split_once('?').unwrap_or((arg, ""));
    let mut kept = Vec::new();
    let (format, max_file_mb, rollover_ms) = file_sink_options(query, |pair| {
        kept.push(pair.to_string());
        Ok(())
    })?;
    let uri = if kept.is_empty() {
        location.to_string()
    } else {
        format!("{location}?{}", kept.join("&"))
    };
    Ok(SinkSpec::S3 {
        uri,
        format,
        max_file_mb,
        rollover_ms,
    })
}

/// `--query all`: every query in turn, one JSON line each, on the same input.
fn run_all(args: &NexmarkArgs) -> anyhow::Result<()> {
    if args.checkpoint_dir.is_some() || args.restore.is_some() {
        bail!("--query all runs several jobs: it takes no --checkpoint-dir or --restore");
    }
    if !matches!(args.sink.as_str(), "blackhole" | "stdout") {
        bail!("--query all writes every query's results to one sink: use blackhole or stdout");
    }
    let all_tables = args.source == "generator"
        || args
            .source
            .strip_prefix("file:")
            .is_some_and(|p| nexmark::is_tables_dir(Path::new(p)));
    let queries: Vec<&str> = if all_tables {
        QUERIES.to_vec()
    } else {
        eprintln!(
            "skipping {}: they read people and auctions, which this input does not have",
            nexmark::JOIN_QUERIES.join(", ")
        );
        QUERIES
            .into_iter()
            .filter(|q| !nexmark::JOIN_QUERIES.contains(q))
            .collect()
    };
    queries.iter().try_for_each(|q| run_nexmark(args, q))
}

fn run_nexmark(args: &NexmarkArgs, query: &str) -> anyhow::Result<()> {
    if !QUERIES.contains(&query) {
        bail!(
            "unknown query `{query}`: this build runs {} (or all)",
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
    let pipeline = Pipeline::new().with_parallelism(workers);
    let mut watermarks = WatermarkStrategy::bounded(
        "date_time",
        std::time::Duration::from_millis(args.watermark_delay_ms),
    );
    if let Some(ms) = args.idle_timeout_ms {
        watermarks = watermarks.with_idle_timeout(std::time::Duration::from_millis(ms));
    }
    let input = if args.source == "generator" {
        let config = NexmarkConfig {
            events: Some(args.events.unwrap_or(10_000_000)),
            event_rate: args.event_rate,
            seed: args.seed,
            batch_size: args.batch_size,
            rate_limit: args.rate,
            ..Default::default()
        };
        nexmark::Input::generator(pipeline, config, watermarks)
    } else if args.source.starts_with("kafka://") {
        let uri = KafkaUri::parse(&args.source)?;
        let mut config =
            KafkaSourceConfig::from_uri(&uri, RecordFormat::Json(nexmark::bid_json_schema()))?;
        config.max_records = args.events;
        config.max_rate = args.rate;
        nexmark::Input::bids(nexmark::kafka_bids(pipeline, config, watermarks)?)
    } else if args.source.starts_with("nats://") {
        let uri = NatsUri::parse(&args.source)?;
        let mut config = NatsSourceConfig::from_uri(&uri, nexmark::bid_json_schema())?;
        config.max_rate = args.rate;
        nexmark::Input::bids(
            pipeline
                .source(NatsSource::try_new(config)?)
                .with_watermarks(watermarks)?,
        )
    } else if args.source.starts_with("rabbitmq://") {
        use oxflow::connectors::rabbitmq::{RabbitMqSource, RabbitMqSourceConfig, RabbitMqUri};
        let uri = RabbitMqUri::parse(&args.source)?;
        let mut config = RabbitMqSourceConfig::from_uri(&uri, nexmark::bid_json_schema())?;
        config.max_rate = args.rate;
        nexmark::Input::bids(
            pipeline
                .source(RabbitMqSource::try_new(config)?)
                .with_watermarks(watermarks)?,
        )
    } else if args.source.starts_with("s3://") {
        let location =
            oxflow::connectors::object::S3Location::parse_plain(&args.source, "S3 source")?;
        let files = oxflow::connectors::input::FileStore::s3_files(&location)?;
        let store = oxflow::connectors::input::FileStore::S3(location);
        nexmark::Input::bids(nexmark::file_bids_in(pipeline, store, files, watermarks)?)
    } else if let Some(path) = args.source.strip_prefix("file:") {
        if nexmark::is_tables_dir(Path::new(path)) {
            nexmark::Input::files(pipeline, PathBuf::from(path), watermarks)
        } else {
            nexmark::Input::bids(nexmark::file_bids(
                pipeline,
                nexmark::part_files(Path::new(path))?,
                watermarks,
            )?)
        }
    } else {
        bail!(
            "unknown source `{}`: use generator, kafka://HOST:PORT/TOPIC, nats://HOST:PORT/STREAM, rabbitmq://HOST:PORT/QUEUE, s3://BUCKET/PREFIX or file:PATH",
            args.source
        );
    };
    let mut job =
        nexmark::apply(query, input)?.sink(sink(&args.sink, args.checkpoint_dir.as_ref())?)?;
    if let Some(dir) = &args.checkpoint_dir {
        if args.checkpoint_interval_ms == 0 {
            bail!("--checkpoint-interval-ms must be at least 1");
        }
        let mut checkpoints = CheckpointConfig::new(
            dir,
            std::time::Duration::from_millis(args.checkpoint_interval_ms),
        );
        checkpoints.retained = args.checkpoints_retained.max(1);
        checkpoints.min_pause = std::time::Duration::from_millis(args.checkpoint_min_pause_ms);
        if let Some(uri) = &args.checkpoint_store {
            checkpoints.store = Some(oxflow::connectors::object::checkpoint_store(uri)?);
        }
        job = job.with_checkpoints(checkpoints);
    } else if args.checkpoint_store.is_some() {
        bail!("--checkpoint-store needs --checkpoint-dir (checkpoints are cut there first)");
    }
    match args.state_memory_budget_mb {
        None => {}
        Some(0) => bail!("--state-memory-budget-mb must be at least 1"),
        Some(mb) => {
            job = job.with_state_storage(
                StateSpec {
                    memory_budget_mb: mb,
                }
                .storage(),
            );
        }
    }
    let job = restore(job, args.restore.as_deref(), args.checkpoint_dir.is_some())?;
    let events = match args.events {
        Some(n) if args.source == "generator" => Some(n),
        None if args.source == "generator" => Some(10_000_000),
        // From Kafka or files: the records the sources delivered.
        _ => None,
    };
    execute_and_report(job, ("query", query), workers, events)
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
        Command::Nexmark(args) if args.query == "all" => run_all(&args),
        Command::Nexmark(args) => run_nexmark(&args, &args.query),
        Command::NexmarkTables(args) => write_tables(&args),
        Command::Run(args) => run_spec(&args),
        Command::Sql(args) => run_sql(&args),
        Command::Validate { spec } => validate(&spec),
        Command::Server(args) => serve(&args),
        Command::Worker(args) => work(&args),
        Command::Openapi => emit(oxflow::server::openapi_text().trim_end()),
        Command::Submit {
            spec,
            restore,
            server,
        } => {
            let parsed = read_spec(&spec)?;
            let client = client(&server)?;
            let id = runtime()?.block_on(client.submit(&parsed, restore.as_deref()))?;
            emit(id)
        }
        Command::List { server } => print_json(&runtime()?.block_on(client(&server)?.list())?),
        Command::Status { id, server } => {
            print_json(&runtime()?.block_on(client(&server)?.status(&id))?)
        }
        Command::Savepoint { id, server } => {
            let client = client(&server)?;
            let path = runtime()?.block_on(with_progress(
                &format!("savepoint of {id}"),
                client.savepoint(&id),
            ))?;
            emit(path)
        }
        Command::Stop { id, server } => {
            let client = client(&server)?;
            let path = runtime()?.block_on(with_progress(
                &format!("stopping {id} with a savepoint"),
                client.stop(&id),
            ))?;
            emit(path)
        }
        Command::Cancel { id, server } => {
            print_json(&runtime()?.block_on(client(&server)?.cancel(&id))?)
        }
    }
}
