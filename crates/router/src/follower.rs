//! Following the bus: one subscription to every topic from the cursor, each event routed
//! (assignments created, drops and unmatched events reported), the cursor advanced only over
//! events whose routing is complete, and a new subscription from there whenever one ends.
//!
//! An event no rule takes goes to `[router] classifier_agent` when that is set and the agent is
//! usable (lane ambient, no rule id: the agent decides what the event is), else it is reported as
//! `system.unmatched` — except in the reserved namespaces, whose events are the daemon's own.
//!
//! Up to [`WINDOW`] events are routed at once; they complete in seq order (the cursor never passes
//! an event still being routed). A call that fails for a reason that may pass (the bus is
//! restarting, overloaded, or does not offer a method yet) ends the round: the cursor is written,
//! and after a backoff (100 ms doubling to 5 s) the router subscribes again from it, so nothing is
//! skipped. Repeating work is harmless: `assignments.create` is idempotent per event and agent, and
//! the reports the router publishes carry ids derived from the routed event, which the bus
//! recognizes as retries. A call refused for good (invalid params, not found) is logged, counted in
//! `errors`, and skipped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aiventbus_proto::agents::{AssignmentCreateParams, AssignmentsCreate, Lane};
use aiventbus_proto::event::is_reserved;
use aiventbus_proto::methods::{Health, NoParams, Publish, PublishParams, Subscribe, SubscribeParams};
use aiventbus_proto::{ErrorCode, Event, Method};
use aiventbus_rpc::{Client, ClientError, Notice, Subscription};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::matcher::{self, Facts};
use crate::state::{Counters, State};
use crate::store::StoreError;

/// Events routed at once.
pub const WINDOW: usize = 64;
/// The cursor is written at most this often …
pub const CURSOR_EVERY: Duration = Duration::from_millis(50);
/// … or once this many events were routed since the last write.
pub const CURSOR_EVENTS: u64 = 256;
/// First wait before subscribing again.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest wait before subscribing again.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long opening a subscription may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where following starts.
pub struct Start {
    /// Routing is complete up to this seq.
    pub cursor: u64,
    /// A subscription already delivering from `cursor + 1`, when one was opened to find the start.
    pub subscription: Option<Subscription>,
}

/// Routing of one event could not finish for a reason that may pass; it is tried again.
#[derive(Debug, thiserror::Error)]
#[error("{call} for event {event_id} failed: {error}")]
pub struct Retry {
    call: &'static str,
    event_id: String,
    error: ClientError,
}

/// Why a round of following ended.
enum Ended {
    Shutdown,
    Stopped { progress: bool },
}

/// The cursor as routed and as stored.
struct Cursor {
    routed: u64,
    stored: u64,
    stored_at: Instant,
}

impl Cursor {
    fn dirty(&self) -> bool {
        self.routed != self.stored
    }

    fn due(&self) -> bool {
        self.dirty()
            && (self.routed.saturating_sub(self.stored) >= CURSOR_EVENTS || self.stored_at.elapsed() >= CURSOR_EVERY)
    }

    fn flush_at(&self) -> Option<Instant> {
        self.dirty().then(|| self.stored_at + CURSOR_EVERY)
    }
}

/// The id of a report the router publishes about `event`: `evt_` and a ULID whose time is the
/// event's and whose random part is a hash of the report's topic, the event id and the agent, so
/// publishing it again (after a crash before the cursor was written) is recognized by the bus.
pub fn report_id(topic: &str, event: &Event, agent_id: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    for part in [topic, &event.id, agent_id.unwrap_or("")] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let ms = aiventbus_rpc::time::parse_rfc3339_ms(&event.ts).unwrap_or(0);
    format!("evt_{}", aiventbus_rpc::ids::ulid(ms, random))
}

/// Whether the bus refused the call for good: repeating it would be refused again.
fn refused_for_good(error: &ClientError) -> bool {
    matches!(
        error.rpc().and_then(|error| error.kind()),
        Some(ErrorCode::InvalidParams | ErrorCode::NotFound | ErrorCode::Conflict)
    )
}

/// Follows the bus for the router.
pub struct Follower {
    state: Arc<State>,
    bus: Client,
}

impl Follower {
    /// A follower over the shared state and a client of the bus.
    pub fn new(state: Arc<State>, bus: Client) -> Follower {
        Follower { state, bus }
    }

    async fn store_cursor_now(&self, seq: u64) -> Result<(), StoreError> {
        let store = self.state.store.clone();
        tokio::task::spawn_blocking(move || store.set_cursor(seq))
            .await
            .map_err(|error| StoreError::Internal(format!("cursor write task failed: {error}")))??;
        self.state.counters.cursor.store(seq, Ordering::Relaxed);
        Ok(())
    }

