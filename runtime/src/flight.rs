//! Remote channels: a task's envelopes to a task in another process, over Arrow Flight.
//!
//! Each pair of (sending task, receiving task) in different processes is one Flight `DoPut`
//! stream, opened by the sender to the receiver's worker. Its first message names the
//! receiving task ([`StreamKey`], in the descriptor); every later one is one envelope in
//! order: a batch as Arrow IPC (its schema, and dictionaries, sent once before it), or a
//! watermark, idleness, a barrier or the end of input, with no body. The kind and the channel
//! number ride in each message's `app_metadata` (see [`EnvelopeEncoder`]), so data and control
//! stay in one ordered stream, as barrier alignment needs.
//!
//! Backpressure crosses the network: the sender's queue holds at most the plan's channel
//! capacity of envelopes ([`Offer::Full`] past it, exactly as a local channel), its stream is
//! only polled as fast as HTTP/2 flow control lets it send, and the receiver only reads the
//! next message once the task's inbox has room for the last one.
//!
//! Every stream must carry `authorization: Bearer <secret>`, the secret of its job's attempt
//! (the coordinator gives it to the attempt's workers alone); a stream that breaks before its
//! end of input cancels the receiving tasks, whose job then restarts.

// Waiting on a full inbox or for a stream's receiver to be deployed is wall time by nature.
#![allow(clippy::disallowed_methods)]

use crate::channel::{ChannelSender, Channels, Envelope, Inbox, LocalSender, Offer};
use crate::error::{Result, RuntimeError};
use crate::executor::CancelHandle;
use crate::message::Message;
use crate::plan::{PhysicalPlan, TaskId};
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::writer::{
    DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
};
use datafusion::arrow::ipc::{reader, root_as_message};
use datafusion::arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

/// The largest Flight message a worker takes (one encoded batch): far above any batch a
/// task sends, and a bound on what a bad peer can make it allocate.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How often an idle stream's connection is pinged (and twice this without an answer ends
/// it).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long a stream waits for its receiving task to be deployed (workers start a job's
/// tasks at about the same time, in no set order).
const DEPLOY_WAIT: Duration = Duration::from_secs(30);

/// The receiving task of a stream: a task of one attempt of a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamKey {
    /// The job's id.
    pub job: String,
    /// Which attempt of the job (a restart deploys new tasks under a new attempt).
    pub attempt: u64,
    /// The receiving task.
    pub task: TaskId,
}

// The kind of a message, first byte of its `app_metadata`; then the channel (u32, little
// endian) and, for a watermark or barrier, its value (8 bytes, little endian).
const KIND_SCHEMA: u8 = 1;
const KIND_DICTIONARY: u8 = 2;
const KIND_BATCH: u8 = 3;
const KIND_WATERMARK: u8 = 4;
const KIND_IDLE: u8 = 5;
const KIND_BARRIER: u8 = 6;
const KIND_END: u8 = 7;

fn metadata(kind: u8, channel: usize, value: Option<[u8; 8]>) -> Vec<u8> {
    let mut m = Vec::with_capacity(13);
    m.push(kind);
    m.extend_from_slice(&(channel as u32).to_le_bytes());
    if let Some(v) = value {
        m.extend_from_slice(&v);
    }
    m
}

fn with_metadata(mut data: FlightData, kind: u8, channel: usize) -> FlightData {
    data.app_metadata = metadata(kind, channel, None).into();
    data
}

/// Turns one stream's envelopes into Flight messages, sending each schema (and dictionary)
/// once, before the first batch that needs it.
pub struct EnvelopeEncoder {
    schema: Option<SchemaRef>,
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    context: IpcWriteContext,
    options: IpcWriteOptions,
}

impl Default for EnvelopeEncoder {
    fn default() -> Self {
        EnvelopeEncoder {
            schema: None,
            generator: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            context: IpcWriteContext::default(),
            options: IpcWriteOptions::default(),
        }
    }
}

