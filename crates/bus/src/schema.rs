//! The SQL side of the event store: ordered migrations recorded in `schema_version`, connection
//! settings, the one mapping between an `events` row and an [`Event`], the event's JSON (most of
//! it prepared by the publishing thread, so the writer only fills in what sequencing decides),
//! and the read queries with the pool of read-only connections they run on.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior, params};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use aiventbus_proto::{Event, EventStatus, Priority, TopicPattern};

use crate::store::{Committed, ListQuery, NewEvent, StoreError, SyncMode};

/// Schema steps, applied in order, each in its own transaction; step `n` (1-based) brings the
/// database to version `n`. Never edit a released step: append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: events, topics, traces.
    r#"
    CREATE TABLE events (
        seq            INTEGER PRIMARY KEY,
        id             TEXT NOT NULL UNIQUE,
        ts             TEXT NOT NULL,
        ts_ms          INTEGER NOT NULL,
        topic          TEXT NOT NULL,
        payload        TEXT NOT NULL,
        source         TEXT NOT NULL,
        priority       TEXT NOT NULL,
        semantic_type  TEXT,
        dedupe_key     TEXT,
        dedupe_count   INTEGER NOT NULL DEFAULT 1,
        duplicate_of   TEXT,
        trace_id       TEXT NOT NULL,
        parent_event   TEXT,
        correlation_id TEXT,
        output_topic   TEXT,
        context_refs   TEXT,
        memory_scope   TEXT,
        expires_at     TEXT,
        depth          INTEGER NOT NULL,
        status         TEXT NOT NULL
    );
    CREATE INDEX events_topic ON events(topic, seq);
    CREATE INDEX events_trace ON events(trace_id, seq);
    -- Originals that later copies may be deduplicated against.
    CREATE INDEX events_dedupe ON events(topic, dedupe_key, ts_ms)
        WHERE dedupe_key IS NOT NULL AND status != 'deduped';
    -- Most events are published; only the others need an index to be listed by status.
    CREATE INDEX events_unusual_status ON events(status, seq) WHERE status != 'published';

    CREATE TABLE topics (
        topic    TEXT PRIMARY KEY,
        count    INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        last_ts  TEXT NOT NULL
    ) WITHOUT ROWID;

    -- Routable published events per trace, for the trace budget.
    CREATE TABLE traces (
        trace_id       TEXT PRIMARY KEY,
        routable_count INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 2: knowledge (durable facts) and memory with its full-text index.
    r#"
    -- `rev` orders writes: each insert or update takes the largest plus one, so "most recently
    -- updated first" holds within a millisecond and across clock steps.
    CREATE TABLE knowledge (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,            -- JSON
        source     TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        rev        INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX knowledge_rev ON knowledge(rev);

    CREATE TABLE memories (
        num        INTEGER PRIMARY KEY,      -- the rowid the full-text index refers to
        id         TEXT NOT NULL UNIQUE,
        kind       TEXT NOT NULL,
        scope      TEXT NOT NULL,
        content    TEXT NOT NULL,
        importance REAL NOT NULL,
        tags       TEXT NOT NULL,            -- JSON array of strings
        source     TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        updated_ms INTEGER NOT NULL,         -- for the recency weight of search
        rev        INTEGER NOT NULL          -- write order, as for knowledge
    );
    CREATE INDEX memories_rev ON memories(rev);
    CREATE INDEX memories_scope ON memories(scope, rev);

    -- External-content index over memories.content; the triggers keep it in step in the same
    -- transaction as every change. Porter stemming so "deploying" finds "deploy".
    CREATE VIRTUAL TABLE memories_fts USING fts5(
        content,
        content = 'memories',
        content_rowid = 'num',
        tokenize = 'porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, content) VALUES (new.num, new.content);
    END;
    CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, content) VALUES ('delete', old.num, old.content);
    END;
    CREATE TRIGGER memories_fts_update AFTER UPDATE OF content ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, content) VALUES ('delete', old.num, old.content);
        INSERT INTO memories_fts (rowid, content) VALUES (new.num, new.content);
    END;
    "#,
    // 3: the assignments queue (docs/agents.md). Times are Unix ms; `num` is creation order.
    r#"
    CREATE TABLE assignments (
        num                   INTEGER PRIMARY KEY,
        id                    TEXT NOT NULL UNIQUE,
        event_id              TEXT NOT NULL,
        trace_id              TEXT NOT NULL,
        agent_id              TEXT NOT NULL,
        rule_id               TEXT,
        lane                  TEXT NOT NULL,     -- interactive | critical | ambient
        status                TEXT NOT NULL,
        attempts              INTEGER NOT NULL,
        max_attempts          INTEGER NOT NULL,
        not_before_ms         INTEGER NOT NULL,  -- claimable from then on while pending
        lease_ms              INTEGER,           -- lease length of the last claim, for heartbeats
        lease_expires_ms      INTEGER,           -- while claimed
        worker                TEXT,
        model_override        TEXT,
        token_budget_override INTEGER,
        error                 TEXT,
        expires_ms            INTEGER,           -- the event's expires_at: not run after it
        created_ms            INTEGER NOT NULL,
        updated_ms            INTEGER NOT NULL,
        UNIQUE (event_id, agent_id)              -- also lists an event's assignments
    );
    -- Every query of the queue names a status by equality; the indexes put it first (after
    -- agent_id for an agent's work), so the planner has one obvious choice for each.
    -- Claiming: pending work of one lane, oldest first (not_before is checked on the way).
    CREATE INDEX assignments_claim ON assignments(status, lane, num);
    -- Lease expiry: claimed work by lease end.
    CREATE INDEX assignments_lease ON assignments(status, lease_expires_ms);
    -- Event expiry: pending work by its event's expires_at.
    CREATE INDEX assignments_expiry ON assignments(status, expires_ms);
    -- An agent's work by status (the queue bound counts pending ambient work) and listing.
    CREATE INDEX assignments_agent ON assignments(agent_id, status, lane, num);
    -- Retention of finished work.
    CREATE INDEX assignments_age ON assignments(status, updated_ms);
    "#,
];

/// The schema version this build writes.
pub(crate) fn current_version() -> u32 {
    // The list is a short constant; its length fits in u32.
    MIGRATIONS.len() as u32
}

/// The columns of `events`, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "seq, id, ts, topic, payload, source, priority, \
    semantic_type, dedupe_key, dedupe_count, duplicate_of, trace_id, parent_event, \
    correlation_id, output_topic, context_refs, memory_scope, expires_at, depth, status";

/// Inserts one event; parameters in the order of the column list, `ts_ms` after `ts`.
pub(crate) const INSERT_EVENT: &str = "INSERT INTO events (seq, id, ts, ts_ms, topic, payload, \
    source, priority, semantic_type, dedupe_key, dedupe_count, duplicate_of, trace_id, \
    parent_event, correlation_id, output_topic, context_refs, memory_scope, expires_at, depth, \
    status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
    ?18, ?19, ?20, ?21)";

