//! File confinement: canonical paths (symlinks resolved) inside the file roots and outside the
//! protected directories (key stores, credentials, the daemon's own dirs).

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::{Refusal, Settings};

/// Files and directories under the home directory that hold keys, credentials, browser profiles
/// or shell histories (which collect pasted secrets): never read, written or deleted by agents.
pub const HOME_PROTECTED: [&str; 34] = [
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".config/op",
    ".kube",
    ".docker/config.json",
    ".netrc",
    ".pgpass",
    ".password-store",
    ".local/share/keyrings",
    ".mozilla",
    ".config/google-chrome",
    ".config/chromium",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".vault-token",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".psql_history",
    ".mysql_history",
    ".config/rclone",
    ".s3cfg",
    ".boto",
    ".terraform.d",
    ".thunderbird",
    ".config/BraveSoftware",
    ".local/share/kwalletd",
];

/// Protected system files (besides every `/etc/sudoers*`).
pub const SYSTEM_PROTECTED: [&str; 2] = ["/etc/shadow", "/etc/gshadow"];

/// Most symbolic links followed while resolving one path (the kernel's own limit).
const MAX_LINKS: u32 = 40;

/// A protected location: a directory (and everything under it), a file, or every name in a
/// directory that starts with a prefix (`/etc/sudoers*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Protected {
    /// This path and everything under it.
    Tree(PathBuf),
    /// Every entry of the directory whose name starts with the prefix, and everything under it.
    Prefix(PathBuf, String),
}

impl Protected {
    fn contains(&self, path: &Path) -> bool {
        match self {
            Protected::Tree(tree) => path.starts_with(tree),
            Protected::Prefix(dir, prefix) => path
                .strip_prefix(dir)
                .ok()
                .and_then(|rest| rest.components().next())
                .is_some_and(|first| first.as_os_str().to_string_lossy().starts_with(prefix.as_str())),
        }
    }

    /// Whether deleting `path` would delete this (it is a proper ancestor).
    fn is_inside(&self, path: &Path) -> bool {
        let own = match self {
            Protected::Tree(tree) => tree,
            Protected::Prefix(dir, _) => dir,
        };
        own != path && own.starts_with(path)
    }

    /// How it is shown in reasons.
    fn display(&self, home: &Path) -> String {
        let shown = |path: &Path| match path.strip_prefix(home) {
            Ok(rest) if !rest.as_os_str().is_empty() => format!("~/{}", rest.display()),
            _ => path.display().to_string(),
        };
        match self {
            Protected::Tree(tree) => shown(tree),
            Protected::Prefix(dir, prefix) => format!("{}/{prefix}*", shown(dir)),
        }
    }
}

/// Expands a leading `~` (alone or followed by `/`) to `home`; `None` for `~user`.
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

/// The canonical form of an absolute path whose tail may not exist yet: the deepest existing
/// ancestor canonicalized and the rest appended, following symbolic links in the tail (dangling
/// ones too, since writing through them creates their target). A `..` after a part that does not
/// exist is refused: what it would mean depends on what gets created later.
pub fn canonical(path: &Path) -> io::Result<PathBuf> {
    if !path.is_absolute() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"));
    }
    let mut links = 0;
    resolve_inner(path, &mut links)
}

pub(crate) fn resolve(path: &Path) -> io::Result<PathBuf> {
    canonical(path)
}

fn resolve_inner(path: &Path, links: &mut u32) -> io::Result<PathBuf> {
    if let Ok(canonical) = fs::canonicalize(path) {
        return Ok(canonical);
    }
    let mut components = path.components();
    let last = components.next_back();
    let parent = components.as_path();
    match last {
        None | Some(Component::RootDir | Component::Prefix(_)) => Ok(path.to_path_buf()),
        Some(Component::CurDir) => resolve_inner(parent, links),
        Some(Component::ParentDir) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "\"..\" after a part that does not exist",
        )),
        Some(Component::Normal(name)) => {
            let base = resolve_inner(parent, links)?;
            let candidate = base.join(name);
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    *links += 1;
                    if *links > MAX_LINKS {
                        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many symbolic links"));
                    }
                    let target = fs::read_link(&candidate)?;
                    resolve_inner(&base.join(target), links)
                }
                _ => Ok(candidate),
            }
        }
    }
}

/// Resolves for protection checks: canonical when possible, else the path with `.` and `..`
/// applied lexically.
pub(crate) fn resolve_lenient(path: &Path) -> PathBuf {
    canonical(path).unwrap_or_else(|_| normalize(path))
}

/// Resolves a relative path under an already canonical directory: a plain file name costs one
/// `lstat` (it is canonical unless it is a symbolic link); anything else is resolved in full.
pub(crate) fn resolve_under(base: &Path, relative: &Path) -> PathBuf {
    let candidate = base.join(relative);
    let mut components = relative.components();
    if let (Some(Component::Normal(_)), None) = (components.next(), components.next()) {
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => resolve_lenient(&candidate),
            _ => candidate,
        }
    } else {
        resolve_lenient(&candidate)
    }
}

/// `.` and `..` applied lexically (`/..` stays `/`).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

