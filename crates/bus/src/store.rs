//! The durable event store: configuration, the publish request and its validation, and the
//! [`Store`] handle. Publishes go through one bounded queue to the writer thread (`writer.rs`),
//! which commits them in groups; a notifier thread then hands each batch to the hub and answers
//! the callers. Reads use a small pool of read-only SQLite connections on blocking threads
//! (`schema.rs`). Retention deletes only a prefix of the log, so the stored seqs are always one
//! contiguous run ending at the newest event. Knowledge, memory and the assignments queue
//! (`knowledge.rs`, `memory.rs`, `assignments.rs`) live in the same file and write through the
//! same thread with `Store::write`.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Transaction;
use serde_json::{Map, Value};
use tokio::sync::{Notify, oneshot, watch};

use aiventbus_proto::event::{validate_prefixed_id, validate_source, validate_topic};
use aiventbus_proto::methods::{
    LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, ListParams, PublishParams, PublishResult, TopicInfo,
};
use aiventbus_proto::{ErrorCode, Event, EventStatus, Priority, TopicPattern};

use crate::hub::{Hub, Subscription};
use crate::schema::{self, Prepared, ReadPool, from_sql_int, get_event, list_events, scan};
use crate::writer::{Command, Emitter, NOTIFY_QUEUE, PublishRequest, WriteContext, Writer, notify};

/// Requests the writer queue holds before `submit` answers [`StoreError::Overloaded`].
pub const QUEUE_CAPACITY: usize = 65_536;
/// Read-only connections in the read pool.
const READERS: usize = 3;
/// Longest free-form string field (`semantic_type`, `dedupe_key`, …), in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// Most `context_refs` one event may carry.
pub const MAX_CONTEXT_REFS: usize = 64;
/// Most events `trace` returns.
pub const MAX_TRACE_EVENTS: u32 = 10_000;
/// Longest ancestor chain `chain` follows; real chains stop at `max_depth` plus a chain-limit event.
const MAX_CHAIN: usize = 1024;

/// How hard a commit is pushed to disk (`PRAGMA synchronous`): the `bus.sync` setting.
pub use aiventbus_rpc::config::SyncMode;

/// Settings of the event store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file; created when missing.
    pub path: PathBuf,
    /// Commit durability.
    pub sync: SyncMode,
    /// Same topic and dedupe key within this many ms of the original → `deduped`.
    pub dedupe_window_ms: u64,
    /// Deepest chain allowed; a root has depth 0.
    pub max_depth: u32,
    /// Routable published events per trace.
    pub trace_budget: u32,
    /// Largest serialized payload accepted by [`NewEvent::from_params`].
    pub max_payload_bytes: usize,
    /// Events older than this are compacted away.
    pub retention_ms: u64,
    /// At most this many events are kept.
    pub max_events: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("bus.db"),
            sync: SyncMode::Normal,
            dedupe_window_ms: 60_000,
            max_depth: 10,
            trace_budget: 50,
            max_payload_bytes: 256 * 1024,
            retention_ms: 30 * 24 * 3600 * 1000,
            max_events: 10_000_000,
        }
    }
}

/// Where the store's idea of "now" comes from: event timestamps, the dedupe window, retention.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; for tests of time windows without sleeping.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `ms`.
    pub fn new(ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(ms))
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn format_ts(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Why a store operation failed. [`StoreError::code`] gives the JSON-RPC code for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A field is wrong; the message names it. -32602.
    #[error("{0}")]
    Invalid(String),
    /// A payload is over the limit. -32006.
    #[error("{0}")]
    TooLarge(String),
    /// The thing asked for does not exist. -32002.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is stored (an id reused on another topic). -32003.
    #[error("{0}")]
    Conflict(String),
    /// The writer queue is full; retry later. -32004.
    #[error("the event store is overloaded; retry later")]
    Overloaded,
    /// The store is shutting down. -32005.
    #[error("the event store is closed")]
    Closed,
    /// Our fault (SQLite, I/O); logged, not sent. -32603.
    #[error("event store failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// The JSON-RPC error code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Invalid(_) => ErrorCode::InvalidParams,
            StoreError::TooLarge(_) => ErrorCode::TooLarge,
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::Overloaded => ErrorCode::Overloaded,
            StoreError::Closed => ErrorCode::Unavailable,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Internal(error.to_string())
    }
}

/// An event to publish, checked for syntax; the writer fills in id (when absent), seq, ts,
/// trace id (when absent), depth and status.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Dotted topic.
    pub topic: String,
    /// The payload object.
    pub payload: Map<String, Value>,
    /// Urgency.
    pub priority: Priority,
    /// A caller-chosen `evt_` id, which makes the publish safe to retry.
    pub id: Option<String>,
    /// Who publishes it.
    pub source: String,
    /// Classification for routing.
    pub semantic_type: Option<String>,
    /// Copies with the same topic and key inside the dedupe window are `deduped`.
    pub dedupe_key: Option<String>,
    /// Join this trace; must equal the parent's when both are given.
    pub trace_id: Option<String>,
    /// The event this one reacts to; must exist.
    pub parent_event: Option<String>,
    /// Ties the event to an action, request or run.
    pub correlation_id: Option<String>,
    /// Where an answer should go.
    pub output_topic: Option<String>,
    /// Related event ids.
    pub context_refs: Vec<String>,
    /// Memory scope for agents.
    pub memory_scope: Option<String>,
    /// RFC 3339 UTC with milliseconds.
    pub expires_at: Option<String>,
}

