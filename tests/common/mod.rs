//! Helpers shared by the integration tests: running a pipeline into a collector, and a naive
//! reference implementation of event-time windows (one row at a time, obvious code).

#![allow(dead_code)]

use oxflow::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use oxflow::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use oxflow::operators::map::batch_to_rows;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `oxflow nexmark` arguments for 300 000 events over 30 s of event time, one writer: its
/// bids, written out, are in event-time order (for round trips through files or Kafka).
pub const ORDERED_GENERATOR: [&str; 7] = [
    "nexmark",
    "--events",
    "300000",
    "--event-rate",
    "10000",
    "--workers",
    "1",
];

/// A name no other test run uses (for topics, streams, prefixes on shared servers).
// Uniqueness from the wall clock; no operator logic is timed with it.
#[allow(clippy::disallowed_methods)]
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// The committed lines of `query` run on [`ORDERED_GENERATOR`] into files, sorted: what the
/// same query must give from any source the generator's bids were written to.
pub fn generator_lines(query: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    summary(&oxflow(
        &[
            &ORDERED_GENERATOR[..],
            &[
                "--query",
                query,
                "--sink",
                &format!("file:{}", dir.path().display()),
            ],
        ]
        .concat(),
    ));
    committed_lines(dir.path())
}

/// Runs the `oxflow` binary of this build.
pub fn oxflow(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Every line of the committed `part-*` files of a file sink's directory, sorted.
pub fn committed_lines(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("part-") {
            out.extend(
                std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    out.sort();
    out
}

/// The JSON summary a successful `oxflow nexmark` prints as its last line.
pub fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Batches as JSON lines (as the file sink writes them), sorted.
pub fn json_lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut bytes = Vec::new();
    for b in batches {
        oxflow::connectors::json::encode_json_lines(b, &mut bytes).unwrap();
    }
    let mut lines: Vec<String> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// Runs `stream` to its end into an in-memory sink and returns what reached it.
pub fn collect(stream: oxflow::Stream) -> Vec<RecordBatch> {
    let out = oxflow::connectors::sinks::CollectSink::new();
    stream
        .sink(out.clone())
        .unwrap()
        .execute_blocking()
        .unwrap();
    out.batches()
}

/// Batch sizes the issue asks every result to be independent of.
pub const BATCH_SIZES: [usize; 7] = [1, 2, 7, 49, 50, 51, 100];

/// Decodes every output batch into rows and sorts them (output order is not part of the contract).
pub fn sorted_rows<T: DeserializeOwned + PartialOrd>(batches: &[RecordBatch]) -> Vec<T> {
    let mut rows: Vec<T> = batches
        .iter()
        .flat_map(|b| batch_to_rows::<T>(b).unwrap())
        .collect();
    rows.sort_by(|a, b| a.partial_cmp(b).expect("no NaN in test data"));
    rows
}

/// A window kind of the reference implementation.
#[derive(Debug, Clone, Copy)]
pub enum RefWindow {
    Tumbling(i64),
    Hopping(i64, i64),
    Session(i64),
    /// Tumbling windows of [`per_key_size`], which rows carry as an inherited window.
    PerKey,
}

/// The window size of key `key` for [`RefWindow::PerKey`]: windows of keys overlap unaligned.
pub fn per_key_size(key: i64) -> i64 {
    60 + 20 * key.rem_euclid(4)
}

/// Open sessions of the reference: key -> (start, last, rows).
type Sessions = HashMap<i64, Vec<(i64, i64, Vec<usize>)>>;

/// What the reference fires: a window of one key with the indices of its rows.
#[derive(Debug, Clone)]
pub struct Fired {
    pub start: i64,
    pub end: i64,
    pub key: i64,
    pub rows: Vec<usize>,
}

/// Naive event-time windows: rows in order, the watermark before row i is
/// `max(ts of rows before i) - delay - 1`, a window fires when the watermark reaches
/// `end - 1 + lateness`, a row whose windows have all fired is late.
pub fn reference_windows(
    keys: &[i64],
    times: &[i64],
    window: RefWindow,
    delay: i64,
    lateness: i64,
) -> (Vec<Fired>, usize) {
    let mut fired = Vec::new();
    let mut late = 0;
    let mut open: BTreeMap<(i64, i64, i64), Vec<usize>> = BTreeMap::new(); // (end, start, key)
    let mut sessions: Sessions = HashMap::new();
    let mut max_ts: Option<i64> = None;
    let fire = |open: &mut BTreeMap<(i64, i64, i64), Vec<usize>>,
                sessions: &mut Sessions,
                wm: Option<i64>,
                fired: &mut Vec<Fired>| {
        let due = |end: i64| wm.is_none_or(|w| end - 1 + lateness <= w);
        let keys: Vec<_> = open
            .keys()
            .cloned()
            .filter(|(end, _, _)| due(*end))
            .collect();
        for k in keys {
            let rows = open.remove(&k).unwrap();
            fired.push(Fired {
                start: k.1,
                end: k.0,
                key: k.2,
                rows,
            });
        }
        if let RefWindow::Session(gap) = window {
            for (key, list) in sessions.iter_mut() {
                let (done, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|s| due(s.1 + gap));
                *list = keep;
                for (start, last, rows) in done {
                    fired.push(Fired {
                        start,
                        end: last + gap,
                        key: *key,
                        rows,
                    });
                }
            }
        }
    };
    for i in 0..times.len() {
        let (t, key) = (times[i], keys[i]);
        let wm = max_ts.map(|m| m - delay - 1);
        if wm.is_some() {
            fire(&mut open, &mut sessions, wm, &mut fired);
        }
        let is_late = |end: i64| wm.is_some_and(|w| end - 1 + lateness <= w);
        match window {
            RefWindow::Tumbling(_) | RefWindow::Hopping(..) | RefWindow::PerKey => {
                let (size, slide) = match window {
                    RefWindow::Hopping(size, slide) => (size, slide),
                    RefWindow::Tumbling(size) => (size, size),
                    _ => (per_key_size(key), per_key_size(key)),
                };
                let mut windows = Vec::new();
                let mut start = t - t.rem_euclid(slide);
                while start + size > t {
                    windows.push(start);
                    start -= slide;
                }
                if windows.iter().all(|&s| is_late(s + size)) {
                    late += 1;
                } else {
                    for s in windows {
                        if !is_late(s + size) {
                            open.entry((s + size, s, key)).or_default().push(i);
                        }
                    }
                }
            }
            RefWindow::Session(gap) => {
                let list = sessions.entry(key).or_default();
                let overlapping: Vec<usize> = (0..list.len())
                    .filter(|&j| list[j].0 < t + gap && t < list[j].1 + gap)
                    .collect();
                if overlapping.is_empty() && is_late(t + gap) {
                    late += 1;
                } else {
                    let mut merged = (t, t, vec![i]);
                    for &j in overlapping.iter().rev() {
                        let s = list.remove(j);
                        merged.0 = merged.0.min(s.0);
                        merged.1 = merged.1.max(s.1);
                        merged.2.extend(s.2);
                    }
                    list.push(merged);
                }
            }
        }
        max_ts = Some(max_ts.map_or(t, |m| m.max(t)));
    }
    fire(&mut open, &mut sessions, None, &mut fired);
    (fired, late)
}

/// The schema of the bids the randomized tests generate (the Nexmark bid table).
pub fn bid_schema() -> SchemaRef {
    oxflow::connectors::nexmark::NexmarkTable::Bid.schema()
}

/// A bid batch from columns (channel, url and extra are filler).
pub fn bid_batch(
    auction: Vec<i64>,
    bidder: Vec<i64>,
    price: Vec<i64>,
    time: Vec<i64>,
) -> RecordBatch {
    let n = auction.len();
    let filler = || Arc::new(StringArray::from(vec!["x"; n]));
    RecordBatch::try_new(
        bid_schema(),
        vec![
            Arc::new(Int64Array::from(auction)),
            Arc::new(Int64Array::from(bidder)),
            Arc::new(Int64Array::from(price)),
            filler(),
            filler(),
            Arc::new(TimestampMillisecondArray::from(time)),
            filler(),
        ],
    )
    .unwrap()
}

/// A simple `(key, ts, value)` schema.
pub fn kv_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("value", DataType::Int64, false),
    ]))
}

