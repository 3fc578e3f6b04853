//! Kafka sources and sinks (rdkafka, so librdkafka underneath).
//!
//! The source assigns partitions itself (no consumer-group rebalancing): a checkpoint, not
//! Kafka's committed offsets, is the truth about where a job is, as in Flink. The sink writes
//! with Kafka transactions for exactly-once; docs/design/kafka.md gives the protocol and the
//! failure cases one by one.
//!
//! Both are configured from a URI, `kafka://HOST:PORT[,HOST:PORT]/TOPIC?key=value&...`: keys
//! with a dot are librdkafka properties (`security.protocol=SASL_SSL`), passed through; keys
//! without one are Oxflow's own options, listed by [`KafkaUri::parse`].

#[cfg(test)]
mod mock_tests;
mod sink;
mod source;

pub use sink::{DeliveryGuarantee, KafkaSink, KafkaSinkConfig, OutputFormat};
pub use source::{BadRecords, KafkaSource, KafkaSourceConfig, RecordFormat, StartFrom, Topics};

use crate::error::{ConnectorError, Result};
use oxflow_runtime::clock::{Clock, SystemClock};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The parts of a `kafka://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUri {
    /// `bootstrap.servers`: comma-separated `host:port`.
    pub brokers: String,
    /// The topic (for a source, also a comma-separated list, or a regex starting with `^`).
    pub topic: String,
    /// Oxflow's options (keys without a dot).
    pub options: BTreeMap<String, String>,
    /// librdkafka properties (keys with a dot), and `group` as `group.id`.
    pub properties: BTreeMap<String, String>,
}

impl KafkaUri {
    /// Parses `kafka://HOST:PORT[,HOST:PORT]/TOPIC[?key=value&...]`. `group=G` becomes the
    /// librdkafka property `group.id`; other keys without a dot are Oxflow options, and each
    /// user checks them against the ones it knows.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |reason: String| ConnectorError::Config {
            connector: "kafka",
            reason: format!("`{}`: {reason}", redact_uri(uri)),
        };
        let rest = uri
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("a Kafka URI starts with kafka://".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (brokers, topic) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected kafka://HOST:PORT/TOPIC".into()))?;
        if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
            return Err(bad(format!(
                "brokers `{brokers}` are not HOST:PORT[,HOST:PORT]"
            )));
        }
        if topic.is_empty() {
            return Err(bad("no topic after the brokers".into()));
        }
        let mut parsed = KafkaUri {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            options: BTreeMap::new(),
            properties: BTreeMap::new(),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                bad(format!(
                    "`{}` in the query is not key=value",
                    redact_uri(&format!("?{pair}")).trim_start_matches('?')
                ))
            })?;
            if key == "group" {
                parsed.properties.insert("group.id".into(), value.into());
            } else if key.contains('.') {
                parsed.properties.insert(key.into(), value.into());
            } else {
                parsed.options.insert(key.into(), value.into());
            }
        }
        Ok(parsed)
    }

    /// Fails on an Oxflow option not in `known`, naming the ones that are.
    pub fn check_options(&self, known: &[&str]) -> Result<()> {
        match self.options.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(ConnectorError::Config {
                connector: "kafka",
                reason: format!(
                    "unknown option `{k}`; options are {} (librdkafka properties contain a dot)",
                    known.join(", ")
                ),
            }),
        }
    }

    /// An option parsed as milliseconds.
    pub fn millis(&self, key: &str) -> Result<Option<Duration>> {
        self.options
            .get(key)
            .map(|v| {
                v.parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ConnectorError::Config {
                        connector: "kafka",
                        reason: format!("option {key}={v} is not a number of milliseconds"),
                    })
            })
            .transpose()
    }
}

/// How long a source or sink keeps retrying brokers it cannot reach when it starts, unless
/// its URI says otherwise: a broker blip must not spend a job's restart budget.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// `connect-timeout-ms` of a URI: [`DEFAULT_CONNECT_TIMEOUT`] when absent, none (fail at
/// once) when 0.
pub(crate) fn connect_timeout(uri: &KafkaUri) -> Result<Option<Duration>> {
    Ok(match uri.millis("connect-timeout-ms")? {
        None => Some(DEFAULT_CONNECT_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    })
}

/// Whether a librdkafka property or URI option holds a secret (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, `sasl.jaas.config`...): its value is
/// never shown in answers, logs or error messages.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "jaas", "credential"]
        .iter()
        .any(|word| key.contains(word))
        || key == "sasl.oauthbearer.config"
}