impl NewEvent {
    /// An event with only a topic, a source and a payload; other fields at their defaults.
    pub fn new(topic: impl Into<String>, source: impl Into<String>, payload: Map<String, Value>) -> NewEvent {
        NewEvent {
            topic: topic.into(),
            payload,
            priority: Priority::Medium,
            id: None,
            source: source.into(),
            semantic_type: None,
            dedupe_key: None,
            trace_id: None,
            parent_event: None,
            correlation_id: None,
            output_topic: None,
            context_refs: Vec::new(),
            memory_scope: None,
            expires_at: None,
        }
    }

    /// Checks `events.publish` params; every message names the field. `default_source` is used
    /// when the params carry none. Whether the topic's namespace is reserved is the caller's
    /// decision, not checked here.
    pub fn from_params(
        params: PublishParams,
        default_source: &str,
        max_payload_bytes: usize,
    ) -> Result<NewEvent, StoreError> {
        validate_topic(&params.topic).map_err(StoreError::Invalid)?;
        let payload = match params.payload {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(StoreError::Invalid(format!(
                    "payload must be a JSON object, not {}",
                    json_kind(&other)
                )));
            }
        };
        let size = serialized_len(&payload);
        if size > max_payload_bytes {
            return Err(StoreError::TooLarge(format!(
                "payload is {size} bytes serialized; the limit is {max_payload_bytes}"
            )));
        }
        let source = params.source.unwrap_or_else(|| default_source.to_owned());
        validate_source(&source).map_err(StoreError::Invalid)?;
        let id = prefixed("id", params.id, "evt_")?;
        let trace_id = prefixed("trace_id", params.trace_id, "tr_")?;
        let parent_event = prefixed("parent_event", params.parent_event, "evt_")?;
        let output_topic = match params.output_topic {
            Some(topic) => {
                validate_topic(&topic).map_err(|message| StoreError::Invalid(format!("output_topic: {message}")))?;
                Some(topic)
            }
            None => None,
        };
        let context_refs = params.context_refs.unwrap_or_default();
        if context_refs.len() > MAX_CONTEXT_REFS {
            return Err(StoreError::Invalid(format!(
                "context_refs has {} entries; at most {MAX_CONTEXT_REFS} are allowed",
                context_refs.len()
            )));
        }
        for (index, reference) in context_refs.iter().enumerate() {
            validate_prefixed_id(reference, "evt_")
                .map_err(|message| StoreError::Invalid(format!("context_refs[{index}]: {message}")))?;
        }
        let expires_at = match params.expires_at {
            Some(text) => Some(normalize_time("expires_at", &text)?),
            None => None,
        };
        Ok(NewEvent {
            topic: params.topic,
            payload,
            priority: params.priority.unwrap_or_default(),
            id,
            source,
            semantic_type: bounded("semantic_type", params.semantic_type)?,
            dedupe_key: bounded("dedupe_key", params.dedupe_key)?,
            trace_id,
            parent_event,
            correlation_id: bounded("correlation_id", params.correlation_id)?,
            output_topic,
            context_refs,
            memory_scope: bounded("memory_scope", params.memory_scope)?,
            expires_at,
        })
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Counts the bytes of a value's JSON form without building it.
fn serialized_len(payload: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a map of JSON values to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, payload);
    counter.0
}

fn prefixed(field: &str, value: Option<String>, prefix: &str) -> Result<Option<String>, StoreError> {
    if let Some(text) = &value {
        validate_prefixed_id(text, prefix).map_err(|message| StoreError::Invalid(format!("{field}: {message}")))?;
    }
    Ok(value)
}

fn bounded(field: &str, value: Option<String>) -> Result<Option<String>, StoreError> {
    if let Some(text) = &value {
        if text.is_empty() {
            return Err(StoreError::Invalid(format!(
                "{field} must not be empty; leave it out instead"
            )));
        }
        if text.len() > MAX_FIELD_BYTES {
            return Err(StoreError::Invalid(format!(
                "{field} is {} bytes; the limit is {MAX_FIELD_BYTES}",
                text.len()
            )));
        }
    }
    Ok(value)
}

