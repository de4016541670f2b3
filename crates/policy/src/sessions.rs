//! The human-input hub in `policy.db` (SPEC §8, §16): sessions, their requests, the inbox messages
//! answers become, and idempotency keys. Every change of a request, its session's state and its
//! inbox message is one transaction. Plain functions over a connection; the waiting and the
//! events are in [`crate::hub`].

use std::time::Duration;

use aiventbus_proto::Priority;
use aiventbus_proto::policy::{
    InboxMessage, MessageStatus, RequestCreateParams, RequestInfo, RequestStatus, RequestsListParams, SessionInfo,
    SessionState,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use crate::db::{StoreError, json_column, ms, to_json, unms};

/// Default page of `requests.list`.
const DEFAULT_LIMIT: u32 = 100;
/// Largest page of `requests.list`.
const MAX_LIMIT: u32 = 1000;
/// Most messages one poll returns (the rest come with the next poll).
pub const MAX_POLL_MESSAGES: u32 = 1000;

/// Idempotency scope of `requests.create`.
const CREATE_SCOPE: &str = "requests.create";
/// Idempotency scope shared by `requests.respond` and `requests.dismiss` (the body names which).
const RESOLVE_SCOPE: &str = "requests.resolve";

fn state_word(state: SessionState) -> &'static str {
    match state {
        SessionState::Working => "working",
        SessionState::WaitingForInput => "waiting_for_input",
        SessionState::Done => "done",
        SessionState::Error => "error",
        SessionState::Offline => "offline",
    }
}

fn parse_state(text: &str) -> Result<SessionState, StoreError> {
    Ok(match text {
        "working" => SessionState::Working,
        "waiting_for_input" => SessionState::WaitingForInput,
        "done" => SessionState::Done,
        "error" => SessionState::Error,
        "offline" => SessionState::Offline,
        other => return Err(StoreError::Corrupt(format!("session state {other:?}"))),
    })
}

fn request_status_word(status: RequestStatus) -> &'static str {
    match status {
        RequestStatus::Pending => "pending",
        RequestStatus::Answered => "answered",
        RequestStatus::Dismissed => "dismissed",
    }
}

fn parse_request_status(text: &str) -> Result<RequestStatus, StoreError> {
    Ok(match text {
        "pending" => RequestStatus::Pending,
        "answered" => RequestStatus::Answered,
        "dismissed" => RequestStatus::Dismissed,
        other => return Err(StoreError::Corrupt(format!("request status {other:?}"))),
    })
}

fn message_status_word(status: MessageStatus) -> &'static str {
    match status {
        MessageStatus::Pending => "pending",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Acked => "acked",
    }
}

// ------------------------------------------------------------------ sessions

/// A session as stored, with its pending requests counted.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// `ses_…`.
    pub id: String,
    /// Shown to people.
    pub display_name: String,
    /// As registered.
    pub metadata: Option<Value>,
    /// The stored state (`offline` is computed on read, never stored).
    pub state: SessionState,
    /// Unix ms.
    pub created_ms: u64,
    /// Unix ms of the last call naming it.
    pub last_seen_ms: u64,
    /// Requests still pending.
    pub pending: u64,
}

impl SessionRow {
    /// The wire form: `offline` when silent for `offline_after` and not waiting in a poll.
    pub fn info(&self, now: u64, offline_after: Duration, polling: bool) -> SessionInfo {
        let silent = now.saturating_sub(self.last_seen_ms) >= offline_after.as_millis() as u64;
        SessionInfo {
            session_id: self.id.clone(),
            display_name: self.display_name.clone(),
            state: if silent && !polling {
                SessionState::Offline
            } else {
                self.state
            },
            pending_requests: self.pending,
            last_seen: aiventbus_rpc::time::rfc3339_ms(self.last_seen_ms),
            created_at: aiventbus_rpc::time::rfc3339_ms(self.created_ms),
            metadata: self.metadata.clone(),
        }
    }
}

