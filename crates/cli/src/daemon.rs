//! Daemon lifecycle commands: `up` (run aiventbus-init in the foreground or detached), `down`
//! (SIGTERM to init, then wait), `status`, `version`, and `logs` (a service's log file, followed
//! across rotation).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use aiventbus_client::{Client, Error as ClientError};
use aiventbus_proto::PROTOCOL_VERSION;
use aiventbus_proto::methods::{StatusResult, VersionResult};
use aiventbus_rpc::paths::ensure_private_dir;
use anyhow::{Context as _, bail};
use clap::Args;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::time::Instant;

use crate::output::{self, Table};
use crate::{Context, NotRunning, UsageError};

/// The supervisor binary `up` starts.
const INIT_BINARY: &str = "aiventbus-init";
/// How long `up --detach` waits for the daemon to answer.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long `down` waits for init to exit.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How often `down` checks whether init is gone; init is not our child, so nothing notifies us.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How often `up --detach` asks the socket whether the daemon answers yet.
const START_POLL: Duration = Duration::from_millis(100);
/// How often `logs -f` looks for new lines and rotation, like `tail -F`; the workspace carries no
/// file-notification crate, and rotation has to be detected with a stat anyway.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Lines of init's log shown when a detached start fails.
const FAILURE_LOG_LINES: usize = 20;
/// Services a log can belong to (SPEC §1).
const SERVICES: [&str; 8] = ["init", "bus", "router", "llm", "policy", "exec", "producers", "gateway"];

/// `aibus logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Short service name: init, bus, gateway, …
    service: String,
    /// Keep printing lines as they are written (follows rotation).
    #[arg(long, short = 'f')]
    follow: bool,
    /// How many of the last lines to print first.
    #[arg(long = "lines", short = 'n', value_name = "N", default_value_t = 100)]
    lines: usize,
}

/// Asks the socket for `system.version`, giving up after `within`.
async fn probe(socket: &Path, within: Duration) -> Result<VersionResult, ClientError> {
    let answer = tokio::time::timeout(within, async {
        let client = Client::connect(socket).await?;
        client.version().await
    })
    .await;
    answer.unwrap_or(Err(ClientError::Timeout))
}

/// Reads init's pid file: `None` when there is none.
fn read_pid(path: &Path) -> anyhow::Result<Option<i32>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ => bail!("{} holds {:?}, not a process id", path.display(), text.trim()),
    }
}

/// Finds `aiventbus-init` in `$AIVENTBUS_LIBEXEC_DIR`, then next to this executable.
fn find_init() -> anyhow::Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(dir) = std::env::var_os("AIVENTBUS_LIBEXEC_DIR").filter(|dir| !dir.is_empty()) {
        searched.push(PathBuf::from(dir).join(INIT_BINARY));
    }
    if let Some(dir) = std::env::current_exe().ok().as_deref().and_then(Path::parent) {
        searched.push(dir.join(INIT_BINARY));
    }
    if let Some(found) = searched.iter().find(|path| is_executable(path)) {
        return Ok(found.clone());
    }
    let places: Vec<String> = searched.iter().map(|path| path.display().to_string()).collect();
    bail!(
        "cannot find {INIT_BINARY} (looked for {}); install it next to aibus or set AIVENTBUS_LIBEXEC_DIR to the directory that holds it",
        if places.is_empty() {
            "nothing to look at".to_owned()
        } else {
            places.join(" and ")
        }
    )
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
}

#[derive(Serialize)]
struct UpReport {
    running: bool,
    already_running: bool,
    pid: Option<i32>,
    version: String,
}

fn report_up(context: &Context, report: &UpReport) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, report);
    }
    let pid = report.pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
    let already = if report.already_running { "already " } else { "" };
    output::write_line(&mut out, format_args!("aiventbus is {already}running{pid}"))
}

/// `aibus up [--detach]`.
pub async fn up(context: &Context, detach: bool) -> anyhow::Result<()> {
    if let Ok(version) = probe(&context.socket, Duration::from_secs(2)).await {
        let pid = read_pid(&context.paths.pid_file()).ok().flatten();
        return report_up(
            context,
            &UpReport {
                running: true,
                already_running: true,
                pid,
                version: version.version,
            },
        );
    }
    let init = find_init()?;
    if !detach {
        // Become init, so the terminal's signals (Ctrl-C) and the exit status are init's own.
        let error = Command::new(&init).exec();
        return Err(error).with_context(|| format!("cannot run {}", init.display()));
    }
    start_detached(context, &init).await
}

