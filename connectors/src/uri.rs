//! What the message-queue connectors' URIs (`nats://`, `rabbitmq://`) share: the query's
//! `key=value` options, checked against the ones a connector knows, and the connect timeout
//! with its retry loop.

use crate::error::{ConnectorError, Result};
use oxflow_runtime::clock::{Clock, SystemClock};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// A URI's query options, by key, for connector `connector` (named in errors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UriOptions {
    connector: &'static str,
    map: BTreeMap<String, String>,
}

impl UriOptions {
    /// Parses `key=value&...`; `bad` turns a reason into the URI's own error.
    pub(crate) fn parse(
        connector: &'static str,
        query: Option<&str>,
        bad: impl Fn(String) -> ConnectorError,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("`{pair}` in the query is not key=value")))?;
            map.insert(key.to_string(), value.to_string());
        }
        Ok(UriOptions { connector, map })
    }

    /// The value of option `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.map.get(key)
    }

    /// The option keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    /// Fails on an option not in `known`, naming the ones that are.
    pub fn check(&self, known: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(ConnectorError::Config {
                connector: self.connector,
                reason: format!("unknown option `{k}`; options are {}", known.join(", ")),
            }),
        }
    }

    /// An option parsed as a number.
    pub(crate) fn number(&self, key: &str) -> Result<Option<u64>> {
        self.map
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| ConnectorError::Config {
                    connector: self.connector,
                    reason: format!("option {key}={v} is not a number"),
                })
            })
            .transpose()
    }

    /// `connect-timeout-ms` as for Kafka: how long to keep trying servers that cannot be
    /// reached; absent: the default; 0: `None`, fail at once.
    pub(crate) fn connect_timeout(&self) -> Result<Option<Duration>> {
        Ok(match self.number("connect-timeout-ms")? {
            None => Some(crate::kafka::DEFAULT_CONNECT_TIMEOUT),
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
        })
    }
}

/// Runs `connect` until it succeeds, for up to `limit` while it fails with an error
/// `retryable` accepts (a server restarting must not spend a job's restart budget), backing
/// off from 100 ms to 2 s; `what` names the servers in the warnings.
pub(crate) async fn connect_with_retry<T, F: Future<Output = Result<T>>>(
    limit: Option<Duration>,
    what: &str,
    mut connect: impl FnMut() -> F,
    retryable: impl Fn(&ConnectorError) -> bool,
) -> Result<T> {
    let clock = SystemClock::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect().await {
            Ok(c) => return Ok(c),
            Err(e) => match limit {
                Some(limit) if clock.elapsed() < limit && retryable(&e) => {
                    tracing::warn!(servers = %what, error = %e, "servers unreachable, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                _ => return Err(e),
            },
        }
    }
}
