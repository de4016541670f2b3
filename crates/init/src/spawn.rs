//! Starting one service process: where its binary lives, its environment, its own process group,
//! where its output goes, and the parent-death signal that takes it down if init is killed.
//!
//! The one `unsafe` block of init lives here: `pre_exec` runs between fork and exec, where only
//! async-signal-safe calls are allowed.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use aiventbus_rpc::paths::Paths;
use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use crate::table::ServiceSpec;

/// Overrides the directory the service binaries are taken from.
pub const LIBEXEC_ENV: &str = "AIVENTBUS_LIBEXEC_DIR";

/// Variables a child must not inherit: systemd's hand-over to init is not addressed to services.
const SCRUBBED_ENV: &[&str] = &[
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// Where the children's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Inherited: under systemd, init's stderr is the journal.
    Inherit,
    /// A pipe whose read end init copies into the service's log file.
    Pipe,
}

impl Output {
    /// `Inherit` under systemd (`JOURNAL_STREAM` or `INVOCATION_ID` set), else `Pipe`.
    pub fn detect() -> Output {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if set("JOURNAL_STREAM") || set("INVOCATION_ID") {
            Output::Inherit
        } else {
            Output::Pipe
        }
    }
}

/// The directory holding the service binaries: `$AIVENTBUS_LIBEXEC_DIR`, else init's own directory.
pub fn libexec_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(LIBEXEC_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("finding init's own executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", exe.display()))
}

/// Resolves every service's binary in `dir`, failing with one message that lists all missing ones.
pub fn resolve_binaries(dir: &Path, services: &[ServiceSpec]) -> anyhow::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::with_capacity(services.len());
    let mut missing = Vec::new();
    for spec in services {
        let path = dir.join(spec.binary);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => found.push(path),
            Ok(_) => missing.push(format!("{} (not an executable file)", path.display())),
            Err(error) => missing.push(format!("{} ({error})", path.display())),
        }
    }
    if !missing.is_empty() {
        bail!(
            "service binaries not found: {}; install them next to aiventbus-init or set {LIBEXEC_ENV}",
            missing.join(", ")
        );
    }
    Ok(found)
}

/// A started service process.
pub struct Spawned {
    /// The process; awaited by its waiter task.
    pub child: Child,
    /// Its pid, which is also its process group id.
    pub pid: u32,
    /// Its merged stdout and stderr when [`Output::Pipe`].
    pub output: Option<pipe::Receiver>,
}

/// Starts `binary` in its own process group with the daemon's paths in its environment,
/// `NOTIFY_SOCKET` set to `notify_socket`, and SIGKILL as its parent-death signal.
///
/// The parent-death signal fires when the thread that forked the child exits, so spawns must come
/// from a thread that lives as long as init: the current-thread runtime's main thread.
pub fn spawn(binary: &Path, paths: &Paths, notify_socket: &Path, output: Output) -> io::Result<Spawned> {
    let mut command = Command::new(binary);
    command
        .env("AIVENTBUS_RUNTIME_DIR", &paths.runtime_dir)
        .env("AIVENTBUS_STATE_DIR", &paths.state_dir)
        .env("AIVENTBUS_CONFIG", &paths.config_file)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command.env(aiventbus_rpc::notify::NOTIFY_SOCKET, OsString::from(notify_socket));

    let mut reader = None;
    if output == Output::Pipe {
        // O_CLOEXEC on both ends: the child gets the write end only as its fds 1 and 2.
        let (read_end, write_end): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        command
            .stdout(Stdio::from(write_end.try_clone()?))
            .stderr(Stdio::from(write_end));
        reader = Some(read_end);
    }

    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called. prctl(2) and getppid(2) are plain system calls; the errors are built
    // from raw errno values without allocating; nothing is locked or captured by reference.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
            // init may have died between fork and prctl, in which case no signal will ever come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }

    let child = command.spawn()?;
    // Dropping the command closes init's copies of the pipe's write end, so the reader sees EOF
    // once the child and everything it started are gone.
    drop(command);
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the child exited before its pid was read"))?;
    let output = match reader {
        Some(fd) => Some(pipe::Receiver::from_owned_fd(fd)?),
        None => None,
    };
    Ok(Spawned { child, pid, output })
}

/// Sends `signal` to the process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: u32, signal: Signal) {
    // Pids are at most 2^22 on Linux, so they fit an i32.
    let group = nix::unistd::Pid::from_raw(pgid as i32);
    match nix::sys::signal::killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => tracing::warn!(pgid, signal = signal.as_str(), %error, "could not signal a process group"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::SERVICES;

    #[test]
    fn missing_binaries_are_all_named() {
        let tmp = tempfile::tempdir().unwrap();
        let message = format!("{:#}", resolve_binaries(tmp.path(), SERVICES).unwrap_err());
        for spec in SERVICES {
            assert!(message.contains(spec.binary), "{message}");
        }
        assert!(message.contains(LIBEXEC_ENV), "{message}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn children_get_the_paths_their_own_group_and_a_pipe() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths {
            runtime_dir: tmp.path().join("run"),
            state_dir: tmp.path().join("state"),
            config_file: tmp.path().join("c.toml"),
        };
        let script = tmp.path().join("svc");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$AIVENTBUS_RUNTIME_DIR|$NOTIFY_SOCKET|${CREDENTIALS_DIRECTORY:-none}\"\n\
             echo \"pgid $(cut -d' ' -f5 /proc/$$/stat) pid $$\" >&2\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut spawned = spawn(&script, &paths, Path::new("/tmp/n.sock"), Output::Pipe).unwrap();
        let mut text = String::new();
        use tokio::io::AsyncReadExt;
        spawned.output.take().unwrap().read_to_string(&mut text).await.unwrap();
        assert!(spawned.child.wait().await.unwrap().success());
        let mut lines = text.lines();
        let runtime = paths.runtime_dir.display().to_string();
        // CREDENTIALS_DIRECTORY is scrubbed even when init has one.
        assert_eq!(lines.next().unwrap(), format!("{runtime}|/tmp/n.sock|none"));
        assert_eq!(
            lines.next().unwrap(),
            format!("pgid {} pid {}", spawned.pid, spawned.pid)
        );
    }
}
