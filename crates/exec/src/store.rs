//! exec's own database, `<state>/exec.db` (SQLite, WAL, `synchronous = FULL`): one row per action
//! handed to exec (written and committed before anything is carried out, which is what makes an
//! action run at most once) and one row per process run. Schema steps are counted in
//! `PRAGMA user_version`. One connection behind a mutex; async callers go through `spawn_blocking`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aiventbus_proto::exec::{Outcome, RunInfo, RunStatus};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

/// Schema steps, applied in order; step `n` (1-based) brings the database to version `n`. Never
/// edit a released step: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: executions and process runs.
    r#"
    CREATE TABLE executions (
        action_id   TEXT PRIMARY KEY,
        action_type TEXT NOT NULL,
        -- executing | succeeded | failed | interrupted
        status      TEXT NOT NULL,
        result      TEXT,
        run_id      TEXT,
        agent_id    TEXT,
        trace_id    TEXT,
        owner       INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        finished_ms INTEGER
    );
    CREATE INDEX executions_by_status ON executions(status);
    CREATE TABLE runs (
        run_id         TEXT PRIMARY KEY,
        correlation_id TEXT NOT NULL,
        argv           TEXT NOT NULL,
        cwd            TEXT,
        -- running | finished | interrupted | failed
        status         TEXT NOT NULL,
        pid            INTEGER,
        -- The leader's start time (clock ticks since boot, /proc/<pid>/stat field 22) and the
        -- session it ran in: how a restarted exec recognises a group it left behind.
        start_ticks    INTEGER,
        session        INTEGER,
        exit_code      INTEGER,
        signal         INTEGER,
        duration_ms    INTEGER,
        truncated      INTEGER NOT NULL DEFAULT 0,
        error          TEXT,
        started_ms     INTEGER NOT NULL,
        finished_ms    INTEGER
    );
    CREATE INDEX runs_by_status ON runs(status);
    "#,
];

/// Finished records older than this are deleted at startup.
const RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("exec store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be read back.
    #[error("exec store: corrupt row: {0}")]
    Corrupt(String),
    /// The blocking task died.
    #[error("exec store: task failed: {0}")]
    Task(String),
}

/// An action as it arrives.
#[derive(Debug, Clone)]
pub struct NewExecution {
    /// `act_…` or `run_…`.
    pub action_id: String,
    /// The action type.
    pub action_type: String,
    /// The proposing agent.
    pub agent_id: Option<String>,
    /// Its trace.
    pub trace_id: Option<String>,
    /// The owner's own command.
    pub owner: bool,
}

/// A process run as it starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// `run_…`.
    pub run_id: String,
    /// The action (or the run itself).
    pub correlation_id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: Option<String>,
    /// `running`, or `failed` when it could not start.
    pub status: RunStatus,
    /// The leader (and group id).
    pub pid: Option<u32>,
    /// The leader's start time in clock ticks.
    pub start_ticks: Option<u64>,
    /// The session it runs in.
    pub session: Option<u32>,
    /// Why it could not start.
    pub error: Option<String>,
    /// Unix ms.
    pub started_ms: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// Exit code when it exited.
    pub exit_code: Option<i32>,
    /// Signal when it was killed.
    pub signal: Option<i32>,
    /// Wall time.
    pub duration_ms: u64,
    /// Output went past the cap.
    pub truncated: bool,
}

/// A run a previous exec left `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftoverRun {
    /// `run_…`.
    pub run_id: String,
    /// Its leader and group id.
    pub pid: Option<u32>,
    /// The leader's start time in clock ticks.
    pub start_ticks: Option<u64>,
    /// The session it ran in.
    pub session: Option<u32>,
}

/// Figures for `system.health`.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Executions by status.
    pub executions: Vec<(String, u64)>,
    /// Process runs recorded.
    pub runs: u64,
}

/// The message recorded for actions a restart cut short.
pub const INTERRUPTED_MESSAGE: &str = "exec restarted while this ran; not re-run";