/// Opens the writer's connection and brings the schema up to date.
pub(crate) fn open_writer(path: &std::path::Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path).map_err(|error| internal_at(path, "cannot open the event store", error))?;
    let synchronous = match sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|error| internal_at(path, "cannot set busy_timeout", error))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|error| internal_at(path, "cannot enable WAL", error))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "{}: the event store needs WAL mode, the file system gave {mode}",
            path.display()
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous};
         PRAGMA foreign_keys = OFF;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -32768;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA wal_autocheckpoint = 0;"
    ))
    .map_err(|error| internal_at(path, "cannot configure the event store", error))?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&mut conn).map_err(|error| match error {
        StoreError::Internal(message) => StoreError::Internal(format!("{}: {message}", path.display())),
        other => other,
    })?;
    Ok(conn)
}

/// Opens one read-only connection for the read pool.
pub(crate) fn open_reader(path: &std::path::Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|error| internal_at(path, "cannot open a reader on the event store", error))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|error| internal_at(path, "cannot set busy_timeout", error))?;
    conn.execute_batch("PRAGMA cache_size = -16384;")
        .map_err(|error| internal_at(path, "cannot configure a reader", error))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn internal_at(path: &std::path::Path, what: &str, error: rusqlite::Error) -> StoreError {
    StoreError::Internal(format!("{}: {what}: {error}", path.display()))
}