const SESSION_COLUMNS: &str = "s.id, s.display_name, s.metadata, s.state, s.created_ms, s.last_seen_ms,
     (SELECT COUNT(*) FROM requests r WHERE r.session_id = s.id AND r.status = 'pending')";

fn session_row(row: &Row<'_>) -> rusqlite::Result<RawSession> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

type RawSession = (String, String, Option<String>, String, i64, i64, i64);

fn session(raw: RawSession) -> Result<SessionRow, StoreError> {
    let (id, display_name, metadata, state, created_ms, last_seen_ms, pending) = raw;
    Ok(SessionRow {
        id,
        display_name,
        metadata: metadata
            .as_deref()
            .map(|text| json_column(text, "session metadata"))
            .transpose()?,
        state: parse_state(&state)?,
        created_ms: unms(created_ms),
        last_seen_ms: unms(last_seen_ms),
        pending: unms(pending),
    })
}

/// One session.
pub fn get_session(connection: &Connection, id: &str) -> Result<Option<SessionRow>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = ?1");
    connection
        .query_row(&sql, [id], session_row)
        .optional()?
        .map(session)
        .transpose()
}

fn session_or_not_found(connection: &Connection, id: &str) -> Result<SessionRow, StoreError> {
    get_session(connection, id)?.ok_or_else(|| StoreError::NotFound(format!("no session {id}")))
}

/// Registers a session (state `working`).
pub fn register(
    connection: &Connection,
    display_name: &str,
    metadata: Option<&Value>,
    now: u64,
) -> Result<SessionRow, StoreError> {
    if display_name.trim().is_empty() {
        return Err(StoreError::Invalid("display_name: must not be empty".into()));
    }
    let id = aiventbus_rpc::ids::prefixed("ses");
    connection.execute(
        "INSERT INTO sessions (id, display_name, metadata, state, created_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, 'working', ?4, ?4)",
        params![id, display_name, metadata.map(to_json), ms(now)],
    )?;
    session_or_not_found(connection, &id)
}

/// A call named the session: it is alive now. -32002 for an unknown session.
pub fn touch(connection: &Connection, id: &str, now: u64) -> Result<SessionRow, StoreError> {
    let changed = connection.execute(
        "UPDATE sessions SET last_seen_ms = MAX(last_seen_ms, ?2) WHERE id = ?1",
        params![id, ms(now)],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("no session {id}")));
    }
    session_or_not_found(connection, id)
}

/// Sets `working`, `done` or `error`; `waiting_for_input` follows the session's requests and
/// `offline` its silence, so neither can be set.
pub fn set_state(connection: &Connection, id: &str, state: SessionState, now: u64) -> Result<SessionRow, StoreError> {
    if matches!(state, SessionState::WaitingForInput | SessionState::Offline) {
        return Err(StoreError::Invalid(format!(
            "state: {} cannot be set (it follows the session's requests and heartbeats); use working, done or error",
            state_word(state)
        )));
    }
    let changed = connection.execute(
        "UPDATE sessions SET state = ?2, last_seen_ms = MAX(last_seen_ms, ?3) WHERE id = ?1",
        params![id, state_word(state), ms(now)],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound(format!("no session {id}")));
    }
    session_or_not_found(connection, id)
}

/// Every session, newest first.
pub fn list_sessions(connection: &Connection) -> Result<Vec<SessionRow>, StoreError> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions s ORDER BY s.created_ms DESC, s.rowid DESC");
    let mut statement = connection.prepare_cached(&sql)?;
    let rows = statement.query_map([], session_row)?;
    let mut sessions = Vec::new();
    for row in rows {
        sessions.push(session(row?)?);
    }
    Ok(sessions)
}

// ------------------------------------------------------------------ requests

const REQUEST_COLUMNS: &str = "id, session_id, title, question, priority, context, status, response_text, decided_by, \
     created_ms, resolved_ms, trace_id, reason";

