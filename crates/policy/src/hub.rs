//! The human-input hub's async side (SPEC §8): sessions and requests over the wire, their events,
//! and the inbox long poll — woken by a per-session `Notify` when a message lands, never by
//! polling the database; it gives up when its caller stops sending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiventbus_proto::policy::{
    AckParams, AckResult, DismissParams, PollParams, PollResult, RequestCreateParams, RequestIdResult, RequestInfo,
    RespondParams, SessionIdResult, SessionInfo, SessionRef, SessionRegisterParams, SessionsListParams, SessionsResult,
    SetStateParams,
};
use aiventbus_rpc::{Peer, RpcError};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::canonical::hash;
use crate::publisher::Links;
use crate::sessions::{self, Idempotency, RequestRow, Resolution, SessionRow};
use crate::state::{State, rpc_error};

fn now() -> u64 {
    aiventbus_rpc::time::now_ms()
}

struct Waiter {
    notify: Arc<Notify>,
    polls: usize,
}

/// Sessions with a poll waiting, each with the `Notify` that wakes its polls.
#[derive(Default)]
pub struct Waiters {
    sessions: Mutex<HashMap<String, Waiter>>,
}

/// A poll's registration; dropping it removes the session's entry once no poll waits.
struct Registration<'a> {
    waiters: &'a Waiters,
    session_id: String,
    notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut sessions = self.waiters.lock();
        if let Some(waiter) = sessions.get_mut(&self.session_id) {
            waiter.polls = waiter.polls.saturating_sub(1);
            if waiter.polls == 0 {
                sessions.remove(&self.session_id);
            }
        }
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiter>> {
        // Plain bookkeeping; a panic elsewhere cannot leave it half-changed.
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enter(&self, session_id: &str) -> Registration<'_> {
        let mut sessions = self.lock();
        let waiter = sessions.entry(session_id.to_owned()).or_insert_with(|| Waiter {
            notify: Arc::new(Notify::new()),
            polls: 0,
        });
        waiter.polls += 1;
        Registration {
            waiters: self,
            session_id: session_id.to_owned(),
            notify: Arc::clone(&waiter.notify),
        }
    }

    /// Wakes the session's waiting polls.
    pub fn wake(&self, session_id: &str) {
        if let Some(waiter) = self.lock().get(session_id) {
            waiter.notify.notify_waiters();
        }
    }

    /// Whether a poll of the session is waiting now (a waiting session is not offline).
    pub fn polling(&self, session_id: &str) -> bool {
        self.lock().contains_key(session_id)
    }
}

fn info(state: &State, row: &SessionRow) -> SessionInfo {
    row.info(now(), state.settings.offline_after, state.waiters.polling(&row.id))
}

async fn with_db<T: Send + 'static>(
    state: &State,
    work: impl FnOnce(&mut rusqlite::Connection) -> Result<T, crate::db::StoreError> + Send + 'static,
) -> Result<T, RpcError> {
    state.db.run(work).await.map_err(rpc_error)
}

// ------------------------------------------------------------------ sessions

/// `sessions.register`.
pub async fn register(state: &State, params: SessionRegisterParams) -> Result<SessionIdResult, RpcError> {
    let row = with_db(state, move |connection| {
        sessions::register(connection, &params.display_name, params.metadata.as_ref(), now())
    })
    .await?;
    Ok(SessionIdResult { session_id: row.id })
}

/// `sessions.heartbeat`.
pub async fn heartbeat(state: &State, params: SessionRef) -> Result<SessionInfo, RpcError> {
    let row = with_db(state, move |connection| {
        sessions::touch(connection, &params.session_id, now())
    })
    .await?;
    Ok(info(state, &row))
}

/// `sessions.set_state`.
pub async fn set_state(state: &State, params: SetStateParams) -> Result<SessionInfo, RpcError> {
    let row = with_db(state, move |connection| {
        sessions::set_state(connection, &params.session_id, params.state, now())
    })
    .await?;
    Ok(info(state, &row))
}

/// `sessions.list`, newest first, filtered on the state as computed now.
pub async fn list(state: &State, params: SessionsListParams) -> Result<SessionsResult, RpcError> {
    let rows = with_db(state, |connection| sessions::list_sessions(connection)).await?;
    let sessions = rows
        .iter()
        .map(|row| info(state, row))
        .filter(|session| params.state.is_none_or(|wanted| session.state == wanted))
        .collect();
    Ok(SessionsResult { sessions })
}

// ------------------------------------------------------------------ requests

fn request_links(request: &RequestRow) -> Links {
    Links {
        trace_id: Some(request.trace_id.clone()),
        parent_event: None,
        correlation_id: Some(request.info.request_id.clone()),
    }
}

fn key(idempotency_key: Option<String>, body: Value) -> Result<Option<Idempotency>, RpcError> {
    match idempotency_key {
        None => Ok(None),
        Some(key) if key.is_empty() || key.len() > 256 => {
            Err(RpcError::invalid_params("idempotency_key: must be 1 to 256 characters"))
        }
        Some(key) => Ok(Some(Idempotency {
            key,
            body_hash: hash(&body),
        })),
    }
}