impl EnvelopeEncoder {
    /// Appends the messages of `envelope` to `out`.
    pub fn encode(
        &mut self,
        (channel, message): Envelope,
        out: &mut Vec<FlightData>,
    ) -> Result<()> {
        let control = |kind, value: Option<[u8; 8]>| FlightData {
            app_metadata: metadata(kind, channel, value).into(),
            ..Default::default()
        };
        match message {
            Message::Data(batch) => {
                let schema = batch.schema();
                if self.schema.as_ref() != Some(&schema) {
                    // A new schema starts the dictionaries over, on both ends.
                    // The schema is written through the tracker, which numbers its
                    // dictionary fields for the batches that follow.
                    self.tracker = DictionaryTracker::new(false);
                    let data = self.generator.schema_to_bytes_with_dictionary_tracker(
                        &schema,
                        &mut self.tracker,
                        &self.options,
                    );
                    out.push(with_metadata(data.into(), KIND_SCHEMA, channel));
                    self.schema = Some(schema);
                }
                let (dictionaries, encoded) = self.generator.encode(
                    &batch,
                    &mut self.tracker,
                    &self.options,
                    &mut self.context,
                )?;
                for d in dictionaries {
                    out.push(with_metadata(d.into(), KIND_DICTIONARY, channel));
                }
                out.push(with_metadata(encoded.into(), KIND_BATCH, channel));
            }
            Message::Watermark(w) => out.push(control(KIND_WATERMARK, Some(w.to_le_bytes()))),
            Message::Idle => out.push(control(KIND_IDLE, None)),
            Message::Barrier(id) => out.push(control(KIND_BARRIER, Some(id.to_le_bytes()))),
            Message::EndOfStream => out.push(control(KIND_END, None)),
        }
        Ok(())
    }
}

/// Turns one stream's Flight messages back into envelopes. Anything malformed is an error
/// naming what was wrong (a peer is never trusted to send valid IPC).
#[derive(Default)]
pub struct EnvelopeDecoder {
    schema: Option<SchemaRef>,
    dictionaries: HashMap<i64, ArrayRef>,
}

fn bad(what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::BadInput(format!("remote channel: {what}"))
}

impl EnvelopeDecoder {
    /// The envelope `data` completes, if any (a schema or dictionary only prepares the next).
    pub fn decode(&mut self, data: FlightData) -> Result<Option<Envelope>> {
        let m = &data.app_metadata;
        if m.len() < 5 {
            return Err(bad(format!(
                "a message's metadata has {} bytes, at least 5 expected",
                m.len()
            )));
        }
        let channel = u32::from_le_bytes([m[1], m[2], m[3], m[4]]) as usize;
        let value = || -> Result<[u8; 8]> {
            m.get(5..13)
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("a watermark or barrier without its 8-byte value"))
        };
        let message = match m[0] {
            KIND_SCHEMA => {
                let schema = Schema::try_from(&data).map_err(|e| bad(format!("schema: {e}")))?;
                self.schema = Some(Arc::new(schema));
                self.dictionaries.clear();
                return Ok(None);
            }
            KIND_DICTIONARY => {
                let schema = self
                    .schema
                    .as_ref()
                    .ok_or_else(|| bad("a dictionary before any schema"))?;
                let message = root_as_message(&data.data_header)
                    .map_err(|e| bad(format!("dictionary header: {e}")))?;
                let batch = message
                    .header_as_dictionary_batch()
                    .ok_or_else(|| bad("a dictionary message without a dictionary"))?;
                reader::read_dictionary(
                    &Buffer::from(data.data_body.clone()),
                    batch,
                    schema,
                    &mut self.dictionaries,
                    &message.version(),
                )?;
                return Ok(None);
            }
            KIND_BATCH => {
                let schema = self
                    .schema
                    .clone()
                    .ok_or_else(|| bad("a batch before any schema"))?;
                let batch = arrow_flight::utils::flight_data_to_arrow_batch(
                    &data,
                    schema,
                    &self.dictionaries,
                )?;
                Message::Data(batch)
            }
            KIND_WATERMARK => Message::Watermark(i64::from_le_bytes(value()?)),
            KIND_IDLE => Message::Idle,
            KIND_BARRIER => Message::Barrier(u64::from_le_bytes(value()?)),
            KIND_END => Message::EndOfStream,
            other => return Err(bad(format!("unknown message kind {other}"))),
        };
        Ok(Some((channel, message)))
    }
}