async fn start_detached(context: &Context, init: &Path) -> anyhow::Result<()> {
    let log_dir = context.paths.log_dir();
    ensure_private_dir(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
    let log_path = context.paths.log_file("init");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log
        .metadata()
        .with_context(|| format!("cannot stat {}", log_path.display()))?
        .len();
    let stderr_log = log
        .try_clone()
        .with_context(|| format!("cannot open {} twice", log_path.display()))?;
    let mut child = Command::new(init)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr_log)
        // Its own process group: a Ctrl-C in this terminal later must not reach the daemon.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", init.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(exit) = child
            .try_wait()
            .with_context(|| format!("cannot check on {INIT_BINARY} (pid {pid})"))?
        {
            let tail = log_tail_since(&log_path, log_start, FAILURE_LOG_LINES);
            if !tail.is_empty() {
                output::stderr_line(&format!("last lines of {}:", log_path.display()));
                output::stderr_line(tail.trim_end());
            }
            bail!(
                "{INIT_BINARY} exited ({exit}) before the daemon answered; its log is {}",
                log_path.display()
            );
        }
        if let Ok(version) = probe(&context.socket, Duration::from_secs(1)).await {
            return report_up(
                context,
                &UpReport {
                    running: true,
                    already_running: false,
                    pid: i32::try_from(pid).ok(),
                    version: version.version,
                },
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon did not answer on {} within {} s; {INIT_BINARY} (pid {pid}) is still running, see {}",
                context.socket.display(),
                START_DEADLINE.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// The last `count` lines of what was appended to `path` after offset `start` (empty when
/// unreadable: this only decorates another error).
fn log_tail_since(path: &Path, start: u64, count: usize) -> String {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(start))?;
        file.read_to_end(&mut bytes)
    });
    if read.is_err() {
        return String::new();
    }
    let from = tail_start(&bytes, count).unwrap_or(0);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

enum Liveness {
    Alive,
    Gone,
    /// The pid now belongs to another program (a stale pid file).
    Other(String),
}

fn liveness(pid: i32) -> Liveness {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return Liveness::Gone,
    }
    // A zombie waits for its parent to reap it but is gone for our purpose.
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('Z' | 'X')) {
            return Liveness::Gone;
        }
    }
    // A pid file left by a crash may name a pid reused since; never signal a stranger. The command
    // line rather than the name, so init started through an interpreter or wrapper still counts.
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) if !String::from_utf8_lossy(&cmdline).contains("aiventbus") => {
            let program = cmdline.split(|byte| *byte == 0).next().unwrap_or_default();
            Liveness::Other(String::from_utf8_lossy(program).into_owned())
        }
        _ => Liveness::Alive,
    }
}

#[derive(Serialize)]
struct DownReport {
    stopped: bool,
    pid: i32,
}

/// `aibus down`.
pub async fn down(context: &Context) -> anyhow::Result<()> {
    let pid_file = context.paths.pid_file();
    let Some(pid) = read_pid(&pid_file)? else {
        return Err(NotRunning(format!("aiventbus is not running (no {})", pid_file.display())).into());
    };
    match liveness(pid) {
        Liveness::Alive => {}
        Liveness::Gone => {
            return Err(NotRunning(format!(
                "aiventbus is not running (pid {pid} from {} is gone)",
                pid_file.display()
            ))
            .into());
        }
        Liveness::Other(name) => {
            return Err(NotRunning(format!(
                "aiventbus is not running ({} names pid {pid}, which is now {name:?})",
                pid_file.display()
            ))
            .into());
        }
    }
    match kill(Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) => {}
        Err(Errno::ESRCH) => {
            return Err(NotRunning(format!("aiventbus is not running (pid {pid} is gone)")).into());
        }
        Err(errno) => bail!("cannot signal {INIT_BINARY} (pid {pid}): {}", errno.desc()),
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    while matches!(liveness(pid), Liveness::Alive) {
        if Instant::now() >= deadline {
            bail!(
                "{INIT_BINARY} (pid {pid}) is still running {} s after SIGTERM; see 'aibus logs init'",
                STOP_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(STOP_POLL).await;
    }
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &DownReport { stopped: true, pid });
    }
    output::write_line(&mut out, "stopped")
}

/// `aibus status`.
pub async fn status(context: &Context) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let status = client.status().await.context("system.status")?;
    let mut out = io::stdout().lock();
    if context.json {
        return output::write_json(&mut out, &status);
    }
    output::write_text(&mut out, &render_status(&status))
}

fn render_status(status: &StatusResult) -> String {
    let mut text = format!("aiventbus {}\n\n", output::one_line(&status.version));
    let mut table = Table::new(&["NAME", "STATE", "PID", "RESTARTS", "SINCE"]);
    for service in &status.services {
        table.row(vec![
            service.name.clone(),
            service.state.clone(),
            service.pid.map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
            service.restarts.to_string(),
            service.since.clone(),
        ]);
    }
    text.push_str(&table.render());
    if let Some(bus) = status.bus.as_ref().filter(|bus| !bus.is_empty()) {
        text.push_str("\nbus:\n");
        for (key, value) in bus {
            let value = match value {
                serde_json::Value::String(text) => output::one_line(text),
                other => output::compact(other),
            };
            text.push_str(&format!("  {}: {value}\n", output::one_line(key)));
        }
    }
    if !status.llm.providers.is_empty() {
        text.push_str("\nmodel providers:\n");
        for provider in &status.llm.providers {
            text.push_str(&format!("  {}\n", output::compact(provider)));
        }
    }
    text
}