/// Applies every migration step the database has not seen yet.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at TEXT NOT NULL
         )",
    )?;
    let have: u32 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |row| {
        row.get(0)
    })?;
    let want = current_version();
    if have > want {
        return Err(StoreError::Internal(format!(
            "the event store has schema version {have}, newer than this build's {want}; \
             use a newer aiventbus-bus"
        )));
    }
    for (index, step) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let version = index + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(step)
            .map_err(|error| StoreError::Internal(format!("schema migration {version} failed: {error}")))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![
                version as i64,
                humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
            ],
        )?;
        tx.commit()?;
        tracing::info!(version, "event store schema migrated");
    }
    Ok(())
}

/// Converts a seq or count for SQLite, which stores signed 64-bit integers. Values above
/// `i64::MAX` do not occur (a seq would need 292 years at a billion events per second).
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Converts a stored integer back; the store never writes negative seqs or counts.
pub(crate) fn from_sql_int(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn bad_column(index: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        Box::<dyn std::error::Error + Send + Sync>::from(what),
    )
}

/// Reads a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let payload_text: String = row.get(4)?;
    let payload: Map<String, Value> = serde_json::from_str(&payload_text)
        .map_err(|error| bad_column(4, format!("payload is not a JSON object: {error}")))?;
    let priority_text: String = row.get(6)?;
    let priority =
        Priority::parse(&priority_text).ok_or_else(|| bad_column(6, format!("unknown priority {priority_text:?}")))?;
    let context_refs = match row.get::<_, Option<String>>(15)? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|error| bad_column(15, format!("context_refs is not a list: {error}")))?,
        None => Vec::new(),
    };
    let status_text: String = row.get(19)?;
    let status =
        EventStatus::parse(&status_text).ok_or_else(|| bad_column(19, format!("unknown status {status_text:?}")))?;
    let depth: i64 = row.get(18)?;
    Ok(Event {
        seq: from_sql_int(row.get(0)?),
        id: row.get(1)?,
        ts: row.get(2)?,
        topic: row.get(3)?,
        payload,
        source: row.get(5)?,
        priority,
        semantic_type: row.get(7)?,
        dedupe_key: row.get(8)?,
        dedupe_count: from_sql_int(row.get(9)?),
        duplicate_of: row.get(10)?,
        trace_id: row.get(11)?,
        parent_event: row.get(12)?,
        correlation_id: row.get(13)?,
        output_topic: row.get(14)?,
        context_refs,
        memory_scope: row.get(16)?,
        expires_at: row.get(17)?,
        depth: u32::try_from(depth).unwrap_or(u32::MAX),
        status,
    })
}

/// The parts of an event's row and JSON known before the writer sequences it, serialized by the
/// publishing thread: the writer, the one serial stage, then only writes what it decides.
pub(crate) struct Prepared {
    /// The `payload` column.
    pub(crate) payload: Box<RawValue>,
    /// The `context_refs` column: a JSON list, or NULL when empty.
    pub(crate) context_refs: Option<String>,
    /// JSON members `topic` through `dedupe_key`, without braces.
    head: String,
    /// JSON members `correlation_id` through `expires_at`, without braces.
    tail: String,
}

/// The members of [`Event`] from `topic` to `dedupe_key`, in its field order.
#[derive(Serialize)]
struct Head<'a> {
    topic: &'a str,
    payload: &'a RawValue,
    source: &'a str,
    priority: Priority,
    semantic_type: Option<&'a str>,
    dedupe_key: Option<&'a str>,
}

/// The members of [`Event`] from `correlation_id` to `expires_at`, in its field order.
#[derive(Serialize)]
struct Tail<'a> {
    correlation_id: Option<&'a str>,
    output_topic: Option<&'a str>,
    context_refs: &'a [String],
    memory_scope: Option<&'a str>,
    expires_at: Option<&'a str>,
}

fn serialize_error(error: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("cannot serialize an event: {error}"))
}

/// A serialized struct's members without the surrounding braces.
fn members<T: Serialize>(value: &T) -> Result<String, StoreError> {
    let mut text = serde_json::to_string(value).map_err(serialize_error)?;
    if !(text.starts_with('{') && text.ends_with('}')) {
        return Err(StoreError::Internal("a struct did not serialize as an object".into()));
    }
    text.pop();
    text.remove(0);
    Ok(text)
}