/// `requests.create`: a pending request; the session waits for input. A retry with the same key
/// and body answers the same request and publishes nothing again.
pub async fn create_request(state: &State, params: RequestCreateParams) -> Result<RequestIdResult, RpcError> {
    let body = {
        let mut body = serde_json::to_value(&params).map_err(RpcError::internal)?;
        if let Some(map) = body.as_object_mut() {
            map.remove("idempotency_key");
        }
        body
    };
    let key = key(params.idempotency_key.clone(), body)?;
    let created = with_db(state, move |connection| {
        sessions::create_request(connection, &params, key.as_ref(), now())
    })
    .await?;
    let request = &created.request;
    if created.fresh {
        let payload = json!({
            "request_id": request.info.request_id,
            "session_id": request.info.session_id,
            "title": request.info.title,
            "question": request.info.question,
            "priority": request.info.priority,
        });
        state
            .events
            .publish("request.created", payload, request_links(request))
            .await;
    }
    Ok(RequestIdResult {
        request_id: created.request.info.request_id,
    })
}

/// `requests.get`.
pub async fn get_request(state: &State, id: String) -> Result<RequestInfo, RpcError> {
    let row = with_db(state, move |connection| sessions::request_or_not_found(connection, &id)).await?;
    Ok(row.info)
}

/// `requests.list`, oldest first.
pub async fn list_requests(
    state: &State,
    params: aiventbus_proto::policy::RequestsListParams,
) -> Result<aiventbus_proto::policy::RequestsResult, RpcError> {
    let requests = with_db(state, move |connection| sessions::list_requests(connection, &params)).await?;
    Ok(aiventbus_proto::policy::RequestsResult { requests })
}

async fn resolve(
    state: &State,
    id: String,
    resolution: Resolution,
    decided_by: String,
    key: Option<Idempotency>,
) -> Result<RequestInfo, RpcError> {
    if id.trim().is_empty() {
        return Err(RpcError::invalid_params("id: must not be empty"));
    }
    let resolved = with_db(state, move |connection| {
        sessions::resolve(connection, &id, &resolution, &decided_by, key.as_ref(), now())
    })
    .await?;
    let request = resolved.request;
    if resolved.fresh {
        state.waiters.wake(&request.info.session_id);
        let mut payload = json!({
            "request_id": request.info.request_id,
            "session_id": request.info.session_id,
            "title": request.info.title,
            "decided_by": request.info.decided_by,
        });
        let topic = match &request.info.response_text {
            Some(text) => {
                payload["response_text"] = json!(text);
                "request.answered"
            }
            None => {
                payload["reason"] = json!(request.reason);
                "request.dismissed"
            }
        };
        state.events.publish(topic, payload, request_links(&request)).await;
    }
    Ok(request.info)
}

/// `requests.respond`: the answer lands in the session's inbox.
pub async fn respond(state: &State, params: RespondParams, subject: &str) -> Result<RequestInfo, RpcError> {
    let body = json!({"op": "respond", "id": params.id, "response_text": params.response_text});
    let key = key(params.idempotency_key, body)?;
    let decided_by = params.decided_by.unwrap_or_else(|| subject.to_owned());
    let resolution = Resolution::Answer {
        response_text: params.response_text,
    };
    resolve(state, params.id, resolution, decided_by, key).await
}

/// `requests.dismiss`: the request can no longer be answered; the session is told.
pub async fn dismiss(state: &State, params: DismissParams, subject: &str) -> Result<RequestInfo, RpcError> {
    let body = json!({"op": "dismiss", "id": params.id, "reason": params.reason});
    let key = key(params.idempotency_key, body)?;
    let decided_by = params.decided_by.unwrap_or_else(|| subject.to_owned());
    let resolution = Resolution::Dismiss { reason: params.reason };
    resolve(state, params.id, resolution, decided_by, key).await
}

// ------------------------------------------------------------------ inbox

/// `inbox.poll`: every message not yet acked; when there is none, waits up to `timeout_ms`
/// (clamped to the maximum) for one, and stops waiting when the caller stops sending.
pub async fn poll(state: &State, params: PollParams, peer: &Peer) -> Result<PollResult, RpcError> {
    let wait = Duration::from_millis(params.timeout_ms).min(state.settings.max_poll);
    let deadline = tokio::time::Instant::now() + wait;
    let registration = state.waiters.enter(&params.session_id);
    loop {
        // Register for the wake-up before looking, so a message committed after the look still
        // wakes this poll.
        let notified = registration.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let session_id = params.session_id.clone();
        let messages = with_db(state, move |connection| {
            sessions::take_messages(connection, &session_id, now())
        })
        .await?;
        if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(PollResult { messages });
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = peer.input_closed().cancelled() => return Ok(PollResult::default()),
            _ = state.shutdown.cancelled() => return Ok(PollResult::default()),
        }
    }
}

/// `inbox.ack`.
pub async fn ack(state: &State, params: AckParams) -> Result<AckResult, RpcError> {
    let acked = with_db(state, move |connection| {
        sessions::ack(connection, &params.session_id, &params.message_id, now())
    })
    .await?;
    Ok(AckResult { acked })
}

/// Figures for `system.health`.
pub async fn figures(state: &State) -> Result<(u64, u64, u64), RpcError> {
    with_db(state, |connection| sessions::counts(connection)).await
}