fn normalize_time(field: &str, text: &str) -> Result<String, StoreError> {
    let time = humantime::parse_rfc3339_weak(text).map_err(|error| {
        StoreError::Invalid(format!(
            "{field}: {text:?} is not an RFC 3339 UTC time such as 2030-01-31T12:00:00Z ({error})"
        ))
    })?;
    Ok(humantime::format_rfc3339_millis(time).to_string())
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The event id.
    pub id: String,
    /// Its seq.
    pub seq: u64,
    /// Its trace.
    pub trace_id: String,
    /// `published`, `deduped`, or `failed` (refused by a chain limit).
    pub status: EventStatus,
    /// True when the caller's id was already stored on the same topic: nothing new was written.
    pub existing: bool,
}

impl PublishOutcome {
    /// The `events.publish` answer.
    pub fn result(&self) -> PublishResult {
        PublishResult {
            id: self.id.clone(),
            seq: self.seq,
            trace_id: self.trace_id.clone(),
            status: self.status,
        }
    }
}

/// A committed event and its JSON, serialized once and shared by every subscriber.
#[derive(Debug)]
pub struct Committed {
    /// The event as stored.
    pub event: Event,
    /// `serde_json` form of `event`.
    pub json: Arc<str>,
}

impl Committed {
    /// Serializes `event`.
    pub fn new(event: Event) -> Result<Committed, StoreError> {
        let json = serde_json::to_string(&event)
            .map_err(|error| StoreError::Internal(format!("cannot serialize event: {error}")))?;
        Ok(Committed {
            event,
            json: Arc::from(json),
        })
    }

    /// The event's seq.
    pub fn seq(&self) -> u64 {
        self.event.seq
    }
}

/// Filters of [`Store::list`]; all given ones must hold.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Exact topic.
    pub topic: Option<String>,
    /// Topic pattern.
    pub pattern: Option<TopicPattern>,
    /// Status.
    pub status: Option<EventStatus>,
    /// Trace.
    pub trace_id: Option<String>,
    /// Only seqs above this.
    pub after_seq: u64,
    /// Most events returned.
    pub limit: u32,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            topic: None,
            pattern: None,
            status: None,
            trace_id: None,
            after_seq: 0,
            limit: LIST_DEFAULT_LIMIT,
        }
    }
}

impl ListQuery {
    /// Checks `events.list` params.
    pub fn from_params(params: ListParams) -> Result<ListQuery, StoreError> {
        if let Some(topic) = &params.topic {
            validate_topic(topic).map_err(StoreError::Invalid)?;
        }
        let pattern = match &params.pattern {
            Some(text) => {
                Some(TopicPattern::parse(text).map_err(|message| StoreError::Invalid(format!("pattern: {message}")))?)
            }
            None => None,
        };
        let trace_id = prefixed("trace_id", params.trace_id, "tr_")?;
        let limit = params.limit.unwrap_or(LIST_DEFAULT_LIMIT);
        if limit == 0 || limit > LIST_MAX_LIMIT {
            return Err(StoreError::Invalid(format!(
                "limit must be between 1 and {LIST_MAX_LIMIT}, not {limit}"
            )));
        }
        Ok(ListQuery {
            topic: params.topic,
            pattern,
            status: params.status,
            trace_id,
            after_seq: params.after_seq.unwrap_or(0),
            limit,
        })
    }
}

/// Figures for `system.health` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    /// Events stored.
    pub events: u64,
    /// Seq of the newest committed event; 0 when none.
    pub head: u64,
    /// Seq of the oldest stored event.
    pub oldest_seq: Option<u64>,
    /// Database file plus write-ahead log, in bytes.
    pub db_bytes: u64,
    /// Transactions committed by the writer since open (publish batches).
    pub commits: u64,
    /// Events written since open (chain-limit events included).
    pub written: u64,
    /// Batches rolled back since open.
    pub rollbacks: u64,
    /// Live subscribers.
    pub subscribers: usize,
}

/// What one compaction removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Events deleted.
    pub deleted: u64,
    /// The oldest seq kept.
    pub oldest_seq: Option<u64>,
}

/// State shared by the store handles and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) closed: AtomicBool,
    pub(crate) commits: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) rollbacks: AtomicU64,
    /// Set by the checkpoint thread when the WAL has grown past its bound: the writer then runs a
    /// RESTART checkpoint between batches (see checkpoint.rs).
    pub(crate) restart_wal: AtomicBool,
    /// Makes the next publish batch fail before commit, to test recovery.
    #[cfg(test)]
    pub(crate) fail_next_batch: AtomicBool,
}

/// The event store. Cheap to clone; the last clone dropped stops the writer after it has
/// drained the queue.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    config: StoreConfig,
    sender: mpsc::SyncSender<Command>,
    shared: Arc<Shared>,
    readers: Arc<ReadPool>,
    hub: Arc<Hub>,
    clock: Arc<dyn Clock>,
    /// Woken when assignments may have become claimable (created, released, retried, leases
    /// taken back); long-polling claims wait on it.
    work: Notify,
    done: watch::Receiver<bool>,
    /// The writer, then the notifier.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Stopped (dropping its sender) after the writer, so its last checkpoint sees every commit.
    checkpointer: Mutex<Option<(mpsc::SyncSender<()>, JoinHandle<()>)>>,
}

