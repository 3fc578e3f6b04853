//! NATS JetStream sources and sinks (async-nats).
//!
//! Both are configured from a URI, `nats://[USER:PASSWORD@|TOKEN@]HOST:PORT[,HOST:PORT]/STREAM
//! ?key=value&...`. The source reads a stream by sequence, one ordered consumer per subject
//! filter, with each filter's last sequence kept in checkpoints (the stream's sequence, not a
//! durable consumer on the server, is the truth about where a job is: the same choice as the
//! Kafka source). The sink publishes with a `Nats-Msg-Id` header, so that a commit replayed
//! after a crash is deduplicated by the server within the stream's duplicate window; the
//! protocol and its limit are in docs/design/connectors.md.
//!
//! async-nats is asynchronous and the runtime's readers and writers are threads: every NATS
//! client of the process runs on the connectors' own tokio runtime (`crate::io_runtime`).

mod sink;
mod source;

pub use sink::{NatsSink, NatsSinkConfig, NatsSinkGuarantee};
pub use source::{read_payloads, NatsSource, NatsSourceConfig, NatsStart};

use crate::error::{ConnectorError, Result};
use crate::uri::{connect_with_retry, UriOptions};
use std::time::Duration;

/// The parts of a `nats://` URI.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUri {
    /// `HOST:PORT[,HOST:PORT]`.
    pub servers: String,
    /// `USER:PASSWORD` or `TOKEN`, if the URI has them.
    pub credentials: Option<String>,
    /// The JetStream stream.
    pub stream: String,
    /// The query's options.
    pub options: UriOptions,
}

impl std::fmt::Debug for NatsUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsUri")
            .field("servers", &self.servers)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .field("stream", &self.stream)
            .field("options", &self.options)
            .finish()
    }
}

/// `uri` with its credentials replaced by `***`, for messages and logs.
pub fn redact_nats_uri(uri: &str) -> String {
    match uri.strip_prefix("nats://").and_then(|r| r.split_once('@')) {
        Some((_, rest)) if !rest.is_empty() => format!("nats://***@{rest}"),
        _ => uri.to_string(),
    }
}

impl NatsUri {
    /// Parses `nats://[CREDENTIALS@]HOST:PORT[,HOST:PORT]/STREAM[?key=value&...]`.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |reason: String| ConnectorError::Config {
            connector: "nats",
            reason: format!("`{}`: {reason}", redact_nats_uri(uri)),
        };
        let rest = uri
            .strip_prefix("nats://")
            .ok_or_else(|| bad("a NATS URI starts with nats://".into()))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, stream) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected nats://HOST:PORT/STREAM".into()))?;
        let (credentials, servers) = match authority.rsplit_once('@') {
            Some((c, s)) => (Some(c.to_string()), s),
            None => (None, authority),
        };
        if servers.is_empty() || servers.split(',').any(|s| !s.contains(':')) {
            return Err(bad(format!(
                "servers `{servers}` are not HOST:PORT[,HOST:PORT]"
            )));
        }
        // Stream names may not hold spaces, dots, `*`, `>` or path separators (NATS' rule).
        let valid = !stream.is_empty()
            && !stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'));
        if !valid {
            return Err(bad(format!("`{stream}` is not a JetStream stream name")));
        }
        let options = UriOptions::parse("nats", query, bad)?;
        Ok(NatsUri {
            servers: servers.to_string(),
            credentials,
            stream: stream.to_string(),
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

    /// The connection this URI names; `connect-timeout-ms` as for Kafka.
    pub fn connection(&self) -> Result<NatsConnection> {
        Ok(NatsConnection {
            servers: self.servers.clone(),
            credentials: self.credentials.clone(),
            connect_timeout: self.options.connect_timeout()?,
        })
    }
}

/// Where the NATS servers are and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConnection {
    /// `HOST:PORT[,HOST:PORT]`.
    pub servers: String,
    /// `USER:PASSWORD` or a token.
    pub credentials: Option<String>,
    /// How long to keep trying servers that cannot be reached at start; `None`: fail at once.
    pub connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConnection")
            .field("servers", &self.servers)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl NatsConnection {
    /// Servers at `servers`, no credentials, the default connect timeout.
    pub fn new(servers: impl Into<String>) -> Self {
        NatsConnection {
            servers: servers.into(),
            credentials: None,
            connect_timeout: Some(crate::kafka::DEFAULT_CONNECT_TIMEOUT),
        }
    }

    /// Connects once (no retry): the JetStream context of a new client. The client goes on
    /// reconnecting by itself after a later outage.
    pub(crate) async fn connect(&self) -> Result<async_nats::jetstream::Context> {
        let mut options = async_nats::ConnectOptions::new()
            .name("oxflow")
            .connection_timeout(Duration::from_secs(5))
            // Once connected, keep reconnecting: a restarted server is found again.
            .max_reconnects(None);
        if let Some(c) = self.credentials.as_deref() {
            options = match c.split_once(':') {
                Some((user, password)) => options.user_and_password(user.into(), password.into()),
                None => options.token(c.into()),
            };
        }
        let servers: Vec<String> = self
            .servers
            .split(',')
            .map(|s| format!("nats://{s}"))
            .collect();
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| nats_error(format!("connecting to {}", self.servers), e))?;
        Ok(async_nats::jetstream::new(client))
    }

    /// Connects, retrying for up to the connect timeout while the servers cannot be reached
    /// (a server restarting must not spend a job's restart budget).
    pub(crate) async fn connect_with_retry(&self) -> Result<async_nats::jetstream::Context> {
        connect_with_retry(
            self.connect_timeout,
            &self.servers,
            || self.connect(),
            |_| true,
        )
        .await
    }
}

/// A NATS error with what was being done.
pub(crate) fn nats_error(context: impl Into<String>, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Nats {
        context: context.into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_errors_hide_credentials() {
        let u = NatsUri::parse(
            "nats://alice:s3cret@127.0.0.1:4222,h2:4223/BIDS?subject=bids.>&bounded=true",
        )
        .unwrap();
        assert_eq!(u.servers, "127.0.0.1:4222,h2:4223");
        assert_eq!(u.credentials.as_deref(), Some("alice:s3cret"));
        assert_eq!(u.stream, "BIDS");
        assert_eq!(u.options.get("subject").unwrap(), "bids.>");
        assert!(!format!("{u:?}").contains("s3cret"));
        for (uri, want) in [
            ("kafka://h:1/t", "starts with nats://"),
            ("nats://h:1", "expected nats://HOST:PORT/STREAM"),
            ("nats://tok@host/S", "not HOST:PORT"),
            ("nats://tok@h:1/a.b", "not a JetStream stream name"),
            ("nats://tok@h:1/S?x", "not key=value"),
        ] {
            let e = NatsUri::parse(uri).unwrap_err().to_string();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.contains("tok@"), "{e}");
        }
        let e = u.check_options(&["subject"]).unwrap_err().to_string();
        assert!(e.contains("unknown option `bounded`"), "{e}");
        assert_eq!(redact_nats_uri("nats://a:b@h:1/S"), "nats://***@h:1/S");
    }
}
