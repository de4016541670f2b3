//! The SQLite schema of the event store: ordered migrations recorded in `schema_version`, the
//! connection settings, and the one mapping between an `events` row and an [`Event`].

use rusqlite::{Connection, OpenFlags, Row, params};
use serde_json::{Map, Value};

use aiventbus_proto::{Event, EventStatus, Priority};

use crate::store::{StoreError, SyncMode};

/// Schema steps, applied in order, each in its own transaction; step `n` (1-based) brings the
/// database to version `n`. Never edit a released step: append a new one.
const MIGRATIONS: &[&str] = &[
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
    let mut conn = Connection::open(path)
        .map_err(|error| internal_at(path, "cannot open the event store", error))?;
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
         PRAGMA journal_size_limit = 67108864;"
    ))
    .map_err(|error| internal_at(path, "cannot configure the event store", error))?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&mut conn).map_err(|error| match error {
        StoreError::Internal(message) => {
            StoreError::Internal(format!("{}: {message}", path.display()))
        }
        other => other,
    })?;
    Ok(conn)
}

/// Opens one read-only connection for the read pool.
pub(crate) fn open_reader(path: &std::path::Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
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
    let have: u32 =
        conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |row| {
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
        tx.execute_batch(step).map_err(|error| {
            StoreError::Internal(format!("schema migration {version} failed: {error}"))
        })?;
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
    let priority = Priority::parse(&priority_text)
        .ok_or_else(|| bad_column(6, format!("unknown priority {priority_text:?}")))?;
    let context_refs = match row.get::<_, Option<String>>(15)? {
        Some(text) => serde_json::from_str(&text)
            .map_err(|error| bad_column(15, format!("context_refs is not a list: {error}")))?,
        None => Vec::new(),
    };
    let status_text: String = row.get(19)?;
    let status = EventStatus::parse(&status_text)
        .ok_or_else(|| bad_column(19, format!("unknown status {status_text:?}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