/// A request with what the events about it need besides the wire form.
#[derive(Debug, Clone)]
pub struct RequestRow {
    /// The wire form.
    pub info: RequestInfo,
    /// The trace its events share.
    pub trace_id: String,
    /// A dismissal's reason.
    pub reason: Option<String>,
}

fn request_row(row: &Row<'_>) -> rusqlite::Result<RawRequest> {
    Ok(RawRequest {
        id: row.get(0)?,
        session_id: row.get(1)?,
        title: row.get(2)?,
        question: row.get(3)?,
        priority: row.get(4)?,
        context: row.get(5)?,
        status: row.get(6)?,
        response_text: row.get(7)?,
        decided_by: row.get(8)?,
        created_ms: row.get(9)?,
        resolved_ms: row.get(10)?,
        trace_id: row.get(11)?,
        reason: row.get(12)?,
    })
}

struct RawRequest {
    id: String,
    session_id: String,
    title: String,
    question: String,
    priority: String,
    context: Option<String>,
    status: String,
    response_text: Option<String>,
    decided_by: Option<String>,
    created_ms: i64,
    resolved_ms: Option<i64>,
    trace_id: String,
    reason: Option<String>,
}

fn request(raw: RawRequest) -> Result<RequestRow, StoreError> {
    let priority =
        Priority::parse(&raw.priority).ok_or_else(|| StoreError::Corrupt(format!("priority {:?}", raw.priority)))?;
    Ok(RequestRow {
        info: RequestInfo {
            request_id: raw.id,
            session_id: raw.session_id,
            title: raw.title,
            question: raw.question,
            priority,
            context: raw
                .context
                .as_deref()
                .map(|text| json_column(text, "request context"))
                .transpose()?,
            status: parse_request_status(&raw.status)?,
            response_text: raw.response_text,
            decided_by: raw.decided_by,
            created_at: aiventbus_rpc::time::rfc3339_ms(unms(raw.created_ms)),
            resolved_at: raw
                .resolved_ms
                .map(|value| aiventbus_rpc::time::rfc3339_ms(unms(value))),
        },
        trace_id: raw.trace_id,
        reason: raw.reason,
    })
}

/// One request.
pub fn get_request(connection: &Connection, id: &str) -> Result<Option<RequestRow>, StoreError> {
    let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1");
    connection
        .query_row(&sql, [id], request_row)
        .optional()?
        .map(request)
        .transpose()
}

/// One request, or -32002 naming it.
pub fn request_or_not_found(connection: &Connection, id: &str) -> Result<RequestRow, StoreError> {
    get_request(connection, id)?.ok_or_else(|| StoreError::NotFound(format!("no request {id}")))
}

/// Requests, oldest first.
pub fn list_requests(connection: &Connection, filter: &RequestsListParams) -> Result<Vec<RequestInfo>, StoreError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM requests WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR session_id = ?2)
         ORDER BY created_ms, rowid LIMIT ?3"
    );
    let mut statement = connection.prepare_cached(&sql)?;
    let status = filter.status.map(request_status_word);
    let rows = statement.query_map(params![status, filter.session_id, i64::from(limit)], request_row)?;
    let mut requests = Vec::new();
    for row in rows {
        requests.push(request(row?)?.info);
    }
    Ok(requests)
}

/// The key a retried call names, with the hash of its body.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// As given by the client.
    pub key: String,
    /// Hash of the canonical body (without the key and the fields the gateway fills in).
    pub body_hash: String,
}

/// What an idempotency key found.
enum Seen {
    New,
    Same(String),
}