impl StoreInner {
    fn begin_close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // A full queue means the writer is busy and sees the flag after its batch.
        let _ = self.sender.try_send(Command::Close);
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.begin_close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an event store thread panicked");
            }
        }
        let checkpointer = self.checkpointer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `config.path` with the wall clock.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_clock(config, Arc::new(SystemClock))
    }

    /// Opens the store with a given clock.
    pub fn open_with_clock(config: StoreConfig, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
        let conn = schema::open_writer(&config.path, config.sync)?;
        let head: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |row| row.get(0))?;
        let head = from_sql_int(head);
        let mut connections = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            connections.push(schema::open_reader(&config.path)?);
        }
        let readers = Arc::new(ReadPool::new(connections));
        let hub = Arc::new(Hub::new(head));
        let shared = Arc::new(Shared::default());
        let (sender, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
        let (notify_sender, notify_receiver) = mpsc::sync_channel(NOTIFY_QUEUE);
        let (done_sender, done) = watch::channel(false);
        let writer = Writer::new(
            conn,
            config.clone(),
            Arc::clone(&clock),
            Arc::clone(&shared),
            head,
            receiver,
            notify_sender,
        );
        let notifier_hub = Arc::clone(&hub);
        let notifier = std::thread::Builder::new()
            .name("bus-notify".into())
            .spawn(move || notify(notify_receiver, notifier_hub, done_sender))
            .map_err(|error| StoreError::Internal(format!("cannot start the notifier thread: {error}")))?;
        // Without a writer the notifier's queue closes at once and it ends.
        let writer = std::thread::Builder::new()
            .name("bus-writer".into())
            .spawn(move || writer.run())
            .map_err(|error| StoreError::Internal(format!("cannot start the writer thread: {error}")))?;
        // The writer leaves checkpoints to their own thread (see checkpoint.rs).
        let (checkpoint_stop, checkpoint_stopped) = mpsc::sync_channel(1);
        let checkpointer =
            crate::checkpoint::spawn(&config.path, config.sync, Arc::clone(&shared), checkpoint_stopped)?;
        tracing::info!(path = %config.path.display(), head, "event store open");
        Ok(Store {
            inner: Arc::new(StoreInner {
                config,
                sender,
                shared,
                readers,
                hub,
                clock,
                work: Notify::new(),
                done,
                threads: Mutex::new(vec![writer, notifier]),
                checkpointer: Mutex::new(Some((checkpoint_stop, checkpointer))),
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The subscription hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    pub(crate) fn readers(&self) -> &Arc<ReadPool> {
        &self.inner.readers
    }

    /// The store clock's now, in Unix ms.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Notified when assignments may have become claimable.
    pub(crate) fn work(&self) -> &Notify {
        &self.inner.work
    }

    /// Runs `job` in its own transaction on the writer thread (after the publishes queued before
    /// it) and answers once that transaction has committed with the `bus.sync` durability of a
    /// publish. An error from `job` rolls its transaction back. `job` gets the clock's now.
    pub(crate) async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, u64) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_reporting(move |tx, emitter| job(tx, emitter.now_ms())).await
    }

    /// Like [`Store::write`], and `job` may add `system` reports to its transaction: they commit
    /// or roll back with it, and reach subscribers before the caller hears back.
    pub(crate) async fn write_reporting<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &mut Emitter<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        let command = Command::Write(Box::new(move |context: &mut WriteContext<'_>| {
            let result = context.transact(job);
            if let Err(StoreError::Internal(error)) = &result {
                tracing::error!(%error, "a write rolled back");
            }
            context.answer(move || {
                let _ = reply.send(result);
            });
        }));
        match self.inner.sender.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a publish without waiting. Publishes queued by one thread get increasing seqs in
    /// the order of the calls. The receiver answers once the event is committed.
    pub fn submit(&self, event: NewEvent) -> Result<oneshot::Receiver<Result<PublishOutcome, StoreError>>, StoreError> {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        // Serialized here, on the caller's thread, to keep the writer's share small.
        let prepared = Prepared::new(&event)?;
        let (reply, answer) = oneshot::channel();
        let command = Command::Publish(Box::new(PublishRequest { event, prepared, reply }));
        match self.inner.sender.try_send(command) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        }
    }

    /// Publishes and waits for the commit.
    pub async fn publish(&self, event: NewEvent) -> Result<PublishOutcome, StoreError> {
        let answer = self.submit(event)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Seq of the newest event committed and offered to subscribers (0 when none). Every
    /// publish that has been answered is at or below it.
    pub fn head(&self) -> u64 {
        self.inner.hub.head()
    }

    /// One event by id.
    pub async fn get(&self, id: &str) -> Result<Option<Event>, StoreError> {
        let id = id.to_owned();
        self.inner.readers.run(move |conn| get_event(conn, &id)).await
    }

    /// Events in seq order matching every given filter.
    pub async fn list(&self, query: ListQuery) -> Result<Vec<Event>, StoreError> {
        self.inner.readers.run(move |conn| list_events(conn, &query)).await
    }

    /// The event and its stored ancestors, root first; `None` when the event is unknown.
    pub async fn chain(&self, id: &str) -> Result<Option<Vec<Event>>, StoreError> {
        let id = id.to_owned();
        self.inner
            .readers
            .run(move |conn| {
                let Some(event) = get_event(conn, &id)? else {
                    return Ok(None);
                };
                let mut chain = vec![event];
                while chain.len() < MAX_CHAIN {
                    let Some(parent) = chain.last().and_then(|event| event.parent_event.clone()) else {
                        break;
                    };
                    match get_event(conn, &parent)? {
                        Some(event) => chain.push(event),
                        // Compacted away: the chain starts at the oldest ancestor still stored.
                        None => break,
                    }
                }
                chain.reverse();
                Ok(Some(chain))
            })
            .await
    }

    /// The events of a trace in seq order (at most [`MAX_TRACE_EVENTS`]), system events included.
    pub async fn trace(&self, trace_id: &str) -> Result<Vec<Event>, StoreError> {
        let query = ListQuery {
            trace_id: Some(trace_id.to_owned()),
            limit: MAX_TRACE_EVENTS,
            ..ListQuery::default()
        };
        self.list(query).await
    }

    /// Every topic with its count and newest event, alphabetical.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>, StoreError> {
        self.inner
            .readers
            .run(|conn| {
                let mut statement =
                    conn.prepare_cached("SELECT topic, count, last_seq, last_ts FROM topics ORDER BY topic")?;
                let rows = statement.query_map([], |row| {
                    Ok(TopicInfo {
                        topic: row.get(0)?,
                        count: from_sql_int(row.get(1)?),
                        last_seq: from_sql_int(row.get(2)?),
                        last_ts: row.get(3)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Up to `limit` committed events from `from_seq` (inclusive), for replay.
    pub async fn range(&self, from_seq: u64, limit: usize) -> Result<Vec<Arc<Committed>>, StoreError> {
        let page = self
            .inner
            .readers
            .run(move |conn| scan(conn, from_seq, None, limit))
            .await?;
        Ok(page.events)
    }

    /// Figures about the store.
    pub async fn stats(&self) -> Result<StoreStats, StoreError> {
        let path = self.inner.config.path.clone();
        let (oldest, newest) = self
            .inner
            .readers
            .run(|conn| {
                Ok(conn.query_row("SELECT MIN(seq), MAX(seq) FROM events", [], |row| {
                    Ok((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
                })?)
            })
            .await?;
        let file_len = |path: &std::path::Path| std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0);
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let shared = &self.inner.shared;
        let events = match (oldest, newest) {
            // Stored seqs are contiguous: retention only removes a prefix.
            (Some(oldest), Some(newest)) => from_sql_int(newest - oldest + 1),
            _ => 0,
        };
        Ok(StoreStats {
            events,
            head: self.head(),
            oldest_seq: oldest.map(from_sql_int),
            db_bytes: file_len(&path) + file_len(std::path::Path::new(&wal)),
            commits: shared.commits.load(Ordering::Relaxed),
            written: shared.written.load(Ordering::Relaxed),
            rollbacks: shared.rollbacks.load(Ordering::Relaxed),
            subscribers: self.inner.hub.subscriber_count(),
        })
    }

    /// Runs retention now (it also runs at open and every minute) and waits for it.
    pub async fn compact(&self) -> Result<CompactReport, StoreError> {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        match self.inner.sender.try_send(Command::Compact(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Subscribes to events matching any of `patterns`; see [`Hub::subscribe`].
    pub fn subscribe(&self, patterns: Vec<TopicPattern>, from_seq: Option<u64>, buffer: usize) -> Subscription {
        Hub::subscribe(self, patterns, from_seq, buffer)
    }

    /// Stops taking publishes, lets the writer commit what is queued, ends every subscription
    /// with `Closed`, and waits for the writer to finish. Reads keep working.
    pub async fn close(&self) {
        self.inner.begin_close();
        let mut done = self.inner.done.clone();
        // An error means the writer is gone already, which is what we wait for.
        let _ = done.wait_for(|finished| *finished).await;
    }

    /// Makes the next publish batch fail just before its commit.
    #[cfg(test)]
    pub(crate) fn fail_next_batch(&self) {
        self.inner.shared.fail_next_batch.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A store in a temp dir on a manual clock.
    pub(crate) struct TestStore {
        /// Keeps the directory until the test ends.
        _dir: tempfile::TempDir,
        pub(crate) store: Store,
        pub(crate) clock: Arc<ManualClock>,
    }

    pub(crate) const T0: u64 = 1_700_000_000_000;

    pub(crate) fn config_in(dir: &tempfile::TempDir) -> StoreConfig {
        StoreConfig {
            path: dir.path().join("bus.db"),
            ..StoreConfig::default()
        }
    }

    pub(crate) fn open_test(adjust: impl FnOnce(&mut StoreConfig)) -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(&dir);
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open_with_clock(config, clock.clone()).unwrap();
        TestStore {
            _dir: dir,
            store,
            clock,
        }
    }

    impl TestStore {
        /// Closes the store and opens the same file again on the same clock.
        pub(crate) async fn reopen(self, adjust: impl FnOnce(&mut StoreConfig)) -> TestStore {
            let mut config = self.store.config().clone();
            adjust(&mut config);
            self.store.close().await;
            drop(self.store);
            let store = Store::open_with_clock(config, self.clock.clone()).unwrap();
            TestStore { store, ..self }
        }
    }

    /// A user event on `topic` with payload `{"n": n}`.
    pub(crate) fn event(topic: &str, n: u64) -> NewEvent {
        let mut payload = Map::new();
        payload.insert("n".into(), json!(n));
        NewEvent::new(topic, "user:test", payload)
    }

    fn params(value: Value) -> PublishParams {
        serde_json::from_value(value).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpoint_thread_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let store = Store::open(config.clone()).unwrap();
        let size = || std::fs::metadata(&config.path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        for n in 0..2000 {
            store.publish(event("a.b", n)).await.unwrap();
        }
        // Far below SQLite's automatic checkpoint (1000 pages), so only the checkpoint thread can
        // have moved these pages out of the WAL while the store is open. No notification exists
        // for a file growing: check it with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file never grew past {before} bytes"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store.close().await;
        drop(store);
        let reopened = Store::open(config).unwrap();
        assert_eq!(reopened.head(), 2000);
        assert_eq!(reopened.stats().await.unwrap().events, 2000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_while_readers_keep_it_busy() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(&dir);
        let store = Store::open(config.clone()).unwrap();
        let wal = dir.path().join("bus.db-wal");
        assert_eq!(config.path.with_file_name("bus.db-wal"), wal);
        // Readers that always have a snapshot open, as subscribers and the router do: without the
        // restart the log never starts over and grows with every commit.
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let path = config.path.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let conn = rusqlite::Connection::open(&path).unwrap();
                    conn.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let tx = conn.unchecked_transaction().unwrap();
                        let _: i64 = tx
                            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
                            .unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        tx.commit().unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                })
            })
            .collect();
        let mut largest = 0;
        for n in 0..3000 {
            store.publish(event("a.b", n)).await.unwrap();
            if n % 50 == 0 {
                largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            }
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
        // One commit writes a few pages; 3000 of them make ~40 MB of log if it never restarts.
        assert!(largest < 8 * 1024 * 1024, "the WAL grew to {largest} bytes");
        store.close().await;
    }

    fn invalid(value: Value) -> StoreError {
        NewEvent::from_params(params(value), "user:test", 1024).unwrap_err()
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (json!({"topic": "Bad"}), "topic"),
            (json!({"topic": "a", "payload": [1]}), "payload"),
            (json!({"topic": "a", "id": "x_1"}), "id:"),
            (json!({"topic": "a", "trace_id": "evt_1"}), "trace_id:"),
            (json!({"topic": "a", "parent_event": "tr_1"}), "parent_event:"),
            (json!({"topic": "a", "source": "robot:x"}), "source"),
            (json!({"topic": "a", "expires_at": "tomorrow"}), "expires_at:"),
            (json!({"topic": "a", "output_topic": "a..b"}), "output_topic:"),
            (json!({"topic": "a", "dedupe_key": ""}), "dedupe_key"),
            (
                json!({"topic": "a", "semantic_type": "x".repeat(2000)}),
                "semantic_type",
            ),
            (json!({"topic": "a", "correlation_id": ""}), "correlation_id"),
            (json!({"topic": "a", "memory_scope": ""}), "memory_scope"),
            (
                json!({"topic": "a", "context_refs": ["evt_1", "bad"]}),
                "context_refs[1]",
            ),
            (
                json!({"topic": "a", "context_refs": vec!["evt_1"; MAX_CONTEXT_REFS + 1]}),
                "context_refs",
            ),
        ];
        for (value, field) in cases {
            let error = invalid(value.clone());
            assert!(matches!(error, StoreError::Invalid(_)), "{value}: {error:?}");
            assert_eq!(error.code().code(), -32602);
            assert!(
                error.to_string().contains(field),
                "{value}: {error} should name {field}"
            );
        }
        let too_large = invalid(json!({"topic": "a", "payload": {"x": "y".repeat(2000)}}));
        assert!(matches!(too_large, StoreError::TooLarge(_)), "{too_large:?}");
        assert_eq!(too_large.code().code(), -32006);
        assert!(too_large.to_string().contains("payload"));
    }

    #[test]
    fn valid_params_are_kept_and_defaulted() {
        let event = NewEvent::from_params(
            params(json!({
                "topic": "fs.created",
                "payload": {"path": "/tmp/x"},
                "priority": "high",
                "id": "evt_abc",
                "dedupe_key": "k",
                "expires_at": "2030-01-31T12:00:00Z",
                "context_refs": ["evt_1"],
            })),
            "producer:fs",
            1024,
        )
        .unwrap();
        assert_eq!(event.source, "producer:fs");
        assert_eq!(event.priority, Priority::High);
        assert_eq!(event.id.as_deref(), Some("evt_abc"));
        assert_eq!(event.expires_at.as_deref(), Some("2030-01-31T12:00:00.000Z"));
        assert_eq!(event.payload["path"], "/tmp/x");
        let bare = NewEvent::from_params(params(json!({"topic": "a"})), "user:me", 1024).unwrap();
        assert_eq!(bare.priority, Priority::Medium);
        assert!(bare.payload.is_empty());
        assert_eq!(bare.source, "user:me");
    }

    #[test]
    fn error_codes() {
        let table = [
            (StoreError::Invalid(String::new()), -32602),
            (StoreError::TooLarge(String::new()), -32006),
            (StoreError::NotFound(String::new()), -32002),
            (StoreError::Conflict(String::new()), -32003),
            (StoreError::Overloaded, -32004),
            (StoreError::Closed, -32005),
            (StoreError::Internal(String::new()), -32603),
        ];
        for (error, code) in table {
            assert_eq!(error.code().code(), code, "{error:?}");
        }
    }

    #[test]
    fn list_params_are_checked() {
        let query = |value: Value| ListQuery::from_params(serde_json::from_value(value).unwrap());
        assert_eq!(query(json!({})).unwrap().limit, LIST_DEFAULT_LIMIT);
        for (value, field) in [
            (json!({"limit": 0}), "limit"),
            (json!({"limit": LIST_MAX_LIMIT + 1}), "limit"),
            (json!({"pattern": "a..b"}), "pattern"),
            (json!({"topic": "A"}), "topic"),
            (json!({"trace_id": "x"}), "trace_id"),
        ] {
            let error = query(value.clone()).unwrap_err();
            assert!(error.to_string().contains(field), "{value}: {error}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_round_trip_exactly() {
        let test = open_test(|_| {});
        let mut subscription = test.store.subscribe(vec![TopicPattern::parse("**").unwrap()], None, 16);
        let mut full = event("fs.created", 7);
        full.payload
            .insert("nested".into(), json!({"a": [1, 2.5, "x", null, true]}));
        full.priority = Priority::Critical;
        full.id = Some("evt_custom".into());
        full.semantic_type = Some("file".into());
        full.dedupe_key = Some("k1".into());
        full.trace_id = Some("tr_custom".into());
        full.correlation_id = Some("act_1".into());
        full.output_topic = Some("reply.here".into());
        full.context_refs = vec!["evt_a".into(), "evt_b".into()];
        full.memory_scope = Some("agent:agt_1".into());
        full.expires_at = Some("2030-01-31T12:00:00.000Z".into());
        let outcome = test.store.publish(full).await.unwrap();
        let child = NewEvent {
            parent_event: Some("evt_custom".into()),
            ..event("fs.reacted", 8)
        };
        test.store.publish(child).await.unwrap();
        for _ in 0..2 {
            let delivered = subscription.next().await.unwrap();
            let stored = test.store.get(&delivered.event.id).await.unwrap().unwrap();
            assert_eq!(stored, delivered.event);
            assert_eq!(&*delivered.json, serde_json::to_string(&delivered.event).unwrap());
        }
        let stored = test.store.get("evt_custom").await.unwrap().unwrap();
        assert_eq!(stored.seq, outcome.seq);
        assert_eq!(stored.ts, format_ts(T0));
        assert_eq!(stored.trace_id, "tr_custom");
        assert!(test.store.get("evt_missing").await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_filters() {
        let test = open_test(|config| config.trace_budget = 2);
        let store = &test.store;
        for (n, topic) in ["fs.created", "fs.deleted", "user.query", "fs.created", "cron.tick"]
            .into_iter()
            .enumerate()
        {
            store.publish(event(topic, n as u64)).await.unwrap();
        }
        // A trace with one refused child: seqs 6 (root), 7, 8 (failed), 9 (system.chain_limit).
        let root = store.publish(event("job.start", 5)).await.unwrap();
        for n in 6..8 {
            let child = NewEvent {
                parent_event: Some(root.id.clone()),
                ..event("job.step", n)
            };
            store.publish(child).await.unwrap();
        }
        let seqs = |events: Vec<Event>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let list = |query: ListQuery| async move { seqs(store.list(query).await.unwrap()) };
        assert_eq!(list(ListQuery::default()).await, (1..=9).collect::<Vec<_>>());
        let topic = ListQuery {
            topic: Some("fs.created".into()),
            ..ListQuery::default()
        };
        assert_eq!(list(topic).await, vec![1, 4]);
        let pattern = ListQuery {
            pattern: Some(TopicPattern::parse("fs.*").unwrap()),
            ..ListQuery::default()
        };
        assert_eq!(list(pattern).await, vec![1, 2, 4]);
        let nothing = ListQuery {
            pattern: Some(TopicPattern::parse("nope.**").unwrap()),
            ..ListQuery::default()
        };
        assert_eq!(list(nothing).await, Vec::<u64>::new());
        let conflicting = ListQuery {
            topic: Some("user.query".into()),
            pattern: Some(TopicPattern::parse("fs.**").unwrap()),
            ..ListQuery::default()
        };
        assert_eq!(list(conflicting).await, Vec::<u64>::new());
        let failed = ListQuery {
            status: Some(EventStatus::Failed),
            ..ListQuery::default()
        };
        assert_eq!(list(failed).await, vec![8]);
        let published = ListQuery {
            status: Some(EventStatus::Published),
            ..ListQuery::default()
        };
        assert_eq!(list(published).await, vec![1, 2, 3, 4, 5, 6, 7, 9]);
        let after = ListQuery {
            after_seq: 2,
            limit: 3,
            ..ListQuery::default()
        };
        assert_eq!(list(after).await, vec![3, 4, 5]);
        let paged_pattern = ListQuery {
            pattern: Some(TopicPattern::parse("fs.**").unwrap()),
            after_seq: 1,
            limit: 1,
            ..ListQuery::default()
        };
        assert_eq!(list(paged_pattern).await, vec![2]);
        let trace = ListQuery {
            trace_id: Some(root.trace_id.clone()),
            ..ListQuery::default()
        };
        assert_eq!(list(trace).await, vec![6, 7, 8, 9]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_about_deep_events_are_not_refused() {
        let test = open_test(|config| config.max_depth = 1);
        let store = &test.store;
        let root = store.publish(event("task.root", 0)).await.unwrap();
        let step = store
            .publish(NewEvent {
                parent_event: Some(root.id.clone()),
                ..event("task.step", 1)
            })
            .await
            .unwrap();
        assert_eq!(step.status, EventStatus::Published);
        // A report one level deeper than the limit is stored as published, with no chain_limit.
        let report = store
            .publish(NewEvent {
                parent_event: Some(step.id.clone()),
                ..event("agent.completed", 2)
            })
            .await
            .unwrap();
        assert_eq!(report.status, EventStatus::Published);
        // An ordinary reaction at that depth is still refused.
        let reaction = store
            .publish(NewEvent {
                parent_event: Some(step.id.clone()),
                ..event("task.more", 3)
            })
            .await
            .unwrap();
        assert_eq!(reaction.status, EventStatus::Failed);
        let trace = store.trace(&root.trace_id).await.unwrap();
        let limits = trace.iter().filter(|e| e.topic == "system.chain_limit").count();
        assert_eq!(limits, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chain_trace_and_topics() {
        let test = open_test(|config| config.max_depth = 2);
        let store = &test.store;
        let mut parent = store.publish(event("task.root", 0)).await.unwrap();
        let mut ids = vec![parent.id.clone()];
        for n in 1..=3 {
            let child = NewEvent {
                parent_event: Some(parent.id.clone()),
                ..event("task.step", n)
            };
            parent = store.publish(child).await.unwrap();
            ids.push(parent.id.clone());
        }
        // The third step is too deep: failed, with a system.chain_limit child in the trace.
        assert_eq!(parent.status, EventStatus::Failed);
        let chain = store.chain(&parent.id).await.unwrap().unwrap();
        assert_eq!(chain.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
        assert_eq!(chain.iter().map(|e| e.depth).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!(store.chain("evt_unknown").await.unwrap().is_none());

        let trace = store.trace(&parent.trace_id).await.unwrap();
        assert_eq!(trace.len(), 5);
        let notice = &trace[4];
        assert_eq!(notice.topic, "system.chain_limit");
        assert_eq!(notice.source, "system");
        assert_eq!(notice.parent_event.as_deref(), Some(parent.id.as_str()));
        assert_eq!(notice.payload["reason"], "depth");
        assert_eq!(notice.payload["limit"], 2);
        assert_eq!(notice.payload["event_id"], parent.id.as_str());
        assert_eq!(notice.payload["topic"], "task.step");
        let notice_chain = store.chain(&notice.id).await.unwrap().unwrap();
        assert_eq!(notice_chain.len(), 5);
        assert_eq!(notice_chain[0].id, ids[0]);

        let topics = store.topics().await.unwrap();
        let summary: Vec<(String, u64, u64)> = topics.iter().map(|t| (t.topic.clone(), t.count, t.last_seq)).collect();
        assert_eq!(
            summary,
            vec![
                ("system.chain_limit".into(), 1, 5),
                ("task.root".into(), 1, 1),
                ("task.step".into(), 3, 4),
            ]
        );
        assert_eq!(topics[0].last_ts, format_ts(T0));
    }
}
