//! What travels on a stream: data and control, in band and in order.

use datafusion::arrow::record_batch::RecordBatch;

/// Event time in milliseconds since the Unix epoch (the unit of `Timestamp(Millisecond)`).
pub type EventTime = i64;

/// The longest span of event time a setting may name (a window, a lateness, a delay, a join
/// bound, a TTL): 1000 years. With event times kept within the years 1 to 9999
/// ([`crate::watermark::MAX_EVENT_TIME`]), sums of times and spans then never overflow.
pub const MAX_SPAN_MS: i64 = 1000 * 366 * 24 * 3600 * 1000;

/// `d` in milliseconds, if it is at most [`MAX_SPAN_MS`]; else an error naming `what`.
pub fn span_millis(what: &str, d: std::time::Duration) -> crate::Result<i64> {
    match i64::try_from(d.as_millis()) {
        Ok(ms) if ms <= MAX_SPAN_MS => Ok(ms),
        _ => Err(crate::RuntimeError::InvalidJob(format!(
            "{what} of {d:?} is longer than the 1000 years event-time arithmetic allows"
        ))),
    }
}

/// One element of a stream between two tasks.
///
/// Control messages are ordered with data: a watermark `w` after a batch promises that no
/// record with event time `<= w` follows on that input.
#[derive(Debug, Clone)]
pub enum Message {
    /// A batch of records.
    Data(RecordBatch),
    /// Event time has reached this point on this input.
    Watermark(EventTime),
    /// This input is idle (a source split with no data for its idleness timeout): it no longer
    /// holds back the minimum watermark until it sends data or a watermark again.
    Idle,
    /// Checkpoint barrier `n`: everything before it on this input belongs to checkpoint `n`,
    /// everything after to the next.
    Barrier(u64),
    /// This input is finished; nothing follows.
    EndOfStream,
}