fn check_key(connection: &Connection, scope: &str, key: &Idempotency) -> Result<Seen, StoreError> {
    let found: Option<(String, String)> = connection
        .query_row(
            "SELECT body_hash, target FROM idempotency WHERE scope = ?1 AND key = ?2",
            params![scope, key.key],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    match found {
        None => Ok(Seen::New),
        Some((hash, target)) if hash == key.body_hash => Ok(Seen::Same(target)),
        Some(_) => Err(StoreError::Conflict(
            "idempotency_key: already used with a different body".into(),
        )),
    }
}

fn remember_key(
    connection: &Connection,
    scope: &str,
    key: &Idempotency,
    target: &str,
    now: u64,
) -> Result<(), StoreError> {
    connection.execute(
        "INSERT INTO idempotency (scope, key, body_hash, target, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![scope, key.key, key.body_hash, target, ms(now)],
    )?;
    Ok(())
}

/// What `requests.create` did.
#[derive(Debug)]
pub struct Created {
    /// The request (the earlier one for a retry).
    pub request: RequestRow,
    /// False for a retry with the same key and body: nothing new happened.
    pub fresh: bool,
}

/// Creates a pending request and sets its session `waiting_for_input`; with a key, a retry with
/// the same body answers the same request, another body is -32003.
pub fn create_request(
    connection: &mut Connection,
    params: &RequestCreateParams,
    key: Option<&Idempotency>,
    now: u64,
) -> Result<Created, StoreError> {
    if params.title.trim().is_empty() {
        return Err(StoreError::Invalid("title: must not be empty".into()));
    }
    if params.question.trim().is_empty() {
        return Err(StoreError::Invalid("question: must not be empty".into()));
    }
    let tx = connection.transaction()?;
    if let Some(key) = key
        && let Seen::Same(target) = check_key(&tx, CREATE_SCOPE, key)?
    {
        let request = request_or_not_found(&tx, &target)?;
        return Ok(Created { request, fresh: false });
    }
    touch(&tx, &params.session_id, now)?;
    let id = aiventbus_rpc::ids::prefixed("req");
    let trace_id = aiventbus_rpc::ids::prefixed("tr");
    tx.execute(
        "INSERT INTO requests (id, session_id, title, question, priority, context, status, trace_id, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8)",
        params![
            id,
            params.session_id,
            params.title,
            params.question,
            params.priority.unwrap_or_default().as_str(),
            params.context.as_ref().map(to_json),
            trace_id,
            ms(now),
        ],
    )?;
    tx.execute(
        "UPDATE sessions SET state = 'waiting_for_input' WHERE id = ?1",
        [&params.session_id],
    )?;
    if let Some(key) = key {
        remember_key(&tx, CREATE_SCOPE, key, &id, now)?;
    }
    let request = request_or_not_found(&tx, &id)?;
    tx.commit()?;
    Ok(Created { request, fresh: true })
}

/// How a request is resolved.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// `requests.respond`.
    Answer {
        /// The answer.
        response_text: String,
    },
    /// `requests.dismiss`.
    Dismiss {
        /// Why.
        reason: Option<String>,
    },
}

/// What resolving did.
#[derive(Debug)]
pub struct Resolved {
    /// The request as it is now.
    pub request: RequestRow,
    /// False for a retry with the same key and body: nothing new happened.
    pub fresh: bool,
}

