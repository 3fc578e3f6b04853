//! RabbitMQ sources and sinks (lapin, AMQP 0.9.1).
//!
//! Both are configured from a URI, `rabbitmq://[USER:PASSWORD@]HOST:PORT/QUEUE[,QUEUE]
//! ?key=value&...`. The source reads streams by offset, with the offsets kept in checkpoints:
//! exactly once on the source side; or classic and quorum queues as competing consumers,
//! acknowledging what a checkpoint covers once it completes: at least once. The sink
//! publishes to any queue or exchange with publisher confirms: at least once. The protocols and their limits are in docs/design/connectors.md.
//!
//! Streams are read over AMQP (a consumer with `x-stream-offset`), not RabbitMQ's stream
//! protocol: one client library and one port for source and sink, at the cost of the stream
//! protocol's higher read rate.
//!
//! lapin is asynchronous and the runtime's readers and writers are threads: every RabbitMQ
//! connection of the process runs on the connectors' own tokio runtime (`crate::io_runtime`).

mod queue;
mod sink;
mod source;

pub use sink::{RabbitMqSink, RabbitMqSinkConfig};
pub use source::{RabbitMqSource, RabbitMqSourceConfig, SourceMode, StreamStart};

use crate::error::{ConnectorError, Result};
use crate::uri::{connect_with_retry, UriOptions};
use std::time::Duration;

/// The parts of a `rabbitmq://` URI.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitMqUri {
    /// `HOST:PORT`.
    pub server: String,
    /// `USER:PASSWORD`, if the URI has them.
    pub credentials: Option<String>,
    /// The queues (or streams), in order.
    pub queues: Vec<String>,
    /// The query's options.
    pub options: UriOptions,
}

impl std::fmt::Debug for RabbitMqUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqUri")
            .field("server", &self.server)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .field("queues", &self.queues)
            .field("options", &self.options)
            .finish()
    }
}

/// `uri` with its credentials replaced by `***`, for messages and logs.
pub fn redact_rabbitmq_uri(uri: &str) -> String {
    match uri
        .strip_prefix("rabbitmq://")
        .and_then(|r| r.split_once('@'))
    {
        Some((_, rest)) if !rest.is_empty() => format!("rabbitmq://***@{rest}"),
        _ => uri.to_string(),
    }
}

impl RabbitMqUri {
    /// Parses `rabbitmq://[USER:PASSWORD@]HOST:PORT/QUEUE[,QUEUE][?key=value&...]`.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |reason: String| ConnectorError::Config {
            connector: "rabbitmq",
            reason: format!("`{}`: {reason}", redact_rabbitmq_uri(uri)),
        };
        let rest = uri
            .strip_prefix("rabbitmq://")
            .ok_or_else(|| bad("a RabbitMQ URI starts with rabbitmq://".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, queues) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected rabbitmq://HOST:PORT/QUEUE".into()))?;
        let (credentials, server) = match authority.rsplit_once('@') {
            Some((c, s)) => {
                if !c.contains(':') {
                    return Err(bad("credentials are USER:PASSWORD".into()));
                }
                (Some(c.to_string()), s)
            }
            None => (None, authority),
        };
        let port_ok = server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(bad(format!("server `{server}` is not HOST:PORT")));
        }
        // Queue names are up to 255 bytes of UTF-8; `amq.` is reserved for the server's own.
        let queues: Vec<String> = queues.split(',').map(str::to_string).collect();
        if let Some(q) = queues.iter().find(|q| {
            q.is_empty() || q.len() > 255 || q.starts_with("amq.") || q.contains(['?', '/'])
        }) {
            return Err(bad(format!("`{q}` is not a queue name")));
        }
        let options = UriOptions::parse("rabbitmq", query, bad)?;
        Ok(RabbitMqUri {
            server: server.to_string(),
            credentials,
            queues,
            options,
        })
    }

    /// Fails on an option not in `known`, naming the ones that are.
    pub fn check_options(&self, known: &[&str]) -> Result<()> {
        self.options.check(known)
    }

    /// An option parsed as a number.
    pub(crate) fn number(&self, key: &str) -> Result<Option<u64>> {
        self.options.number(key)
    }

    /// The connection this URI names: `vhost` (default `/`), `connect-timeout-ms` as for
    /// Kafka.
    pub fn connection(&self) -> Result<RabbitMqConnection> {
        Ok(RabbitMqConnection {
            server: self.server.clone(),
            credentials: self.credentials.clone(),
            vhost: self
                .options
                .get("vhost")
                .cloned()
                .unwrap_or_else(|| "/".into()),
            connect_timeout: self.options.connect_timeout()?,
        })
    }
}

