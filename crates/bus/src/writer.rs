//! The writer thread: the only code that writes events. It blocks for one request, drains what
//! else is queued (up to [`MAX_BATCH`]), applies the whole group in one transaction and commits.
//! A failed transaction is rolled back and every caller in it gets the error; the thread carries
//! on. Between batches it runs retention in bounded chunks (events, and finished assignments).
//!
//! Each finished batch goes, in commit order, to the notifier thread, which hands the committed
//! events to the hub and only then answers the callers. Waking callers and fanning out to
//! subscribers thus overlap with the next transaction instead of delaying it.
//!
//! Writes outside the event log (knowledge, memory, assignments) arrive as [`Job`]s: each runs in
//! its own transaction on this thread's connection after the publish batch it was queued with, and
//! answers its caller once committed. A job may add `system` reports to its transaction through an
//! [`Emitter`] (an assignment that failed for good reports `system.agent_failure` atomically with
//! the state change); those are sequenced like any event and reach the hub before the caller
//! hears back. One connection writes the file, so nothing contends.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::{Map, Value, json};
use tokio::sync::{oneshot, watch};

use aiventbus_proto::event::is_reserved;
use aiventbus_proto::{Event, EventStatus};

use crate::hub::Hub;
use crate::schema::{INSERT_EVENT, Prepared, from_sql_int, sql_int};
use crate::store::{
    Clock, Committed, CompactReport, NewEvent, PublishOutcome, Shared, StoreConfig, StoreError, format_ts,
};
use aiventbus_rpc::ids::IdGenerator;

/// Most publishes committed in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// How often retention runs.
const COMPACT_EVERY: Duration = Duration::from_secs(60);
/// Most events one retention transaction deletes, so publishes never wait long behind it.
const COMPACT_CHUNK: u64 = 20_000;

/// What one publish is answered with.
type Answer = Result<PublishOutcome, StoreError>;
/// The answer channel of one publish.
type Reply = oneshot::Sender<Answer>;

/// One publish waiting in the queue.
pub(crate) struct PublishRequest {
    pub(crate) event: NewEvent,
    /// The event's serialized parts, made by the submitting thread.
    pub(crate) prepared: Prepared,
    pub(crate) reply: Reply,
}

/// A write that is not a publish: it runs its transaction with [`WriteContext::transact`] and
/// leaves its caller's answer with [`WriteContext::answer`]. See `Store::write`.
pub(crate) type Job = Box<dyn FnOnce(&mut WriteContext<'_>) + Send>;

/// Sends a job's answer; run once the job's reports (if any) have reached the hub.
type Answerer = Box<dyn FnOnce() + Send>;

/// What the store handles send the writer.
pub(crate) enum Command {
    /// Boxed so the preallocated queue stays small.
    Publish(Box<PublishRequest>),
    /// Knowledge, memory and assignment writes, in the order queued.
    Write(Job),
    /// Run retention to the end and report.
    Compact(oneshot::Sender<Result<CompactReport, StoreError>>),
    /// Wakes the writer so it sees the closed flag.
    Close,
}

/// Batches that may wait between the writer and the notifier; the writer waits when it is full.
pub(crate) const NOTIFY_QUEUE: usize = 16;

/// A batch the writer is done with, on its way to the hub and the callers.
pub(crate) enum Finished {
    /// Committed: deliver, move the head, then answer.
    Committed {
        head: u64,
        events: Vec<Arc<Committed>>,
        answers: Vec<(Reply, Answer)>,
    },
    /// Rolled back: nothing to deliver.
    RolledBack { replies: Vec<Reply>, error: StoreError },
    /// A job committed reports: deliver them, move the head, then answer.
    Reported {
        head: u64,
        events: Vec<Arc<Committed>>,
        answer: Option<Answerer>,
    },
}

/// The notifier thread's body: delivers batches in commit order until the writer is gone, then
/// ends every subscription and signals `done`.
pub(crate) fn notify(receiver: Receiver<Finished>, hub: Arc<Hub>, done: watch::Sender<bool>) {
    let _finish = Finish {
        hub: Arc::clone(&hub),
        done,
    };
    for finished in receiver {
        match finished {
            Finished::Committed { head, events, answers } => {
                // Delivery and the head move together under the hub's lock; callers hear back
                // after both, so a publish that returned is visible to `head` and to reads.
                hub.deliver(&events, head);
                for (reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
            Finished::RolledBack { replies, error } => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Finished::Reported { head, events, answer } => {
                hub.deliver(&events, head);
                if let Some(answer) = answer {
                    answer();
                }
            }
        }
    }
}

/// Ends the hub and signals `done` when the notifier stops, also when it unwinds.
struct Finish {
    hub: Arc<Hub>,
    done: watch::Sender<bool>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.hub.close();
        let _ = self.done.send(true);
    }
}

/// What assigns seqs and ids; kept apart from the connection so a transaction can borrow both.
struct Sequencer {
    config: StoreConfig,
    ids: IdGenerator,
    next_seq: u64,
}

pub(crate) struct Writer {
    conn: Connection,
    sequencer: Sequencer,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    receiver: Receiver<Command>,
    notifier: SyncSender<Finished>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
        shared: Arc<Shared>,
        head: u64,
        receiver: Receiver<Command>,
        notifier: SyncSender<Finished>,
    ) -> Writer {
        Writer {
            conn,
            sequencer: Sequencer {
                config,
                ids: IdGenerator::new(),
                next_seq: head + 1,
            },
            clock,
            shared,
            receiver,
            notifier,
        }
    }

    /// The thread's body; returns once the store is closed and the queue drained.
    pub(crate) fn run(self) {
        let Writer {
            mut conn,
            mut sequencer,
            clock,
            shared,
            receiver,
            notifier,
        } = self;
        let mut state = Loop {
            conn: &mut conn,
            sequencer: &mut sequencer,
            clock: clock.as_ref(),
            shared: &shared,
            notifier: &notifier,
        };
        let mut next_compaction = Instant::now();
        let mut compaction_left = false;
        let mut closing = false;
        let mut publishes: Vec<PublishRequest> = Vec::with_capacity(MAX_BATCH);
        let mut compactions = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        loop {
            if !closing && Instant::now() >= next_compaction {
                compaction_left = true;
                next_compaction = Instant::now() + COMPACT_EVERY;
                if let Err(error) = state.prune_assignments() {
                    tracing::error!(%error, "assignment retention failed; retrying at the next interval");
                }
            }
            if compaction_left && !closing {
                compaction_left = state.compact_chunk().map(|(more, _)| more).unwrap_or_else(|error| {
                    tracing::error!(%error, "retention failed; retrying at the next interval");
                    false
                });
            }
            // Wait for work: not at all while retention or shutdown has work left.
            let first = if compaction_left || closing {
                match receiver.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) if closing => break,
                    Err(TryRecvError::Empty) => continue,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                let wait = next_compaction.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(wait) {
                    Ok(command) => command,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Publish(request) => publishes.push(*request),
                    Command::Compact(reply) => compactions.push(reply),
                    Command::Write(job) => jobs.push(job),
                    Command::Close => closing = true,
                }
                if publishes.len() < MAX_BATCH {
                    next = receiver.try_recv().ok();
                }
            }
            if !publishes.is_empty() {
                if state.write_batch(std::mem::take(&mut publishes)).is_err() {
                    tracing::error!("the notifier thread is gone; the event store stops");
                    shared.closed.store(true, Ordering::SeqCst);
                    break;
                }
                publishes.reserve(MAX_BATCH);
            }
            if jobs.drain(..).try_for_each(|job| state.run_job(job)).is_err() {
                tracing::error!("the notifier thread is gone; the event store stops");
                shared.closed.store(true, Ordering::SeqCst);
                break;
            }
            for reply in compactions.drain(..) {
                let _ = reply.send(state.compact_all());
            }
            if shared.restart_wal.swap(false, Ordering::AcqRel) {
                crate::checkpoint::restart(state.conn, &state.sequencer.config.path);
            }
            if shared.closed.load(Ordering::Acquire) {
                closing = true;
            }
        }
        drop(receiver);
        let head = sequencer.next_seq - 1;
        if let Err((_, error)) = conn.close() {
            tracing::warn!(%error, "closing the event store failed");
        }
        tracing::info!(head, "event store writer stopped");
        // Dropping `notifier` last lets the notifier finish once the file is closed.
        drop(notifier);
    }
}

