//! Per-service credentials: the key that verifies tokens addressed to the service and the tokens it
//! presents to others. They arrive through a 0700 directory (`$CREDENTIALS_DIRECTORY` under
//! systemd, else `<runtime>/creds/<service>/`), never through argv or the environment.

use std::io;
use std::path::{Path, PathBuf};

use crate::paths::{Paths, ensure_private_dir, write_private_file};
use crate::token::{Key, Verifier};

/// File name of the service's own verification key.
pub const KEY_FILE: &str = "key";

/// File name of the key stored secrets are encrypted under (only for services that read secrets).
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// File name of the token a service presents to `audience`.
pub fn token_file(audience: &str) -> String {
    format!("token.{audience}")
}

/// A service's credentials directory.
#[derive(Debug, Clone)]
pub struct Credentials {
    dir: PathBuf,
}

impl Credentials {
    /// `$CREDENTIALS_DIRECTORY` when set (systemd), else `<runtime>/creds/<service>`.
    pub fn locate(paths: &Paths, service: &str) -> Credentials {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| paths.creds_dir(service));
        Credentials { dir }
    }

    /// Credentials in an explicit directory.
    pub fn at(dir: impl Into<PathBuf>) -> Credentials {
        Credentials { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The verifier for tokens addressed to `service`.
    pub fn verifier(&self, service: &str) -> io::Result<Verifier> {
        let path = self.dir.join(KEY_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
        let key = Key::from_hex(&text).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        Ok(Verifier::new(service, &key))
    }

    /// The key stored secrets are encrypted under, for services given one.
    pub fn secrets_key(&self) -> io::Result<Key> {
        let path = self.dir.join(SECRETS_KEY_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
        Key::from_hex(&text).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))
    }

    /// Path of the token for `audience` (read again on every reconnect, so refreshed tokens apply).
    pub fn token_path(&self, audience: &str) -> PathBuf {
        self.dir.join(token_file(audience))
    }

    /// Writes a set of files into `dir` (created 0700, files 0600). Used by init.
    pub fn write(dir: &Path, files: &[(String, String)]) -> io::Result<()> {
        ensure_private_dir(dir)?;
        for (name, contents) in files {
            write_private_file(&dir.join(name), contents.as_bytes())?;
        }
        Ok(())
    }
}
