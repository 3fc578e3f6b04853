//! Reading classic and quorum queues: competing consumers, acknowledged at checkpoints.
//!
//! Every split consumes every queue of the URI (RabbitMQ spreads a queue's messages over its
//! consumers), one channel per queue, with manual acknowledgements. A queue has no position to
//! go back to: what a restore needs is that the server still holds every message a completed
//! checkpoint does not cover. So the reader remembers, at each barrier, the last delivery tag
//! it had emitted per queue, and acknowledges up to it (`multiple`) only when that checkpoint
//! completes, after the sink's commit. A crash before that closes the channels and the server
//! delivers those messages again, to whichever consumer: at least once, and the redelivered
//! ones are counted.
//!
//! Without checkpoints the reader acknowledges each batch as it emits it (a crash then loses
//! what was in flight: at most once), since no checkpoint would ever free the prefetch window.
//!
//! A delivery tag belongs to its channel: after a reconnect the old channel's tags mean
//! nothing (the server has put those messages back), so every tag travels with the channel's
//! generation and a stale acknowledgement is dropped.

use super::source::{consumer_of, give_up, send, Chunk, Message, RabbitMqSourceConfig};
use super::ConnectorError;
use lapin::options::{BasicAckOptions, BasicCancelOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{Sender, UnboundedReceiver};

/// A delivery a queue consumer handed over: its channel's generation and tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Delivered {
    pub generation: u64,
    pub tag: u64,
}

/// How long a bounded read waits without a delivery before it asks whether the queue is empty.
const QUIET: Duration = Duration::from_millis(300);

/// Consumes every queue of `config` for one split; `acks[i]` brings the acknowledgements
/// for queue `i`.
pub(crate) async fn read_queues(
    config: RabbitMqSourceConfig,
    tx: Sender<Chunk>,
    available: Arc<AtomicBool>,
    acks: Vec<UnboundedReceiver<Delivered>>,
) {
    if !send(&tx, Chunk::Partitions(config.queues.clone())).await {
        return;
    }
    let consumers: Vec<_> = config
        .queues
        .iter()
        .zip(acks)
        .enumerate()
        .map(|(i, (queue, acks))| {
            read_queue(
                config.clone(),
                i,
                queue.clone(),
                tx.clone(),
                available.clone(),
                acks,
            )
        })
        .collect();
    futures::future::join_all(consumers).await;
}

/// What one turn of the consumer loop saw.
enum Event {
    Ack(Option<Delivered>),
    Delivery(Option<Option<lapin::Result<Box<lapin::message::Delivery>>>>),
}

/// Consumes `queue` until the reader goes away, reconnecting after errors. Bounded, it ends
/// once the queue holds no ready message and none came for [`QUIET`], then stays to send the
/// acknowledgements of the checkpoints that complete after it.
async fn read_queue(
    config: RabbitMqSourceConfig,
    partition: usize,
    queue: String,
    tx: Sender<Chunk>,
    available: Arc<AtomicBool>,
    mut acks: UnboundedReceiver<Delivered>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut generation = 0;
    let mut ended = false;
    loop {
        let opened = async {
            let connection = config.connection.connect_with_retry().await?;
            let what = format!("queue {queue}");
            let arguments = FieldTable::default();
            let (channel, consumer) =
                consumer_of(&connection, &config, &what, &queue, arguments).await?;
            Ok::<_, ConnectorError>((connection, channel, consumer))
        }
        .await;
        let (_connection, channel, mut consumer) = match opened {
            Ok(c) => c,
            Err(e) => {
                let what = format!("queue {queue}");
                if give_up(e, &what, &config, &tx, &available, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        generation += 1;
        available.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        let mut batch: Vec<Message> = Vec::new();
        let mut redelivered = 0;
        let mut broken = false;
        while !broken {
            let quiet = if config.bounded {
                QUIET
            } else {
                Duration::from_secs(3600)
            };
            let event = tokio::select! {
                ack = acks.recv() => Event::Ack(ack),
                item = super::source::next_delivery(&mut consumer, !batch.is_empty(), quiet), if !ended => Event::Delivery(item.map(|d| d.map(|r| r.map(Box::new)))),
            };
            match event {
                // The reader is gone (the job ended or failed): what it did not acknowledge
                // goes back to the queue when the connection closes.
                Event::Ack(None) => {
                    let _ = channel.close(200, "oxflow: reader closed".into()).await;
                    return;
                }
                Event::Ack(Some(d)) => {
                    if d.generation != generation {
                        continue;
                    }
                    let multiple = BasicAckOptions { multiple: true };
                    if let Err(e) = channel.basic_ack(d.tag, multiple).await {
                        tracing::warn!(%queue, error = %e, "acknowledging failed, reconnecting: the messages will be delivered again");
                        broken = true;
                    }
                }
                Event::Delivery(Some(Some(Ok(d)))) => {
                    redelivered += u64::from(d.redelivered);
                    batch.push(Message {
                        offset: d.delivery_tag,
                        payload: d.data,
                    });
                    if batch.len() < config.batch_size {
                        continue;
                    }
                }
                Event::Delivery(Some(Some(Err(e)))) => {
                    available.store(false, Ordering::Relaxed);
                    tracing::warn!(%queue, error = %e, "RabbitMQ queue consumer failed, reconnecting");
                    broken = true;
                }
                Event::Delivery(Some(None)) => broken = true,
                Event::Delivery(None) if batch.is_empty() && config.bounded => {
                    // Quiet for a while: a bounded read ends when nothing is ready either
                    // (what other consumers hold unacknowledged is theirs to emit). An
                    // unbounded one just waits on.
                    let ready = channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..Default::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                        .map(|q| q.message_count());
                    match ready {
                        Ok(0) => {
                            ended = true;
                            let tag = consumer.tag();
                            let _ = channel
                                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                                .await;
                            if !send(&tx, Chunk::End(partition)).await {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(%queue, error = %e, "cannot ask a queue's depth, reconnecting");
                            broken = true;
                        }
                    }
                    continue;
                }
                Event::Delivery(None) => {}
            }
            if !batch.is_empty() {
                let chunk = Chunk::Delivered {
                    partition,
                    generation,
                    redelivered: std::mem::take(&mut redelivered),
                    messages: std::mem::take(&mut batch),
                };
                if !send(&tx, chunk).await {
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let chunk = Chunk::Delivered {
                partition,
                generation,
                redelivered,
                messages: batch,
            };
            if !send(&tx, chunk).await {
                return;
            }
        }
        if ended {
            // Read to its end: the server has put back what this channel held, and no
            // acknowledgement can reach it now; wait for the reader to go.
            while acks.recv().await.is_some() {}
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}