impl Prepared {
    pub(crate) fn new(event: &NewEvent) -> Result<Prepared, StoreError> {
        let payload = serde_json::value::to_raw_value(&event.payload).map_err(serialize_error)?;
        let context_refs = if event.context_refs.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&event.context_refs).map_err(serialize_error)?)
        };
        let head = members(&Head {
            topic: &event.topic,
            payload: &payload,
            source: &event.source,
            priority: event.priority,
            semantic_type: event.semantic_type.as_deref(),
            dedupe_key: event.dedupe_key.as_deref(),
        })?;
        let tail = members(&Tail {
            correlation_id: event.correlation_id.as_deref(),
            output_topic: event.output_topic.as_deref(),
            context_refs: &event.context_refs,
            memory_scope: event.memory_scope.as_deref(),
            expires_at: event.expires_at.as_deref(),
        })?;
        Ok(Prepared {
            payload,
            context_refs,
            head,
            tail,
        })
    }

    /// The JSON of `event`, which was built from the event this was prepared from; the same
    /// bytes `serde_json::to_string(event)` gives (a test holds the two together).
    pub(crate) fn event_json(&self, event: &Event) -> Result<Arc<str>, StoreError> {
        fn string(out: &mut Vec<u8>, text: &str) -> Result<(), StoreError> {
            serde_json::to_writer(out, text).map_err(serialize_error)
        }
        let io = |error: std::io::Error| StoreError::Internal(format!("cannot write event JSON: {error}"));
        let mut out = Vec::with_capacity(self.head.len() + self.tail.len() + 200);
        out.extend_from_slice(b"{\"id\":");
        string(&mut out, &event.id)?;
        write!(out, ",\"seq\":{},\"ts\":", event.seq).map_err(io)?;
        string(&mut out, &event.ts)?;
        out.push(b',');
        out.extend_from_slice(self.head.as_bytes());
        write!(out, ",\"dedupe_count\":{}", event.dedupe_count).map_err(io)?;
        if let Some(original) = &event.duplicate_of {
            out.extend_from_slice(b",\"duplicate_of\":");
            string(&mut out, original)?;
        }
        out.extend_from_slice(b",\"trace_id\":");
        string(&mut out, &event.trace_id)?;
        out.extend_from_slice(b",\"parent_event\":");
        match &event.parent_event {
            Some(parent) => string(&mut out, parent)?,
            None => out.extend_from_slice(b"null"),
        }
        out.push(b',');
        out.extend_from_slice(self.tail.as_bytes());
        write!(out, ",\"depth\":{},\"status\":", event.depth).map_err(io)?;
        string(&mut out, event.status.as_str())?;
        out.push(b'}');
        let text = String::from_utf8(out)
            .map_err(|error| StoreError::Internal(format!("event JSON is not UTF-8: {error}")))?;
        Ok(Arc::from(text))
    }
}

/// Read-only connections, each used by one blocking task at a time.
pub(crate) struct ReadPool {
    connections: Mutex<Vec<Connection>>,
    /// One permit per connection: holding a permit guarantees a free connection.
    permits: Arc<Semaphore>,
}

/// A connection borrowed from the pool, returned on drop (also when the job panics).
struct Lease<'a> {
    pool: &'a ReadPool,
    connection: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
    }
}

impl ReadPool {
    /// A pool over `connections`.
    pub(crate) fn new(connections: Vec<Connection>) -> ReadPool {
        let permits = Arc::new(Semaphore::new(connections.len()));
        ReadPool {
            connections: Mutex::new(connections),
            permits,
        }
    }

    /// Runs `job` on a pooled connection on a blocking thread.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let connection = pool.connections.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let mut lease = Lease {
                pool: &pool,
                connection,
            };
            match lease.connection.as_mut() {
                Some(connection) => job(connection),
                None => Err(StoreError::Internal("read pool has a permit but no connection".into())),
            }
        })
        .await
        .map_err(|error| StoreError::Internal(format!("a read task failed: {error}")))?
    }
}

