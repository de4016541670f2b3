//! Per-service log files when not under systemd: a child's merged stdout and stderr are copied into
//! `<state>/logs/<name>.log`, which is rotated to `<name>.log.1` (one old file kept) before a write
//! would take it past `[init] log_max`.

use std::io;
use std::path::{Path, PathBuf};

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Bytes read from a child per write.
const CHUNK: usize = 16 * 1024;

/// A size-capped, rotated log file.
pub struct LogFile {
    path: PathBuf,
    rotated: PathBuf,
    max: u64,
    file: File,
    size: u64,
}

impl LogFile {
    /// Opens (appending) or creates `path` with mode 0600.
    pub async fn open(path: &Path, max: u64) -> io::Result<LogFile> {
        let file = open_append(path).await?;
        let size = file.metadata().await?.len();
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        Ok(LogFile {
            path: path.to_path_buf(),
            rotated: PathBuf::from(rotated),
            max: max.max(1),
            file,
            size,
        })
    }

    /// Appends `bytes`, rotating first when they would not fit under the cap. A single write
    /// larger than the cap goes whole into a fresh file.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max {
            self.rotate().await?;
        }
        self.file.write_all(bytes).await?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    async fn rotate(&mut self) -> io::Result<()> {
        self.file.flush().await?;
        tokio::fs::rename(&self.path, &self.rotated).await?;
        self.file = open_append(&self.path).await?;
        self.size = 0;
        Ok(())
    }

    /// Pushes buffered bytes to the file.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.file.flush().await
    }
}

async fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await
}

/// Copies `output` into `log` until end of file (the child and its group are gone) or `stop`.
/// Without a log file the output is read and dropped, so the child never blocks on a full pipe.
pub async fn copy(
    service: &'static str,
    mut output: impl AsyncRead + Unpin,
    mut log: Option<LogFile>,
    stop: CancellationToken,
) {
    let mut buffer = vec![0u8; CHUNK];
    let mut warned = false;
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => break,
            read = output.read(&mut buffer) => read,
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                let Some(file) = log.as_mut() else { continue };
                if let Err(error) = file.write(&buffer[..n]).await
                    && !warned
                {
                    // Once per process: a full disk would otherwise log every chunk.
                    warned = true;
                    tracing::warn!(service, path = %file.path.display(), %error, "cannot write the service log; output dropped");
                }
            }
            Err(error) => {
                tracing::warn!(service, %error, "reading the service's output failed");
                break;
            }
        }
    }
    if let Some(file) = log.as_mut()
        && let Err(error) = file.flush().await
    {
        tracing::warn!(service, path = %file.path.display(), %error, "cannot flush the service log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test(flavor = "current_thread")]
    async fn rotates_at_the_cap_and_keeps_one_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bus.log");
        let old = tmp.path().join("bus.log.1");
        let mut log = LogFile::open(&path, 100).await.unwrap();
        log.write(&[b'a'; 60]).await.unwrap();
        log.write(&[b'b'; 40]).await.unwrap();
        log.flush().await.unwrap();
        // Exactly at the cap: not rotated yet.
        assert_eq!(std::fs::read(&path).unwrap().len(), 100);
        assert!(!old.exists());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        log.write(&[b'c'; 30]).await.unwrap();
        log.flush().await.unwrap();
        let mut expected_old = vec![b'a'; 60];
        expected_old.extend([b'b'; 40]);
        assert_eq!(std::fs::read(&old).unwrap(), expected_old);
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'c'; 30]);

        // A second rotation replaces the old file: only one is kept.
        log.write(&[b'd'; 80]).await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), vec![b'c'; 30]);
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'd'; 80]);
        let logs: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(logs.len(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reopening_appends_and_counts_the_existing_size() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("gateway.log");
        std::fs::write(&path, [b'x'; 90]).unwrap();
        let mut log = LogFile::open(&path, 100).await.unwrap();
        log.write(b"0123456789").await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 100);
        log.write(b"!").await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"!");
        assert_eq!(std::fs::read(tmp.path().join("gateway.log.1")).unwrap().len(), 100);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn copy_runs_to_end_of_input() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("svc.log");
        let log = LogFile::open(&path, 1 << 20).await.unwrap();
        copy("svc", &b"line one\nline two\n"[..], Some(log), CancellationToken::new()).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line one\nline two\n");
    }
}