/// The shared connection.
#[derive(Clone)]
pub struct Store {
    connection: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating) the file, switches to WAL and applies pending schema steps.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // An action must never run twice, even after a power cut: every commit is synced.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        for (index, sql) in MIGRATIONS.iter().enumerate() {
            let step = index as i64 + 1;
            if step <= version {
                continue;
            }
            let tx = connection.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", step)?;
            tx.commit()?;
        }
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` on the connection on a blocking thread.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written: statements are atomic.
            let mut guard = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }

    /// Records an action as `executing` and commits. False when the id is already known: the
    /// action was handed over before and must not run again.
    pub async fn begin(&self, new: NewExecution) -> Result<bool, StoreError> {
        self.run(move |connection| {
            let inserted = connection.execute(
                "INSERT INTO executions (action_id, action_type, status, agent_id, trace_id, owner, received_ms)
                 VALUES (?1, ?2, 'executing', ?3, ?4, ?5, ?6)
                 ON CONFLICT(action_id) DO NOTHING",
                params![
                    new.action_id,
                    new.action_type,
                    new.agent_id,
                    new.trace_id,
                    new.owner,
                    now() as i64
                ],
            )?;
            Ok(inserted == 1)
        })
        .await
    }

    /// Ties an execution to its process run.
    pub async fn set_run(&self, action_id: &str, run_id: &str) -> Result<(), StoreError> {
        let (action_id, run_id) = (action_id.to_owned(), run_id.to_owned());
        self.run(move |connection| {
            connection.execute(
                "UPDATE executions SET run_id = ?2 WHERE action_id = ?1",
                params![action_id, run_id],
            )?;
            Ok(())
        })
        .await
    }

    /// Records an execution's final status and result.
    pub async fn finish(&self, action_id: &str, ok: bool, result: &Value) -> Result<(), StoreError> {
        let action_id = action_id.to_owned();
        let status = if ok { "succeeded" } else { "failed" };
        let result = result.to_string();
        self.run(move |connection| {
            connection.execute(
                "UPDATE executions SET status = ?2, result = ?3, finished_ms = ?4
                 WHERE action_id = ?1 AND status = 'executing'",
                params![action_id, status, result, now() as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// What became of an action (`None`: never received).
    pub async fn outcome(&self, action_id: &str) -> Result<Option<Outcome>, StoreError> {
        let action_id = action_id.to_owned();
        self.run(move |connection| {
            let row = connection
                .query_row(
                    "SELECT action_id, status, result, run_id FROM executions WHERE action_id = ?1",
                    params![action_id],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Option<String>>(2)?,
                            row.get::<_, Option<String>>(3)?,
                        ))
                    },
                )
                .optional()?;
            let Some((action_id, status, result, run_id)) = row else {
                return Ok(None);
            };
            let result = match result {
                Some(text) => Some(
                    serde_json::from_str(&text)
                        .map_err(|error| StoreError::Corrupt(format!("{action_id}: {error}")))?,
                ),
                None => None,
            };
            Ok(Some(Outcome {
                action_id,
                status,
                result,
                run_id,
            }))
        })
        .await
    }

    /// Records a process run that started (or could not).
    pub async fn insert_run(&self, run: NewRun) -> Result<(), StoreError> {
        self.run(move |connection| {
            let argv = serde_json::to_string(&run.argv).map_err(|error| StoreError::Corrupt(error.to_string()))?;
            let finished = (run.status != RunStatus::Running).then_some(run.started_ms as i64);
            connection.execute(
                "INSERT INTO runs (run_id, correlation_id, argv, cwd, status, pid, start_ticks, session, error,
                                   started_ms, finished_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    run.run_id,
                    run.correlation_id,
                    argv,
                    run.cwd,
                    run_status_word(run.status),
                    run.pid,
                    run.start_ticks.map(|ticks| ticks as i64),
                    run.session,
                    run.error,
                    run.started_ms as i64,
                    finished,
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Records how a run ended.
    pub async fn finish_run(&self, run_id: &str, end: RunEnd) -> Result<(), StoreError> {
        let run_id = run_id.to_owned();
        self.run(move |connection| {
            connection.execute(
                "UPDATE runs SET status = 'finished', exit_code = ?2, signal = ?3, duration_ms = ?4, truncated = ?5,
                        finished_ms = ?6
                 WHERE run_id = ?1 AND status = 'running'",
                params![
                    run_id,
                    end.exit_code,
                    end.signal,
                    end.duration_ms as i64,
                    end.truncated,
                    now() as i64
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// One run.
    pub async fn get_run(&self, run_id: &str) -> Result<Option<RunInfo>, StoreError> {
        let run_id = run_id.to_owned();
        self.run(move |connection| {
            connection
                .query_row(
                    "SELECT run_id, correlation_id, argv, cwd, status, pid, exit_code, signal, duration_ms, truncated,
                            error, started_ms, finished_ms
                     FROM runs WHERE run_id = ?1",
                    params![run_id],
                    run_info,
                )
                .optional()?
                .transpose()
        })
        .await
    }

    /// At startup, before serving: every execution still `executing` becomes `interrupted` (never
    /// re-run); every run still `running` is returned (so its leftover group can be killed) and
    /// becomes `interrupted`. Finished records past the retention are deleted. Returns the number
    /// of interrupted executions and the leftover runs.
    pub async fn recover(&self) -> Result<(u64, Vec<LeftoverRun>), StoreError> {
        self.run(|connection| {
            let tx = connection.transaction()?;
            let now = now();
            let result = serde_json::json!({"error": {"message": INTERRUPTED_MESSAGE}}).to_string();
            let interrupted = tx.execute(
                "UPDATE executions SET status = 'interrupted', result = ?1, finished_ms = ?2
                 WHERE status = 'executing'",
                params![result, now as i64],
            )? as u64;
            let leftovers = {
                let mut statement =
                    tx.prepare("SELECT run_id, pid, start_ticks, session FROM runs WHERE status = 'running'")?;
                let rows = statement.query_map([], |row| {
                    Ok(LeftoverRun {
                        run_id: row.get(0)?,
                        pid: row.get(1)?,
                        start_ticks: row.get::<_, Option<i64>>(2)?.map(|ticks| ticks as u64),
                        session: row.get(3)?,
                    })
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.execute(
                "UPDATE runs SET status = 'interrupted', error = ?1, finished_ms = ?2 WHERE status = 'running'",
                params![INTERRUPTED_MESSAGE, now as i64],
            )?;
            let horizon = now.saturating_sub(RETENTION_MS) as i64;
            tx.execute(
                "DELETE FROM executions WHERE finished_ms IS NOT NULL AND finished_ms < ?1",
                params![horizon],
            )?;
            tx.execute(
                "DELETE FROM runs WHERE finished_ms IS NOT NULL AND finished_ms < ?1",
                params![horizon],
            )?;
            tx.commit()?;
            Ok((interrupted, leftovers))
        })
        .await
    }

    /// Figures for `system.health`.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        self.run(|connection| {
            let mut statement =
                connection.prepare("SELECT status, COUNT(*) FROM executions GROUP BY status ORDER BY status")?;
            let executions = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)))?
                .collect::<Result<Vec<_>, _>>()?;
            let runs: i64 = connection.query_row("SELECT COUNT(*) FROM runs", [], |row| row.get(0))?;
            Ok(Counts {
                executions,
                runs: runs as u64,
            })
        })
        .await
    }
}

fn now() -> u64 {
    aiventbus_rpc::time::now_ms()
}

fn run_status_word(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running => "running",
        RunStatus::Finished => "finished",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Failed => "failed",
    }
}

fn run_info(row: &Row<'_>) -> rusqlite::Result<Result<RunInfo, StoreError>> {
    let run_id: String = row.get(0)?;
    let argv_text: String = row.get(2)?;
    let status_text: String = row.get(4)?;
    let status = match status_text.as_str() {
        "running" => RunStatus::Running,
        "finished" => RunStatus::Finished,
        "interrupted" => RunStatus::Interrupted,
        "failed" => RunStatus::Failed,
        other => return Ok(Err(StoreError::Corrupt(format!("{run_id}: status {other:?}")))),
    };
    let argv = match serde_json::from_str(&argv_text) {
        Ok(argv) => argv,
        Err(error) => return Ok(Err(StoreError::Corrupt(format!("{run_id}: argv: {error}")))),
    };
    let started_ms: i64 = row.get(11)?;
    let finished_ms: Option<i64> = row.get(12)?;
    Ok(Ok(RunInfo {
        correlation_id: row.get(1)?,
        argv,
        cwd: row.get(3)?,
        status,
        pid: row.get(5)?,
        exit_code: row.get(6)?,
        signal: row.get(7)?,
        duration_ms: row.get::<_, Option<i64>>(8)?.map(|ms| ms as u64),
        truncated: row.get(9)?,
        error: row.get(10)?,
        started_at: aiventbus_rpc::time::rfc3339_ms(started_ms as u64),
        finished_at: finished_ms.map(|ms| aiventbus_rpc::time::rfc3339_ms(ms as u64)),
        run_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execution(id: &str) -> NewExecution {
        NewExecution {
            action_id: id.into(),
            action_type: "log".into(),
            agent_id: None,
            trace_id: None,
            owner: false,
        }
    }

    #[tokio::test]
    async fn an_action_is_received_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exec.db");
        let store = Store::open(&path).unwrap();
        assert!(store.begin(execution("act_1")).await.unwrap());
        assert!(!store.begin(execution("act_1")).await.unwrap());
        assert_eq!(store.outcome("act_1").await.unwrap().unwrap().status, "executing");
        assert!(store.outcome("act_2").await.unwrap().is_none());
        drop(store);

        let store = Store::open(&path).unwrap();
        let version: i64 = store
            .run(|c| Ok(c.query_row("PRAGMA user_version", [], |row| row.get(0))?))
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let (interrupted, leftovers) = store.recover().await.unwrap();
        assert_eq!((interrupted, leftovers.len()), (1, 0));
        let outcome = store.outcome("act_1").await.unwrap().unwrap();
        assert_eq!(outcome.status, "interrupted");
        assert_eq!(outcome.result.unwrap()["error"]["message"], INTERRUPTED_MESSAGE);
        // A finished action is not touched by a later recovery.
        assert!(!store.begin(execution("act_1")).await.unwrap());
    }

    #[tokio::test]
    async fn runs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("exec.db")).unwrap();
        store
            .insert_run(NewRun {
                run_id: "run_1".into(),
                correlation_id: "act_1".into(),
                argv: vec!["echo".into(), "hi".into()],
                cwd: Some("/tmp".into()),
                status: RunStatus::Running,
                pid: Some(42),
                start_ticks: Some(7),
                session: Some(3),
                error: None,
                started_ms: 1_700_000_000_000,
            })
            .await
            .unwrap();
        let info = store.get_run("run_1").await.unwrap().unwrap();
        assert_eq!(
            (info.status, info.pid, info.argv.len()),
            (RunStatus::Running, Some(42), 2)
        );
        store
            .finish_run(
                "run_1",
                RunEnd {
                    exit_code: Some(3),
                    signal: None,
                    duration_ms: 12,
                    truncated: true,
                },
            )
            .await
            .unwrap();
        let info = store.get_run("run_1").await.unwrap().unwrap();
        assert_eq!(
            (info.status, info.exit_code, info.duration_ms, info.truncated),
            (RunStatus::Finished, Some(3), Some(12), true)
        );
        assert!(info.finished_at.is_some());
    }
}
