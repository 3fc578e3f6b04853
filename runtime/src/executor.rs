//! Runs a job graph: one thread per subtask, bounded channels between stages.
//!
//! Threads rather than async tasks: every subtask is CPU-bound on Arrow kernels, and a
//! dedicated thread lets sources and sinks block (files, stdout, librdkafka) without starving
//! anyone. A channel carries `(input index, message)` so a task with several inputs can keep
//! a watermark per input.

// The executor measures real elapsed time (job duration, time blocked on a full channel);
// operator logic never sees it.
#![allow(clippy::disallowed_methods)]

use crate::clock::Clock;
use crate::error::{Result, RuntimeError};
use crate::exchange::{Partitioner, Partitioning};
use crate::graph::{JobGraph, StageInput};
use crate::message::{EventTime, Message};
use crate::metrics::{Counter, JobMetrics};
use crate::operator::{Operator, Output, SubtaskInfo};
use crate::sink::SinkWriter;
use crate::source::SourcePoll;
use crate::watermark::{InputWatermarks, WatermarkGenerator, WatermarkUpdate};
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Envelope = (usize, Message);

/// Lets the owner of a running job stop it.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Asks every subtask to stop; the job then ends with [`RuntimeError::Cancelled`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Wall time from start to the last subtask's end.
    pub elapsed: Duration,
    /// Every counter of the job.
    pub metrics: Vec<(String, u64)>,
    /// Rows the sink received.
    pub output_rows: u64,
}

