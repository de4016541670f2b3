//! The llm's own SQLite file (`<state>/llm.db`): opening it in WAL mode, its schema migrations, and
//! running blocking queries off the async workers. Agents and run transcripts live here.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// Schema versions, applied in order; each runs once, recorded in `migrations`.
const MIGRATIONS: &[&str] = &[
    // 1: agents and run transcripts.
    "CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );
     CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        assignment_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        memory_scope TEXT NOT NULL,
        status TEXT NOT NULL,
        messages TEXT NOT NULL DEFAULT '[]',
        output TEXT,
        summary TEXT,
        error TEXT,
        rounds INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER
     );
     CREATE INDEX runs_by_scope ON runs(memory_scope, started_ms);
     CREATE INDEX runs_by_start ON runs(started_ms);",
    // 2: runs suspended while a human decides on their actions.
    "CREATE TABLE suspended (
        assignment_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        action_ids TEXT NOT NULL,
        state TEXT NOT NULL,
        created_ms INTEGER NOT NULL
     );",
];

/// Why the database failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The blocking task died.
    #[error("database task failed: {0}")]
    Task(String),
}

/// One connection shared behind a mutex: agent edits and transcript writes are few and short.
#[derive(Clone)]
pub struct Db {
    connection: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating) the file, switches to WAL and applies pending migrations.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let connection = Connection::open(path)?;
        Db::setup(connection)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Db, DbError> {
        Db::setup(Connection::open_in_memory()?)
    }

    fn setup(mut connection: Connection) -> Result<Db, DbError> {
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

    /// Runs `work` on the connection on a blocking thread.
    pub async fn run<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written: statements are atomic.
            let mut guard = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|error| DbError::Task(error.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("llm.db");
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
