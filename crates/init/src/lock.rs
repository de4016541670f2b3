//! The single-instance lock: an exclusive `flock` on `<runtime>/init.lock`, held for init's whole
//! life. Stale sockets and the pid file are only touched while it is held.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use aiventbus_rpc::paths::Paths;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another init holds it.
    #[error(
        "another aiventbus-init ({}) is already running with runtime dir {}; stop it first, or give this one other \
         AIVENTBUS_RUNTIME_DIR and AIVENTBUS_STATE_DIR",
        describe_pid(*.pid),
        .runtime_dir.display()
    )]
    Held {
        /// The runtime dir both would share.
        runtime_dir: PathBuf,
        /// The holder's pid, from `init.pid`, when readable.
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn describe_pid(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".into(),
    }
}

/// Held while init runs; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _lock: Flock<File>,
}

impl InstanceLock {
    /// Takes the lock without waiting. The runtime dir must exist.
    pub fn acquire(paths: &Paths) -> Result<InstanceLock, LockError> {
        let path = paths.lock_file();
        // std opens with O_CLOEXEC, so children never inherit the lock.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(InstanceLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Held {
                runtime_dir: paths.runtime_dir.clone(),
                pid: read_pid(paths),
            }),
            Err((_, errno)) => Err(LockError::Io {
                path,
                source: io::Error::from(errno),
            }),
        }
    }
}

/// The pid recorded in `init.pid`, if any.
pub fn read_pid(paths: &Paths) -> Option<u32> {
    std::fs::read_to_string(paths.pid_file()).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &std::path::Path) -> Paths {
        Paths {
            runtime_dir: dir.join("run"),
            state_dir: dir.join("state"),
            config_file: dir.join("config.toml"),
        }
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = paths(tmp.path());
        paths.ensure_dirs().unwrap();
        std::fs::write(paths.pid_file(), "4242\n").unwrap();

        let first = InstanceLock::acquire(&paths).unwrap();
        let error = InstanceLock::acquire(&paths).unwrap_err();
        match &error {
            LockError::Held { runtime_dir, pid } => {
                assert_eq!(runtime_dir, &paths.runtime_dir);
                assert_eq!(*pid, Some(4242));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains("pid 4242"), "{message}");
        assert!(message.contains(&paths.runtime_dir.display().to_string()), "{message}");

        drop(first);
        InstanceLock::acquire(&paths).unwrap();
    }
}