pub(crate) fn get_event(conn: &Connection, id: &str) -> Result<Option<Event>, StoreError> {
    let mut statement = conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"))?;
    let mut rows = statement.query([id])?;
    match rows.next()? {
        Some(row) => Ok(Some(event_from_row(row)?)),
        None => Ok(None),
    }
}

/// Stored topics matching any pattern, as a JSON array for `json_each`; `None` when the
/// patterns match every topic.
fn matching_topics(conn: &Connection, patterns: &[TopicPattern]) -> Result<Option<String>, StoreError> {
    if patterns.iter().any(TopicPattern::matches_everything) {
        return Ok(None);
    }
    let mut statement = conn.prepare_cached("SELECT topic FROM topics")?;
    let mut rows = statement.query([])?;
    let mut topics = BTreeSet::new();
    while let Some(row) = rows.next()? {
        let topic: String = row.get(0)?;
        if patterns.iter().any(|pattern| pattern.matches(&topic)) {
            topics.insert(topic);
        }
    }
    serde_json::to_string(&topics)
        .map(Some)
        .map_err(|error| StoreError::Internal(error.to_string()))
}

pub(crate) fn list_events(conn: &mut Connection, query: &ListQuery) -> Result<Vec<Event>, StoreError> {
    use rusqlite::types::Value as Sql;
    // One read transaction, so the topic list and the events come from the same snapshot.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1");
    let mut values = vec![Sql::Integer(sql_int(query.after_seq))];
    if let Some(topic) = &query.topic {
        if let Some(pattern) = &query.pattern {
            if !pattern.matches(topic) {
                return Ok(Vec::new());
            }
        }
        values.push(Sql::Text(topic.clone()));
        sql.push_str(&format!(" AND topic = ?{}", values.len()));
    } else if let Some(pattern) = &query.pattern {
        if let Some(topics) = matching_topics(&tx, std::slice::from_ref(pattern))? {
            if topics == "[]" {
                return Ok(Vec::new());
            }
            values.push(Sql::Text(topics));
            // `+topic` keeps SQLite scanning in seq order instead of sorting a topic's rows.
            sql.push_str(&format!(
                " AND +topic IN (SELECT value FROM json_each(?{}))",
                values.len()
            ));
        }
    }
    if let Some(status) = query.status {
        // Literal text, so SQLite can use the partial index on unusual statuses.
        sql.push_str(&format!(" AND status = '{}'", status.as_str()));
        if status != EventStatus::Published {
            sql.push_str(" AND status != 'published'");
        }
    }
    if let Some(trace_id) = &query.trace_id {
        values.push(Sql::Text(trace_id.clone()));
        sql.push_str(&format!(" AND trace_id = ?{}", values.len()));
    }
    values.push(Sql::Integer(i64::from(query.limit)));
    sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", values.len()));
    let mut statement = tx.prepare_cached(&sql)?;
    let rows = statement.query_map(rusqlite::params_from_iter(values), event_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// One page read by [`scan`].
pub(crate) struct ScanPage {
    /// Matching events in seq order.
    pub(crate) events: Vec<Arc<Committed>>,
    /// Where the next page starts.
    pub(crate) next_seq: u64,
    /// Whether the page reached the newest event committed when it was read.
    pub(crate) complete: bool,
}

/// Up to `limit` events from `from_seq` (inclusive) whose topic matches `patterns` (all when
/// `None`), read in one snapshot.
pub(crate) fn scan(
    conn: &mut Connection,
    from_seq: u64,
    patterns: Option<&[TopicPattern]>,
    limit: usize,
) -> Result<ScanPage, StoreError> {
    let from_seq = from_seq.max(1);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let newest: Option<i64> = tx.query_row("SELECT MAX(seq) FROM events", [], |row| row.get(0))?;
    let past_everything = newest.map_or(from_seq, |newest| from_sql_int(newest) + 1).max(from_seq);
    let topics = match patterns {
        Some(patterns) => matching_topics(&tx, patterns)?,
        None => None,
    };
    if topics.as_deref() == Some("[]") {
        return Ok(ScanPage {
            events: Vec::new(),
            next_seq: past_everything,
            complete: true,
        });
    }
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let events: Vec<Event> = match &topics {
        Some(topics) => {
            let mut statement = tx.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq >= ?1 \
                 AND +topic IN (SELECT value FROM json_each(?2)) ORDER BY seq LIMIT ?3"
            ))?;
            let rows = statement.query_map(rusqlite::params![sql_int(from_seq), topics, limit_sql], event_from_row)?;
            rows.collect::<Result<_, _>>()?
        }
        None => {
            let mut statement = tx.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = statement.query_map(rusqlite::params![sql_int(from_seq), limit_sql], event_from_row)?;
            rows.collect::<Result<_, _>>()?
        }
    };
    let (next_seq, complete) = match events.last() {
        Some(last) if events.len() >= limit => (last.seq + 1, false),
        _ => (past_everything, true),
    };
    let events = events
        .into_iter()
        .map(|event| Committed::new(event).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScanPage {
        events,
        next_seq,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_event() -> (NewEvent, Event) {
        let mut new = NewEvent::new("fs.created", "producer:fs", Map::new());
        new.payload
            .insert("path".into(), Value::from("/tmp/\"quoted\"\n\u{1F600}"));
        new.payload
            .insert("nested".into(), serde_json::json!({"b": [1, 2.5, null], "a": true}));
        new.priority = Priority::High;
        new.semantic_type = Some("file".into());
        new.dedupe_key = Some("k\\1".into());
        new.correlation_id = Some("act_1".into());
        new.output_topic = Some("out.topic".into());
        new.context_refs = vec!["evt_a".into(), "evt_b".into()];
        new.memory_scope = Some("agent:agt_1".into());
        new.expires_at = Some("2030-01-31T12:00:00.000Z".into());
        let event = Event {
            id: "evt_1".into(),
            seq: 42,
            ts: "2026-01-01T00:00:00.000Z".into(),
            topic: new.topic.clone(),
            payload: new.payload.clone(),
            source: new.source.clone(),
            priority: new.priority,
            semantic_type: new.semantic_type.clone(),
            dedupe_key: new.dedupe_key.clone(),
            dedupe_count: 1,
            duplicate_of: Some("evt_0".into()),
            trace_id: "tr_1".into(),
            parent_event: Some("evt_p".into()),
            correlation_id: new.correlation_id.clone(),
            output_topic: new.output_topic.clone(),
            context_refs: new.context_refs.clone(),
            memory_scope: new.memory_scope.clone(),
            expires_at: new.expires_at.clone(),
            depth: 3,
            status: EventStatus::Deduped,
        };
        (new, event)
    }

    #[test]
    fn prepared_json_is_exactly_serde_json() {
        let (new, event) = full_event();
        let prepared = Prepared::new(&new).unwrap();
        assert_eq!(
            &*prepared.event_json(&event).unwrap(),
            serde_json::to_string(&event).unwrap()
        );
        assert_eq!(prepared.context_refs.as_deref(), Some(r#"["evt_a","evt_b"]"#));

        let bare = NewEvent::new("a", "system", Map::new());
        let event = Event {
            topic: "a".into(),
            payload: Map::new(),
            source: "system".into(),
            priority: Priority::Medium,
            semantic_type: None,
            dedupe_key: None,
            duplicate_of: None,
            parent_event: None,
            correlation_id: None,
            output_topic: None,
            context_refs: Vec::new(),
            memory_scope: None,
            expires_at: None,
            status: EventStatus::Published,
            ..event
        };
        let prepared = Prepared::new(&bare).unwrap();
        assert_eq!(
            &*prepared.event_json(&event).unwrap(),
            serde_json::to_string(&event).unwrap()
        );
        assert_eq!(prepared.payload.get(), "{}");
        assert_eq!(prepared.context_refs, None);
    }

    #[test]
    fn migrations_apply_once_and_record_their_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.db");
        let conn = open_writer(&path, SyncMode::Normal).unwrap();
        let version: u32 = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, current_version());
        drop(conn);
        // Opening again applies nothing and keeps one row per step.
        let conn = open_writer(&path, SyncMode::Full).unwrap();
        let rows: u32 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, current_version());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.db");
        let conn = open_writer(&path, SyncMode::Normal).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (999, 'later')",
            [],
        )
        .unwrap();
        drop(conn);
        let error = open_writer(&path, SyncMode::Normal).unwrap_err();
        assert!(error.to_string().contains("newer"), "{error}");
    }
}