/// Where the RabbitMQ server is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RabbitMqConnection {
    /// `HOST:PORT`.
    pub server: String,
    /// `USER:PASSWORD`; none: RabbitMQ's guest user.
    pub credentials: Option<String>,
    /// The virtual host.
    pub vhost: String,
    /// How long to keep trying a server that cannot be reached; `None`: fail at once.
    pub connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for RabbitMqConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqConnection")
            .field("server", &self.server)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes everything but unreserved characters (for the AMQP URI's parts).
fn encode_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RabbitMqConnection {
    /// The server at `server` (`HOST:PORT`), the guest user, vhost `/`, the default connect
    /// timeout.
    pub fn new(server: impl Into<String>) -> Self {
        RabbitMqConnection {
            server: server.into(),
            credentials: None,
            vhost: "/".into(),
            connect_timeout: Some(crate::kafka::DEFAULT_CONNECT_TIMEOUT),
        }
    }

    fn amqp_uri(&self) -> String {
        let login = match self.credentials.as_deref().and_then(|c| c.split_once(':')) {
            Some((user, password)) => {
                format!("{}:{}@", encode_component(user), encode_component(password))
            }
            None => String::new(),
        };
        // A 30 s heartbeat: a dead server (or a cut network) is noticed within a minute.
        format!(
            "amqp://{login}{}/{}?heartbeat=30&connection_timeout=5000",
            self.server,
            encode_component(&self.vhost)
        )
    }

    /// Connects once (no retry).
    pub(crate) async fn connect(&self) -> Result<lapin::Connection> {
        let properties =
            lapin::ConnectionProperties::default().with_connection_name("oxflow".into());
        lapin::Connection::connect(&self.amqp_uri(), properties)
            .await
            .map_err(|e| rabbitmq_error(format!("connecting to {}", self.server), e))
    }

    /// Connects, retrying for up to the connect timeout while the server cannot be reached
    /// (a server restarting must not spend a job's restart budget). A refused login or an
    /// unknown vhost fails at once.
    pub(crate) async fn connect_with_retry(&self) -> Result<lapin::Connection> {
        connect_with_retry(
            self.connect_timeout,
            &self.server,
            || self.connect(),
            |e| !refused(e),
        )
        .await
    }
}

/// The kinds of queue [`declare_queue`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// A classic queue.
    Classic,
    /// A quorum queue (replicated).
    Quorum,
    /// A stream (an append-only log read by offset).
    Stream,
}

/// Declares durable queue `name` of `kind` (for tests, tools and set-up scripts; a job never
/// creates queues). Blocks on the connectors' runtime.
pub fn declare_queue(connection: &RabbitMqConnection, name: &str, kind: QueueKind) -> Result<()> {
    let (connection, name) = (connection.clone(), name.to_string());
    crate::io_runtime::run(async move {
        let c = connection.connect().await?;
        let channel = c
            .create_channel()
            .await
            .map_err(|e| rabbitmq_error("opening a channel", e))?;
        let mut arguments = lapin::types::FieldTable::default();
        let kind = match kind {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        };
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString(kind.into()),
        );
        channel
            .queue_declare(
                name.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .map_err(|e| rabbitmq_error(format!("declaring queue {name}"), e))?;
        let _ = c.close(200, "declared".into()).await;
        Ok(())
    })
}

