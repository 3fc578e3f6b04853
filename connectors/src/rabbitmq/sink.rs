//! The RabbitMQ sink: JSON messages, persistent, published with publisher confirms.
//!
//! Each writer has its own connection and a channel in confirm mode, and a `write` returns
//! only once the broker has confirmed every message of the batch (stored in the queue, or in
//! every queue the exchange routed it to). So at a checkpoint barrier everything written
//! before it is in RabbitMQ: at least once. A failed publish (the connection lost, the
//! server restarting) is retried on a new connection with the whole batch, up to the connect
//! timeout, so a replay can duplicate messages. Messages are `mandatory`: one the exchange
//! cannot route (no such queue) fails the job instead of vanishing.
//!
//! Exactly once is not offered: AMQP 0.9.1 has no deduplication by message id (the
//! `message_id` property is set, `<writer>-<n>`, for consumers that deduplicate).

use super::{rabbitmq_error, RabbitMqConnection, RabbitMqUri};
use crate::error::{ConnectorError, Result as ConnectorResult};
use crate::io_runtime::run;
use crate::json::json_values;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use oxflow_runtime::clock::{Clock, SystemClock};
use oxflow_runtime::sink::{PendingCommit, Sink, SinkWriter};
use oxflow_runtime::{Result, SubtaskInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Settings of a [`RabbitMqSink`].
#[derive(Debug, Clone)]
pub struct RabbitMqSinkConfig {
    /// Server, credentials, vhost.
    pub connection: RabbitMqConnection,
    /// The exchange; empty: the default exchange (routing key = queue name).
    pub exchange: String,
    /// The routing key of every message.
    pub routing_key: String,
}

impl RabbitMqSinkConfig {
    /// Settings from a parsed `rabbitmq://HOST:PORT/QUEUE` URI: messages go to QUEUE through
    /// the default exchange, or, with `exchange=X`, to exchange X with routing key QUEUE (or
    /// `routing-key=K`). Options also: `vhost`, `connect-timeout-ms`.
    pub fn from_uri(uri: &RabbitMqUri) -> ConnectorResult<Self> {
        uri.check_options(&["exchange", "routing-key", "vhost", "connect-timeout-ms"])?;
        let [queue] = uri.queues.as_slice() else {
            return Err(ConnectorError::Config {
                connector: "rabbitmq sink",
                reason: format!(
                    "a sink publishes to one queue (or routing key), not {}",
                    uri.queues.join(",")
                ),
            });
        };
        let option = |k: &str| uri.options.get(k).cloned();
        Ok(RabbitMqSinkConfig {
            connection: uri.connection()?,
            exchange: option("exchange").unwrap_or_default(),
            routing_key: option("routing-key").unwrap_or_else(|| queue.clone()),
        })
    }
}

/// Publishes JSON messages to a RabbitMQ exchange (the default one: to a queue).
#[derive(Debug, Clone)]
pub struct RabbitMqSink {
    config: RabbitMqSinkConfig,
    published: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
}

/// Tells apart the writers of this process (their message ids).
static NEXT_WRITER: AtomicU64 = AtomicU64::new(0);

impl RabbitMqSink {
    /// A sink with `config`; checks the settings, not the server (a writer does that).
    pub fn try_new(config: RabbitMqSinkConfig) -> ConnectorResult<Self> {
        if config.routing_key.is_empty() && config.exchange.is_empty() {
            return Err(ConnectorError::Config {
                connector: "rabbitmq sink",
                reason: "the default exchange needs a queue name".into(),
            });
        }
        Ok(RabbitMqSink {
            config,
            published: Arc::default(),
            retries: Arc::default(),
        })
    }

    /// Messages the broker confirmed so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Batches published again after a failure (each may have duplicated messages).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// A connection and a channel in confirm mode; with the default exchange the queue must
    /// exist (a typo must not publish into nothing).
    async fn open(
        config: RabbitMqSinkConfig,
    ) -> ConnectorResult<(lapin::Connection, lapin::Channel)> {
        let connection = config.connection.connect_with_retry().await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| rabbitmq_error("opening a channel", e))?;
        if config.exchange.is_empty() {
            channel
                .queue_declare(
                    config.routing_key.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    rabbitmq_error(format!("looking up queue {}", config.routing_key), e)
                })?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| rabbitmq_error("turning on publisher confirms", e))?;
        Ok((connection, channel))
    }
}