/// Whether `given` is `Bearer <token>`, compared in constant time.
fn authorized(given: Option<&str>, token: &str) -> bool {
    let Some(given) = given.and_then(|g| g.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An inbox a remote stream may feed: the task's channel, and what to cancel when a stream
/// to it breaks.
#[derive(Clone)]
struct Registered {
    inbox: SyncSender<Envelope>,
    cancel: CancelHandle,
    failure: Failure,
    secret: Arc<str>,
}

/// The first reason a group of tasks failed for, told to its coordinator (a broken stream
/// cancels the tasks, which only say "cancelled").
#[derive(Debug, Clone, Default)]
pub struct Failure(Arc<Mutex<Option<String>>>);

impl Failure {
    /// Records `why` unless a reason is already recorded.
    pub fn set(&self, why: String) {
        let mut f = self.0.lock().expect("failure lock");
        if f.is_none() {
            *f = Some(why);
        }
    }

    /// The recorded reason.
    pub fn get(&self) -> Option<String> {
        self.0.lock().expect("failure lock").clone()
    }
}

/// The inboxes of this process's tasks that remote senders may feed, by stream key.
#[derive(Clone, Default)]
pub struct InboxRegistry(Arc<Mutex<HashMap<StreamKey, Registered>>>);

impl InboxRegistry {
    /// Lets remote streams presenting `secret` feed `inbox`, the channel of task `key`; a
    /// stream that breaks records why in `failure` and cancels `cancel`.
    pub fn register(
        &self,
        key: StreamKey,
        inbox: SyncSender<Envelope>,
        cancel: CancelHandle,
        failure: Failure,
        secret: &str,
    ) {
        self.0.lock().expect("registry lock").insert(
            key,
            Registered {
                inbox,
                cancel,
                failure,
                secret: secret.into(),
            },
        );
    }

    /// Forgets every inbox of attempt `attempt` of `job`: a stream arriving later is refused.
    pub fn remove_attempt(&self, job: &str, attempt: u64) {
        self.0
            .lock()
            .expect("registry lock")
            .retain(|k, _| !(k.job == job && k.attempt == attempt));
    }

    fn get(&self, key: &StreamKey) -> Option<Registered> {
        self.0.lock().expect("registry lock").get(key).cloned()
    }
}

/// The Flight service of a worker: takes `DoPut` streams into the registered inboxes.
pub struct ExchangeService {
    registry: InboxRegistry,
}

impl ExchangeService {
    /// A service feeding `registry`'s inboxes, each for streams presenting its secret.
    pub fn new(registry: InboxRegistry) -> ExchangeService {
        ExchangeService { registry }
    }

    /// The gRPC service, with the message size bound.
    pub fn into_server(self) -> FlightServiceServer<ExchangeService> {
        FlightServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn receive(
        &self,
        given: Option<String>,
        mut stream: Streaming<FlightData>,
    ) -> Result<(), Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty stream names no task"))?;
        let cmd = first
            .flight_descriptor
            .map(|d| d.cmd)
            .ok_or_else(|| Status::invalid_argument("the first message has no descriptor"))?;
        let key: StreamKey = serde_json::from_slice(&cmd).map_err(|e| {
            Status::invalid_argument(format!("the descriptor is not a stream key: {e}"))
        })?;
        // The receiving task may not be deployed yet: wait for it, a bounded time.
        let until = Instant::now() + DEPLOY_WAIT;
        let target = loop {
            if let Some(r) = self.registry.get(&key) {
                break r;
            }
            if Instant::now() >= until {
                return Err(Status::not_found(format!(
                    "no task {:?} of attempt {} of job {} here",
                    key.task, key.attempt, key.job
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !authorized(given.as_deref(), &target.secret) {
            return Err(Status::unauthenticated(
                "a stream needs its job's secret as a bearer token",
            ));
        }
        let mut decoder = EnvelopeDecoder::default();
        let mut ended = false;
        let broke = |why: String| {
            target.failure.set(why);
            target.cancel.cancel();
        };
        loop {
            let data = match stream.message().await {
                Ok(Some(data)) => data,
                Ok(None) if ended => return Ok(()),
                Ok(None) => {
                    broke(format!(
                        "the stream to task {:?} ended before its end of input",
                        key.task
                    ));
                    return Err(Status::aborted("ended early"));
                }
                Err(e) => {
                    broke(format!("the stream to task {:?} broke: {e}", key.task));
                    return Err(e);
                }
            };
            let mut envelope = match decoder.decode(data) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => {
                    broke(e.to_string());
                    return Err(Status::invalid_argument(e.to_string()));
                }
            };
            ended |= matches!(envelope.1, Message::EndOfStream);
            // The task's inbox is bounded: wait for room (backpressure to the sender).
            loop {
                match target.inbox.try_send(envelope) {
                    Ok(()) => break,
                    Err(TrySendError::Full(e)) => {
                        if target.cancel.is_cancelled() {
                            return Err(Status::aborted("the receiving task was cancelled"));
                        }
                        envelope = e;
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        return Err(Status::aborted("the receiving task has ended"))
                    }
                }
            }
        }
    }
}

fn unsupported<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what}: a worker only takes DoPut streams"
    )))
}

#[tonic::async_trait]
impl FlightService for ExchangeService {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.receive(given, request.into_inner()).await?;
        Ok(Response::new(futures::stream::empty().boxed()))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unsupported("Handshake")
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unsupported("ListFlights")
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unsupported("GetFlightInfo")
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unsupported("PollFlightInfo")
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unsupported("GetSchema")
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        unsupported("DoGet")
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unsupported("DoAction")
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unsupported("ListActions")
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unsupported("DoExchange")
    }
}

