//! `file_read`, `file_write`, `file_delete`: the path is confined again at execution time (the file
//! system may have changed since the decision), must still resolve where policy decided, and is
//! opened without following a symlink in its last component. Blocking; callers use
//! `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use nix::libc;
use serde_json::{Map, Value, json};

/// Why a file action failed (the message is shown to the agent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FileError(pub String);

fn fail(message: impl Into<String>) -> FileError {
    FileError(message.into())
}

/// Confines `params.path` and checks it against `params.resolved_path` (policy's canonical path).
pub fn locate(
    settings: &aiventbus_guard::Settings,
    params: &Map<String, Value>,
    must_exist: bool,
) -> Result<PathBuf, FileError> {
    let path = match params.get("path") {
        Some(Value::String(path)) if !path.is_empty() => path,
        Some(_) => return Err(fail("path: must be a non-empty string")),
        None => return Err(fail("path: required")),
    };
    let resolved = aiventbus_guard::paths::confine(settings, path, must_exist)
        .map_err(|refusal| fail(format!("refused at execution ({}): {}", refusal.rule, refusal.reason)))?;
    match params.get("resolved_path") {
        None | Some(Value::Null) => {}
        Some(Value::String(decided)) => {
            if Path::new(decided) != resolved {
                return Err(fail(format!(
                    "refused at execution: {path:?} now resolves to {}, not {decided} as decided (a link changed)",
                    resolved.display()
                )));
            }
        }
        Some(_) => return Err(fail("resolved_path: must be a string")),
    }
    Ok(resolved)
}

fn open_flags() -> i32 {
    // No symlink in the last component; never block on a FIFO; never become a controlling tty.
    libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC
}

fn io_failure(path: &Path, error: &std::io::Error) -> FileError {
    if error.raw_os_error() == Some(libc::ELOOP) {
        fail(format!("refused at execution: {} is a symbolic link", path.display()))
    } else {
        fail(format!("{}: {error}", path.display()))
    }
}

/// Reads at most `max` bytes: `{path, content | content_b64, truncated, bytes, size}`.
pub fn read(path: &Path, max: u64) -> Result<Value, FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(open_flags())
        .open(path)
        .map_err(|error| io_failure(path, &error))?;
    let meta = file.metadata().map_err(|error| io_failure(path, &error))?;
    if !meta.is_file() {
        return Err(fail(format!("{} is not a regular file", path.display())));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|error| io_failure(path, &error))?;
    let truncated = bytes.len() as u64 > max;
    bytes.truncate(max as usize);
    let mut result = json!({
        "path": path.display().to_string(),
        "truncated": truncated,
        "bytes": bytes.len(),
        "size": meta.len(),
    });
    match String::from_utf8(bytes) {
        Ok(text) => result["content"] = Value::String(text),
        Err(error) => result["content_b64"] = Value::String(B64.encode(error.as_bytes())),
    }
    Ok(result)
}

/// The bytes to write: `content` (text) or `content_b64`.
pub fn content(params: &Map<String, Value>) -> Result<Vec<u8>, FileError> {
    match (params.get("content"), params.get("content_b64")) {
        (Some(Value::String(text)), None) => Ok(text.clone().into_bytes()),
        (None, Some(Value::String(encoded))) => B64
            .decode(encoded)
            .map_err(|error| fail(format!("content_b64: not base64: {error}"))),
        (Some(_), Some(_)) => Err(fail("content and content_b64: give one of them")),
        (Some(_), None) => Err(fail("content: must be a string")),
        (None, Some(_)) => Err(fail("content_b64: must be a string")),
        (None, None) => Err(fail("content: required")),
    }
}

/// Writes through a temporary file in the same directory and a rename, so a reader never sees half
/// a file and a link planted at the path is replaced, not followed: `{path, bytes_written}`.
pub fn write(path: &Path, bytes: &[u8]) -> Result<Value, FileError> {
    let dir = path
        .parent()
        .ok_or_else(|| fail(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| fail(format!("{} names no file", path.display())))?;
    let mode = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.permissions().mode() & 0o7777,
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(fail(format!(
                "refused at execution: {} is a symbolic link",
                path.display()
            )));
        }
        Ok(_) => return Err(fail(format!("{} exists and is not a regular file", path.display()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0o644,
        Err(error) => return Err(io_failure(path, &error)),
    };
    if !dir.is_dir() {
        return Err(fail(format!("{}: the directory does not exist", dir.display())));
    }
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        aiventbus_rpc::ids::prefixed("aiventbus")
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(open_flags())
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(io_failure(path, &error));
    }
    Ok(json!({"path": path.display().to_string(), "bytes_written": bytes.len()}))
}

/// Deletes a regular file (never a directory, a link or a device): `{path, deleted, bytes}`.
pub fn delete(path: &Path) -> Result<Value, FileError> {
    let meta = std::fs::symlink_metadata(path).map_err(|error| io_failure(path, &error))?;
    if meta.file_type().is_symlink() {
        return Err(fail(format!(
            "refused at execution: {} is a symbolic link",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(fail(format!(
            "{} is not a regular file; only files are deleted",
            path.display()
        )));
    }
    // The file must still be the one just checked when it goes.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(open_flags())
        .open(path)
        .map_err(|error| io_failure(path, &error))?;
    let now = file.metadata().map_err(|error| io_failure(path, &error))?;
    if now.ino() != meta.ino() || now.dev() != meta.dev() {
        return Err(fail(format!(
            "refused at execution: {} changed while it was checked",
            path.display()
        )));
    }
    std::fs::remove_file(path).map_err(|error| io_failure(path, &error))?;
    Ok(json!({"path": path.display().to_string(), "deleted": true, "bytes": meta.len()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("note.txt");
        assert_eq!(write(&path, b"hello").unwrap()["bytes_written"], 5);
        let result = read(&path, 100).unwrap();
        assert_eq!(
            (result["content"].as_str(), result["truncated"].as_bool()),
            (Some("hello"), Some(false))
        );
        let result = read(&path, 3).unwrap();
        assert_eq!(
            (result["content"].as_str(), result["truncated"].as_bool()),
            (Some("hel"), Some(true))
        );
        write(&path, b"\xff\x00").unwrap();
        assert_eq!(read(&path, 100).unwrap()["content_b64"], "/wA=");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        delete(&path).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn links_are_not_followed_and_directories_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "secret").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read(&link, 100).unwrap_err().0.contains("symbolic link"));
        assert!(write(&link, b"x").unwrap_err().0.contains("symbolic link"));
        assert!(delete(&link).unwrap_err().0.contains("symbolic link"));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");
        assert!(delete(dir.path()).unwrap_err().0.contains("not a regular file"));
    }

    #[test]
    fn content_fields() {
        let params = |value: Value| value.as_object().unwrap().clone();
        assert_eq!(content(&params(json!({"content": "a"}))).unwrap(), b"a");
        assert_eq!(content(&params(json!({"content_b64": "/wA="}))).unwrap(), [0xff, 0]);
        assert!(content(&params(json!({}))).unwrap_err().0.starts_with("content"));
        assert!(
            content(&params(json!({"content_b64": "%%"})))
                .unwrap_err()
                .0
                .starts_with("content_b64")
        );
    }
}
