//! The bus's methods on `bus.sock`: publishing (straight into the commit queue, in arrival order),
//! queries, subscriptions, knowledge, memory, the assignments queue, and its health figures. Maps
//! store errors to JSON-RPC codes in one place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aiventbus_proto::agents::{
    AssignmentCreateParams, AssignmentListParams, AssignmentsCancelPending, AssignmentsClaim, AssignmentsComplete,
    AssignmentsCreate, AssignmentsFail, AssignmentsHeartbeat, AssignmentsList, AssignmentsResult, AssignmentsResume,
    AssignmentsSuspend, CancelPendingParams, CancelPendingResult, ClaimParams, ClaimResult, FailParams, LeaseParams,
};
use aiventbus_proto::event::is_reserved;
use aiventbus_proto::event::validate_source;
use aiventbus_proto::jsonrpc::{encode_close_notification, encode_notification};
use aiventbus_proto::methods::{
    Chain, DeleteResult, EVENTS_NOTIFICATION, EventsResult, FactsResult, Get, Health, HealthResult, IdParams, IdResult,
    KeyParams, KnowledgeDelete, KnowledgeGet, KnowledgeList, KnowledgeListParams, KnowledgeSet, KnowledgeSetParams,
    List, ListParams, MemoriesResult, MemoryAdd, MemoryAddParams, MemoryDelete, MemoryGet, MemoryList,
    MemoryListParams, MemorySearch, MemorySearchParams, MemoryUpdate, MemoryUpdateParams, NoParams, Publish,
    PublishParams, PublishResult, SubscribeParams, SubscribeResult, TopicsList, TopicsResult, Trace, TraceParams,
    Unsubscribe, UnsubscribeParams, UnsubscribeResult,
};
use aiventbus_proto::{ErrorCode, ErrorObject, Event, Method, TopicPattern};
use aiventbus_rpc::error::parse_params;
use aiventbus_rpc::server::{Peer, Pending, Reply};
use aiventbus_rpc::{Methods, RpcError};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::hub::SubscriptionEnd;
use crate::store::{ListQuery, NewEvent, Store, StoreError};

/// Subjects allowed to publish into the reserved namespaces (`system`, `agent`, `exec`, `action`,
/// `request`). Everyone else — the gateway on behalf of clients, producers — gets -32602.
const RESERVED_PUBLISHERS: [&str; 6] = ["init", "bus", "router", "llm", "policy", "exec"];
/// Most patterns one subscription may carry.
const MAX_PATTERNS: usize = 64;

/// What the handlers share.
pub struct State {
    /// The event store.
    pub store: Store,
    /// Events buffered per subscriber before it is cut off.
    pub subscriber_buffer: usize,
    /// Cancelled when the bus stops; subscriptions end with a reason.
    pub shutdown: CancellationToken,
    subscriptions: Mutex<HashMap<(u64, String), CancellationToken>>,
}

