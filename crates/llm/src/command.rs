//! Command agents: a program (argv, no shell) that gets the event JSON on stdin and writes one
//! `AgentOutput` JSON object on stdout. It runs in its own process group with a scrubbed
//! environment (PATH, HOME, LANG only) and `/` as its directory; past the timeout the whole group
//! is killed; stdout is capped at 1 MiB and stderr (truncated) goes into the error.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Largest stdout accepted.
pub const MAX_STDOUT: usize = 1024 * 1024;
/// stderr kept for the error message.
const MAX_STDERR: usize = 4 * 1024;
/// Environment variables passed through.
const KEPT_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// Why a program gave no usable stdout.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// It could not be started.
    #[error("cannot start {program}: {reason}")]
    Spawn {
        /// argv[0].
        program: String,
        /// The OS error.
        reason: String,
    },
    /// It ran past the timeout; its process group was killed.
    #[error("timed out after {0:?}; its process group was killed")]
    Timeout(Duration),
    /// It wrote more than [`MAX_STDOUT`].
    #[error("stdout exceeded {MAX_STDOUT} bytes; its process group was killed")]
    TooLarge,
    /// It exited unsuccessfully.
    #[error("{status}; stderr: {stderr}")]
    Exit {
        /// `exited with code 3` or `killed by signal 9`.
        status: String,
        /// The start of its stderr.
        stderr: String,
    },
}

/// Kills the child's process group when the run is dropped or times out.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            // The group may be gone already; nothing else to do then.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Runs `argv` with `input` on stdin; returns its stdout when it exits with status 0.
pub async fn run(argv: &[String], input: Vec<u8>, timeout: Duration) -> Result<String, CommandError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(CommandError::Spawn {
            program: String::new(),
            reason: "empty argv".into(),
        });
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(
            KEPT_ENV
                .iter()
                .filter_map(|name| std::env::var_os(name).map(|value| (name, value))),
        )
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|error| CommandError::Spawn {
        program: program.clone(),
        reason: error.to_string(),
    })?;
    let guard = GroupGuard(child.id().map(|pid| pid as i32));
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A program that does not read its input is fine.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        }
        drop(stdin);
    };
    let work = async {
        let (_, stdout, stderr) = tokio::join!(feed, read_capped(stdout, MAX_STDOUT), read_capped(stderr, MAX_STDERR));
        let (stdout, overflow) = stdout;
        if overflow {
            return Err(CommandError::TooLarge);
        }
        let status = child.wait().await.map_err(|error| CommandError::Spawn {
            program: program.clone(),
            reason: error.to_string(),
        })?;
        Ok((status, stdout, stderr.0))
    };
    let (status, stdout, stderr) = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(done)) => done,
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(CommandError::Timeout(timeout)),
    };
    // The leader exited; leftovers in its group are not ours to keep running.
    drop(guard);
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "ended abnormally".to_owned(),
        };
        return Err(CommandError::Exit {
            status,
            stderr: crate::providers::truncate(String::from_utf8_lossy(&stderr).trim(), 1000),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Reads up to `cap` bytes; the flag says more was there (reading stops at the cap).
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(reader) = reader else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let mut limited = reader.take(cap as u64 + 1);
    if limited.read_to_end(&mut out).await.is_err() {
        return (out, false);
    }
    if out.len() > cap {
        out.truncate(cap);
        // stderr is only truncated; stdout past the cap is an error the caller reports.
        return (out, true);
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn echoes_stdin_with_a_scrubbed_environment() {
        let out = run(
            &sh("cat; echo; echo \"secret=${SECRET:-none} dir=$(pwd)\""),
            b"{\"a\":1}".to_vec(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(out, "{\"a\":1}\nsecret=none dir=/\n");
    }

    #[tokio::test]
    async fn exit_codes_carry_stderr() {
        let error = run(&sh("echo broken >&2; exit 3"), Vec::new(), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            CommandError::Exit {
                status: "exited with code 3".into(),
                stderr: "broken".into()
            }
        );
    }

    #[tokio::test]
    async fn timeouts_kill_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let error = run(&sh(&script), Vec::new(), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(error, CommandError::Timeout(Duration::from_millis(500)));
        let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        // The grandchild was in the group: it is gone (or a zombie about to be reaped by init).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while aiventbus_testkit::process_alive(pid as u32) {
            assert!(std::time::Instant::now() < deadline, "sleep {pid} survived the timeout");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stdout_is_capped_and_missing_programs_are_reported() {
        let error = run(&sh("head -c 2000000 /dev/zero"), Vec::new(), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert_eq!(error, CommandError::TooLarge);
        let error = run(&["/nonexistent/agent".to_owned()], Vec::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, CommandError::Spawn { .. }), "{error:?}");
    }
}