/// `uri` with the value of every secret property replaced by `***`, for messages and logs.
pub fn redact_uri(uri: &str) -> String {
    let Some((base, query)) = uri.split_once('?') else {
        return uri.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

/// How long a request is retried while its group or transaction coordinator is moving.
const COORDINATOR_WAIT: Duration = Duration::from_secs(30);

/// Whether `e` says the coordinator is loading, moving or not yet elected: transient.
fn coordinator_moving(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::NotCoordinator | Code::CoordinatorLoadInProgress | Code::CoordinatorNotAvailable
        )
    )
}

/// What librdkafka gets for every client of a source or sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaConnection {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// More librdkafka properties (security, timeouts...).
    pub properties: BTreeMap<String, String>,
    /// How long to keep trying, with backoff, when the brokers cannot be reached at start.
    /// `None`: fail at once (after one metadata request's timeout) with a clear error.
    pub connect_timeout: Option<Duration>,
}

impl KafkaConnection {
    /// A connection to `brokers` with librdkafka's defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConnection {
            brokers: brokers.into(),
            ..Default::default()
        }
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// Runs `attempt` (a request to the brokers) until it succeeds, retrying with
    /// exponential backoff for up to the connect timeout.
    pub(crate) fn with_retry<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, rdkafka::error::KafkaError>,
    ) -> Result<T> {
        let clock = SystemClock::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let waited = clock.elapsed();
                    // A coordinator moving or loading (after a broker restart, say) is retried
                    // even without a connect timeout, as every Kafka client does.
                    let limit = match self.connect_timeout {
                        None if coordinator_moving(&e) => Some(COORDINATOR_WAIT),
                        limit => limit,
                    };
                    match limit {
                        Some(limit) if waited + backoff < limit => {
                            tracing::warn!(brokers = %self.brokers, error = %e, ?backoff, "{what}: retrying");
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        _ => {
                            return Err(kafka_error(
                                format!(
                                    "{what} at {} (gave up after {:.1} s)",
                                    self.brokers,
                                    waited.as_secs_f64()
                                ),
                                e,
                            ))
                        }
                    }
                }
            }
        }
    }

    /// The partitions of `topics`, checked to exist, sorted.
    pub(crate) fn partitions_of(
        &self,
        consumer: &BaseConsumer,
        topics: &[String],
    ) -> Result<Vec<(String, i32)>> {
        let mut out = Vec::new();
        for topic in topics {
            let metadata = self.with_retry("fetching metadata", || {
                consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
            })?;
            for t in metadata.topics() {
                if let Some(err) = t.error() {
                    return Err(ConnectorError::Config {
                        connector: "kafka",
                        reason: format!(
                            "topic `{}` on {}: {:?} (does it exist?)",
                            t.name(),
                            self.brokers,
                            rdkafka::types::RDKafkaErrorCode::from(err)
                        ),
                    });
                }
                if t.partitions().is_empty() {
                    return Err(ConnectorError::Config {
                        connector: "kafka",
                        reason: format!(
                            "topic `{}` on {} has no partitions",
                            t.name(),
                            self.brokers
                        ),
                    });
                }
                out.extend(
                    t.partitions()
                        .iter()
                        .map(|p| (t.name().to_string(), p.id())),
                );
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// A producer context that remembers the first delivery failure, so that a flush can tell
/// whether everything sent was written (librdkafka reports failures only to this callback).
#[derive(Default)]
pub(crate) struct DeliveryContext {
    failure: Mutex<Option<String>>,
}

impl DeliveryContext {
    /// The first delivery failure since the last call, if any.
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.failure.lock().expect("not poisoned").take()
    }

    /// Fails if a delivery failed since the last check; `what` says what was being sent.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        match self.take_failure() {
            None => Ok(()),
            Some(failure) => Err(ConnectorError::Delivery(format!("{what}: {failure}"))),
        }
    }
}

/// Waits (up to `timeout`) until everything `producer` was given is written, failing if any
/// of it was not.
pub(crate) fn flush_delivered(
    producer: &ThreadedProducer<DeliveryContext>,
    what: &str,
    timeout: Duration,
) -> Result<()> {
    producer
        .flush(timeout)
        .map_err(|e| kafka_error(format!("flushing {what}"), e))?;
    producer.context().check(what)
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, message)) = result {
            use rdkafka::Message;
            let mut failure = self.failure.lock().expect("not poisoned");
            if failure.is_none() {
                *failure = Some(format!(
                    "delivery to {}/{} failed: {e}",
                    message.topic(),
                    message.partition()
                ));
            }
        }
    }
}