    /// Finds where to start: the stored cursor, or for a new store the bus's newest event (so a
    /// router added to an existing bus does not route its history), found by subscribing live and
    /// kept as the first subscription. Waits for the bus in that case; `None` on shutdown.
    pub async fn start(&self, shutdown: &CancellationToken) -> Result<Option<Start>, StoreError> {
        let store = self.state.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.cursor())
            .await
            .map_err(|error| StoreError::Internal(format!("cursor read task failed: {error}")))??;
        if let Some(cursor) = stored {
            self.state.counters.cursor.store(cursor, Ordering::Relaxed);
            return Ok(Some(Start {
                cursor,
                subscription: None,
            }));
        }
        let mut backoff = BACKOFF_FIRST;
        loop {
            let params = SubscribeParams {
                patterns: vec!["**".into()],
                from_seq: None,
            };
            let opened = tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                opened = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.bus.subscribe(Subscribe::NAME, &params)) => opened,
            };
            match opened {
                Ok(Ok(subscription)) => {
                    // A bus that does not say where a live subscription starts: route everything.
                    let (cursor, subscription) = match subscription.next_seq() {
                        Some(next_seq) => (next_seq.saturating_sub(1), Some(subscription)),
                        None => (0, None),
                    };
                    self.store_cursor_now(cursor).await?;
                    tracing::info!(cursor, "new router store: following the bus from its newest event");
                    return Ok(Some(Start { cursor, subscription }));
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot subscribe to the bus yet; retrying"),
                Err(_) => tracing::warn!("the bus did not answer events.subscribe; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Follows the bus from `start` until `shutdown`, then writes the cursor.
    pub async fn run(self, start: Start, shutdown: CancellationToken) {
        let mut cursor = Cursor {
            routed: start.cursor,
            stored: start.cursor,
            stored_at: Instant::now(),
        };
        self.state.counters.routed_seq.store(start.cursor, Ordering::Relaxed);
        let mut first = start.subscription;
        let mut backoff = BACKOFF_FIRST;
        loop {
            let opened = match first.take() {
                Some(subscription) => Ok(subscription),
                None => self.subscribe(&mut cursor, &shutdown).await,
            };
            let ended = match opened {
                Ok(subscription) => {
                    self.state.counters.following.store(true, Ordering::Relaxed);
                    let ended = self.pump(subscription, &mut cursor, &shutdown).await;
                    self.state.counters.following.store(false, Ordering::Relaxed);
                    ended
                }
                Err(error) => {
                    tracing::warn!(%error, from_seq = cursor.routed + 1, "cannot subscribe to the bus");
                    self.state.counters.set_last_error(&error);
                    Ended::Stopped { progress: false }
                }
            };
            self.store_cursor(&mut cursor).await;
            match ended {
                Ended::Shutdown => return,
                Ended::Stopped { progress: true } => backoff = BACKOFF_FIRST,
                Ended::Stopped { progress: false } => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Writes the cursor if it moved; a failed write is logged and tried again later (the
    /// in-memory cursor keeps routing going; only a crash before the next write repeats work).
    async fn store_cursor(&self, cursor: &mut Cursor) {
        if !cursor.dirty() {
            return;
        }
        let seq = cursor.routed;
        match self.store_cursor_now(seq).await {
            Ok(()) => cursor.stored = seq,
            Err(error) => {
                tracing::error!(%error, seq, "cannot write the cursor");
                self.state.counters.set_last_error(&error);
            }
        }
        cursor.stored_at = Instant::now();
    }

    /// Subscribes from the cursor. A bus whose newest event is older than the cursor lost its
    /// events (its database was replaced): the cursor restarts at 0 so its events are routed.
    async fn subscribe(&self, cursor: &mut Cursor, shutdown: &CancellationToken) -> Result<Subscription, ClientError> {
        if let Ok(health) = self.bus.call::<Health>(&NoParams {}).await
            && let Some(head) = health.details.get("head").and_then(Value::as_u64)
            && head < cursor.routed
        {
            tracing::warn!(
                head,
                cursor = cursor.routed,
                "the bus's newest event is older than the router's cursor: its events were replaced; routing them from the start"
            );
            cursor.routed = 0;
            cursor.stored = u64::MAX;
            self.state.counters.routed_seq.store(0, Ordering::Relaxed);
            self.store_cursor(cursor).await;
        }
        let params = SubscribeParams {
            patterns: vec!["**".into()],
            from_seq: Some(cursor.routed + 1),
        };
        tokio::select! {
            _ = shutdown.cancelled() => Err(ClientError::Unavailable("stopping".into())),
            opened = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.bus.subscribe(Subscribe::NAME, &params)) => {
                opened.unwrap_or(Err(ClientError::Timeout))
            }
        }
    }

    /// Routes what one subscription delivers until it ends, a call fails in a way that may pass,
    /// or shutdown.
    async fn pump(&self, mut subscription: Subscription, cursor: &mut Cursor, shutdown: &CancellationToken) -> Ended {
        let mut in_flight = FuturesOrdered::new();
        let mut queued = cursor.routed;
        let mut progress = false;
        let mut closed: Option<String> = None;
        loop {
            if in_flight.is_empty()
                && let Some(reason) = &closed
            {
                tracing::info!(%reason, next_seq = cursor.routed + 1, "bus subscription ended; subscribing again");
                return Ended::Stopped { progress };
            }
            let flush_at = cursor.flush_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ended::Shutdown,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => match done {
                    Ok(seq) => {
                        cursor.routed = seq;
                        progress = true;
                        self.state.counters.routed_seq.store(seq, Ordering::Relaxed);
                        if cursor.due() {
                            self.store_cursor(cursor).await;
                        }
                    }
                    Err(retry) => {
                        tracing::warn!(error = %retry, "routing stopped; will subscribe again from the cursor");
                        self.state.counters.set_last_error(&retry);
                        return Ended::Stopped { progress };
                    }
                },
                notice = subscription.next(), if closed.is_none() && in_flight.len() < WINDOW => match notice {
                    Some(Notice::Item(raw)) => match serde_json::from_str::<Event>(raw.get()) {
                        Ok(event) if event.seq > queued => {
                            queued = event.seq;
                            in_flight.push_back(route(Arc::clone(&self.state), self.bus.clone(), event));
                        }
                        // Already routed or queued (a replay overlapping what was seen).
                        Ok(_) => {}
                        Err(error) => {
                            tracing::error!(%error, "the bus delivered an event the router cannot read; skipping it");
                            self.state.counters.set_last_error(format!("unreadable event: {error}"));
                        }
                    },
                    Some(Notice::Closed(error)) => closed = Some(error.message),
                    None => closed = Some("connection to the bus lost".into()),
                },
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.store_cursor(cursor).await;
                }
            }
        }
    }
}

/// Routes one event; returns its seq once every effect is done.
async fn route(state: Arc<State>, bus: Client, event: Event) -> Result<u64, Retry> {
    if !matcher::routable(&event) {
        return Ok(event.seq);
    }
    let plan = state.plan(&Facts::of(&event)).await;
    let lane = matcher::lane(&event.topic, event.priority);
    if !plan.is_empty() {
        for compiled in &plan {
            let rule = &compiled.rule;
            let params = AssignmentCreateParams {
                event_id: event.id.clone(),
                agent_id: rule.agent_id.clone(),
                rule_id: Some(rule.id.clone()),
                lane,
                max_attempts: None,
                model_override: rule.model_override.clone(),
                token_budget_override: rule.token_budget_override,
                max_queue: Some(state.settings.max_queue),
            };
            assign(&state, &bus, &event, params).await?;
        }
        Counters::bump(&state.counters.routed);
        return Ok(event.seq);
    }
    // The daemon's own reports that no rule names are simply not for agents.
    if is_reserved(&event.topic) {
        return Ok(event.seq);
    }
    if let Some(classifier) = &state.settings.classifier_agent
        && state.agents.view(&[classifier]).await.usable(classifier)
    {
        let params = AssignmentCreateParams {
            event_id: event.id.clone(),
            agent_id: classifier.clone(),
            rule_id: None,
            lane: Lane::Ambient,
            max_attempts: None,
            model_override: None,
            token_budget_override: None,
            max_queue: Some(state.settings.max_queue),
        };
        assign(&state, &bus, &event, params).await?;
        Counters::bump(&state.counters.classified);
        return Ok(event.seq);
    }
    let payload = json!({"event_id": event.id, "topic": event.topic});
    if report(&state, &bus, &event, "system.unmatched", payload, None).await? {
        Counters::bump(&state.counters.unmatched);
    }
    Ok(event.seq)
}

/// Creates one assignment; a dropped one is reported.
async fn assign(state: &State, bus: &Client, event: &Event, params: AssignmentCreateParams) -> Result<(), Retry> {
    match bus.call::<AssignmentsCreate>(&params).await {
        Ok(result) if result.dropped => {
            let payload = json!({
                "event_id": event.id,
                "agent_id": params.agent_id,
                "lane": params.lane,
                "reason": "queue_full",
            });
            tracing::info!(event = %event.id, agent = %params.agent_id, "agent queue full; ambient work dropped");
            if report(
                state,
                bus,
                event,
                "system.assignment_dropped",
                payload,
                Some(&params.agent_id),
            )
            .await?
            {
                Counters::bump(&state.counters.dropped);
            }
            Ok(())
        }
        Ok(result) => {
            if result.created {
                Counters::bump(&state.counters.assignments);
            }
            Ok(())
        }
        Err(error) if refused_for_good(&error) => {
            tracing::warn!(event = %event.id, agent = %params.agent_id, %error, "the bus refused the assignment; skipping it");
            Counters::bump(&state.counters.errors);
            state.counters.set_last_error(&error);
            Ok(())
        }
        Err(error) => Err(Retry {
            call: AssignmentsCreate::NAME,
            event_id: event.id.clone(),
            error,
        }),
    }
}

/// Publishes a report about `event` in its trace (parent = the event) with an id derived from it.
/// Returns whether it was published (false: refused for good, logged).
async fn report(
    state: &State,
    bus: &Client,
    event: &Event,
    topic: &str,
    payload: Value,
    agent_id: Option<&str>,
) -> Result<bool, Retry> {
    let params = PublishParams {
        topic: topic.to_owned(),
        payload: Some(payload),
        id: Some(report_id(topic, event, agent_id)),
        parent_event: Some(event.id.clone()),
        ..PublishParams::default()
    };
    match bus.call::<Publish>(&params).await {
        Ok(_) => Ok(true),
        Err(error) if refused_for_good(&error) => {
            tracing::warn!(event = %event.id, topic, %error, "the bus refused a report; skipping it");
            Counters::bump(&state.counters.errors);
            state.counters.set_last_error(&error);
            Ok(false)
        }
        Err(error) => Err(Retry {
            call: Publish::NAME,
            event_id: event.id.clone(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, ts: &str) -> Event {
        serde_json::from_value(json!({
            "id": id, "seq": 7, "ts": ts, "topic": "fs.created", "payload": {}, "source": "system",
            "priority": "medium", "trace_id": "tr_1", "depth": 0, "status": "published"
        }))
        .unwrap()
    }

    #[test]
    fn report_ids_are_valid_deterministic_and_distinct() {
        let first = event("evt_01JA", "2026-01-01T00:00:00.000Z");
        let id = report_id("system.unmatched", &first, None);
        assert!(
            aiventbus_proto::event::validate_prefixed_id(&id, "evt_").is_ok(),
            "{id}"
        );
        assert_eq!(id.len(), 4 + aiventbus_rpc::ids::ULID_LEN);
        assert_eq!(id, report_id("system.unmatched", &first, None), "same input, same id");
        // The time part is the event's, so report ids sort near their event.
        let at = aiventbus_rpc::time::parse_rfc3339_ms(&first.ts).unwrap();
        assert_eq!(&id[4..14], &aiventbus_rpc::ids::ulid(at, [0; 10])[..10]);
        let others = [
            report_id("system.unmatched", &event("evt_01JB", "2026-01-01T00:00:00.000Z"), None),
            report_id("system.assignment_dropped", &first, Some("agt_1")),
            report_id("system.assignment_dropped", &first, Some("agt_2")),
        ];
        for other in &others {
            assert_ne!(&id, other);
        }
        assert_ne!(others[1], others[2]);
        // An unreadable time still gives a valid id.
        let odd = report_id("system.unmatched", &event("evt_x", "yesterday"), None);
        assert!(aiventbus_proto::event::validate_prefixed_id(&odd, "evt_").is_ok());
    }

    #[test]
    fn cursor_writes_are_batched() {
        let mut cursor = Cursor {
            routed: 10,
            stored: 10,
            stored_at: Instant::now(),
        };
        assert!(!cursor.dirty() && !cursor.due() && cursor.flush_at().is_none());
        cursor.routed = 11;
        assert!(cursor.dirty() && !cursor.due(), "one event right after a write waits");
        assert_eq!(cursor.flush_at(), Some(cursor.stored_at + CURSOR_EVERY));
        cursor.routed = 10 + CURSOR_EVENTS;
        assert!(cursor.due(), "a full batch is written at once");
        cursor.routed = 11;
        cursor.stored_at = Instant::now() - CURSOR_EVERY;
        assert!(cursor.due(), "an old write is renewed");
    }

    #[test]
    fn only_refusals_are_final() {
        let rpc = |code| ClientError::Rpc(aiventbus_proto::ErrorObject::new(code, "x"));
        assert!(refused_for_good(&rpc(ErrorCode::InvalidParams)));
        assert!(refused_for_good(&rpc(ErrorCode::NotFound)));
        assert!(refused_for_good(&rpc(ErrorCode::Conflict)));
        assert!(!refused_for_good(&rpc(ErrorCode::Overloaded)));
        assert!(!refused_for_good(&rpc(ErrorCode::Unavailable)));
        assert!(!refused_for_good(&rpc(ErrorCode::MethodNotFound)));
        assert!(!refused_for_good(&rpc(ErrorCode::Internal)));
        assert!(!refused_for_good(&ClientError::Disconnected));
        assert!(!refused_for_good(&ClientError::Timeout));
    }
}
