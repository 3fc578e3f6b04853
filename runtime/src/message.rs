//! What travels on a stream: data and control, in band and in order.

use datafusion::arrow::record_batch::RecordBatch;

/// Event time in milliseconds since the Unix epoch (the unit of `Timestamp(Millisecond)`).
pub type EventTime = i64;

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
