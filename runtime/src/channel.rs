//! Channels between tasks, behind two small traits.
//!
//! A task sends on a [`ChannelSender`] per target task and reads one [`Inbox`] that merges
//! every channel to it; a message travels with the number of the channel it came on (see
//! [`crate::plan`]), so the task can keep a watermark and a barrier alignment per channel.
//! Data, watermarks, barriers and end of input go in band, in order. A channel is bounded:
//! a full one makes its sender wait, which is how backpressure reaches the sources.
//!
//! [`LocalChannels`] are in-memory channels between threads of this process (what every job
//! runs on today). A remote implementation carries the same envelopes between processes;
//! the tasks do not change.

use crate::error::{Result, RuntimeError};
use crate::message::Message;
use crate::plan::{PhysicalPlan, TaskId};
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// A message and the number of the channel it travels on, in the receiver's inbox.
pub type Envelope = (usize, Message);

/// What became of a message offered to a channel.
pub enum Offer {
    /// It is in the channel.
    Sent,
    /// The channel is full: the message comes back, to offer again later.
    Full(Envelope),
    /// The receiving task is gone.
    Closed,
}

/// The sending end of a channel to one task.
pub trait ChannelSender: Send {
    /// Offers `envelope` without waiting.
    fn try_send(&self, envelope: Envelope) -> Offer;
}

/// Every channel to one task, merged in order of arrival (each channel keeps its own order).
pub trait Inbox: Send {
    /// The next message; `None` once every sender is gone.
    fn recv(&mut self) -> Option<Envelope>;
}

/// The channels of the tasks a launcher runs.
pub trait Channels {
    /// The inbox of task `id`; each is handed out once.
    fn inbox(&mut self, id: TaskId) -> Result<Box<dyn Inbox>>;
    /// A sender to task `id`.
    fn sender(&self, id: TaskId) -> Result<Box<dyn ChannelSender>>;
}

/// Bounded in-memory channels between the threads of this process, one inbox per task.
/// Dropping this drops its own senders: an inbox closes once the tasks sending to it end.
pub struct LocalChannels {
    senders: BTreeMap<TaskId, SyncSender<Envelope>>,
    inboxes: BTreeMap<TaskId, Receiver<Envelope>>,
}

impl LocalChannels {
    /// An inbox for every task of `plan` that reads channels, each holding at most the
    /// plan's channel capacity of messages.
    pub fn new(plan: &PhysicalPlan) -> LocalChannels {
        let (mut senders, mut inboxes) = (BTreeMap::new(), BTreeMap::new());
        for task in plan.tasks.iter().filter(|t| !t.reads_source) {
            let (tx, rx) = sync_channel(plan.channel_capacity);
            senders.insert(task.id, tx);
            inboxes.insert(task.id, rx);
        }
        LocalChannels { senders, inboxes }
    }
}

fn no_channel(id: TaskId, what: &str) -> RuntimeError {
    RuntimeError::InvalidJob(format!(
        "no {what} for subtask {} of stage {}",
        id.subtask, id.stage
    ))
}

impl Channels for LocalChannels {
    fn inbox(&mut self, id: TaskId) -> Result<Box<dyn Inbox>> {
        let rx = self
            .inboxes
            .remove(&id)
            .ok_or_else(|| no_channel(id, "inbox"))?;
        Ok(Box::new(LocalInbox(rx)))
    }

    fn sender(&self, id: TaskId) -> Result<Box<dyn ChannelSender>> {
        let tx = self
            .senders
            .get(&id)
            .ok_or_else(|| no_channel(id, "channel"))?;
        Ok(Box::new(LocalSender(tx.clone())))
    }
}

pub(crate) struct LocalSender(pub(crate) SyncSender<Envelope>);

impl ChannelSender for LocalSender {
    fn try_send(&self, envelope: Envelope) -> Offer {
        match self.0.try_send(envelope) {
            Ok(()) => Offer::Sent,
            Err(TrySendError::Full(envelope)) => Offer::Full(envelope),
            Err(TrySendError::Disconnected(_)) => Offer::Closed,
        }
    }
}

struct LocalInbox(Receiver<Envelope>);

impl Inbox for LocalInbox {
    fn recv(&mut self) -> Option<Envelope> {
        self.0.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{TaskOutput, TaskPlan};
    use crate::SubtaskInfo;

    fn task(stage: usize, subtask: usize, reads_source: bool) -> TaskPlan {
        TaskPlan {
            id: TaskId { stage, subtask },
            name: format!("t{stage}.{subtask}"),
            info: SubtaskInfo {
                index: subtask,
                parallelism: 1,
                max_parallelism: 128,
            },
            key_groups: 0..128,
            keyed: false,
            reads_source,
            inbound: if reads_source { vec![] } else { vec![0] },
            output: TaskOutput::Sink,
        }
    }

    /// A bounded channel hands back what it cannot take, keeps order, and closes when the
    /// last sender is gone.
    #[test]
    fn local_channels_are_bounded_ordered_and_close() {
        let plan = PhysicalPlan {
            tasks: vec![task(0, 0, true), task(1, 0, false)],
            channel_capacity: 2,
        };
        let mut channels = LocalChannels::new(&plan);
        let to = TaskId {
            stage: 1,
            subtask: 0,
        };
        assert!(channels
            .inbox(TaskId {
                stage: 0,
                subtask: 0
            })
            .is_err());
        let mut inbox = channels.inbox(to).unwrap();
        assert!(channels.inbox(to).is_err(), "an inbox is handed out once");
        let sender = channels.sender(to).unwrap();
        drop(channels);
        for w in 1..=2 {
            assert!(matches!(
                sender.try_send((0, Message::Watermark(w))),
                Offer::Sent
            ));
        }
        assert!(matches!(
            sender.try_send((0, Message::Watermark(3))),
            Offer::Full((0, Message::Watermark(3)))
        ));
        assert!(matches!(inbox.recv(), Some((0, Message::Watermark(1)))));
        assert!(matches!(inbox.recv(), Some((0, Message::Watermark(2)))));
        drop(sender);
        assert!(inbox.recv().is_none());
    }
}