pub(crate) fn protected_list(home: &Path, home_literal: &Path, extra: &[PathBuf]) -> Vec<Protected> {
    let mut list = Vec::new();
    let mut add = |path: PathBuf| {
        let resolved = resolve_lenient(&path);
        for candidate in [resolved, normalize(&path)] {
            let entry = Protected::Tree(candidate);
            if !list.contains(&entry) {
                list.push(entry);
            }
        }
    };
    for relative in HOME_PROTECTED {
        add(home.join(relative));
        add(home_literal.join(relative));
    }
    for system in SYSTEM_PROTECTED {
        add(PathBuf::from(system));
    }
    for path in extra {
        if path.is_absolute() {
            add(path.clone());
        }
    }
    list.push(Protected::Prefix(PathBuf::from("/etc"), "sudoers".into()));
    list
}

/// The protected location (as shown to people) a resolved path is in, if any.
pub fn protected(settings: &Settings, resolved: &Path) -> Option<String> {
    settings
        .protected
        .iter()
        .find(|entry| entry.contains(resolved))
        .map(|entry| entry.display(&settings.home))
}

/// The protected location (as shown to people) a resolved path holds, if any.
pub(crate) fn holds_protected(settings: &Settings, resolved: &Path) -> Option<String> {
    settings
        .protected
        .iter()
        .find(|entry| entry.is_inside(resolved))
        .map(|entry| entry.display(&settings.home))
}

/// How a path is shown in reasons: `~/…` under the home directory.
pub(crate) fn show(settings: &Settings, path: &Path) -> String {
    match path.strip_prefix(&settings.home) {
        Ok(rest) if rest.as_os_str().is_empty() => "~".to_owned(),
        Ok(rest) => format!("~/{}", rest.display()),
        Err(_) => path.display().to_string(),
    }
}

/// The canonical path of an existing (`must_exist`) or to-be-created file, checked: never inside
/// a protected location, always inside one of the file roots.
pub fn confine(settings: &Settings, path: &str, must_exist: bool) -> Result<PathBuf, Refusal> {
    if path.is_empty() {
        return Err(Refusal::new("invalid_params", "path is empty"));
    }
    if path.contains('\0') {
        return Err(Refusal::new("invalid_params", "path contains a NUL byte"));
    }
    let expanded = match expand_home(path, &settings.home) {
        Some(expanded) if expanded.is_absolute() => expanded,
        _ => {
            return Err(Refusal::new(
                "invalid_params",
                format!("path {path:?} must be absolute or start with ~/"),
            ));
        }
    };
    let resolved = canonical(&expanded)
        .map_err(|e| Refusal::new("deny.path_traversal", format!("path {path:?} cannot be resolved: {e}")))?;
    let shown = if Path::new(path) == resolved {
        format!("{path:?}")
    } else {
        format!("{path:?} (resolved to {})", resolved.display())
    };
    if let Some(location) = protected(settings, &resolved) {
        return Err(Refusal::new(
            "deny.protected_path",
            format!("{shown} is inside the protected location {location}"),
        ));
    }
    if !settings.roots.iter().any(|root| resolved.starts_with(root)) {
        let roots: Vec<String> = settings.roots.iter().map(|root| show(settings, root)).collect();
        return Err(Refusal::new(
            "deny.outside_roots",
            format!("{shown} is outside the file roots ({})", roots.join(", ")),
        ));
    }
    if must_exist && fs::symlink_metadata(&resolved).is_err() {
        return Err(Refusal::new("not_found", format!("{shown} does not exist")));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_follows_links_and_refuses_dotdot_past_missing_parts() {
        let dir = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(base.join("a/b")).unwrap();
        fs::create_dir_all(base.join("secret")).unwrap();
        std::os::unix::fs::symlink(base.join("secret/new-key"), base.join("a/dangling")).unwrap();
        std::os::unix::fs::symlink("../../secret", base.join("a/b/up")).unwrap();
        assert_eq!(canonical(&base.join("a/b/../b/c")).unwrap(), base.join("a/b/c"));
        assert_eq!(
            canonical(&base.join("a/dangling")).unwrap(),
            base.join("secret/new-key")
        );
        assert_eq!(canonical(&base.join("a/b/up/x/y")).unwrap(), base.join("secret/x/y"));
        assert_eq!(canonical(&base.join("a/./new")).unwrap(), base.join("a/new"));
        let error = canonical(&base.join("a/missing/../../secret")).unwrap_err();
        assert!(error.to_string().contains(".."), "{error}");
        std::os::unix::fs::symlink(base.join("loop2"), base.join("loop1")).unwrap();
        std::os::unix::fs::symlink(base.join("loop1"), base.join("loop2")).unwrap();
        assert!(canonical(&base.join("loop1/x")).is_err());
        assert!(canonical(Path::new("relative")).is_err());
    }

    #[test]
    fn protected_entries_match_trees_and_prefixes() {
        let sudoers = Protected::Prefix(PathBuf::from("/etc"), "sudoers".into());
        assert!(sudoers.contains(Path::new("/etc/sudoers")));
        assert!(sudoers.contains(Path::new("/etc/sudoers.d/x")));
        assert!(!sudoers.contains(Path::new("/etc/passwd")));
        assert!(!sudoers.contains(Path::new("/etc")));
        let ssh = Protected::Tree(PathBuf::from("/home/u/.ssh"));
        assert!(ssh.contains(Path::new("/home/u/.ssh/id_rsa")));
        assert!(!ssh.contains(Path::new("/home/u/.sshx")));
        assert!(ssh.is_inside(Path::new("/home/u")));
        assert!(!ssh.is_inside(Path::new("/home/u/.ssh")));
        assert_eq!(normalize(Path::new("/a/../../b/./c")), PathBuf::from("/b/c"));
    }
}