/// A loopback port nobody listens on right now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed (and waited for) when dropped, so that a test that fails
/// half way leaves no server behind to hold its port and data directory.
pub struct Spawned(pub std::process::Child);

impl std::ops::Deref for Spawned {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_server(port: u16, data: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Spawned {
    Spawned(
        std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary runs"),
    )
}

/// A path inside the repository, found when the test runs (cargo test sets
/// `CARGO_MANIFEST_DIR` for the test process) rather than where the tree was when the test was
/// compiled: a build shared between clones (one target directory) must read this clone's files.
pub fn repo_path(relative: &str) -> std::path::PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join(relative)
}

/// A server of one test's own, started and stopped by a project script (scripts/nats.sh,
/// scripts/rabbitmq.sh), on a free loopback port with its data in a temporary directory: for
/// tests that take a server down, which the shared one must not do under other tests.
pub struct OwnServer {
    script: &'static str,
    /// The scripts' variable prefix: `NATS` for `NATS_PORT` and `NATS_RUN_DIR`.
    prefix: &'static str,
    pub port: String,
    dir: tempfile::TempDir,
}

impl OwnServer {
    pub fn new(script: &'static str, prefix: &'static str) -> Self {
        let mut own = OwnServer {
            script,
            prefix,
            port: String::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        own.port = own.script(&["free-port"]).trim().to_string();
        own
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `start`, `stop` or `restart` of the script for this server.
    pub fn run(&self, command: &str) {
        self.script(&[command]);
    }

    fn script(&self, args: &[&str]) -> String {
        let mut c = std::process::Command::new(repo_path(self.script));
        c.args(args);
        if !self.port.is_empty() {
            c.env(format!("{}_PORT", self.prefix), &self.port)
                .env(format!("{}_RUN_DIR", self.prefix), self.dir.path());
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.script,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.run("stop");
    }
}
