//! WAL checkpoints off the writer thread. SQLite's automatic checkpoint runs inside a commit and
//! stalls it for milliseconds (it copies pages into the database file and syncs it); with it the
//! writer's p99 commit latency was ~4 ms, without it under 1 ms. So the writer turns the automatic
//! checkpoint off and this thread runs a PASSIVE checkpoint every `INTERVAL` on its own
//! connection, which never blocks the writer, and a final full one when the store closes.
//!
//! A PASSIVE checkpoint copies frames back but never restarts the WAL: the log starts over from
//! its beginning only when a writer finds it fully copied while no reader still uses it, which under
//! steady reads (subscribers, the router) may never happen — the file then grows without bound
//! (2 GB in 16 s of small commits). So the size of the WAL is looked at every `TICK`, and once it
//! passes `RESTART_BYTES` the writer is asked to run a RESTART checkpoint between two batches: it
//! waits (briefly, through the busy handler) for the readers of old frames to finish, so the next
//! commit writes from the start of the file again. It runs on the writer's own connection because a
//! RESTART from another one would hold the write lock against the writer's commits.
//! The file then stays bounded (and `journal_size_limit` trims it), and commits overwrite pages the
//! kernel already has instead of extending the file, which costs zero-filled pages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::{Shared, StoreError, SyncMode};

/// How often the WAL is copied back into the database.
const INTERVAL: Duration = Duration::from_secs(2);
/// How often the WAL's size is looked at (often in tests, whose commits come fast and few).
const TICK: Duration = Duration::from_millis(if cfg!(test) { 5 } else { 250 });
/// WAL size past which the log is made to start over (small in tests, so they need few commits).
const RESTART_BYTES: u64 = if cfg!(test) { 512 * 1024 } else { 32 * 1024 * 1024 };

/// Starts the checkpointer; it ends (after a last checkpoint) when `stop`'s sender is dropped.
pub(crate) fn spawn(
    path: &Path,
    sync: SyncMode,
    shared: Arc<Shared>,
    stop: Receiver<()>,
) -> Result<JoinHandle<()>, StoreError> {
    let conn = open(path, sync)?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("bus-checkpoint".into())
        .spawn(move || run(conn, path, &shared, stop))
        .map_err(|error| StoreError::Internal(format!("cannot start the checkpoint thread: {error}")))
}

fn open(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|error| StoreError::Internal(format!("{}: cannot open for checkpoints: {error}", path.display())))?;
    let synchronous = match sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    conn.busy_timeout(Duration::from_secs(5))
        .and_then(|()| conn.execute_batch(&format!("PRAGMA synchronous = {synchronous};")))
        .map_err(|error| StoreError::Internal(format!("{}: cannot configure checkpoints: {error}", path.display())))?;
    Ok(conn)
}

fn run(conn: Connection, path: PathBuf, shared: &Shared, stop: Receiver<()>) {
    let wal = wal_path(&path);
    let mut last = Instant::now();
    loop {
        match stop.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {
                let size = std::fs::metadata(&wal).map(|meta| meta.len()).unwrap_or(0);
                if size >= RESTART_BYTES {
                    // Copy what can be copied here first, so the writer's RESTART has little left
                    // to copy and sync while commits wait.
                    checkpoint(&conn, &path, "PASSIVE");
                    last = Instant::now();
                    shared.restart_wal.store(true, Ordering::Release);
                } else if last.elapsed() >= INTERVAL {
                    checkpoint(&conn, &path, "PASSIVE");
                    last = Instant::now();
                }
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                checkpoint(&conn, &path, "TRUNCATE");
                return;
            }
        }
    }
}

/// `<db>-wal`.
fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// How long the writer's RESTART waits for readers of old frames; a busier moment is tried again at
/// the next tick.
const RESTART_WAIT: Duration = Duration::from_millis(50);

/// On the writer's connection: makes the WAL start over once no reader uses its old frames, waiting
/// at most [`RESTART_WAIT`] for them (commits wait while this runs).
pub(crate) fn restart(conn: &Connection, path: &Path) {
    if let Err(error) = conn.busy_timeout(RESTART_WAIT) {
        tracing::warn!(%error, "cannot set the busy timeout for a WAL restart");
        return;
    }
    checkpoint(conn, path, "RESTART");
    if let Err(error) = conn.busy_timeout(WRITER_BUSY_TIMEOUT) {
        tracing::error!(%error, "cannot restore the writer's busy timeout");
    }
}

/// The writer connection's busy timeout (as set when the store opens it).
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a checkpoint in `mode` on `conn`, logging the outcome.
pub(crate) fn checkpoint(conn: &Connection, path: &Path, mode: &str) {
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match result {
        Ok((busy, log, done)) => tracing::trace!(mode, busy, log, done, "checkpoint"),
        Err(error) => tracing::warn!(path = %path.display(), mode, %error, "checkpoint failed"),
    }
}