/// A librdkafka error, typed: a fenced producer is [`ConnectorError::Fenced`], so that
/// whoever runs the job can tell it from a transient failure.
pub(crate) fn kafka_error(
    context: impl Into<String>,
    source: rdkafka::error::KafkaError,
) -> ConnectorError {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let context = context.into();
    match source.rdkafka_error_code() {
        Some(Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch) => {
            ConnectorError::Fenced { context, source }
        }
        _ => ConnectorError::Kafka { context, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_coordinator_is_transient_and_other_errors_are_not() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        assert!(coordinator_moving(&KafkaError::MetadataFetch(
            Code::NotCoordinator
        )));
        assert!(coordinator_moving(&KafkaError::MetadataFetch(
            Code::CoordinatorLoadInProgress
        )));
        assert!(coordinator_moving(&KafkaError::MetadataFetch(
            Code::CoordinatorNotAvailable
        )));
        assert!(!coordinator_moving(&KafkaError::MetadataFetch(
            Code::UnknownTopicOrPartition
        )));
    }

    #[test]
    fn uri_splits_brokers_topic_options_and_properties() {
        let uri = KafkaUri::parse(
            "kafka://127.0.0.1:9092,h:1/bids?group=g&security.protocol=SASL_SSL&start=earliest",
        )
        .unwrap();
        assert_eq!(uri.brokers, "127.0.0.1:9092,h:1");
        assert_eq!(uri.topic, "bids");
        assert_eq!(uri.properties["group.id"], "g");
        assert_eq!(uri.properties["security.protocol"], "SASL_SSL");
        assert_eq!(uri.options["start"], "earliest");
        let err = uri.check_options(&["format"]).unwrap_err().to_string();
        assert!(err.contains("unknown option `start`"), "{err}");
    }

    #[test]
    fn a_fenced_producer_is_its_own_error() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        let e = kafka_error(
            "committing",
            KafkaError::MetadataFetch(Code::ProducerFenced),
        );
        assert!(matches!(e, ConnectorError::Fenced { .. }), "{e}");
        let runtime: oxflow_runtime::RuntimeError = e.into();
        assert!(runtime.is_fatal(), "{runtime}");
        let e = kafka_error(
            "fetching",
            KafkaError::MetadataFetch(Code::BrokerNotAvailable),
        );
        assert!(matches!(e, ConnectorError::Kafka { .. }), "{e}");
    }

    #[test]
    fn secrets_in_a_uri_are_redacted_in_messages() {
        let uri = "kafka://h:1/t?sasl.username=u&sasl.password=hunter2&ssl.key.password=k&oops";
        let redacted = redact_uri(uri);
        assert!(
            !redacted.contains("hunter2") && !redacted.contains("=k&"),
            "{redacted}"
        );
        assert!(redacted.contains("sasl.username=u"), "{redacted}");
        let err = KafkaUri::parse(uri).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(is_secret_key("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_key("security.protocol"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        /// Fuzz: any string is a URI or an error, never a panic; a parsed one's secrets are
        /// never in its redacted form.
        #[test]
        fn parsing_any_uri_never_panics(
            tail in "[ -~]{0,60}",
            any in "\\PC{0,40}",
        ) {
            for uri in [format!("kafka://{tail}"), any.clone(), format!("kafka://h:1/t?{any}")] {
                if let Ok(parsed) = KafkaUri::parse(&uri) {
                    let redacted = redact_uri(&uri);
                    for (k, v) in &parsed.properties {
                        if is_secret_key(k) && v.len() > 3 {
                            let shown = format!("{k}={v}");
                            proptest::prop_assert!(!redacted.contains(&shown), "{}", redacted);
                        }
                    }
                    let _ = parsed.millis("connect-timeout-ms");
                }
            }
        }
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        for (uri, expect) in [
            ("http://x:1/t", "starts with kafka://"),
            ("kafka://x:1", "HOST:PORT/TOPIC"),
            ("kafka://x:1/", "no topic"),
            ("kafka://x/t", "not HOST:PORT"),
            ("kafka://x:1/t?oops", "not key=value"),
        ] {
            let err = KafkaUri::parse(uri).unwrap_err().to_string();
            assert!(err.contains(expect), "{uri}: {err}");
        }
    }
}
