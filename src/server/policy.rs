//! What a submitted job may do on this server, checked before it is stored or run: the paths
//! it may read and write, the Kafka properties it may set, the limits it must stay within;
//! and how its secrets are kept out of answers, logs and error messages.
//!
//! A server runs what anyone holding its token sends; so a spec is data from outside, and
//! nothing in it reaches the file system, librdkafka or the scheduler unchecked.

use crate::spec::{JobSpec, JoinOn, SinkSpec, SourceSpec, Step, StreamSpec, WindowKind};
use oxflow_connectors::kafka::{is_secret_key, redact_uri, KafkaUri};
use oxflow_connectors::nats::{redact_nats_uri, NatsUri};
use oxflow_connectors::rabbitmq::{redact_rabbitmq_uri, RabbitMqUri};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The bounds a server holds every job to; each is a flag of `oxflow server`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Jobs running (or restarting) at once.
    pub max_running_jobs: usize,
    /// Subtasks of one job, over all its stages.
    pub max_subtasks_per_job: usize,
    /// Windows a record of a hopping window belongs to (size / slide).
    pub max_window_panes: u64,
    /// The shortest checkpoint interval a job may ask for.
    pub min_checkpoint_interval: Duration,
    /// The most restarts a job's restart strategy may allow.
    pub max_restart_attempts: u32,
    /// The shortest first backoff a restart strategy may ask for.
    pub min_restart_backoff: Duration,
    /// The longest backoff a restart strategy may ask for.
    pub max_restart_backoff: Duration,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// The longest line a file source reads, in bytes.
    pub max_line_bytes: usize,
    /// How long a request may take (a savepoint waits for its checkpoint within it).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_running_jobs: 16,
            max_subtasks_per_job: 256,
            max_window_panes: 10_000,
            min_checkpoint_interval: Duration::from_millis(100),
            max_restart_attempts: 10,
            min_restart_backoff: Duration::from_millis(100),
            max_restart_backoff: Duration::from_secs(600),
            max_body_bytes: 1 << 20,
            max_line_bytes: oxflow_connectors::file::DEFAULT_MAX_LINE_BYTES,
            request_timeout: Duration::from_secs(150),
        }
    }
}

/// Why a spec was refused: 403 for what it may not touch, 400 for what it may not ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A path outside the allowed roots, or a property that is never allowed.
    Forbidden(String),
    /// A setting beyond a limit, or malformed.
    Invalid(String),
}

/// librdkafka properties a submitted spec may set: connection, security, batching and
/// timeouts. Not on the list, among others: `plugin.library.paths` (loads a shared library),
/// `sasl.kerberos.kinit.cmd` (runs a command), `ssl.engine.location`, the OAuth token
/// endpoint (a request to any URL), and anything reading a file but the `ssl.*.location`s.
const KAFKA_PROPERTIES: &[&str] = &[
    "group.id",
    "client.id",
    "client.rack",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.sigalgs.list",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "request.timeout.ms",
    "message.timeout.ms",
    "transaction.timeout.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "retries",
    "message.max.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "linger.ms",
    "batch.num.messages",
    "batch.size",
    "compression.type",
    "compression.codec",
    "compression.level",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "isolation.level",
    "auto.offset.reset",
    "partitioner",
    "broker.address.family",
    "api.version.request",
    "log.connection.close",
];

/// Properties naming a file librdkafka reads: allowed only under the allowed roots.
const KAFKA_PATH_PROPERTIES: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
];

/// What a server allows submitted jobs.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Directories a spec's paths must lie under (the data directory, then `--allow-path`s),
    /// with symbolic links resolved.
    roots: Vec<PathBuf>,
    pub limits: Limits,
}