/// The writer's working state, borrowed for the length of the loop.
struct Loop<'a> {
    conn: &'a mut Connection,
    sequencer: &'a mut Sequencer,
    clock: &'a dyn Clock,
    shared: &'a Shared,
    notifier: &'a SyncSender<Finished>,
}

/// Per-batch bookkeeping flushed just before commit.
#[derive(Default)]
struct Batch {
    /// Events added per topic and the newest seq.
    topics: HashMap<String, (u64, u64)>,
    /// Routable published events per trace, and whether the count changed.
    traces: HashMap<String, (u64, bool)>,
    committed: Vec<Arc<Committed>>,
}

impl Batch {
    /// Writes the batch's topic and trace counters; the last step before commit.
    fn flush(&self, tx: &Transaction<'_>, ts: &str) -> Result<(), StoreError> {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO topics (topic, count, last_seq, last_ts) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (topic) DO UPDATE SET count = count + excluded.count, \
             last_seq = excluded.last_seq, last_ts = excluded.last_ts",
        )?;
        for (topic, (count, last_seq)) in &self.topics {
            upsert.execute(params![topic, sql_int(*count), sql_int(*last_seq), ts])?;
        }
        let mut upsert = tx.prepare_cached(
            "INSERT INTO traces (trace_id, routable_count) VALUES (?1, ?2) \
             ON CONFLICT (trace_id) DO UPDATE SET routable_count = excluded.routable_count",
        )?;
        for (trace_id, (count, changed)) in &self.traces {
            if *changed {
                upsert.execute(params![trace_id, sql_int(*count)])?;
            }
        }
        Ok(())
    }
}

/// What a [`Job`] works with: the writer's connection and clock, and where it leaves its reports
/// and its answer.
pub(crate) struct WriteContext<'a> {
    conn: &'a mut Connection,
    sequencer: &'a mut Sequencer,
    now_ms: u64,
    /// Reports of the job's committed transactions, in seq order.
    reports: Vec<Arc<Committed>>,
    answer: Option<Answerer>,
}

impl WriteContext<'_> {
    /// Runs `work` in one transaction and commits it; an error rolls everything back, reports
    /// included. `work` gets the writer clock's now through the [`Emitter`].
    pub(crate) fn transact<T>(
        &mut self,
        work: impl FnOnce(&Transaction<'_>, &mut Emitter<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let first_seq = self.sequencer.next_seq;
        let ts = format_ts(self.now_ms);
        let mut emitter = Emitter {
            sequencer: &mut *self.sequencer,
            batch: Batch::default(),
            now_ms: self.now_ms,
            ts,
        };
        let result = (|| {
            let tx = self.conn.transaction()?;
            let value = work(&tx, &mut emitter)?;
            emitter.batch.flush(&tx, &emitter.ts)?;
            tx.commit()?;
            Ok(value)
        })();
        match result {
            Ok(value) => {
                self.reports.append(&mut emitter.batch.committed);
                Ok(value)
            }
            Err(error) => {
                self.sequencer.next_seq = first_seq;
                Err(error)
            }
        }
    }

    /// Leaves the caller's answer: sent after the job's reports are delivered to subscribers (at
    /// once when it has none).
    pub(crate) fn answer(&mut self, answer: impl FnOnce() + Send + 'static) {
        self.answer = Some(Box::new(answer));
    }
}

/// Adds `system` reports to a job's transaction, sequenced like any publish.
pub(crate) struct Emitter<'a> {
    sequencer: &'a mut Sequencer,
    batch: Batch,
    now_ms: u64,
    ts: String,
}

/// The event a report is about: it becomes the report's parent, in its trace.
pub(crate) struct Subject<'a> {
    /// The event's id.
    pub(crate) id: &'a str,
    /// Its trace.
    pub(crate) trace_id: &'a str,
    /// Its depth; the report is one deeper.
    pub(crate) depth: u32,
}