/// Answers or dismisses a pending request: its status, an inbox message for its session, and the
/// session back to `working` when this was its last pending request, in one transaction. Not
/// pending → -32003 unless it is a retry with the same key and body.
pub fn resolve(
    connection: &mut Connection,
    id: &str,
    resolution: &Resolution,
    decided_by: &str,
    key: Option<&Idempotency>,
    now: u64,
) -> Result<Resolved, StoreError> {
    let tx = connection.transaction()?;
    if let Some(key) = key
        && let Seen::Same(target) = check_key(&tx, RESOLVE_SCOPE, key)?
    {
        let request = request_or_not_found(&tx, &target)?;
        return Ok(Resolved { request, fresh: false });
    }
    let current = request_or_not_found(&tx, id)?;
    if current.info.status != RequestStatus::Pending {
        return Err(StoreError::Conflict(format!(
            "request {id} is {}, not pending",
            request_status_word(current.info.status)
        )));
    }
    let (status, kind, payload, response_text, reason) = match resolution {
        Resolution::Answer { response_text } => (
            RequestStatus::Answered,
            "input_response",
            json!({"request_id": id, "response_text": response_text}),
            Some(response_text.as_str()),
            None,
        ),
        Resolution::Dismiss { reason } => (
            RequestStatus::Dismissed,
            "request_dismissed",
            json!({"request_id": id, "reason": reason}),
            None,
            reason.as_deref(),
        ),
    };
    tx.execute(
        "UPDATE requests SET status = ?2, response_text = ?3, reason = ?4, decided_by = ?5, resolved_ms = ?6
         WHERE id = ?1 AND status = 'pending'",
        params![
            id,
            request_status_word(status),
            response_text,
            reason,
            decided_by,
            ms(now)
        ],
    )?;
    tx.execute(
        "INSERT INTO messages (id, session_id, kind, payload, status, created_ms) VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
        params![
            aiventbus_rpc::ids::prefixed("msg"),
            current.info.session_id,
            kind,
            to_json(&payload),
            ms(now)
        ],
    )?;
    tx.execute(
        "UPDATE sessions SET state = 'working' WHERE id = ?1 AND state = 'waiting_for_input'
           AND NOT EXISTS (SELECT 1 FROM requests WHERE session_id = ?1 AND status = 'pending')",
        [&current.info.session_id],
    )?;
    if let Some(key) = key {
        remember_key(&tx, RESOLVE_SCOPE, key, id, now)?;
    }
    let request = request_or_not_found(&tx, id)?;
    tx.commit()?;
    Ok(Resolved { request, fresh: true })
}

// ------------------------------------------------------------------ inbox