/// Takes every message queue `name` holds now, acknowledging them (they leave the queue): at
/// most `max` payloads. For tests and tools; a stream is read with the source instead.
pub fn drain_queue(
    connection: &RabbitMqConnection,
    name: &str,
    max: usize,
) -> Result<Vec<Vec<u8>>> {
    let (connection, name) = (connection.clone(), name.to_string());
    crate::io_runtime::run(async move {
        let c = connection.connect().await?;
        let channel = c
            .create_channel()
            .await
            .map_err(|e| rabbitmq_error("opening a channel", e))?;
        let mut out = Vec::new();
        while out.len() < max {
            let got = channel
                .basic_get(
                    name.as_str().into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .map_err(|e| rabbitmq_error(format!("reading queue {name}"), e))?;
            match got {
                Some(m) => out.push(m.delivery.data),
                None => break,
            }
        }
        let _ = c.close(200, "drained".into()).await;
        Ok(out)
    })
}

/// Publishes `payloads` to queue `name` through the default exchange, waiting for the
/// broker's confirms (for tests and tools).
pub fn publish_payloads(
    connection: &RabbitMqConnection,
    name: &str,
    payloads: Vec<Vec<u8>>,
) -> Result<()> {
    let config = RabbitMqSinkConfig {
        connection: connection.clone(),
        exchange: String::new(),
        routing_key: name.to_string(),
    };
    let messages = payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| (format!("tool-{i}"), bytes::Bytes::from(p)))
        .collect();
    sink::publish_once(config, messages)
}

/// Whether the server answered and said no (credentials, vhost): retrying cannot help.
fn refused(e: &ConnectorError) -> bool {
    let text = e.to_string();
    ["ACCESS_REFUSED", "NOT_ALLOWED", "authentication", "vhost"]
        .iter()
        .any(|w| text.contains(w))
}

/// A RabbitMQ error with what was being done.
pub(crate) fn rabbitmq_error(
    context: impl Into<String>,
    e: impl std::fmt::Display,
) -> ConnectorError {
    ConnectorError::RabbitMq {
        context: context.into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_errors_hide_credentials() {
        let u = RabbitMqUri::parse(
            "rabbitmq://alice:s3cret@127.0.0.1:5672/bids,bids-2?mode=stream&vhost=prod",
        )
        .unwrap();
        assert_eq!(u.server, "127.0.0.1:5672");
        assert_eq!(u.credentials.as_deref(), Some("alice:s3cret"));
        assert_eq!(u.queues, ["bids", "bids-2"]);
        assert_eq!(u.options.get("mode").unwrap(), "stream");
        assert!(!format!("{u:?}").contains("s3cret"));
        let c = u.connection().unwrap();
        assert_eq!(
            c.amqp_uri(),
            "amqp://alice:s3cret@127.0.0.1:5672/prod?heartbeat=30&connection_timeout=5000"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(RabbitMqConnection::new("h:1")
            .amqp_uri()
            .contains("h:1/%2F?"));
        for (uri, want) in [
            ("nats://h:1/q", "starts with rabbitmq://"),
            ("rabbitmq://h:1", "expected rabbitmq://HOST:PORT/QUEUE"),
            ("rabbitmq://a:pw@host/q", "not HOST:PORT"),
            ("rabbitmq://a:pw@h:99999/q", "not HOST:PORT"),
            ("rabbitmq://tok@h:1/q", "USER:PASSWORD"),
            ("rabbitmq://a:pw@h:1/amq.x", "not a queue name"),
            ("rabbitmq://a:pw@h:1/q,", "not a queue name"),
            ("rabbitmq://a:pw@h:1/q?x", "not key=value"),
        ] {
            let e = RabbitMqUri::parse(uri).unwrap_err().to_string();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        let e = u.check_options(&["mode"]).unwrap_err().to_string();
        assert!(e.contains("unknown option `vhost`"), "{e}");
        assert_eq!(
            redact_rabbitmq_uri("rabbitmq://a:b@h:1/q"),
            "rabbitmq://***@h:1/q"
        );
    }
}