/// Publishes `messages` and waits for every confirm: all stored, or an error.
async fn publish_all(
    channel: lapin::Channel,
    config: RabbitMqSinkConfig,
    messages: Arc<Vec<(String, bytes::Bytes)>>,
) -> ConnectorResult<()> {
    let target = if config.exchange.is_empty() {
        format!("queue {}", config.routing_key)
    } else {
        format!("exchange {}", config.exchange)
    };
    let failed = |e: &dyn std::fmt::Display| rabbitmq_error(format!("publishing to {target}"), e);
    let mut confirms = Vec::with_capacity(messages.len());
    for (id, payload) in messages.iter() {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(id.as_str().into());
        let confirm = channel
            .basic_publish(
                config.exchange.as_str().into(),
                config.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(|e| failed(&e))?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match confirm.await.map_err(|e| failed(&e))? {
            lapin::Confirmation::Ack(None) => {}
            lapin::Confirmation::Ack(Some(_)) => {
                return Err(ConnectorError::Config {
                    connector: "rabbitmq sink",
                    reason: format!(
                        "{target} routes no message with routing key `{}` to a queue",
                        config.routing_key
                    ),
                })
            }
            lapin::Confirmation::Nack(_) => {
                return Err(failed(&"the broker refused a message (nack)"))
            }
            lapin::Confirmation::NotRequested => {
                return Err(failed(&"the channel is not in confirm mode"))
            }
        }
    }
    Ok(())
}

/// Opens a channel, publishes `messages` with confirms, and closes it.
pub(super) fn publish_once(
    config: RabbitMqSinkConfig,
    messages: Vec<(String, bytes::Bytes)>,
) -> ConnectorResult<()> {
    run(async move {
        let (connection, channel) = RabbitMqSink::open(config.clone()).await?;
        publish_all(channel, config, Arc::new(messages)).await?;
        let _ = connection.close(200, "published".into()).await;
        Ok(())
    })
}

struct RabbitMqWriter {
    sink: RabbitMqSink,
    name: String,
    next: u64,
    buffer: Vec<u8>,
    open: Option<(lapin::Connection, lapin::Channel)>,
}

impl RabbitMqWriter {
    /// Publishes one batch's messages, reconnecting and resending while the server cannot be
    /// reached, up to the connect timeout.
    fn publish(&mut self, messages: Vec<(String, bytes::Bytes)>) -> ConnectorResult<()> {
        let messages = Arc::new(messages);
        let clock = SystemClock::new();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let config = self.sink.config.clone();
            let sent = match &self.open {
                Some((_, channel)) => {
                    let (channel, messages) = (channel.clone(), messages.clone());
                    run(publish_all(channel, config, messages))
                }
                None => match run(RabbitMqSink::open(config)) {
                    Ok(open) => {
                        self.open = Some(open);
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match sent {
                Ok(()) => {
                    self.sink
                        .published
                        .fetch_add(messages.len() as u64, Ordering::Relaxed);
                    if attempt > 0 {
                        self.sink.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                // A message nobody can route, or a missing queue: retrying cannot help.
                Err(e @ ConnectorError::Config { .. }) => return Err(e),
                Err(e) if e.to_string().contains("NOT_FOUND") => return Err(e),
                Err(e) => match self.sink.config.connection.connect_timeout {
                    Some(limit) if clock.elapsed() < limit => {
                        tracing::warn!(error = %e, "publishing to RabbitMQ failed, retrying on a new connection");
                        self.open = None;
                        attempt += 1;
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                    _ => return Err(e),
                },
            }
        }
    }
}

impl Drop for RabbitMqWriter {
    fn drop(&mut self) {
        if let Some((connection, _)) = self.open.take() {
            let _ = run(async move { connection.close(200, "oxflow: writer done".into()).await });
        }
    }
}

impl SinkWriter for RabbitMqWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let values = json_values(batch, &mut self.buffer)?;
        let messages = values
            .into_iter()
            .map(|v| {
                self.next += 1;
                (format!("{}-{}", self.name, self.next), v)
            })
            .collect();
        Ok(self.publish(messages)?)
    }
    fn finish(&mut self) -> Result<Option<PendingCommit>> {
        Ok(None)
    }
}

impl Sink for RabbitMqSink {
    fn name(&self) -> String {
        if self.config.exchange.is_empty() {
            format!("rabbitmq:{}", self.config.routing_key)
        } else {
            format!(
                "rabbitmq:{}/{}",
                self.config.exchange, self.config.routing_key
            )
        }
    }
    fn create_writer(&self, subtask: SubtaskInfo, _: SchemaRef) -> Result<Box<dyn SinkWriter>> {
        let name = format!(
            "oxflow-{}-{}-{}",
            std::process::id(),
            NEXT_WRITER.fetch_add(1, Ordering::Relaxed),
            subtask.index
        );
        Ok(Box::new(RabbitMqWriter {
            sink: self.clone(),
            name,
            next: 0,
            buffer: Vec::new(),
            open: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_uris_name_one_queue_or_a_routing_key() {
        let uri = RabbitMqUri::parse("rabbitmq://h:1/out").unwrap();
        let c = RabbitMqSinkConfig::from_uri(&uri).unwrap();
        assert_eq!((c.exchange.as_str(), c.routing_key.as_str()), ("", "out"));
        let uri = RabbitMqUri::parse("rabbitmq://h:1/out?exchange=x&routing-key=k").unwrap();
        let c = RabbitMqSinkConfig::from_uri(&uri).unwrap();
        assert_eq!((c.exchange.as_str(), c.routing_key.as_str()), ("x", "k"));
        let uri = RabbitMqUri::parse("rabbitmq://h:1/a,b").unwrap();
        let e = RabbitMqSinkConfig::from_uri(&uri).unwrap_err().to_string();
        assert!(e.contains("one queue"), "{e}");
        let uri = RabbitMqUri::parse("rabbitmq://h:1/a?mode=stream").unwrap();
        let e = RabbitMqSinkConfig::from_uri(&uri).unwrap_err().to_string();
        assert!(e.contains("unknown option `mode`"), "{e}");
    }
}