/// Every message of the session not yet acked, oldest first; the ones never returned before
/// become `delivered`. Touches the session. -32002 for an unknown session.
pub fn take_messages(connection: &mut Connection, session_id: &str, now: u64) -> Result<Vec<InboxMessage>, StoreError> {
    let tx = connection.transaction()?;
    touch(&tx, session_id, now)?;
    let rows: Vec<(String, String, String, i64)> = {
        let mut statement = tx.prepare_cached(
            "SELECT id, kind, payload, created_ms FROM messages WHERE session_id = ?1 AND status != 'acked'
             ORDER BY created_ms, rowid LIMIT ?2",
        )?;
        let rows = statement.query_map(params![session_id, MAX_POLL_MESSAGES], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut messages = Vec::with_capacity(rows.len());
    for (id, kind, payload, created_ms) in rows {
        tx.execute(
            "UPDATE messages SET status = 'delivered', delivered_ms = ?2 WHERE id = ?1 AND status = 'pending'",
            params![id, ms(now)],
        )?;
        messages.push(InboxMessage {
            message_id: id,
            kind,
            payload: json_column(&payload, "message payload")?,
            status: MessageStatus::Delivered,
            created_at: aiventbus_rpc::time::rfc3339_ms(unms(created_ms)),
        });
    }
    tx.commit()?;
    Ok(messages)
}

/// Acknowledges a message: true the first time, false when it was already acked. -32002 for an
/// unknown session or a message that is not the session's.
pub fn ack(connection: &mut Connection, session_id: &str, message_id: &str, now: u64) -> Result<bool, StoreError> {
    let tx = connection.transaction()?;
    touch(&tx, session_id, now)?;
    let status: Option<String> = tx
        .query_row(
            "SELECT status FROM messages WHERE id = ?1 AND session_id = ?2",
            params![message_id, session_id],
            |row| row.get(0),
        )
        .optional()?;
    let acked = match status.as_deref() {
        None => {
            return Err(StoreError::NotFound(format!(
                "no message {message_id} in session {session_id}"
            )));
        }
        Some(status) if status == message_status_word(MessageStatus::Acked) => false,
        Some(_) => {
            tx.execute(
                "UPDATE messages SET status = 'acked', acked_ms = ?2 WHERE id = ?1",
                params![message_id, ms(now)],
            )?;
            true
        }
    };
    tx.commit()?;
    Ok(acked)
}

// ------------------------------------------------------------------ upkeep

/// Figures for `system.health`: (sessions, sessions waiting for input, pending requests).
pub fn counts(connection: &Connection) -> Result<(u64, u64, u64), StoreError> {
    Ok(connection.query_row(
        "SELECT (SELECT COUNT(*) FROM sessions),
                (SELECT COUNT(*) FROM sessions WHERE state = 'waiting_for_input'),
                (SELECT COUNT(*) FROM requests WHERE status = 'pending')",
        [],
        |row| Ok((unms(row.get(0)?), unms(row.get(1)?), unms(row.get(2)?))),
    )?)
}

/// Removes sessions silent since before `before_ms` that have nothing pending (with their
/// requests and messages), and idempotency keys older than `keys_before_ms`.
pub fn prune(connection: &mut Connection, before_ms: u64, keys_before_ms: u64) -> Result<usize, StoreError> {
    let tx = connection.transaction()?;
    let stale = "SELECT id FROM sessions s WHERE s.last_seen_ms < ?1
         AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.session_id = s.id AND r.status = 'pending')";
    tx.execute(
        &format!("DELETE FROM messages WHERE session_id IN ({stale})"),
        [ms(before_ms)],
    )?;
    tx.execute(
        &format!("DELETE FROM requests WHERE session_id IN ({stale})"),
        [ms(before_ms)],
    )?;
    let sessions = tx.execute(
        "DELETE FROM sessions WHERE last_seen_ms < ?1
           AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.session_id = sessions.id AND r.status = 'pending')",
        [ms(before_ms)],
    )?;
    tx.execute("DELETE FROM idempotency WHERE created_ms < ?1", [ms(keys_before_ms)])?;
    tx.commit()?;
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn create(session_id: &str) -> RequestCreateParams {
        RequestCreateParams {
            session_id: session_id.into(),
            title: "Deploy?".into(),
            question: "Ship it?".into(),
            ..RequestCreateParams::default()
        }
    }

    #[tokio::test]
    async fn session_waits_until_its_last_request_is_resolved() {
        let db = Db::in_memory().unwrap();
        db.run(|connection| {
            let session = register(connection, "builder", None, 1)?;
            let first = create_request(connection, &create(&session.id), None, 2)?.request;
            let second = create_request(connection, &create(&session.id), None, 3)?.request;
            assert_eq!(
                get_session(connection, &session.id)?.unwrap().state,
                SessionState::WaitingForInput
            );
            let answer = Resolution::Answer {
                response_text: "yes".into(),
            };
            resolve(connection, &first.info.request_id, &answer, "user:a", None, 4)?;
            let row = get_session(connection, &session.id)?.unwrap();
            assert_eq!((row.state, row.pending), (SessionState::WaitingForInput, 1));
            let dismiss = Resolution::Dismiss { reason: None };
            resolve(connection, &second.info.request_id, &dismiss, "user:a", None, 5)?;
            assert_eq!(
                get_session(connection, &session.id)?.unwrap().state,
                SessionState::Working
            );
            let again = resolve(connection, &second.info.request_id, &answer, "user:a", None, 6).unwrap_err();
            assert!(
                matches!(again, StoreError::Conflict(ref m) if m.contains("dismissed")),
                "{again}"
            );
            let messages = take_messages(connection, &session.id, 7)?;
            assert_eq!(
                messages.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>(),
                ["input_response", "request_dismissed"]
            );
            Ok(())
        })
        .await
        .unwrap();
    }

    #[test]
    fn offline_is_computed_from_silence() {
        let row = SessionRow {
            id: "ses_1".into(),
            display_name: "x".into(),
            metadata: None,
            state: SessionState::Working,
            created_ms: 0,
            last_seen_ms: 1_000,
            pending: 0,
        };
        let after = Duration::from_secs(120);
        assert_eq!(row.info(120_999, after, false).state, SessionState::Working);
        assert_eq!(row.info(121_000, after, false).state, SessionState::Offline);
        assert_eq!(row.info(121_000, after, true).state, SessionState::Working);
    }
}