/// Serves `service` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: ExchangeService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    // Keepalives end streams whose peer vanished without closing them (a cut cable, a
    // partition): a stuck stream would otherwise hold its task's resources for the TCP
    // retransmission timeout, minutes.
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE * 2))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| RuntimeError::Connector(format!("the worker's Flight service failed: {e}")))
}

/// The sending end of a remote channel: envelopes queue here (bounded) and a task of the
/// async runtime streams them to the receiving task's worker.
pub struct RemoteSender {
    queue: tokio::sync::mpsc::Sender<Envelope>,
}

impl RemoteSender {
    /// Opens a stream to task `key` on the worker at `address`, on `runtime`, queueing at
    /// most `capacity` envelopes. A stream that fails records why in `failure` and cancels
    /// `cancel` (the sending tasks, which then end as cancelled).
    pub fn open(
        runtime: &tokio::runtime::Handle,
        address: SocketAddr,
        key: StreamKey,
        token: &str,
        capacity: usize,
        cancel: CancelHandle,
        failure: Failure,
    ) -> RemoteSender {
        let (queue, receiver) = tokio::sync::mpsc::channel::<Envelope>(capacity.max(1));
        let token = token.to_string();
        runtime.spawn(async move {
            let task = key.task;
            if let Err(e) = stream_to(address, key, &token, receiver).await {
                failure.set(format!(
                    "the stream to task {task:?} at {address} failed: {e}"
                ));
                cancel.cancel();
            }
        });
        RemoteSender { queue }
    }
}