impl Policy {
    /// A policy allowing paths under `data_dir` and `allowed`, within `limits`.
    pub fn new(data_dir: &Path, allowed: &[PathBuf], limits: Limits) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let mut roots = vec![std::fs::canonicalize(data_dir)?];
        for dir in allowed {
            roots.push(std::fs::canonicalize(dir).map_err(|e| {
                std::io::Error::new(e.kind(), format!("--allow-path {}: {e}", dir.display()))
            })?);
        }
        Ok(Policy { roots, limits })
    }

    /// Checks a spec against the policy, turning its paths into the absolute ones the job
    /// will use (a relative path is relative to the data directory).
    pub fn check_spec(&self, spec: &mut JobSpec) -> Result<(), Refusal> {
        spec.stream
            .try_for_each_stream(&mut |stream| self.check_stream(stream))?;
        match &mut spec.sink {
            SinkSpec::File { path, .. } => *path = self.check_path("the sink's directory", path)?,
            SinkSpec::Kafka { uri } => self.check_kafka(uri, "the sink")?,
            SinkSpec::Nats { uri } => check_nats(uri)?,
            SinkSpec::RabbitMq { uri } => check_rabbitmq(uri)?,
            // The server has no object-store policy (which buckets, which endpoints, whose
            // credentials): a submitted job may not write to S3.
            SinkSpec::S3 { .. } => {
                return Err(Refusal::Forbidden(
                    "an S3 sink is not allowed in a submitted job (the server has no object-store policy); run it embedded with `oxflow run`".into(),
                ))
            }
            SinkSpec::Blackhole | SinkSpec::Stdout => {}
        }
        if let Some(c) = &spec.checkpoints {
            let min = self.limits.min_checkpoint_interval.as_millis() as u64;
            if c.interval_ms < min {
                return Err(Refusal::Invalid(format!(
                    "checkpoints.interval_ms {} is below this server's minimum of {min} ms (--min-checkpoint-interval-ms)",
                    c.interval_ms
                )));
            }
        }
        if let Some(r) = &spec.restart {
            let l = &self.limits;
            if r.max_attempts > l.max_restart_attempts {
                return Err(Refusal::Invalid(format!(
                    "restart.max_attempts {} is above this server's maximum of {} (--max-restart-attempts)",
                    r.max_attempts, l.max_restart_attempts
                )));
            }
            let (min, max) = (
                l.min_restart_backoff.as_millis() as u64,
                l.max_restart_backoff.as_millis() as u64,
            );
            for (what, ms) in [
                ("initial_backoff_ms", r.initial_backoff_ms),
                ("max_backoff_ms", r.max_backoff_ms),
            ] {
                if !(min..=max).contains(&ms) {
                    return Err(Refusal::Invalid(format!(
                        "restart.{what} {ms} must be between {min} and {max} ms on this server"
                    )));
                }
            }
        }
        let max_parallelism = spec.max_parallelism.unwrap_or(128);
        if spec.parallelism.unwrap_or(1) > max_parallelism || max_parallelism > 32_768 {
            return Err(Refusal::Invalid(format!(
                "parallelism {:?} must be at most max_parallelism {max_parallelism}, itself at most 32768",
                spec.parallelism
            )));
        }
        Ok(())
    }

    /// The number of subtasks of a built job, against the limit.
    pub fn check_subtasks(&self, subtasks: usize) -> Result<(), Refusal> {
        let max = self.limits.max_subtasks_per_job;
        if subtasks > max {
            return Err(Refusal::Invalid(format!(
                "the job has {subtasks} subtasks, more than this server's {max} (--max-subtasks-per-job)"
            )));
        }
        Ok(())
    }

    /// Checks the source and windows of one stream (joined and unioned ones are visited on
    /// their own, by [`StreamSpec::try_for_each_stream`]).
    fn check_stream(&self, stream: &mut StreamSpec) -> Result<(), Refusal> {
        match &mut stream.source {
            SourceSpec::File { path, .. } => {
                *path = self.check_path("the source's file", path)?;
            }
            SourceSpec::Kafka { uri, .. } => self.check_kafka(uri, "the source")?,
            SourceSpec::Nats { uri, .. } => check_nats(uri)?,
            SourceSpec::RabbitMq { uri, .. } => check_rabbitmq(uri)?,
            SourceSpec::Nexmark { .. } => {}
            // As for S3 sinks: the server has no object-store policy.
            SourceSpec::S3 { .. } => {
                return Err(Refusal::Forbidden(
                    "an S3 source is not allowed in a submitted job (the server has no object-store policy); run it embedded with `oxflow run`".into(),
                ))
            }
        }
        for step in &stream.steps {
            match step {
                Step::Window { window, .. }
                | Step::Join {
                    on: JoinOn::Window(window),
                    ..
                } => self.check_window(window)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn check_window(&self, window: &WindowKind) -> Result<(), Refusal> {
        if let WindowKind::Hopping { size_ms, slide_ms } = window {
            if *slide_ms == 0 {
                return Err(Refusal::Invalid(
                    "a hopping window's slide_ms must be at least 1".into(),
                ));
            }
            let panes = size_ms.div_ceil(*slide_ms);
            let max = self.limits.max_window_panes;
            if panes > max {
                return Err(Refusal::Invalid(format!(
                    "a hopping window of {size_ms} ms sliding by {slide_ms} ms puts each record in {panes} windows, more than this server's {max} (--max-window-panes)"
                )));
            }
        }
        Ok(())
    }

    /// `path` made absolute (relative to the data directory) and checked to lie under an
    /// allowed root once symbolic links are resolved; `..` is refused outright.
    pub fn check_path(&self, what: &str, path: &Path) -> Result<PathBuf, Refusal> {
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(Refusal::Forbidden(format!(
                "{what} `{}` contains `..`; paths must lie under the data directory or an --allow-path",
                path.display()
            )));
        }
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.roots[0].join(path)
        };
        let resolved = resolve(&absolute);
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(absolute)
        } else {
            Err(Refusal::Forbidden(format!(
                "{what} `{}` is outside the data directory and every --allow-path of this server",
                path.display()
            )))
        }
    }

    fn check_kafka(&self, uri: &str, what: &str) -> Result<(), Refusal> {
        let parsed = KafkaUri::parse(uri).map_err(|e| Refusal::Invalid(e.to_string()))?;
        for (key, value) in &parsed.properties {
            if KAFKA_PATH_PROPERTIES.contains(&key.as_str()) {
                self.check_path(
                    &format!("{what}'s Kafka property `{key}`"),
                    Path::new(value),
                )?;
            } else if !KAFKA_PROPERTIES.contains(&key.as_str()) {
                return Err(Refusal::Invalid(format!(
                    "{what}'s Kafka property `{key}` is not allowed in a submitted job (`{}`); allowed: {}, and {} under the allowed paths",
                    redact_uri(uri),
                    KAFKA_PROPERTIES.join(", "),
                    KAFKA_PATH_PROPERTIES.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// A NATS URI must parse; it names no local path, so nothing else is checked.
fn check_nats(uri: &str) -> Result<(), Refusal> {
    NatsUri::parse(uri)
        .map(|_| ())
        .map_err(|e| Refusal::Invalid(e.to_string()))
}

/// A RabbitMQ URI must parse; it names no local path, so nothing else is checked.
fn check_rabbitmq(uri: &str) -> Result<(), Refusal> {
    RabbitMqUri::parse(uri)
        .map(|_| ())
        .map_err(|e| Refusal::Invalid(e.to_string()))
}

/// `uri` with its secrets replaced, whichever connector it names.
fn redact_any(uri: &str) -> String {
    if uri.starts_with("nats://") {
        redact_nats_uri(uri)
    } else if uri.starts_with("rabbitmq://") {
        redact_rabbitmq_uri(uri)
    } else {
        redact_uri(uri)
    }
}

/// The longest existing ancestor of `path` with links resolved, and the rest appended: a
/// sink directory need not exist yet, but a link on the way to it is followed.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Calls `f` on every connector URI of `spec` (Kafka, NATS): its sources' (joined and unioned
/// streams too) and its sink's.
fn for_each_uri(spec: &mut JobSpec, mut f: impl FnMut(&mut String)) {
    let _ = spec.stream.try_for_each_stream(&mut |stream| {
        if let SourceSpec::Kafka { uri, .. }
        | SourceSpec::Nats { uri, .. }
        | SourceSpec::RabbitMq { uri, .. } = &mut stream.source
        {
            f(uri);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    if let SinkSpec::Kafka { uri } | SinkSpec::Nats { uri } | SinkSpec::RabbitMq { uri } =
        &mut spec.sink
    {
        f(uri);
    }
}

/// The secret values of a spec (Kafka properties named like passwords and secrets, NATS
/// credentials), to scrub from any text that might quote them.
pub(crate) fn secrets_of(spec: &JobSpec) -> Vec<String> {
    let mut secrets = Vec::new();
    for_each_uri(&mut spec.clone(), |uri| {
        if uri.starts_with("nats://") {
            if let Some(c) = NatsUri::parse(uri).ok().and_then(|u| u.credentials) {
                secrets.extend(c.split_once(':').map(|(_, password)| password.to_string()));
                secrets.push(c);
            }
            return;
        }
        if uri.starts_with("rabbitmq://") {
            if let Some(c) = RabbitMqUri::parse(uri).ok().and_then(|u| u.credentials) {
                secrets.extend(c.split_once(':').map(|(_, password)| password.to_string()));
                secrets.push(c);
            }
            return;
        }
        let Some((_, query)) = uri.split_once('?') else {
            return;
        };
        for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            if is_secret_key(key) && !value.is_empty() {
                secrets.push(value.to_string());
            }
        }
    });
    secrets.retain(|s| !s.is_empty());
    secrets
}

/// `text` with every secret replaced by `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}

/// A copy of `spec` with its secrets redacted, for answers.
pub(crate) fn redacted(spec: &JobSpec) -> JobSpec {
    let mut spec = spec.clone();
    for_each_uri(&mut spec, |uri| *uri = redact_any(uri));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(root: &Path, allowed: &[PathBuf]) -> Policy {
        Policy::new(root, allowed, Limits::default()).unwrap()
    }

    #[test]
    fn paths_must_stay_under_the_roots_even_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let p = policy(&data, &[]);
        let ok = p.check_path("x", Path::new("in/bids.jsonl")).unwrap();
        assert!(
            ok.starts_with(std::fs::canonicalize(&data).unwrap()),
            "{ok:?}"
        );
        for bad in ["/etc/passwd", "in/../../x", "../data2"] {
            let refusal = p.check_path("x", Path::new(bad)).unwrap_err();
            let Refusal::Forbidden(why) = refusal else {
                panic!("{bad}: {refusal:?}")
            };
            assert!(why.contains(bad), "{why}");
        }
        // A link inside the data directory that points out of it.
        std::os::unix::fs::symlink("/etc", data.join("etc")).unwrap();
        assert!(p.check_path("x", Path::new("etc/passwd")).is_err());
        // An allowed directory.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let p = policy(&data, std::slice::from_ref(&other));
        assert!(p.check_path("x", &other.join("f.jsonl")).is_ok());
    }

    #[test]
    fn kafka_properties_pass_an_allow_list() {
        let tmp = tempfile::tempdir().unwrap();
        let p = policy(tmp.path(), &[]);
        p.check_kafka(
            "kafka://h:1/t?security.protocol=SASL_SSL&sasl.password=s",
            "src",
        )
        .unwrap();
        let e = p
            .check_kafka(
                "kafka://h:1/t?plugin.library.paths=/tmp/x.so&sasl.password=hunter2",
                "src",
            )
            .unwrap_err();
        let Refusal::Invalid(why) = e else { panic!() };
        assert!(why.contains("`plugin.library.paths`"), "{why}");
        assert!(!why.contains("hunter2"), "{why}");
        let e = p
            .check_kafka("kafka://h:1/t?ssl.ca.location=/etc/ssl/ca.pem", "src")
            .unwrap_err();
        assert!(matches!(e, Refusal::Forbidden(_)), "{e:?}");
    }

    #[test]
    fn secrets_are_found_scrubbed_and_redacted() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "stream": {"source": {"kafka": {"uri": "kafka://h:1/t?sasl.password=hunter2", "columns": []}}},
            "sink": {"kafka": {"uri": "kafka://h:1/o?ssl.key.password=k3y"}}
        }))
        .unwrap();
        let secrets = secrets_of(&spec);
        assert_eq!(secrets, vec!["hunter2".to_string(), "k3y".to_string()]);
        assert_eq!(scrub("bad hunter2 and k3y", &secrets), "bad *** and ***");
        let shown = serde_json::to_string(&redacted(&spec)).unwrap();
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
    }

    #[test]
    fn limits_bound_windows_checkpoints_and_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let p = policy(tmp.path(), &[]);
        let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
            "stream": {"source": {"nexmark": {"table": "bid"}}, "steps": [
                {"window": {"keys": ["auction"], "window": {"hopping": {"size_ms": 31536000000u64, "slide_ms": 1}},
                 "compute": {"aggregate": ["count(price) AS n"]}}}
            ]},
            "sink": "blackhole"
        }))
        .unwrap();
        let Err(Refusal::Invalid(why)) = p.check_spec(&mut spec) else {
            panic!()
        };
        assert!(why.contains("--max-window-panes"), "{why}");
        let mut spec: JobSpec = serde_json::from_value(serde_json::json!({
            "stream": {"source": {"nexmark": {"table": "bid"}}},
            "sink": "blackhole",
            "checkpoints": {"interval_ms": 1}
        }))
        .unwrap();
        let Err(Refusal::Invalid(why)) = p.check_spec(&mut spec) else {
            panic!()
        };
        assert!(why.contains("minimum"), "{why}");
        spec.checkpoints = None;
        spec.restart = Some(crate::spec::RestartSpec {
            max_attempts: 1000,
            ..Default::default()
        });
        assert!(p.check_spec(&mut spec).is_err());
    }
}