/// Runs `graph` to completion on the calling thread (subtasks on their own threads).
pub fn execute(
    graph: JobGraph,
    metrics: JobMetrics,
    clock: Arc<dyn Clock>,
    cancel: CancelHandle,
) -> Result<JobReport> {
    graph.validate()?;
    let schemas = graph.output_schemas()?;
    let started = Instant::now();
    let n = graph.stages.len();

    // Receivers of each stage's subtasks (none for the source stage).
    let mut receivers: Vec<Vec<Receiver<Envelope>>> = Vec::with_capacity(n);
    let mut senders: Vec<Vec<SyncSender<Envelope>>> = Vec::with_capacity(n);
    for stage in &graph.stages {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..stage.parallelism)
            .map(|_| sync_channel(graph.channel_capacity))
            .unzip();
        senders.push(tx);
        receivers.push(rx);
    }

    let mut handles = Vec::new();
    let mut sink_rows = Counter::default();
    for (s, stage) in graph.stages.iter().enumerate() {
        let prefix = format!("stage{s}.{}", stage.name);
        let records_in = metrics.counter(&format!("{prefix}.records_in"));
        let records_out = metrics.counter(&format!("{prefix}.records_out"));
        if stage.sink.is_some() {
            sink_rows = records_out.clone();
        }
        let backpressure = metrics.counter(&format!("{prefix}.backpressure_ms"));
        for op in &stage.operators {
            for (name, counter) in op.counters() {
                metrics.register(&format!("{prefix}.{}.{name}", op.name()), counter);
            }
        }
        // Subtask i of this stage takes the i-th receiver (unused for a source stage).
        let mut stage_receivers = std::mem::take(&mut receivers[s]).into_iter();
        for index in 0..stage.parallelism {
            let receiver = stage_receivers.next();
            let info = SubtaskInfo {
                index,
                parallelism: stage.parallelism,
                max_parallelism: graph.max_parallelism,
            };
            let task = format!("{}[{}/{}]", stage.name, index + 1, stage.parallelism);
            let operators = stage
                .operators
                .iter()
                .map(|f| f.create(info))
                .collect::<Result<Vec<_>>>()?;
            let downstream = match (&stage.sink, graph.stages.get(s + 1)) {
                (Some(sink), _) => Downstream::Sink(sink.create_writer(info, schemas[s].clone())?),
                (None, Some(next)) => {
                    let partitioning = match &next.input {
                        StageInput::Exchange(p) => p.clone(),
                        StageInput::Source { .. } => {
                            unreachable!("validated: only stage 0 reads a source")
                        }
                    };
                    Downstream::Exchange {
                        partitioner: Partitioner::try_new(
                            &partitioning,
                            index,
                            next.parallelism,
                            graph.max_parallelism,
                            &schemas[s],
                        )?,
                        forward: partitioning == Partitioning::Forward,
                        index,
                        senders: senders[s + 1].clone(),
                        backpressure: backpressure.clone(),
                        cancel: cancel.clone(),
                    }
                }
                (None, None) => unreachable!("validated: the last stage has a sink"),
            };
            let chain = Chain {
                operators,
                outputs: Vec::new(),
                downstream,
                records_out: records_out.clone(),
            };
            let body: Box<dyn FnOnce() -> Result<()> + Send> = match &stage.input {
                StageInput::Source { source, watermarks } => {
                    let reader = source.create_reader(info)?;
                    let generator = watermarks.clone().map(WatermarkGenerator::new);
                    let idle_timeout = watermarks.as_ref().and_then(|w| w.idle_timeout);
                    let (clock, cancel, records_in) =
                        (clock.clone(), cancel.clone(), records_in.clone());
                    Box::new(move || {
                        run_source(SourceTask {
                            reader,
                            generator,
                            idle_timeout,
                            chain,
                            clock,
                            cancel,
                            records_in,
                        })
                    })
                }
                StageInput::Exchange(p) => {
                    let inputs = if *p == Partitioning::Forward {
                        1
                    } else {
                        graph.stages[s - 1].parallelism
                    };
                    let rx = receiver.expect("one receiver per subtask");
                    let (cancel, records_in) = (cancel.clone(), records_in.clone());
                    Box::new(move || run_exchange_input(rx, inputs, chain, cancel, records_in))
                }
            };
            let cancel = cancel.clone();
            let name = task.clone();
            let handle = std::thread::Builder::new()
                .name(task.clone())
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
                        .unwrap_or_else(|payload| {
                            let message = payload
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "non-string panic".into());
                            Err(RuntimeError::Panic {
                                task: name.clone(),
                                message,
                            })
                        });
                    if result.is_err() {
                        cancel.cancel();
                    }
                    result.map_err(|e| match e {
                        RuntimeError::Cancelled | RuntimeError::Panic { .. } => e,
                        other => RuntimeError::Task {
                            task: name,
                            source: Box::new(other),
                        },
                    })
                })
                .map_err(|e| RuntimeError::io(format!("spawning thread for {task}"), e))?;
            handles.push(handle);
        }
    }
    // The executor's own copies must go, or the first stage's receivers would never close.
    drop(senders);

    let mut first_error: Option<RuntimeError> = None;
    for handle in handles {
        let result = handle.join().unwrap_or_else(|_| {
            Err(RuntimeError::Panic {
                task: "unknown".into(),
                message: "thread panicked".into(),
            })
        });
        if let Err(e) = result {
            let replace = match &first_error {
                None => true,
                Some(RuntimeError::Cancelled) => !matches!(e, RuntimeError::Cancelled),
                Some(_) => false,
            };
            if replace {
                first_error = Some(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(JobReport {
            elapsed: started.elapsed(),
            metrics: metrics.snapshot(),
            output_rows: sink_rows.get(),
        }),
    }
}

enum Downstream {
    Exchange {
        partitioner: Partitioner,
        forward: bool,
        index: usize,
        senders: Vec<SyncSender<Envelope>>,
        backpressure: Counter,
        cancel: CancelHandle,
    },
    Sink(Box<dyn SinkWriter>),
}

fn send(
    sender: &SyncSender<Envelope>,
    envelope: Envelope,
    backpressure: &Counter,
    cancel: &CancelHandle,
) -> Result<()> {
    match sender.try_send(envelope) {
        Ok(()) => Ok(()),
        Err(TrySendError::Disconnected(_)) => Err(RuntimeError::Cancelled),
        Err(TrySendError::Full(mut envelope)) => {
            // The receiver is slower than we are: wait, and count how long (backpressure).
            let started = Instant::now();
            loop {
                if cancel.is_cancelled() {
                    return Err(RuntimeError::Cancelled);
                }
                match sender.try_send(envelope) {
                    Ok(()) => break,
                    Err(TrySendError::Disconnected(_)) => return Err(RuntimeError::Cancelled),
                    Err(TrySendError::Full(e)) => {
                        envelope = e;
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
            backpressure.add(started.elapsed().as_millis() as u64);
            Ok(())
        }
    }
}

impl Downstream {
    fn data(&mut self, batch: RecordBatch) -> Result<()> {
        match self {
            Downstream::Sink(writer) => writer.write(&batch),
            Downstream::Exchange {
                partitioner,
                forward,
                index,
                senders,
                backpressure,
                cancel,
            } => {
                let input = if *forward { 0 } else { *index };
                partitioner.partition(batch, |target, part| {
                    send(
                        &senders[target],
                        (input, Message::Data(part)),
                        backpressure,
                        cancel,
                    )
                })
            }
        }
    }

    fn control(&mut self, message: Message) -> Result<()> {
        match self {
            Downstream::Sink(writer) => match message {
                Message::EndOfStream => writer.finish(),
                _ => Ok(()),
            },
            Downstream::Exchange {
                forward,
                index,
                senders,
                backpressure,
                cancel,
                ..
            } => {
                if *forward {
                    send(&senders[*index], (0, message), backpressure, cancel)
                } else {
                    for sender in senders.iter() {
                        send(sender, (*index, message.clone()), backpressure, cancel)?;
                    }
                    Ok(())
                }
            }
        }
    }
}

/// The operators of one subtask, fed in order, ending downstream.
struct Chain {
    operators: Vec<Box<dyn Operator>>,
    outputs: Vec<Output>,
    downstream: Downstream,
    records_out: Counter,
}

impl Chain {
    fn output(&mut self, level: usize) -> Output {
        if self.outputs.len() < self.operators.len() {
            self.outputs
                .resize_with(self.operators.len(), Output::default);
        }
        std::mem::take(&mut self.outputs[level])
    }

    fn data(&mut self, level: usize, batch: RecordBatch) -> Result<()> {
        if level == self.operators.len() {
            self.records_out.add(batch.num_rows() as u64);
            return self.downstream.data(batch);
        }
        let mut out = self.output(level);
        self.operators[level].on_batch(batch, &mut out)?;
        for b in out.drain() {
            self.data(level + 1, b)?;
        }
        self.outputs[level] = out;
        Ok(())
    }

    /// Runs `f` on every operator in order, each one's output going through the rest.
    fn each_operator(
        &mut self,
        mut f: impl FnMut(&mut dyn Operator, &mut Output) -> Result<()>,
    ) -> Result<()> {
        for level in 0..self.operators.len() {
            let mut out = self.output(level);
            f(self.operators[level].as_mut(), &mut out)?;
            for b in out.drain() {
                self.data(level + 1, b)?;
            }
            self.outputs[level] = out;
        }
        Ok(())
    }

    fn watermark(&mut self, wm: EventTime) -> Result<()> {
        self.each_operator(|op, out| op.on_watermark(wm, out))?;
        self.downstream.control(Message::Watermark(wm))
    }

    fn end(&mut self) -> Result<()> {
        self.each_operator(|op, out| op.on_end_of_input(out))?;
        self.downstream.control(Message::EndOfStream)
    }
}

struct SourceTask {
    reader: Box<dyn crate::source::SourceReader>,
    generator: Option<WatermarkGenerator>,
    idle_timeout: Option<Duration>,
    chain: Chain,
    clock: Arc<dyn Clock>,
    cancel: CancelHandle,
    records_in: Counter,
}

fn run_source(mut t: SourceTask) -> Result<()> {
    let mut pending = Vec::new();
    let mut last_data = t.clock.elapsed();
    let mut idle = false;
    loop {
        if t.cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        match t.reader.poll_next()? {
            SourcePoll::Batch(batch) if batch.num_rows() == 0 => {}
            SourcePoll::Batch(batch) => {
                t.records_in.add(batch.num_rows() as u64);
                last_data = t.clock.elapsed();
                idle = false;
                match &mut t.generator {
                    None => t.chain.data(0, batch)?,
                    Some(generator) => {
                        generator.on_batch(batch, &mut pending)?;
                        for message in pending.drain(..) {
                            match message {
                                Message::Data(b) => t.chain.data(0, b)?,
                                Message::Watermark(w) => t.chain.watermark(w)?,
                                Message::Idle | Message::EndOfStream => {
                                    unreachable!(
                                        "a watermark generator emits only data and watermarks"
                                    )
                                }
                            }
                        }
                    }
                }
            }
            SourcePoll::Pending(wait) => {
                if let Some(timeout) = t.idle_timeout {
                    if !idle && t.clock.elapsed().saturating_sub(last_data) >= timeout {
                        idle = true;
                        t.chain.downstream.control(Message::Idle)?;
                    }
                }
                t.clock.sleep(wait);
            }
            SourcePoll::Finished => return t.chain.end(),
        }
    }
}

fn run_exchange_input(
    rx: Receiver<Envelope>,
    inputs: usize,
    mut chain: Chain,
    cancel: CancelHandle,
    records_in: Counter,
) -> Result<()> {
    let mut watermarks = InputWatermarks::new(inputs);
    loop {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        let (input, message) = rx.recv().map_err(|_| RuntimeError::Cancelled)?;
        let update = match message {
            Message::Data(batch) => {
                watermarks.on_data(input);
                records_in.add(batch.num_rows() as u64);
                chain.data(0, batch)?;
                WatermarkUpdate::default()
            }
            Message::Watermark(w) => watermarks.on_watermark(input, w),
            Message::Idle => watermarks.on_idle(input),
            Message::EndOfStream => watermarks.on_end(input),
        };
        if let Some(w) = update.advanced {
            chain.watermark(w)?;
        }
        if update.idle {
            chain.downstream.control(Message::Idle)?;
        }
        if watermarks.all_ended() {
            return chain.end();
        }
    }
}
