//! Helpers the end-to-end modules share: starting a daemon off the async workers, a raw line-level
//! JSON-RPC connection for speaking the wire protocol byte for byte, and running a process with a
//! deadline.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aiventbus_client::Client;
use aiventbus_proto::methods::PublishParams;
use aiventbus_testkit::Daemon;
use anyhow::Context;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long any single reply may take before a test fails (generous: debug builds on a busy box).
pub const REPLY_DEADLINE: Duration = Duration::from_secs(30);

/// Starts a daemon with the default config on a blocking thread.
pub async fn start() -> Daemon {
    start_with_config("").await
}

/// Starts a daemon with `config` on a blocking thread (start-up waits on a datagram socket).
pub async fn start_with_config(config: &str) -> Daemon {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || Daemon::start_with_config(&config))
        .await
        .expect("start task panicked")
        .unwrap_or_else(|error| panic!("daemon did not start: {error:#}"))
}

/// Drops a daemon (SIGTERM, wait) on a blocking thread.
pub async fn shut_down(daemon: Daemon) {
    let _ = tokio::task::spawn_blocking(move || drop(daemon)).await;
}

/// `PublishParams` for a topic and payload.
pub fn event(topic: &str, payload: Value) -> PublishParams {
    PublishParams {
        topic: topic.to_owned(),
        payload: Some(payload),
        ..PublishParams::default()
    }
}

/// The JSON-RPC error code of a failed client call (panics on success or a non-RPC failure).
pub fn rpc_code<T: std::fmt::Debug>(result: Result<T, aiventbus_client::Error>) -> (i32, String) {
    match result {
        Err(aiventbus_client::Error::Rpc(error)) => (error.code, error.message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// The login name of the user running the tests: the daemon records clients on `api.sock` as
/// `user:<this>`.
pub fn own_user_name() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| uid.as_raw().to_string())
}

/// Every event in the store, in seq order, read page by page.
pub async fn all_events(client: &Client) -> Vec<aiventbus_proto::Event> {
    let mut events = Vec::new();
    let mut after_seq = 0;
    loop {
        let page = client
            .list(&aiventbus_proto::methods::ListParams {
                after_seq: Some(after_seq),
                limit: Some(5000),
                ..Default::default()
            })
            .await
            .expect("events.list");
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        events.extend(page);
    }
    events
}

/// Asserts the store's seqs are exactly `1..=n`: starting at 1, gap-free, strictly increasing.
pub async fn assert_store_gap_free(client: &Client) -> u64 {
    let seqs: Vec<u64> = all_events(client).await.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "stored seqs are not 1..=n");
    seqs.len() as u64
}

/// A raw connection to a socket speaking newline-delimited JSON, for tests that must control the
/// exact bytes on the wire.
pub struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    /// Connects to `path`.
    pub async fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        let (read, writer) = stream.into_split();
        Raw {
            reader: BufReader::with_capacity(256 * 1024, read),
            writer,
        }
    }

    /// Writes `line` and a newline.
    pub async fn send(&mut self, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await.expect("writing a line");
    }

    /// The next line, or `None` at end of stream, failing after `deadline`.
    pub async fn next_line_within(&mut self, deadline: Duration) -> anyhow::Result<Option<String>> {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(deadline, self.reader.read_until(b'\n', &mut buf))
            .await
            .with_context(|| format!("no line within {deadline:?}"))?;
        match read {
            Ok(0) => Ok(None),
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Ok(Some(String::from_utf8(buf).context("reply is not UTF-8")?))
            }
            // A reset after the server closed counts as the end of the stream.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The next line; panics at end of stream or after [`REPLY_DEADLINE`].
    pub async fn recv(&mut self) -> String {
        match self.next_line_within(REPLY_DEADLINE).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("connection closed while waiting for a line"),
            Err(error) => panic!("{error:#}"),
        }
    }

    /// The next line as JSON.
    pub async fn recv_json(&mut self) -> Value {
        let line = self.recv().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line}"))
    }

    /// Whether the server closes the connection (end of stream) before `deadline`, ignoring any
    /// lines still in flight.
    pub async fn closed_within(&mut self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.next_line_within(left).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends a request with numeric `id` and returns its reply, skipping notifications.
    pub async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&request.to_string()).await;
        loop {
            let reply = self.recv_json().await;
            if reply.get("method").is_some() {
                continue;
            }
            assert_eq!(reply["id"], json!(id), "reply for another request: {reply}");
            return reply;
        }
    }

    /// Asserts the connection still answers `system.version` with `{version, protocol}`.
    pub async fn assert_answers(&mut self, id: u64) {
        let reply = self.call(id, "system.version", json!({})).await;
        assert_version_result(&reply);
    }
}

/// Asserts `reply` is a success whose result is `{version, protocol}`.
pub fn assert_version_result(reply: &Value) {
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
    let result = reply["result"]
        .as_object()
        .unwrap_or_else(|| panic!("no result object in {reply}"));
    assert!(
        result.get("version").is_some_and(Value::is_string),
        "no version in {reply}"
    );
    assert!(
        result.get("protocol").is_some_and(Value::is_u64),
        "no protocol in {reply}"
    );
}

/// The raw text of a reply's `id`, exactly as the server wrote it (numbers are not rounded).
pub fn raw_id(line: &str) -> Option<String> {
    let raw: std::collections::HashMap<String, Box<RawValue>> = serde_json::from_str(line).ok()?;
    raw.get("id").map(|id| id.get().to_owned())
}

/// Runs `command`, feeding it `input` on stdin (then closing it), and waits at most `deadline`; a
/// process still running then is killed and the test fails (a daemon that should have refused to
/// start, a hung client).
pub async fn run_async(command: Command, input: Vec<u8>, deadline: Duration) -> Output {
    let described = format!("{command:?}");
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|e| panic!("spawning {described}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A process that exits without reading its input is fine.
    let _ = stdin.write_all(&input).await;
    drop(stdin);
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {described}: {e}")),
        // Dropping the future drops the child, which kills it.
        Err(_) => panic!("{described} still ran after {deadline:?}; killed it"),
    }
}

/// Whether `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Fails with the daemon's log when `result` is an error.
pub fn or_log<T>(daemon: &Daemon, result: anyhow::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{error:#}\n--- daemon output ---\n{}", daemon.init_output()),
    }
}