impl Emitter<'_> {
    /// The writer clock's now for this transaction, in Unix ms.
    pub(crate) fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Adds a `system` event on `topic` about `subject` to the transaction.
    pub(crate) fn report(
        &mut self,
        tx: &Transaction<'_>,
        topic: &str,
        payload: Map<String, Value>,
        subject: &Subject<'_>,
    ) -> Result<(), StoreError> {
        let notice = NewEvent::new(topic, "system", payload);
        self.sequencer
            .report(tx, &mut self.batch, notice, subject, self.now_ms, &self.ts)
    }
}

impl Loop<'_> {
    /// Applies a group of publishes in one transaction and passes the result to the notifier.
    /// Fails only when the notifier is gone.
    fn write_batch(&mut self, requests: Vec<PublishRequest>) -> Result<(), ()> {
        let first_seq = self.sequencer.next_seq;
        let now_ms = self.clock.now_ms();
        let ts = format_ts(now_ms);
        let mut replies = Vec::with_capacity(requests.len());
        let mut events = Vec::with_capacity(requests.len());
        for request in requests {
            let PublishRequest { event, prepared, reply } = request;
            replies.push(reply);
            events.push((event, prepared));
        }
        let finished = match apply_batch(self.conn, self.sequencer, self.shared, events, now_ms, &ts) {
            Ok((outcomes, committed)) => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.shared.written.fetch_add(committed.len() as u64, Ordering::Relaxed);
                Finished::Committed {
                    head: self.sequencer.next_seq - 1,
                    events: committed,
                    answers: replies.into_iter().zip(outcomes).collect(),
                }
            }
            Err(error) => {
                self.sequencer.next_seq = first_seq;
                self.shared.rollbacks.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, events = replies.len(), "publish batch rolled back");
                Finished::RolledBack {
                    replies,
                    error: StoreError::Internal(error.to_string()),
                }
            }
        };
        self.notifier.send(finished).map_err(|_| ())
    }

    /// Runs one job and passes its reports (if any) and its answer on. Fails only when the
    /// notifier is gone.
    fn run_job(&mut self, job: Job) -> Result<(), ()> {
        let first_seq = self.sequencer.next_seq;
        let mut context = WriteContext {
            conn: &mut *self.conn,
            sequencer: &mut *self.sequencer,
            now_ms: self.clock.now_ms(),
            reports: Vec::new(),
            answer: None,
        };
        // A panicking job drops its reply (its caller hears `Closed`) and its open transaction
        // (rolled back on unwind); the event log must not stop over one write.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut context))).is_err() {
            tracing::error!("a write job panicked; its open transaction was rolled back");
        }
        let WriteContext { reports, answer, .. } = context;
        // Only committed reports used seqs: whatever a rolled-back or unwound transaction took is
        // handed out again, so the log stays gap-free.
        self.sequencer.next_seq = first_seq + reports.len() as u64;
        if reports.is_empty() {
            if let Some(answer) = answer {
                answer();
            }
            return Ok(());
        }
        self.shared.written.fetch_add(reports.len() as u64, Ordering::Relaxed);
        self.notifier
            .send(Finished::Reported {
                head: self.sequencer.next_seq - 1,
                events: reports,
                answer,
            })
            .map_err(|_| ())
    }

    /// Deletes finished assignments older than the retention period (one bounded chunk).
    fn prune_assignments(&mut self) -> Result<usize, StoreError> {
        let cutoff_ms = self.clock.now_ms().saturating_sub(self.sequencer.config.retention_ms);
        let tx = self.conn.transaction()?;
        let deleted = crate::assignments::prune(&tx, cutoff_ms)?;
        tx.commit()?;
        if deleted > 0 {
            tracing::info!(deleted, "retention removed finished assignments");
        }
        Ok(deleted)
    }

    /// Runs retention until nothing is left to delete.
    fn compact_all(&mut self) -> Result<CompactReport, StoreError> {
        self.prune_assignments()?;
        let mut report = CompactReport::default();
        loop {
            let (more, chunk) = self.compact_chunk()?;
            report.deleted += chunk.deleted;
            report.oldest_seq = chunk.oldest_seq;
            if !more {
                return Ok(report);
            }
        }
    }

    /// Deletes one chunk of the oldest events that are past the age or count limit, never the
    /// newest event. Returns whether more are due.
    fn compact_chunk(&mut self) -> Result<(bool, CompactReport), StoreError> {
        let head = self.sequencer.next_seq - 1;
        let oldest: Option<i64> = self
            .conn
            .query_row("SELECT MIN(seq) FROM events", [], |row| row.get(0))?;
        let Some(oldest) = oldest.map(from_sql_int) else {
            return Ok((false, CompactReport::default()));
        };
        let config = &self.sequencer.config;
        let cutoff_ms = self.clock.now_ms().saturating_sub(config.retention_ms);
        // Retention removes a prefix: everything before the first event young enough to keep.
        // An event stamped earlier than one before it (a clock step back) waits for its turn.
        let first_young: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM events WHERE ts_ms >= ?1 ORDER BY seq LIMIT 1")?
            .query_row([sql_int(cutoff_ms)], |row| row.get(0))
            .optional()?;
        let by_age = first_young.map_or(head, from_sql_int);
        let by_count = head.saturating_sub(config.max_events) + 1;
        let keep_from = by_age.max(by_count).min(head);
        if oldest >= keep_from {
            return Ok((
                false,
                CompactReport {
                    deleted: 0,
                    oldest_seq: Some(oldest),
                },
            ));
        }
        let end = keep_from.min(oldest + COMPACT_CHUNK);
        let end_sql = sql_int(end);
        let tx = self.conn.transaction()?;
        let per_topic: Vec<(String, i64)> = {
            let mut statement =
                tx.prepare_cached("SELECT topic, COUNT(*) FROM events NOT INDEXED WHERE seq < ?1 GROUP BY topic")?;
            let rows = statement.query_map([end_sql], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        {
            let mut update = tx.prepare_cached("UPDATE topics SET count = count - ?2 WHERE topic = ?1")?;
            for (topic, count) in &per_topic {
                update.execute(params![topic, count])?;
            }
        }
        tx.execute("DELETE FROM topics WHERE count <= 0", [])?;
        tx.execute(
            "DELETE FROM traces WHERE trace_id IN \
                 (SELECT DISTINCT trace_id FROM events NOT INDEXED WHERE seq < ?1) \
             AND NOT EXISTS \
                 (SELECT 1 FROM events e WHERE e.trace_id = traces.trace_id AND e.seq >= ?1)",
            [end_sql],
        )?;
        let deleted = tx.execute("DELETE FROM events WHERE seq < ?1", [end_sql])?;
        tx.commit()?;
        tracing::info!(deleted, oldest_seq = end, "retention removed old events");
        Ok((
            end < keep_from,
            CompactReport {
                deleted: deleted as u64,
                oldest_seq: Some(end),
            },
        ))
    }
}

/// Applies every publish of a batch in one transaction and commits it. The outer error aborts
/// (and rolls back) the whole batch; the inner results are per caller.
fn apply_batch(
    conn: &mut Connection,
    sequencer: &mut Sequencer,
    shared: &Shared,
    events: Vec<(NewEvent, Prepared)>,
    now_ms: u64,
    ts: &str,
) -> Result<(Vec<Answer>, Vec<Arc<Committed>>), StoreError> {
    let tx = conn.transaction()?;
    let mut batch = Batch {
        committed: Vec::with_capacity(events.len()),
        ..Batch::default()
    };
    let mut outcomes = Vec::with_capacity(events.len());
    for (event, prepared) in events {
        outcomes.push(sequencer.apply(&tx, &mut batch, event, &prepared, now_ms, ts)?);
    }
    batch.flush(&tx, ts)?;
    #[cfg(test)]
    if shared.fail_next_batch.swap(false, Ordering::SeqCst) {
        return Err(StoreError::Internal("injected failure before commit".into()));
    }
    #[cfg(not(test))]
    let _ = shared;
    tx.commit()?;
    Ok((outcomes, batch.committed))
}

/// Why an event was refused by a chain limit.
struct Refusal {
    reason: &'static str,
    limit: u32,
}

impl Sequencer {
    /// Applies one publish inside the batch's transaction.
    fn apply(
        &mut self,
        tx: &Transaction<'_>,
        batch: &mut Batch,
        event: NewEvent,
        prepared: &Prepared,
        now_ms: u64,
        ts: &str,
    ) -> Result<Answer, StoreError> {
        // A caller-chosen id seen before: the same publish retried, or a conflict.
        if let Some(id) = &event.id {
            let existing = tx
                .prepare_cached("SELECT seq, topic, trace_id, status FROM events WHERE id = ?1")?
                .query_row([id], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .optional()?;
            if let Some((seq, topic, trace_id, status)) = existing {
                if topic != event.topic {
                    return Ok(Err(StoreError::Conflict(format!(
                        "id {id} is already used by an event on topic {topic}"
                    ))));
                }
                let status = EventStatus::parse(&status)
                    .ok_or_else(|| StoreError::Internal(format!("event {id} has unknown status {status:?}")))?;
                return Ok(Ok(PublishOutcome {
                    id: id.clone(),
                    seq: from_sql_int(seq),
                    trace_id,
                    status,
                    existing: true,
                }));
            }
        }

        // The chain: inherit the parent's trace and count ancestors.
        let (trace_id, depth, fresh_trace) = match &event.parent_event {
            Some(parent) => {
                let found = tx
                    .prepare_cached("SELECT trace_id, depth FROM events WHERE id = ?1")?
                    .query_row([parent], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))
                    .optional()?;
                let Some((parent_trace, parent_depth)) = found else {
                    return Ok(Err(StoreError::Invalid(format!(
                        "parent_event {parent} does not exist"
                    ))));
                };
                if let Some(given) = &event.trace_id {
                    if *given != parent_trace {
                        return Ok(Err(StoreError::Invalid(format!(
                            "trace_id {given} differs from {parent_trace}, the trace of parent_event {parent}"
                        ))));
                    }
                }
                let depth = u32::try_from(parent_depth).unwrap_or(u32::MAX).saturating_add(1);
                (parent_trace, depth, false)
            }
            None => match &event.trace_id {
                Some(given) => (given.clone(), 0, false),
                None => (self.new_trace_id(now_ms)?, 0, true),
            },
        };

        // Dedupe against the newest original with the same topic and key inside the window.
        let mut status = EventStatus::Published;
        let mut duplicate_of = None;
        let dedupe_key = event.dedupe_key.as_deref().filter(|_| self.config.dedupe_window_ms > 0);
        if let Some(key) = dedupe_key {
            // Inside the window means less than `dedupe_window_ms` after the original.
            let window_start = now_ms.saturating_sub(self.config.dedupe_window_ms - 1);
            let original = tx
                .prepare_cached(
                    "SELECT seq, id FROM events WHERE topic = ?1 AND dedupe_key = ?2 \
                     AND dedupe_key IS NOT NULL AND status != 'deduped' AND ts_ms >= ?3 \
                     ORDER BY ts_ms DESC, seq DESC LIMIT 1",
                )?
                .query_row(params![event.topic, key, sql_int(window_start)], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .optional()?;
            if let Some((original_seq, original_id)) = original {
                tx.prepare_cached("UPDATE events SET dedupe_count = dedupe_count + 1 WHERE seq = ?1")?
                    .execute([original_seq])?;
                status = EventStatus::Deduped;
                duplicate_of = Some(original_id);
            }
        }

        // Chain limits: too deep, or the trace has used its budget of routable events. Reports in
        // the reserved namespaces (a run's `agent.*`, a `system.unmatched` about a deep event) are
        // exempt: they are the daemon's account of what happened, never routed by `**`, so they
        // cannot loop; a reaction to one is an ordinary event and meets both limits.
        let mut refusal = None;
        if status == EventStatus::Published && !is_reserved(&event.topic) {
            if depth > self.config.max_depth {
                refusal = Some(Refusal {
                    reason: "depth",
                    limit: self.config.max_depth,
                });
            } else {
                let count = match batch.traces.entry(trace_id.clone()) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let stored = if fresh_trace {
                            None
                        } else {
                            tx.prepare_cached("SELECT routable_count FROM traces WHERE trace_id = ?1")?
                                .query_row([&trace_id], |row| row.get::<_, i64>(0))
                                .optional()?
                        };
                        entry.insert((stored.map_or(0, from_sql_int), false))
                    }
                };
                if count.0 >= u64::from(self.config.trace_budget) {
                    refusal = Some(Refusal {
                        reason: "trace_budget",
                        limit: self.config.trace_budget,
                    });
                } else {
                    count.0 += 1;
                    count.1 = true;
                }
            }
            if refusal.is_some() {
                status = EventStatus::Failed;
            }
        }

        let id = match event.id {
            Some(id) => id,
            None => self.new_event_id(now_ms)?,
        };
        let stored = Event {
            id,
            seq: self.take_seq(),
            ts: ts.to_owned(),
            topic: event.topic,
            payload: event.payload,
            source: event.source,
            priority: event.priority,
            semantic_type: event.semantic_type,
            dedupe_key: event.dedupe_key,
            dedupe_count: 1,
            duplicate_of,
            trace_id,
            parent_event: event.parent_event,
            correlation_id: event.correlation_id,
            output_topic: event.output_topic,
            context_refs: event.context_refs,
            memory_scope: event.memory_scope,
            expires_at: event.expires_at,
            depth,
            status,
        };
        let outcome = PublishOutcome {
            id: stored.id.clone(),
            seq: stored.seq,
            trace_id: stored.trace_id.clone(),
            status,
            existing: false,
        };
        if let Some(refusal) = refusal {
            tracing::debug!(
                event_id = %stored.id,
                topic = %stored.topic,
                trace_id = %stored.trace_id,
                reason = refusal.reason,
                "chain limit refused an event"
            );
            let mut payload = Map::new();
            payload.insert("reason".into(), Value::from(refusal.reason));
            payload.insert("limit".into(), json!(refusal.limit));
            payload.insert("event_id".into(), Value::from(stored.id.clone()));
            payload.insert("topic".into(), Value::from(stored.topic.clone()));
            let (id, trace_id, depth) = (stored.id.clone(), stored.trace_id.clone(), stored.depth);
            insert(tx, batch, stored, prepared, now_ms)?;
            let subject = Subject {
                id: &id,
                trace_id: &trace_id,
                depth,
            };
            let notice = NewEvent::new("system.chain_limit", "system", payload);
            self.report(tx, batch, notice, &subject, now_ms, ts)?;
        } else {
            insert(tx, batch, stored, prepared, now_ms)?;
        }
        Ok(Ok(outcome))
    }

    /// Writes a `system` event about `subject` (its child, in its trace) into the transaction:
    /// the one path for the bus's own reports (`system.chain_limit`, `system.agent_failure`).
    fn report(
        &mut self,
        tx: &Transaction<'_>,
        batch: &mut Batch,
        notice: NewEvent,
        subject: &Subject<'_>,
        now_ms: u64,
        ts: &str,
    ) -> Result<(), StoreError> {
        let prepared = Prepared::new(&notice)?;
        let event = Event {
            id: self.new_event_id(now_ms)?,
            seq: self.take_seq(),
            ts: ts.to_owned(),
            topic: notice.topic,
            payload: notice.payload,
            source: notice.source,
            priority: notice.priority,
            semantic_type: None,
            dedupe_key: None,
            dedupe_count: 1,
            duplicate_of: None,
            trace_id: subject.trace_id.to_owned(),
            parent_event: Some(subject.id.to_owned()),
            correlation_id: None,
            output_topic: None,
            context_refs: Vec::new(),
            memory_scope: None,
            expires_at: None,
            depth: subject.depth.saturating_add(1),
            status: EventStatus::Published,
        };
        insert(tx, batch, event, &prepared, now_ms)
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn new_event_id(&mut self, now_ms: u64) -> Result<String, StoreError> {
        self.ids
            .event_id(now_ms)
            .map_err(|error| StoreError::Internal(error.to_string()))
    }

    fn new_trace_id(&mut self, now_ms: u64) -> Result<String, StoreError> {
        self.ids
            .trace_id(now_ms)
            .map_err(|error| StoreError::Internal(error.to_string()))
    }
}

/// Writes one event row and records it for the topic table and the hub.
fn insert(
    tx: &Transaction<'_>,
    batch: &mut Batch,
    event: Event,
    prepared: &Prepared,
    now_ms: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(INSERT_EVENT)?.execute(params![
        sql_int(event.seq),
        event.id,
        event.ts,
        sql_int(now_ms),
        event.topic,
        prepared.payload.get(),
        event.source,
        event.priority.as_str(),
        event.semantic_type,
        event.dedupe_key,
        sql_int(event.dedupe_count),
        event.duplicate_of,
        event.trace_id,
        event.parent_event,
        event.correlation_id,
        event.output_topic,
        prepared.context_refs,
        event.memory_scope,
        event.expires_at,
        i64::from(event.depth),
        event.status.as_str(),
    ])?;
    match batch.topics.get_mut(event.topic.as_str()) {
        Some(entry) => {
            entry.0 += 1;
            entry.1 = event.seq;
        }
        None => {
            batch.topics.insert(event.topic.clone(), (1, event.seq));
        }
    }
    let json = prepared.event_json(&event)?;
    batch.committed.push(Arc::new(Committed { event, json }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ListQuery;
    use crate::store::tests::{event, open_test};
    use aiventbus_proto::TopicPattern;

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|event| event.seq).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seqs_are_gap_free_under_concurrent_submitters() {
        let test = open_test(|_| {});
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let store = test.store.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..250 {
                    seqs.push(store.publish(event("load.test", task * 1000 + n)).await.unwrap().seq);
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let seqs = task.await.unwrap();
            // Each submitter sees its own publishes in order.
            assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]));
            all.extend(seqs);
        }
        all.sort_unstable();
        assert_eq!(all, (1..=2000).collect::<Vec<_>>());
        assert_eq!(test.store.head(), 2000);
        let stats = test.store.stats().await.unwrap();
        assert_eq!((stats.events, stats.head, stats.oldest_seq), (2000, 2000, Some(1)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_order_is_seq_order_and_commits_are_grouped() {
        let test = open_test(|_| {});
        let answers: Vec<_> = (0..3000)
            .map(|n| test.store.submit(event("order.test", n)).unwrap())
            .collect();
        let mut previous = 0;
        for answer in answers {
            let seq = answer.await.unwrap().unwrap().seq;
            assert_eq!(seq, previous + 1);
            previous = seq;
        }
        let listed = test
            .store
            .list(ListQuery {
                limit: 5000,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        let payload_order: Vec<u64> = listed.iter().map(|e| e.payload["n"].as_u64().unwrap()).collect();
        assert_eq!(payload_order, (0..3000).collect::<Vec<_>>());
        let stats = test.store.stats().await.unwrap();
        assert_eq!(stats.written, 3000);
        assert!(
            stats.commits < 3000 / 4,
            "3000 queued publishes took {} transactions",
            stats.commits
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_survive_reopen() {
        let test = open_test(|_| {});
        let mut published = Vec::new();
        for n in 0..10 {
            published.push(test.store.publish(event("keep.me", n)).await.unwrap());
        }
        let before = test.store.get(&published[3].id).await.unwrap().unwrap();
        let test = test.reopen(|_| {}).await;
        assert_eq!(test.store.head(), 10);
        assert_eq!(test.store.get(&published[3].id).await.unwrap().unwrap(), before);
        let listed = test.store.list(ListQuery::default()).await.unwrap();
        assert_eq!(seqs(&listed), (1..=10).collect::<Vec<_>>());
        let next = test.store.publish(event("keep.me", 10)).await.unwrap();
        assert_eq!(next.seq, 11);
        let topics = test.store.topics().await.unwrap();
        assert_eq!((topics[0].count, topics[0].last_seq), (11, 11));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caller_ids_are_idempotent_per_topic() {
        let test = open_test(|_| {});
        let with_id = |topic: &str| NewEvent {
            id: Some("evt_client1".into()),
            ..event(topic, 1)
        };
        let first = test.store.publish(with_id("pay.sent")).await.unwrap();
        assert!(!first.existing);
        test.store.publish(event("other", 2)).await.unwrap();
        let retry = test.store.publish(with_id("pay.sent")).await.unwrap();
        assert!(retry.existing);
        assert_eq!(
            (retry.seq, &retry.trace_id, retry.status),
            (first.seq, &first.trace_id, first.status)
        );
        let conflict = test.store.publish(with_id("pay.refunded")).await.unwrap_err();
        assert!(matches!(conflict, StoreError::Conflict(_)), "{conflict:?}");
        assert_eq!(conflict.code().code(), -32003);
        // Nothing was written for the retry or the conflict.
        assert_eq!(test.store.head(), 2);
        // Retries queued in the same batch as the original are recognized too.
        let answers: Vec<_> = (0..3)
            .map(|_| {
                let again = NewEvent {
                    id: Some("evt_client2".into()),
                    ..event("pay.sent", 3)
                };
                test.store.submit(again).unwrap()
            })
            .collect();
        let mut existing = Vec::new();
        for answer in answers {
            let outcome = answer.await.unwrap().unwrap();
            assert_eq!(outcome.seq, 3);
            existing.push(outcome.existing);
        }
        assert_eq!(existing, vec![false, true, true]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dedupe_window_counts_copies_and_survives_reopen() {
        let test = open_test(|config| config.dedupe_window_ms = 200);
        let keyed = |n: u64| NewEvent {
            dedupe_key: Some("same".into()),
            ..event("clip.text", n)
        };
        let original = test.store.publish(keyed(0)).await.unwrap();
        assert_eq!(original.status, EventStatus::Published);
        test.clock.advance(100);
        let copy = test.store.publish(keyed(1)).await.unwrap();
        assert_eq!(copy.status, EventStatus::Deduped);
        let stored_copy = test.store.get(&copy.id).await.unwrap().unwrap();
        assert_eq!(stored_copy.duplicate_of.as_deref(), Some(original.id.as_str()));
        assert_eq!(test.store.get(&original.id).await.unwrap().unwrap().dedupe_count, 2);

        // Another key or another topic is not a copy.
        let other_key = NewEvent {
            dedupe_key: Some("different".into()),
            ..event("clip.text", 2)
        };
        assert_eq!(
            test.store.publish(other_key).await.unwrap().status,
            EventStatus::Published
        );
        let other_topic = NewEvent {
            dedupe_key: Some("same".into()),
            ..event("clip.html", 3)
        };
        assert_eq!(
            test.store.publish(other_topic).await.unwrap().status,
            EventStatus::Published
        );

        // The window is measured from the original and survives a restart.
        let test = test.reopen(|_| {}).await;
        test.clock.advance(99); // 199 ms after the original
        assert_eq!(test.store.publish(keyed(4)).await.unwrap().status, EventStatus::Deduped);
        let original_now = test.store.get(&original.id).await.unwrap().unwrap();
        assert_eq!(original_now.dedupe_count, 3);
        test.clock.advance(1); // 200 ms: outside
        let fresh = test.store.publish(keyed(5)).await.unwrap();
        assert_eq!(fresh.status, EventStatus::Published);
        test.clock.advance(150);
        // The new original opens its own window; the old one is untouched.
        assert_eq!(test.store.publish(keyed(6)).await.unwrap().status, EventStatus::Deduped);
        assert_eq!(test.store.get(&fresh.id).await.unwrap().unwrap().dedupe_count, 2);
        assert_eq!(test.store.get(&original.id).await.unwrap().unwrap().dedupe_count, 3);
        let deduped = test
            .store
            .list(ListQuery {
                status: Some(EventStatus::Deduped),
                ..ListQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(deduped.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_in_one_batch_are_deduped() {
        let test = open_test(|_| {});
        let answers: Vec<_> = (0..4)
            .map(|n| {
                let copy = NewEvent {
                    dedupe_key: Some("k".into()),
                    ..event("burst", n)
                };
                test.store.submit(copy).unwrap()
            })
            .collect();
        let mut statuses = Vec::new();
        for answer in answers {
            statuses.push(answer.await.unwrap().unwrap().status);
        }
        assert_eq!(
            statuses,
            vec![
                EventStatus::Published,
                EventStatus::Deduped,
                EventStatus::Deduped,
                EventStatus::Deduped
            ]
        );
        let original = test
            .store
            .list(ListQuery {
                limit: 1,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(original[0].dedupe_count, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parents_must_exist_and_share_the_trace() {
        let test = open_test(|_| {});
        let orphan = NewEvent {
            parent_event: Some("evt_nowhere".into()),
            ..event("a.b", 0)
        };
        let error = test.store.publish(orphan).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::Invalid(m) if m.contains("parent_event evt_nowhere")),
            "{error:?}"
        );
        assert_eq!(error.code().code(), -32602);
        assert_eq!(test.store.head(), 0);

        let root = test.store.publish(event("a.b", 1)).await.unwrap();
        assert!(root.trace_id.starts_with("tr_"));
        let wrong_trace = NewEvent {
            parent_event: Some(root.id.clone()),
            trace_id: Some("tr_other".into()),
            ..event("a.c", 2)
        };
        let error = test.store.publish(wrong_trace).await.unwrap_err();
        assert!(error.to_string().contains("trace_id"), "{error}");
        let child = NewEvent {
            parent_event: Some(root.id.clone()),
            trace_id: Some(root.trace_id.clone()),
            ..event("a.c", 3)
        };
        let child = test.store.publish(child).await.unwrap();
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(test.store.get(&child.id).await.unwrap().unwrap().depth, 1);
        // A given trace id without a parent starts or joins that trace at depth 0.
        let joined = NewEvent {
            trace_id: Some("tr_mine".into()),
            ..event("a.d", 4)
        };
        let joined = test.store.publish(joined).await.unwrap();
        assert_eq!(joined.trace_id, "tr_mine");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trace_budget_counts_only_routable_published_events() {
        let test = open_test(|config| config.trace_budget = 3);
        let store = &test.store;
        let root = store.publish(event("user.query", 0)).await.unwrap();
        let child_of = |topic: &str, n: u64| NewEvent {
            parent_event: Some(root.id.clone()),
            ..event(topic, n)
        };
        // Streaming and report events do not use the budget.
        for n in 0..5 {
            let streamed = NewEvent {
                source: "system".into(),
                ..child_of("agent.stream", n)
            };
            assert_eq!(store.publish(streamed).await.unwrap().status, EventStatus::Published);
        }
        assert_eq!(
            store.publish(child_of("task.one", 10)).await.unwrap().status,
            EventStatus::Published
        );
        assert_eq!(
            store.publish(child_of("task.two", 11)).await.unwrap().status,
            EventStatus::Published
        );
        let refused = store.publish(child_of("task.three", 12)).await.unwrap();
        assert_eq!(refused.status, EventStatus::Failed);
        assert_eq!(refused.trace_id, root.trace_id);
        // Reserved namespaces still go through once the budget is spent.
        assert_eq!(
            store.publish(child_of("agent.completed", 13)).await.unwrap().status,
            EventStatus::Published
        );

        let trace = store.trace(&root.trace_id).await.unwrap();
        let refused_event = trace.iter().find(|e| e.id == refused.id).unwrap();
        assert_eq!(refused_event.status, EventStatus::Failed);
        let notices: Vec<&Event> = trace.iter().filter(|e| e.topic == "system.chain_limit").collect();
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].payload["reason"], "trace_budget");
        assert_eq!(notices[0].payload["limit"], 3);
        assert_eq!(notices[0].parent_event.as_deref(), Some(refused.id.as_str()));
        assert_eq!(notices[0].seq, refused.seq + 1);
        // A failed event is not counted either, and the budget holds across restarts.
        let test = test.reopen(|_| {}).await;
        let late = NewEvent {
            parent_event: Some(root.id.clone()),
            ..event("task.four", 14)
        };
        assert_eq!(test.store.publish(late).await.unwrap().status, EventStatus::Failed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_rolls_back_and_the_writer_carries_on() {
        let test = open_test(|_| {});
        let mut subscription = test.store.subscribe(vec![TopicPattern::parse("**").unwrap()], None, 64);
        test.store.publish(event("before", 0)).await.unwrap();
        test.store.fail_next_batch();
        let error = test.store.publish(event("lost", 1)).await.unwrap_err();
        assert!(matches!(error, StoreError::Internal(_)), "{error:?}");
        assert_eq!(test.store.head(), 1);
        let after = test.store.publish(event("after", 2)).await.unwrap();
        assert_eq!(after.seq, 2, "the rolled-back seq is reused, leaving no gap");
        let listed = test.store.list(ListQuery::default()).await.unwrap();
        assert_eq!(
            listed.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
            vec!["before", "after"]
        );
        assert_eq!(subscription.next().await.unwrap().event.topic, "before");
        assert_eq!(subscription.next().await.unwrap().event.topic, "after");
        assert_eq!(test.store.stats().await.unwrap().rollbacks, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_age_keeps_the_newest_event() {
        let test = open_test(|config| config.retention_ms = 1000);
        for n in 0..5 {
            test.store.publish(event("old.news", n)).await.unwrap();
        }
        test.clock.advance(600);
        for n in 5..8 {
            test.store.publish(event("fresh", n)).await.unwrap();
        }
        test.clock.advance(600); // the first five are now 1200 ms old, the rest 600 ms
        let report = test.store.compact().await.unwrap();
        assert_eq!((report.deleted, report.oldest_seq), (5, Some(6)));
        let listed = test.store.list(ListQuery::default()).await.unwrap();
        assert_eq!(seqs(&listed), vec![6, 7, 8]);
        let topics = test.store.topics().await.unwrap();
        assert_eq!(
            topics.iter().map(|t| (t.topic.as_str(), t.count)).collect::<Vec<_>>(),
            vec![("fresh", 3)]
        );

        // Everything old: all but the newest go, so the head survives a restart.
        test.clock.advance(10_000);
        assert_eq!(test.store.compact().await.unwrap().deleted, 2);
        let test = test.reopen(|_| {}).await;
        assert_eq!(test.store.head(), 8);
        let stats = test.store.stats().await.unwrap();
        assert_eq!((stats.events, stats.oldest_seq), (1, Some(8)));
        assert_eq!(test.store.publish(event("fresh", 9)).await.unwrap().seq, 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_count_and_trace_pruning() {
        let test = open_test(|config| {
            config.max_events = 5;
            config.trace_budget = 2;
        });
        let store = &test.store;
        let root = store.publish(event("job", 0)).await.unwrap();
        let child = NewEvent {
            parent_event: Some(root.id.clone()),
            ..event("job", 1)
        };
        store.publish(child).await.unwrap();
        for n in 2..12 {
            store.publish(event("bulk", n)).await.unwrap();
        }
        let report = store.compact().await.unwrap();
        assert_eq!((report.deleted, report.oldest_seq), (7, Some(8)));
        let listed = store.list(ListQuery::default()).await.unwrap();
        assert_eq!(seqs(&listed), vec![8, 9, 10, 11, 12]);
        let topics = store.topics().await.unwrap();
        assert_eq!(
            topics.iter().map(|t| (t.topic.as_str(), t.count)).collect::<Vec<_>>(),
            vec![("bulk", 5)]
        );
        // The trace's events are gone, and so is its budget: joining it again starts from zero.
        let traces: i64 = {
            let conn = rusqlite::Connection::open(&store.config().path).unwrap();
            conn.query_row(
                "SELECT COUNT(*) FROM traces WHERE trace_id = ?1",
                [&root.trace_id],
                |row| row.get(0),
            )
            .unwrap()
        };
        assert_eq!(traces, 0);
        let rejoin = NewEvent {
            trace_id: Some(root.trace_id.clone()),
            ..event("job", 12)
        };
        assert_eq!(store.publish(rejoin).await.unwrap().status, EventStatus::Published);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_and_panicking_writes_roll_back_and_the_writer_carries_on() {
        let test = open_test(|_| {});
        let insert = "INSERT INTO knowledge (key, value, source, created_at, updated_at, rev) \
                      VALUES (?1, '1', 'system', 't', 't', 1)";
        let failed = test
            .store
            .write(move |tx, _| -> Result<(), StoreError> {
                tx.execute(insert, ["failed"])?;
                Err(StoreError::Invalid("refused after writing".into()))
            })
            .await;
        assert_eq!(failed, Err(StoreError::Invalid("refused after writing".into())));
        let panicked = test
            .store
            .write(move |tx, _| -> Result<(), StoreError> {
                tx.execute(insert, ["panicked"])?;
                panic!("a bug in a write");
            })
            .await;
        assert_eq!(panicked, Err(StoreError::Closed));
        // Neither row was kept, and publishes and writes still work.
        assert_eq!(test.store.publish(event("after", 0)).await.unwrap().seq, 1);
        let now = test.store.write(|_, now_ms| Ok(now_ms)).await.unwrap();
        assert_eq!(now, crate::store::tests::T0);
        let kept: i64 = rusqlite::Connection::open(&test.store.config().path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM knowledge", [], |row| row.get(0))
            .unwrap();
        assert_eq!(kept, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_drains_then_refuses() {
        let test = open_test(|_| {});
        let answers: Vec<_> = (0..100)
            .map(|n| test.store.submit(event("drain", n)).unwrap())
            .collect();
        test.store.close().await;
        for answer in answers {
            assert!(
                answer.await.unwrap().is_ok(),
                "queued publishes are committed before close"
            );
        }
        assert_eq!(test.store.head(), 100);
        assert_eq!(test.store.submit(event("late", 0)).unwrap_err(), StoreError::Closed);
        assert_eq!(
            test.store.publish(event("late", 0)).await.unwrap_err().code().code(),
            -32005
        );
        // Reads still work.
        assert_eq!(test.store.list(ListQuery::default()).await.unwrap().len(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_commit_with_their_job_and_leave_no_gap_otherwise() {
        let test = open_test(|_| {});
        let store = &test.store;
        let mut subscription = store.subscribe(vec![TopicPattern::parse("**").unwrap()], None, 16);
        let root = store.publish(event("work.item", 0)).await.unwrap();
        let report = |outcome: fn() -> Result<(), StoreError>| {
            let (parent, trace) = (root.id.clone(), root.trace_id.clone());
            store.write_reporting(move |tx, emitter| {
                let subject = Subject {
                    id: &parent,
                    trace_id: &trace,
                    depth: 0,
                };
                emitter.report(tx, "system.agent_failure", Map::new(), &subject)?;
                outcome()
            })
        };
        // Rolled back, or unwound by a panic: the seqs the report took are handed out again.
        let refused = report(|| Err(StoreError::Invalid("changed my mind".into()))).await;
        assert_eq!(refused, Err(StoreError::Invalid("changed my mind".into())));
        assert_eq!(report(|| panic!("a bug in a job")).await, Err(StoreError::Closed));
        assert_eq!(store.publish(event("work.item", 1)).await.unwrap().seq, 2);
        // Committed: in the trace as the event's child, delivered, and the head moved first.
        report(|| Ok(())).await.unwrap();
        assert_eq!(store.head(), 3);
        let trace = store.trace(&root.trace_id).await.unwrap();
        let notice = trace.last().unwrap();
        assert_eq!(
            (notice.seq, notice.topic.as_str(), notice.source.as_str()),
            (3, "system.agent_failure", "system")
        );
        assert_eq!(
            (notice.parent_event.as_deref(), notice.depth),
            (Some(root.id.as_str()), 1)
        );
        let delivered: Vec<u64> = [
            subscription.next().await.unwrap(),
            subscription.next().await.unwrap(),
            subscription.next().await.unwrap(),
        ]
        .iter()
        .map(|committed| committed.seq())
        .collect();
        assert_eq!(delivered, vec![1, 2, 3]);
        assert_eq!(store.stats().await.unwrap().written, 3);
    }
}