#[derive(Serialize)]
struct VersionReport {
    client: VersionResult,
    daemon: Option<VersionResult>,
}

/// `aibus version`.
pub async fn version(context: &Context) -> anyhow::Result<()> {
    let client = VersionResult {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: PROTOCOL_VERSION,
    };
    let daemon = match context.remote_url() {
        None => probe(&context.socket, Duration::from_secs(3)).await,
        Some(_) => tokio::time::timeout(Duration::from_secs(3), async {
            context.connect().await?.version().await
        })
        .await
        .unwrap_or(Err(ClientError::Timeout)),
    };
    let target = match context.daemon() {
        crate::Daemon::Local(socket) => socket.display().to_string(),
        crate::Daemon::Remote(url) => url.to_owned(),
    };
    let mut out = io::stdout().lock();
    if context.json {
        let report = VersionReport {
            client,
            daemon: daemon.ok(),
        };
        return output::write_json(&mut out, &report);
    }
    let mut text = format!("aibus {} (protocol {})\n", client.version, client.protocol);
    match daemon {
        Ok(version) => text.push_str(&format!(
            "daemon {} (protocol {})\n",
            output::one_line(&version.version),
            version.protocol
        )),
        Err(ClientError::Unavailable(_)) => text.push_str(&format!("daemon: not running (no answer on {target})\n")),
        Err(error) => text.push_str(&format!("daemon: no version from {target} ({error})\n")),
    }
    output::write_text(&mut out, &text)
}

/// The names `logs` accepts: `init` plus every `<name>.log` in the log dir, sorted.
fn available_logs(log_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let service = name.strip_suffix(".log")?;
            (!service.is_empty()).then(|| service.to_owned())
        })
        .collect();
    names.push("init".to_owned());
    names.sort();
    names.dedup();
    names
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program))))
}

/// `aibus logs SERVICE [-f] [-n N]`.
pub async fn logs(context: &Context, args: &LogsArgs) -> anyhow::Result<()> {
    let service = args.service.as_str();
    if service.is_empty()
        || !service
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(UsageError(format!(
            "{service:?} is not a service name (a short name such as init, bus or gateway)"
        ))
        .into());
    }
    let log_dir = context.paths.log_dir();
    let path = context.paths.log_file(service);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let available = available_logs(&log_dir);
            let services_log_to_files = available.iter().any(|name| name != "init");
            if service == "init" {
                bail!(
                    "no log file for init at {}: init writes there only when started with 'aibus up --detach' (under systemd its output is in the journal: journalctl --user -u 'aiventbus*')",
                    path.display()
                );
            }
            if !services_log_to_files && SERVICES.contains(&service) && on_path("systemctl") {
                bail!(
                    "no log file for {service} in {}; under systemd its output goes to the journal: journalctl --user -u aiventbus-{service}",
                    log_dir.display()
                );
            }
            bail!(
                "no log for {service:?} in {}; available: {}",
                log_dir.display(),
                available.join(", ")
            );
        }
        Err(error) => return Err(error).with_context(|| format!("cannot open {}", path.display())),
    };
    let (last, end) = last_lines(&mut file, args.lines).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = io::stdout().lock();
    out.write_all(&last).context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")?;
    if args.follow {
        follow(file, &path, end, &mut out).await?;
    }
    Ok(())
}

/// Where the last `count` lines of `bytes` begin, or `None` when `bytes` holds fewer (the caller
/// needs more of the file). A final newline ends the last line rather than starting an empty one.
fn tail_start(bytes: &[u8], count: usize) -> Option<usize> {
    if count == 0 {
        return Some(bytes.len());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (index, byte) in body.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == count {
                return Some(index + 1);
            }
        }
    }
    None
}

/// Reads the last `count` lines of `file` backwards in blocks; returns them and the file's end.
fn last_lines(file: &mut File, count: usize) -> io::Result<(Vec<u8>, u64)> {
    const BLOCK: u64 = 64 * 1024;
    let end = file.seek(SeekFrom::End(0))?;
    let mut start = end;
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        if let Some(from) = tail_start(&bytes, count) {
            // `start == end` with no bytes only when count is 0.
            return Ok((bytes.split_off(from), end));
        }
        if start == 0 {
            return Ok((bytes, end));
        }
        let step = start.min(BLOCK);
        start -= step;
        let mut block = vec![0; usize::try_from(step).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&bytes);
        bytes = block;
    }
}

