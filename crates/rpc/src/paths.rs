//! Where the daemon keeps its sockets, state and config (SPEC §2), resolved the same way by every process.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The resolved directories and config file of one daemon.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Sockets, pid file, lock, per-service credentials. Mode 0700.
    pub runtime_dir: PathBuf,
    /// Databases, keys, logs. Mode 0700.
    pub state_dir: PathBuf,
    /// The config file (which need not exist).
    pub config_file: PathBuf,
}

impl Paths {
    /// Resolves from the environment: `$AIVENTBUS_RUNTIME_DIR`, `$AIVENTBUS_STATE_DIR`,
    /// `$AIVENTBUS_CONFIG`, then the root or XDG defaults.
    pub fn from_env() -> Paths {
        let uid = nix::unistd::getuid().as_raw();
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = var("HOME").unwrap_or_else(|| PathBuf::from("/"));
        let runtime_dir = var("AIVENTBUS_RUNTIME_DIR").unwrap_or_else(|| {
            if uid == 0 {
                PathBuf::from("/run/aiventbus")
            } else if let Some(xdg) = var("XDG_RUNTIME_DIR") {
                xdg.join("aiventbus")
            } else {
                PathBuf::from(format!("/tmp/aiventbus-{uid}"))
            }
        });
        let state_dir = var("AIVENTBUS_STATE_DIR").unwrap_or_else(|| {
            if uid == 0 {
                PathBuf::from("/var/lib/aiventbus")
            } else {
                var("XDG_STATE_HOME")
                    .unwrap_or_else(|| home.join(".local/state"))
                    .join("aiventbus")
            }
        });
        let config_file = var("AIVENTBUS_CONFIG").unwrap_or_else(|| {
            if uid == 0 {
                PathBuf::from("/etc/aiventbus/config.toml")
            } else {
                var("XDG_CONFIG_HOME")
                    .unwrap_or_else(|| home.join(".config"))
                    .join("aiventbus/config.toml")
            }
        });
        Paths {
            runtime_dir,
            state_dir,
            config_file,
        }
    }

    /// A service's socket: `<runtime>/<name>.sock`.
    pub fn socket(&self, service: &str) -> PathBuf {
        self.runtime_dir.join(format!("{service}.sock"))
    }

    /// The public local API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.runtime_dir.join("api.sock")
    }

    /// A service's credentials dir when not under systemd: `<runtime>/creds/<service>`.
    pub fn creds_dir(&self, service: &str) -> PathBuf {
        self.runtime_dir.join("creds").join(service)
    }

    /// Per-service log files when not under systemd.
    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// A service's log file.
    pub fn log_file(&self, service: &str) -> PathBuf {
        self.log_dir().join(format!("{service}.log"))
    }

    /// Init's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.runtime_dir.join("init.pid")
    }

    /// Init's single-instance lock.
    pub fn lock_file(&self) -> PathBuf {
        self.runtime_dir.join("init.lock")
    }

    /// The master key (init only).
    pub fn master_key(&self) -> PathBuf {
        self.state_dir.join("master.key")
    }

    /// Creates (or checks) the runtime and state dirs: owned by us, mode 0700.
    pub fn ensure_dirs(&self) -> io::Result<()> {
        ensure_private_dir(&self.runtime_dir)?;
        ensure_private_dir(&self.state_dir)?;
        ensure_private_dir(&self.log_dir())?;
        ensure_private_dir(&self.runtime_dir.join("creds"))?;
        Ok(())
    }
}

/// Creates `dir` (and parents) with mode 0700, or checks an existing one is a directory owned by
/// us; tightens its mode to 0700. Refuses a directory someone else owns (a planted `/tmp` dir).
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(io::Error::other(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )));
            }
            let uid = nix::unistd::getuid().as_raw();
            if meta.uid() != uid {
                return Err(io::Error::other(format!(
                    "{} is owned by uid {}, not by us (uid {uid}); refusing to use it",
                    dir.display(),
                    meta.uid()
                )));
            }
            if meta.mode() & 0o777 != 0o700 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(ensure_private_dir(&file).is_err());
    }

    #[test]
    fn private_files_are_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("key");
        write_private_file(&file, b"secret").unwrap();
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&file).unwrap(), b"secret");
    }
}