async fn stream_to(
    address: SocketAddr,
    key: StreamKey,
    token: &str,
    receiver: tokio::sync::mpsc::Receiver<Envelope>,
) -> std::result::Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE * 2)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    // The receiving worker may still be starting: a few tries, a second apart.
    let mut tries = 0;
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if tries >= 10 => return Err(format!("connecting: {e}")),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let mut client = arrow_flight::FlightClient::new(channel);
    client
        .add_header("authorization", &format!("Bearer {token}"))
        .map_err(|e| e.to_string())?;
    let descriptor =
        FlightDescriptor::new_cmd(serde_json::to_vec(&key).map_err(|e| e.to_string())?);
    let first = FlightData::new().with_descriptor(descriptor);
    let encoder = Arc::new(Mutex::new(EnvelopeEncoder::default()));
    // Whatever has queued up while the last messages went out is sent together, consecutive
    // batches as one: a hash exchange cuts each batch into a piece per target, and a message
    // per piece cost more in framing, wake-ups and decoding than the copy that joins them.
    let body = tokio_stream_of(receiver)
        .ready_chunks(COALESCE_ENVELOPES)
        .flat_map(move |envelopes| {
            let mut out = Vec::new();
            let encoded = coalesce(envelopes).and_then(|envelopes| {
                let mut encoder = encoder.lock().expect("encoder lock");
                envelopes
                    .into_iter()
                    .try_for_each(|e| encoder.encode(e, &mut out))
            });
            futures::stream::iter(match encoded {
                Ok(()) => out.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(arrow_flight::error::FlightError::ExternalError(
                    Box::new(e),
                ))],
            })
        });
    let messages = futures::stream::once(async move { Ok(first) }).chain(body);
    let mut responses = client.do_put(messages).await.map_err(|e| e.to_string())?;
    while let Some(r) = responses.next().await {
        r.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The most queued envelopes a stream takes at once.
const COALESCE_ENVELOPES: usize = 64;

/// The most rows of a batch made by joining queued ones.
const COALESCE_ROWS: usize = 8192;

/// `envelopes` in order, with each run of consecutive batches of one channel and schema
/// joined into batches of up to [`COALESCE_ROWS`] rows (control messages stay between them,
/// where they were).
fn coalesce(envelopes: Vec<Envelope>) -> Result<Vec<Envelope>> {
    let mut out: Vec<Envelope> = Vec::with_capacity(envelopes.len());
    let mut run: Vec<RecordBatch> = Vec::new();
    let mut run_channel = 0;
    let flush = |run: &mut Vec<RecordBatch>, channel: usize, out: &mut Vec<Envelope>| {
        let batch = match run.len() {
            0 => return Ok(()),
            1 => run.pop().expect("one batch"),
            _ => {
                let joined = concat_batches(&run[0].schema(), run.iter())?;
                run.clear();
                joined
            }
        };
        out.push((channel, Message::Data(batch)));
        Ok::<(), RuntimeError>(())
    };
    for (channel, message) in envelopes {
        match message {
            Message::Data(batch) => {
                let fits = run.first().is_some_and(|first| {
                    channel == run_channel
                        && first.schema() == batch.schema()
                        && run.iter().map(|b| b.num_rows()).sum::<usize>() + batch.num_rows()
                            <= COALESCE_ROWS
                });
                if !fits {
                    flush(&mut run, run_channel, &mut out)?;
                }
                run_channel = channel;
                run.push(batch);
            }
            control => {
                flush(&mut run, run_channel, &mut out)?;
                out.push((channel, control));
            }
        }
    }
    flush(&mut run, run_channel, &mut out)?;
    Ok(out)
}

/// The envelopes of `receiver` as a stream, ending when every sender is gone.
fn tokio_stream_of(
    mut receiver: tokio::sync::mpsc::Receiver<Envelope>,
) -> impl futures::Stream<Item = Envelope> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

impl ChannelSender for RemoteSender {
    fn try_send(&self, envelope: Envelope) -> Offer {
        match self.queue.try_send(envelope) {
            Ok(()) => Offer::Sent,
            Err(tokio::sync::mpsc::error::TrySendError::Full(e)) => Offer::Full(e),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

/// A task's inbox fed by remote streams (and local senders): ends when the task's group is
/// cancelled, since a remote sender that vanished never closes it.
pub struct WatchedInbox {
    receiver: Receiver<Envelope>,
    cancel: CancelHandle,
}

impl WatchedInbox {
    /// `receiver`, given up once `cancel` is cancelled.
    pub fn new(receiver: Receiver<Envelope>, cancel: CancelHandle) -> WatchedInbox {
        WatchedInbox { receiver, cancel }
    }
}

impl Inbox for WatchedInbox {
    fn recv(&mut self) -> Option<Envelope> {
        loop {
            match self.receiver.recv_timeout(Duration::from_millis(100)) {
                Ok(e) => return Some(e),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if self.cancel.is_cancelled() => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// The channels of a worker's part of a job: in-memory ones between its own tasks, Flight
/// streams to tasks on other workers. Its tasks' inboxes are registered for the streams
/// other workers open to them, until the attempt is removed from the registry.
pub struct ClusterChannels {
    job: String,
    attempt: u64,
    here: BTreeMap<TaskId, SyncSender<Envelope>>,
    inboxes: BTreeMap<TaskId, Receiver<Envelope>>,
    placement: BTreeMap<TaskId, SocketAddr>,
    runtime: tokio::runtime::Handle,
    secret: String,
    capacity: usize,
    cancel: CancelHandle,
    failure: Failure,
}

/// Where a cluster's tasks run, and how its streams are authenticated.
pub struct ClusterWiring {
    /// The job's id.
    pub job: String,
    /// Its attempt.
    pub attempt: u64,
    /// The worker (Flight address) of every task of the job.
    pub placement: BTreeMap<TaskId, SocketAddr>,
    /// The attempt's secret, which its streams present.
    pub secret: String,
}

impl ClusterChannels {
    /// Channels for the tasks `here` of `plan`, their inboxes registered in `registry`;
    /// streams run on `runtime`, and one that fails cancels `cancel` with why in `failure`.
    pub fn new(
        plan: &PhysicalPlan,
        here: &[TaskId],
        wiring: ClusterWiring,
        registry: &InboxRegistry,
        runtime: tokio::runtime::Handle,
        cancel: CancelHandle,
        failure: Failure,
    ) -> ClusterChannels {
        let (mut senders, mut inboxes) = (BTreeMap::new(), BTreeMap::new());
        let reading = plan
            .tasks
            .iter()
            .filter(|t| !t.reads_source && here.contains(&t.id));
        for task in reading {
            let (tx, rx) = std::sync::mpsc::sync_channel(plan.channel_capacity);
            let key = StreamKey {
                job: wiring.job.clone(),
                attempt: wiring.attempt,
                task: task.id,
            };
            registry.register(
                key,
                tx.clone(),
                cancel.clone(),
                failure.clone(),
                &wiring.secret,
            );
            senders.insert(task.id, tx);
            inboxes.insert(task.id, rx);
        }
        ClusterChannels {
            job: wiring.job,
            attempt: wiring.attempt,
            here: senders,
            inboxes,
            placement: wiring.placement,
            runtime,
            secret: wiring.secret,
            capacity: plan.channel_capacity,
            cancel,
            failure,
        }
    }
}

impl Channels for ClusterChannels {
    fn inbox(&mut self, id: TaskId) -> Result<Box<dyn Inbox>> {
        let rx = self.inboxes.remove(&id).ok_or_else(|| {
            RuntimeError::InvalidJob(format!(
                "no inbox here for subtask {} of stage {}",
                id.subtask, id.stage
            ))
        })?;
        Ok(Box::new(WatchedInbox::new(rx, self.cancel.clone())))
    }

    fn sender(&self, id: TaskId) -> Result<Box<dyn ChannelSender>> {
        if let Some(tx) = self.here.get(&id) {
            return Ok(Box::new(LocalSender(tx.clone())));
        }
        let address = *self.placement.get(&id).ok_or_else(|| {
            RuntimeError::InvalidJob(format!(
                "subtask {} of stage {} is placed on no worker",
                id.subtask, id.stage
            ))
        })?;
        Ok(Box::new(RemoteSender::open(
            &self.runtime,
            address,
            StreamKey {
                job: self.job.clone(),
                attempt: self.attempt,
                task: id,
            },
            &self.secret,
            self.capacity,
            self.cancel.clone(),
            self.failure.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{DictionaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Int32Type;

    fn batch(values: &[i64], tags: &[&str]) -> RecordBatch {
        let tags: DictionaryArray<Int32Type> = tags.iter().copied().collect();
        RecordBatch::try_from_iter(vec![
            ("v", Arc::new(Int64Array::from(values.to_vec())) as ArrayRef),
            ("tag", Arc::new(tags) as ArrayRef),
        ])
        .unwrap()
    }

    /// Every kind of envelope survives the encoding in order, dictionaries included, and a
    /// new schema mid-stream is sent again.
    #[test]
    fn envelopes_round_trip_in_order() {
        let other = RecordBatch::try_from_iter(vec![(
            "s",
            Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef,
        )])
        .unwrap();
        let sent: Vec<Envelope> = vec![
            (2, Message::Data(batch(&[1, 2], &["a", "b"]))),
            (2, Message::Watermark(-5)),
            (3, Message::Data(batch(&[3], &["c"]))),
            (2, Message::Barrier(7)),
            (2, Message::Idle),
            (2, Message::Data(other)),
            (2, Message::EndOfStream),
        ];
        let mut encoder = EnvelopeEncoder::default();
        let mut wire = Vec::new();
        for e in sent.clone() {
            encoder.encode(e, &mut wire).unwrap();
        }
        let mut decoder = EnvelopeDecoder::default();
        let got: Vec<Envelope> = wire
            .into_iter()
            .filter_map(|d| decoder.decode(d).unwrap())
            .collect();
        assert_eq!(got.len(), sent.len());
        for ((c1, m1), (c2, m2)) in sent.iter().zip(&got) {
            assert_eq!(c1, c2);
            match (m1, m2) {
                (Message::Data(a), Message::Data(b)) => assert_eq!(a, b),
                (a, b) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
            }
        }
    }

    /// Queued batches are joined between control messages, in order, up to the row cap.
    #[test]
    fn queued_batches_are_joined_between_control_messages() {
        let big = COALESCE_ROWS - 1;
        let queued = vec![
            (1, Message::Data(batch(&[1, 2], &["a", "b"]))),
            (1, Message::Data(batch(&[3], &["c"]))),
            (1, Message::Watermark(9)),
            (1, Message::Data(batch(&[4], &["d"]))),
            (1, Message::Data(batch(&vec![5; big], &vec!["e"; big]))),
            (1, Message::Data(batch(&[6], &["f"]))),
            (1, Message::EndOfStream),
        ];
        let got = coalesce(queued).unwrap();
        let shape: Vec<String> = got
            .iter()
            .map(|(_, m)| match m {
                Message::Data(b) => format!("{}", b.num_rows()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                "3".to_string(),
                "Watermark(9)".into(),
                // 1 + big is the cap; one more row starts a new batch.
                format!("{COALESCE_ROWS}"),
                "1".into(),
                "EndOfStream".into()
            ]
        );
        let Message::Data(first) = &got[0].1 else {
            panic!("a batch first")
        };
        let values = first
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(values.values().to_vec(), vec![1, 2, 3]);
    }

    /// Malformed messages are errors that say what was wrong, never panics.
    #[test]
    fn malformed_messages_are_named_errors() {
        let mut decoder = EnvelopeDecoder::default();
        let short = FlightData {
            app_metadata: vec![KIND_BATCH].into(),
            ..Default::default()
        };
        assert!(decoder
            .decode(short)
            .unwrap_err()
            .to_string()
            .contains("at least 5"));
        let early = FlightData {
            app_metadata: metadata(KIND_BATCH, 0, None).into(),
            ..Default::default()
        };
        assert!(decoder
            .decode(early)
            .unwrap_err()
            .to_string()
            .contains("before any schema"));
        let truncated = FlightData {
            app_metadata: metadata(KIND_BARRIER, 0, None).into(),
            ..Default::default()
        };
        assert!(decoder
            .decode(truncated)
            .unwrap_err()
            .to_string()
            .contains("8-byte"));
        let garbage = FlightData {
            app_metadata: metadata(KIND_SCHEMA, 0, None).into(),
            data_header: vec![0xff; 7].into(),
            ..Default::default()
        };
        assert!(decoder.decode(garbage).is_err());
        let unknown = FlightData {
            app_metadata: metadata(99, 0, None).into(),
            ..Default::default()
        };
        assert!(decoder
            .decode(unknown)
            .unwrap_err()
            .to_string()
            .contains("unknown"));
    }

    #[test]
    fn only_the_token_is_authorized() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some("s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    /// Two tasks over a real Flight service on loopback: records, control and the end
    /// arrive in order; a wrong token is refused; a full inbox holds the sender back.
    #[test]
    fn a_remote_channel_carries_a_stream_over_flight() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let registry = InboxRegistry::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(serve(
            listener,
            ExchangeService::new(registry.clone()),
            async {
                let _ = stopped.await;
            },
        ));
        let key = StreamKey {
            job: "j".into(),
            attempt: 1,
            task: TaskId {
                stage: 1,
                subtask: 0,
            },
        };
        let (cancel, failure) = (CancelHandle::default(), Failure::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        registry.register(key.clone(), tx, cancel.clone(), failure.clone(), "tok");
        let mut inbox = WatchedInbox::new(rx, cancel.clone());

        // A sender with the wrong token fails and says so.
        let (bad_cancel, bad_failure) = (CancelHandle::default(), Failure::default());
        let bad = RemoteSender::open(
            runtime.handle(),
            address,
            key.clone(),
            "wrong",
            4,
            bad_cancel.clone(),
            bad_failure.clone(),
        );
        let _ = bad.try_send((0, Message::EndOfStream));
        let until = Instant::now() + Duration::from_secs(10);
        while bad_failure.get().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            bad_failure.get().unwrap_or_default().contains("token"),
            "{:?}",
            bad_failure.get()
        );
        assert!(bad_cancel.is_cancelled());

        let sender = RemoteSender::open(
            runtime.handle(),
            address,
            key,
            "tok",
            2,
            CancelHandle::default(),
            Failure::default(),
        );
        // Nothing reads the inbox yet: the sender must be held back (bounded everywhere).
        let producer = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut offered = 0;
                let mut full = 0;
                let mut send = |m: Message| {
                    let mut e = (1, m);
                    loop {
                        match sender.try_send(e) {
                            Offer::Sent => break,
                            Offer::Full(back) => {
                                full += 1;
                                e = back;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Offer::Closed => panic!("closed"),
                        }
                    }
                    offered += 1;
                };
                // Batches of 1 000 rows: 200 of them are far more than the bounded queue,
                // the HTTP/2 window and the inbox hold together.
                for i in 0..200 {
                    send(Message::Data(batch(&[i; 1000], &["t"; 1000])));
                }
                send(Message::Barrier(3));
                send(Message::EndOfStream);
                (offered, full)
            });
            std::thread::sleep(Duration::from_millis(300));
            let mut got = Vec::new();
            while let Some((channel, m)) = inbox.recv() {
                assert_eq!(channel, 1);
                let end = matches!(m, Message::EndOfStream);
                got.push(m);
                if end {
                    break;
                }
            }
            // Batches may arrive joined, never reordered.
            let values: Vec<i64> = got
                .iter()
                .filter_map(|m| match m {
                    Message::Data(b) => Some(
                        b.column(0)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .values()
                            .to_vec(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect();
            let sent: Vec<i64> = (0..200).flat_map(|i| [i; 1000]).collect();
            assert!(values == sent, "the records arrived out of order");
            assert!(matches!(got.last(), Some(Message::EndOfStream)));
            assert!(matches!(got[got.len() - 2], Message::Barrier(3)));
            h.join().unwrap()
        });
        assert_eq!(producer.0, 202);
        assert!(producer.1 > 0, "a full inbox never held the sender back");
        assert!(failure.get().is_none(), "{:?}", failure.get());
        let _ = stop.send(());
    }
}
