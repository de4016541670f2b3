//! Policy's own SQLite file (`<state>/policy.db`): opening it in WAL mode, its schema migrations,
//! the error type of every query, and running blocking work off the async workers. Actions,
//! sessions, human-input requests, inbox messages and idempotency keys live here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aiventbus_proto::ErrorCode;
use rusqlite::Connection;

/// Schema versions, applied in order; each runs once, recorded in `migrations`.
const MIGRATIONS: &[&str] = &[
    // 1: actions and the human-input hub.
    "CREATE TABLE actions (
        id TEXT PRIMARY KEY,
        action_type TEXT NOT NULL,
        params TEXT NOT NULL,
        canonical TEXT NOT NULL,
        status TEXT NOT NULL,
        agent_id TEXT,
        event_id TEXT,
        trace_id TEXT,
        run_id TEXT,
        assignment_id TEXT,
        tainted INTEGER NOT NULL,
        decision TEXT NOT NULL,
        rule TEXT NOT NULL,
        reason TEXT NOT NULL,
        resolved_path TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        decided_by TEXT,
        decided_ms INTEGER,
        decided_via TEXT,
        denial_reason TEXT,
        result TEXT,
        exec_run_id TEXT
     );
     CREATE INDEX actions_by_status ON actions(status, created_ms);
     CREATE INDEX actions_by_agent ON actions(agent_id, status);
     CREATE INDEX actions_by_trace ON actions(trace_id);
     CREATE INDEX actions_by_created ON actions(created_ms);
     CREATE INDEX actions_waiting_expiry ON actions(expires_ms) WHERE status = 'waiting_confirmation';
     CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        metadata TEXT,
        state TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
     );
     CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        title TEXT NOT NULL,
        question TEXT NOT NULL,
        priority TEXT NOT NULL,
        context TEXT,
        status TEXT NOT NULL,
        response_text TEXT,
        reason TEXT,
        decided_by TEXT,
        trace_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        resolved_ms INTEGER
     );
     CREATE INDEX requests_by_session ON requests(session_id, status);
     CREATE INDEX requests_by_status ON requests(status, created_ms);
     CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        delivered_ms INTEGER,
        acked_ms INTEGER
     );
     CREATE INDEX messages_by_session ON messages(session_id, status, created_ms);
     CREATE TABLE idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        body_hash TEXT NOT NULL,
        target TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
     );
     CREATE INDEX idempotency_by_age ON idempotency(created_ms);",
];

/// Why a query failed, or why a request is refused by what is stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The blocking task died.
    #[error("database task failed: {0}")]
    Task(String),
    /// No such action, session, request or message (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// The state forbids it (the message says which state).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is wrong (the message names the field).
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// The wire code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::Invalid(_) => ErrorCode::InvalidParams,
            StoreError::Sqlite(_) | StoreError::Corrupt(_) | StoreError::Task(_) => ErrorCode::Internal,
        }
    }
}

/// One connection shared behind a mutex: policy's writes are few and short, and one writer keeps
/// every compare-and-set trivially atomic.
#[derive(Clone)]
pub struct Db {
    connection: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating) the file, switches to WAL and applies pending migrations.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        let connection = Connection::open(path)?;
        Db::setup(connection)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Db, StoreError> {
        Db::setup(Connection::open_in_memory()?)
    }

    fn setup(mut connection: Connection) -> Result<Db, StoreError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )?;
        let applied: i64 =
            connection.query_row("SELECT COALESCE(MAX(version), 0) FROM migrations", [], |row| row.get(0))?;
        for (index, sql) in MIGRATIONS.iter().enumerate() {
            let version = index as i64 + 1;
            if version <= applied {
                continue;
            }
            let tx = connection.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO migrations (version, applied_ms) VALUES (?1, ?2)",
                rusqlite::params![version, aiventbus_rpc::time::now_ms() as i64],
            )?;
            tx.commit()?;
        }
        Ok(Db {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` on the connection on a blocking thread. Every write commits before `work`
    /// returns, so a caller that answers after this has answered after the commit.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written: an open transaction
            // is rolled back when it is dropped.
            let mut guard = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }
}

/// Reads a JSON text column.
pub fn json_column<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt(format!("{what}: {error}")))
}

/// Writes a JSON text column (serializing plain values cannot fail).
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Milliseconds as SQLite's integer.
pub fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// SQLite's integer as milliseconds.
pub fn unms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_the_file_is_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.db");
        drop(Db::open(&path).unwrap());
        let db = Db::open(&path).unwrap();
        let connection = db.connection.lock().unwrap();
        let versions: i64 = connection
            .query_row("SELECT COUNT(*) FROM migrations", [], |row| row.get(0))
            .unwrap();
        assert_eq!(versions, MIGRATIONS.len() as i64);
        let mode: String = connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