impl State {
    /// Handler state over an open store.
    pub fn new(store: Store, subscriber_buffer: usize, shutdown: CancellationToken) -> State {
        State {
            store,
            subscriber_buffer,
            shutdown,
            subscriptions: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts and removes: a panic elsewhere cannot leave the map half-updated.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The one place store errors become wire errors.
pub fn rpc_error(error: StoreError) -> RpcError {
    match error.code() {
        ErrorCode::Internal => RpcError::internal(error),
        code => RpcError::new(code, error.to_string()),
    }
}

/// The method table of `bus.sock`.
pub fn methods(state: Arc<State>) -> Methods<State> {
    let mut table = Methods::new(state);
    table.add::<Publish, _, _>(publish);
    table.add::<Get, _, _>(|state, _, params: IdParams| async move {
        state
            .store
            .get(&params.id)
            .await
            .map_err(rpc_error)?
            .ok_or_else(|| RpcError::not_found(format!("no event {}", params.id)))
    });
    table.add::<List, _, _>(|state, _, params: ListParams| async move {
        let query = ListQuery::from_params(params).map_err(rpc_error)?;
        let events = state.store.list(query).await.map_err(rpc_error)?;
        Ok(EventsResult { events })
    });
    table.add::<Chain, _, _>(|state, _, params: IdParams| async move {
        let events: Vec<Event> = state
            .store
            .chain(&params.id)
            .await
            .map_err(rpc_error)?
            .ok_or_else(|| RpcError::not_found(format!("no event {}", params.id)))?;
        Ok(EventsResult { events })
    });
    table.add::<Trace, _, _>(|state, _, params: TraceParams| async move {
        let events = state.store.trace(&params.trace_id).await.map_err(rpc_error)?;
        Ok(EventsResult { events })
    });
    table.add::<TopicsList, _, _>(|state, _, _: NoParams| async move {
        let topics = state.store.topics().await.map_err(rpc_error)?;
        Ok(TopicsResult { topics })
    });
    table.add_raw(aiventbus_proto::methods::Subscribe::NAME, subscribe);
    table.add::<Unsubscribe, _, _>(|state, peer, params: UnsubscribeParams| async move {
        let token = lock(&state.subscriptions).remove(&(peer.connection_id, params.subscription));
        let unsubscribed = token.is_some();
        if let Some(token) = token {
            token.cancel();
        }
        Ok(UnsubscribeResult { unsubscribed })
    });
    add_knowledge(&mut table);
    add_memory(&mut table);
    add_assignments(&mut table);
    table.add::<Health, _, _>(|state, _, _: NoParams| async move {
        let stats = state.store.stats().await.map_err(rpc_error)?;
        let details = serde_json::json!({
            "head": stats.head,
            "events": stats.events,
            "oldest_seq": stats.oldest_seq,
            "db_bytes": stats.db_bytes,
            "commits": stats.commits,
            "written": stats.written,
            "rollbacks": stats.rollbacks,
            "subscribers": stats.subscribers,
        });
        Ok(HealthResult {
            service: "bus".into(),
            status: "ok".into(),
            details: match details {
                serde_json::Value::Object(map) => map,
                _ => Default::default(),
            },
        })
    });
    table
}

/// The source recorded for a fact or memory whose caller names none: the caller's subject when
/// it is a source already (`user:alice`), else `service:<subject>` for a service's token.
fn default_source(peer: &Peer) -> String {
    if validate_source(&peer.subject).is_ok() {
        peer.subject.clone()
    } else {
        format!("service:{}", peer.subject)
    }
}

fn add_knowledge(table: &mut Methods<State>) {
    table.add::<KnowledgeSet, _, _>(|state, peer, params: KnowledgeSetParams| async move {
        state
            .store
            .set_fact(params, &default_source(&peer))
            .await
            .map_err(rpc_error)
    });
    table.add::<KnowledgeGet, _, _>(|state, _, params: KeyParams| async move {
        state.store.get_fact(&params.key).await.map_err(rpc_error)
    });
    table.add::<KnowledgeDelete, _, _>(|state, _, params: KeyParams| async move {
        let deleted = state.store.delete_fact(&params.key).await.map_err(rpc_error)?;
        Ok(DeleteResult { deleted })
    });
    table.add::<KnowledgeList, _, _>(|state, _, params: KnowledgeListParams| async move {
        let facts = state.store.list_facts(params).await.map_err(rpc_error)?;
        Ok(FactsResult { facts })
    });
}

fn add_memory(table: &mut Methods<State>) {
    table.add::<MemoryAdd, _, _>(|state, peer, params: MemoryAddParams| async move {
        let id = state
            .store
            .add_memory(params, &default_source(&peer))
            .await
            .map_err(rpc_error)?;
        Ok(IdResult { id })
    });
    table.add::<MemoryGet, _, _>(|state, _, params: IdParams| async move {
        state.store.get_memory(&params.id).await.map_err(rpc_error)
    });
    table.add::<MemoryList, _, _>(|state, _, params: MemoryListParams| async move {
        let memories = state.store.list_memories(params).await.map_err(rpc_error)?;
        Ok(MemoriesResult { memories })
    });
    table.add::<MemorySearch, _, _>(|state, _, params: MemorySearchParams| async move {
        let memories = state.store.search_memories(params).await.map_err(rpc_error)?;
        Ok(MemoriesResult { memories })
    });
    table.add::<MemoryUpdate, _, _>(|state, _, params: MemoryUpdateParams| async move {
        state.store.update_memory(params).await.map_err(rpc_error)
    });
    table.add::<MemoryDelete, _, _>(|state, _, params: IdParams| async move {
        let deleted = state.store.delete_memory(&params.id).await.map_err(rpc_error)?;
        Ok(DeleteResult { deleted })
    });
}

fn add_assignments(table: &mut Methods<State>) {
    table.add::<AssignmentsCreate, _, _>(|state, _, params: AssignmentCreateParams| async move {
        state.store.create_assignment(params).await.map_err(rpc_error)
    });
    table.add::<AssignmentsClaim, _, _>(|state, peer, params: ClaimParams| async move {
        // A long poll ends early, empty, when the bus stops or the caller hangs up.
        let stop = async {
            tokio::select! {
                _ = state.shutdown.cancelled() => {}
                _ = peer.input_closed().cancelled() => {}
            }
        };
        let claimed = state.store.claim(params, stop).await.map_err(rpc_error)?;
        Ok(ClaimResult { claimed })
    });
    table.add::<AssignmentsHeartbeat, _, _>(|state, _, params: LeaseParams| async move {
        state.store.heartbeat_assignment(params).await.map_err(rpc_error)
    });
    table.add::<AssignmentsComplete, _, _>(|state, _, params: LeaseParams| async move {
        state.store.complete_assignment(params).await.map_err(rpc_error)
    });
    table.add::<AssignmentsSuspend, _, _>(|state, _, params: LeaseParams| async move {
        state.store.suspend_assignment(params).await.map_err(rpc_error)
    });
    table.add::<AssignmentsResume, _, _>(|state, _, params: IdParams| async move {
        state.store.resume_assignment(params.id).await.map_err(rpc_error)
    });
    table.add::<AssignmentsFail, _, _>(|state, _, params: FailParams| async move {
        state.store.fail_assignment(params).await.map_err(rpc_error)
    });
    table.add::<AssignmentsList, _, _>(|state, _, params: AssignmentListParams| async move {
        let assignments = state.store.list_assignments(params).await.map_err(rpc_error)?;
        Ok(AssignmentsResult { assignments })
    });
    table.add::<AssignmentsCancelPending, _, _>(|state, _, params: CancelPendingParams| async move {
        let cancelled = state
            .store
            .cancel_pending_assignments(params)
            .await
            .map_err(rpc_error)?;
        Ok(CancelPendingResult { cancelled })
    });
}

/// Validates and queues the publish synchronously (so pipelined publishes keep their order), then
/// waits for the commit.
fn publish(
    state: Arc<State>,
    peer: Arc<Peer>,
    params: PublishParams,
) -> impl std::future::Future<Output = Result<PublishResult, RpcError>> + Send + 'static {
    let queued = (|| {
        if is_reserved(&params.topic) && !RESERVED_PUBLISHERS.contains(&peer.subject.as_str()) {
            return Err(RpcError::invalid_params(format!(
                "topic: {:?} is in a reserved namespace (system, agent, exec, action, request) that only the daemon's services publish to",
                params.topic
            )));
        }
        let max_payload = state.store.config().max_payload_bytes;
        let event = NewEvent::from_params(params, "system", max_payload).map_err(rpc_error)?;
        state.store.submit(event).map_err(rpc_error)
    })();
    async move {
        let outcome = queued?
            .await
            .map_err(|_| RpcError::unavailable("the bus is stopping"))?
            .map_err(rpc_error)?;
        Ok(outcome.result())
    }
}

fn subscribe(state: Arc<State>, peer: Arc<Peer>, params: Option<Box<RawValue>>) -> Pending {
    let started = (|| {
        let params: SubscribeParams = parse_params(params.as_deref())?;
        if params.patterns.is_empty() {
            return Err(RpcError::invalid_params(
                "patterns: give at least one topic pattern, e.g. \"**\"",
            ));
        }
        if params.patterns.len() > MAX_PATTERNS {
            return Err(RpcError::invalid_params(format!("patterns: at most {MAX_PATTERNS}")));
        }
        let patterns = params
            .patterns
            .iter()
            .map(|p| TopicPattern::parse(p).map_err(|e| RpcError::invalid_params(format!("patterns: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let from_seq = params.from_seq.map(|seq| seq.max(1));
        let next_seq = from_seq.unwrap_or_else(|| state.store.head() + 1);
        let subscription = state.store.subscribe(patterns, from_seq, state.subscriber_buffer);
        Ok((subscription, next_seq))
    })();
    Box::pin(async move {
        let (mut subscription, mut next_seq) = started?;
        let id = aiventbus_rpc::ids::prefixed("sub");
        let cancel = peer.closed().child_token();
        lock(&state.subscriptions).insert((peer.connection_id, id.clone()), cancel.clone());
        let result = serde_json::value::to_raw_value(&SubscribeResult {
            subscription: id.clone(),
            next_seq: Some(next_seq),
        })
        .map_err(RpcError::internal)?;
        let task = Box::pin(async move {
            loop {
                let item = tokio::select! {
                    biased;
                    _ = state.shutdown.cancelled() => Err(SubscriptionEnd::Closed),
                    _ = cancel.cancelled() => break,
                    item = subscription.next() => item,
                };
                match item {
                    Ok(committed) => {
                        next_seq = committed.seq() + 1;
                        let line = encode_notification(EVENTS_NOTIFICATION, &id, &committed.json);
                        if peer.send_line(line).await.is_err() {
                            break;
                        }
                    }
                    Err(end) => {
                        let error = end_error(&end, next_seq, state.subscriber_buffer);
                        tracing::info!(subscription = %id, reason = %error.message, "subscription ended");
                        let _ = peer
                            .send_line(encode_close_notification(EVENTS_NOTIFICATION, &id, &error))
                            .await;
                        break;
                    }
                }
            }
            lock(&state.subscriptions).remove(&(peer.connection_id, id));
        });
        Ok(Reply::Subscribed { result, task })
    })
}

fn end_error(end: &SubscriptionEnd, delivered_next: u64, buffer: usize) -> ErrorObject {
    let (code, message, next_seq) = match end {
        SubscriptionEnd::Lagged { next_seq } => (
            ErrorCode::Overloaded,
            format!(
                "subscriber too slow: more than {buffer} events waiting; subscribe again with from_seq {next_seq} to continue without loss"
            ),
            *next_seq,
        ),
        SubscriptionEnd::Closed => (
            ErrorCode::Unavailable,
            format!("the bus is shutting down; subscribe again with from_seq {delivered_next} to continue"),
            delivered_next,
        ),
        SubscriptionEnd::Failed { next_seq, .. } => (
            ErrorCode::Unavailable,
            format!("replay failed; subscribe again with from_seq {next_seq} to continue"),
            *next_seq,
        ),
    };
    ErrorObject::new(code, message).with_data(serde_json::json!({ "next_seq": next_seq }))
}