/// Copies whatever `file` holds past `position` to `out`.
fn copy_new(file: &mut File, position: &mut u64, out: &mut impl Write) -> anyhow::Result<()> {
    file.seek(SeekFrom::Start(*position))
        .context("cannot seek in the log")?;
    let mut fresh = Vec::new();
    file.read_to_end(&mut fresh).context("cannot read the log")?;
    if !fresh.is_empty() {
        *position += fresh.len() as u64;
        out.write_all(&fresh).context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    Ok(())
}

/// Follows a log until Ctrl-C: a file truncated in place is read again from its start, a file
/// replaced (renamed away, a new one created) is drained and then the new one is opened.
async fn follow(mut file: File, path: &Path, mut position: u64, out: &mut impl Write) -> anyhow::Result<()> {
    let identity = |meta: &fs::Metadata| (meta.dev(), meta.ino());
    let mut current = identity(&file.metadata().context("cannot stat the log")?);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let length = file.metadata().context("cannot stat the log")?.len();
        if length < position {
            position = 0;
        }
        copy_new(&mut file, &mut position, out)?;
        match fs::metadata(path) {
            Ok(meta) if identity(&meta) != current => {
                // Open the new file before draining the old one, so nothing written to the new one
                // in between is missed.
                if let Ok(replacement) = File::open(path) {
                    copy_new(&mut file, &mut position, out)?;
                    current = identity(&replacement.metadata().context("cannot stat the log")?);
                    file = replacement;
                    position = 0;
                    continue;
                }
            }
            // Same file, or between the rename and the new file: keep reading the one we have.
            _ => {}
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiventbus_proto::methods::{LlmStatus, ServiceInfo};

    #[test]
    fn tail_start_counts_lines_from_the_end() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(tail_start(text, 1), Some(8));
        assert_eq!(tail_start(text, 2), Some(4));
        assert_eq!(tail_start(text, 3), None, "needs what lies before");
        assert_eq!(tail_start(text, 0), Some(text.len()));
        assert_eq!(tail_start(b"partial", 1), None);
        assert_eq!(tail_start(b"a\npartial", 1), Some(2));
    }

    #[test]
    fn last_lines_reads_across_blocks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bus.log");
        let lines: Vec<String> = (0..30_000).map(|i| format!("line {i}")).collect();
        fs::write(&path, lines.join("\n") + "\n").expect("write");
        let mut file = File::open(&path).expect("open");
        let (last, end) = last_lines(&mut file, 3).expect("read");
        assert_eq!(String::from_utf8_lossy(&last), "line 29997\nline 29998\nline 29999\n");
        assert_eq!(end, fs::metadata(&path).expect("stat").len());
        let (all, _) = last_lines(&mut file, 100_000).expect("read");
        assert_eq!(all.len() as u64, end);
        let (none, _) = last_lines(&mut file, 0).expect("read");
        assert!(none.is_empty());
    }

    #[test]
    fn log_names_come_from_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(available_logs(&dir.path().join("missing")), ["init"]);
        for name in ["gateway.log", "bus.log", "notes.txt", ".log"] {
            fs::write(dir.path().join(name), "").expect("write");
        }
        assert_eq!(available_logs(dir.path()), ["bus", "gateway", "init"]);
    }

    #[test]
    fn status_renders_services_and_bus_figures() {
        let status = StatusResult {
            version: "0.1.0".into(),
            services: vec![
                ServiceInfo {
                    name: "bus".into(),
                    state: "running".into(),
                    pid: Some(4242),
                    restarts: 0,
                    since: "2026-01-02T03:04:05.678Z".into(),
                },
                ServiceInfo {
                    name: "gateway".into(),
                    state: "backoff".into(),
                    pid: None,
                    restarts: 3,
                    since: "2026-01-02T03:04:06.000Z".into(),
                },
            ],
            bus: Some(serde_json::from_str(r#"{"head_seq": 12, "db": "/x/bus.db"}"#).expect("json")),
            llm: LlmStatus::default(),
        };
        assert_eq!(
            render_status(&status),
            "aiventbus 0.1.0\n\n\
             NAME     STATE    PID   RESTARTS  SINCE\n\
             bus      running  4242  0         2026-01-02T03:04:05.678Z\n\
             gateway  backoff  -     3         2026-01-02T03:04:06.000Z\n\
             \nbus:\n  db: /x/bus.db\n  head_seq: 12\n"
        );
    }

    #[test]
    fn pid_files_are_parsed_strictly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("init.pid");
        assert_eq!(read_pid(&path).expect("absent is fine"), None);
        fs::write(&path, "1234\n").expect("write");
        assert_eq!(read_pid(&path).expect("parsed"), Some(1234));
        fs::write(&path, "garbage").expect("write");
        assert!(read_pid(&path).is_err());
    }
}
