//! `aibus run -- CMD ARGS…` (SPEC §9, §13): runs a command through policy and exec like
//! `docker run`. It follows `exec.*` from before the call (so no output can slip past), writes the
//! run's stdout and stderr bytes to its own as they arrive, turns Ctrl-C into `exec.cancel` (a
//! second one stops waiting), and exits with the command's code: 128+N when signal N killed it,
//! 125 when aibus itself failed (refused by policy, daemon not running), 126/127 when the command
//! could not be started.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read, Write};
use std::time::Duration;

use aiventbus_client::{Client, EventStream, StreamItem};
use aiventbus_proto::Event;
use aiventbus_proto::exec::RunParams;
use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

use crate::{Context, UsageError, output};

/// Exit status when aibus itself fails.
pub const FAILED: u8 = 125;
/// Exit status when the command exists but could not be started.
const CANNOT_START: u8 = 126;
/// Exit status when the command was not found.
const NOT_FOUND: u8 = 127;
/// Exit status when aibus stops waiting after a second Ctrl-C.
const INTERRUPTED: u8 = 130;
/// Most stdin bytes forwarded (`exec.run` carries stdin in the one request).
pub const MAX_STDIN: u64 = 1024 * 1024;
/// How long to wait for the run to end after `exec.cancel`.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long re-following the run's events may take after the stream ended.
const RESUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);

/// `aibus run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kill the command after this long (`30s`, `5m`, `1h`) [default: no limit].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Run with exec's scrubbed environment instead of this shell's.
    #[arg(long)]
    no_env: bool,
    /// Do not forward stdin, even when it is not a terminal.
    #[arg(long)]
    no_stdin: bool,
    /// The program and its arguments (after `--` when they start with a dash).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    argv: Vec<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| format!("{error} (e.g. 30s, 5m, 1h)"))?;
    if duration.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(duration)
}

/// Runs `aibus run` to its exit status; failures are printed here.
pub fn main(context: &Context, args: RunArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            output::stderr_line(&format!("error: cannot start the async runtime: {error}"));
            return FAILED;
        }
    };
    match runtime.block_on(run(context, args)) {
        Ok(code) => code,
        Err(error) => {
            output::stderr_line(&crate::render_error(&error, &context.daemon()));
            FAILED
        }
    }
}

async fn run(context: &Context, args: RunArgs) -> anyhow::Result<u8> {
    let stdin = if args.no_stdin || io::stdin().is_terminal() {
        None
    } else {
        read_stdin(&mut io::stdin().lock(), MAX_STDIN)?
    };
    let params = RunParams {
        argv: args.argv,
        cwd: Some(
            std::env::current_dir()
                .context("cannot read the current directory")?
                .to_str()
                .context("the current directory is not valid UTF-8")?
                .to_owned(),
        ),
        env: (!args.no_env).then(own_environment),
        stdin,
        timeout_ms: args
            .timeout
            .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        requested_by: None,
    };
    // Ctrl-C and SIGTERM are ours from here on: they cancel the run instead of killing aibus.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let client = context.connect().await?;
    let mut stream = client
        .subscribe(vec!["exec.*".to_owned()], None)
        .await
        .context("events.subscribe exec.*")?;
    let mut interrupts = 0u32;
    let call = client.run(&params);
    tokio::pin!(call);
    let run_id = loop {
        tokio::select! {
            answer = &mut call => break answer.context("exec.run")?,
            _ = interrupt.recv() => interrupts += 1,
            _ = terminate.recv() => interrupts += 1,
        }
        if interrupts >= 2 {
            return Ok(INTERRUPTED);
        }
    };
    let mut follow = Follow::new(run_id.clone(), stream.next_seq());
    let mut cancelled_at = None;
    if interrupts > 0 {
        cancel(&client, &run_id).await;
        cancelled_at = Some(tokio::time::Instant::now());
    }
    let mut out = io::stdout();
    let mut err = io::stderr();
    loop {
        let grace = async {
            match cancelled_at {
                Some(at) => tokio::time::sleep_until(at + CANCEL_GRACE).await,
                None => std::future::pending().await,
            }
        };
        let interrupted = tokio::select! {
            item = stream.next() => {
                match item {
                    Some(Ok(StreamItem::Event(event))) => match follow.event(&event) {
                        Step::Output(Channel::Stdout, bytes) => {
                            if write_all(&mut out, &bytes).is_err() {
                                // Whoever read our output is gone (`aibus run … | head`).
                                cancel(&client, &run_id).await;
                                return Ok(141);
                            }
                        }
                        Step::Output(Channel::Stderr, bytes) => {
                            let _ = write_all(&mut err, &bytes);
                        }
                        Step::Finished(finish) => return Ok(finish.report()),
                        Step::Nothing => {}
                    },
                    Some(Err(_)) => {}
                    Some(Ok(StreamItem::Ended(_))) | None => {
                        stream = resubscribe(&client, follow.resume_from()).await.with_context(|| {
                            format!("lost the daemon's events while {run_id} ran; the command may still run (exec.get {run_id})")
                        })?;
                    }
                }
                false
            }
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
            _ = grace => {
                output::note(format!("{run_id} did not end within {CANCEL_GRACE:?} of the cancel; not waiting any longer"));
                return Ok(INTERRUPTED);
            }
        };
        if interrupted {
            interrupts += 1;
            if interrupts >= 2 {
                return Ok(INTERRUPTED);
            }
            output::note(format!("cancelling {run_id} (Ctrl-C again to stop waiting)"));
            cancel(&client, &run_id).await;
            cancelled_at = Some(tokio::time::Instant::now());
        }
    }
}

async fn cancel(client: &Client, run_id: &str) {
    if let Err(error) = client.cancel_run(run_id).await {
        output::note(format!("exec.cancel {run_id} failed: {error}"));
    }
}

async fn resubscribe(client: &Client, from_seq: Option<u64>) -> anyhow::Result<EventStream> {
    let subscribed = tokio::time::timeout(
        RESUBSCRIBE_DEADLINE,
        client.subscribe(vec!["exec.*".to_owned()], from_seq),
    )
    .await;
    match subscribed {
        Ok(stream) => Ok(stream?),
        Err(_) => anyhow::bail!("no answer to events.subscribe within {RESUBSCRIBE_DEADLINE:?}"),
    }
}

fn write_all(sink: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    sink.write_all(bytes)?;
    sink.flush()
}

/// Every variable of this process's environment that is valid UTF-8 (the others cannot travel
/// in JSON).
fn own_environment() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect()
}

/// All of stdin, at most `limit` bytes and valid UTF-8; `None` when it is empty.
pub fn read_stdin(reader: &mut impl Read, limit: u64) -> anyhow::Result<Option<String>> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .context("cannot read stdin")?;
    if bytes.len() as u64 > limit {
        return Err(UsageError(format!(
            "stdin holds more than {limit} bytes, more than aibus run forwards; pass --no-stdin or a file path instead"
        ))
        .into());
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(text)),
        Err(_) => {
            Err(UsageError("stdin is not UTF-8 text, which exec.run cannot carry; pass --no-stdin".into()).into())
        }
    }
}

/// Which of our streams output goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    exit_code: Option<i64>,
    signal: Option<i64>,
    error: Option<String>,
    truncated: bool,
}

impl Finish {
    /// Says what needs saying on stderr and gives the exit status.
    fn report(&self) -> u8 {
        if self.truncated {
            output::note("the output went past exec's cap and was cut");
        }
        if let Some(error) = &self.error {
            if self.exit_code.is_none() && self.signal.is_none() {
                output::note(format!("cannot start the command: {}", output::one_line(error)));
            }
        }
        self.status()
    }

    /// The exit status: the command's code, 128+signal, or 127/126 when it never started.
    pub fn status(&self) -> u8 {
        if let Some(signal) = self.signal {
            return u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(FAILED);
        }
        if let Some(code) = self.exit_code {
            // A process's status is 8 bits; this is what a shell shows for it.
            return (code & 0xff) as u8;
        }
        match &self.error {
            Some(error) if looks_not_found(error) => NOT_FOUND,
            _ => CANNOT_START,
        }
    }
}

fn looks_not_found(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("no such file") || error.contains("not found")
}

/// What one event means for the run being followed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not ours, or nothing to show.
    Nothing,
    /// Output bytes for one of our streams.
    Output(Channel, Vec<u8>),
    /// The run ended.
    Finished(Finish),
}

/// The `exec.*` events of one run.
pub struct Follow {
    run_id: String,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
}

impl Follow {
    /// Follows `run_id` on a stream that started at `first_seq`.
    pub fn new(run_id: String, first_seq: Option<u64>) -> Follow {
        Follow {
            run_id,
            first_seq,
            last_seq: None,
        }
    }

    /// Where a new subscription continues without losing or repeating an event.
    pub fn resume_from(&self) -> Option<u64> {
        self.last_seq.map(|seq| seq + 1).or(self.first_seq)
    }

    /// Takes one event.
    pub fn event(&mut self, event: &Event) -> Step {
        if self.last_seq.is_some_and(|last| event.seq <= last) {
            return Step::Nothing;
        }
        self.last_seq = Some(event.seq);
        if event.payload.get("run_id").and_then(Value::as_str) != Some(self.run_id.as_str()) {
            return Step::Nothing;
        }
        let field = |name: &str| event.payload.get(name);
        match event.topic.as_str() {
            "exec.output" => {
                let channel = match field("stream").and_then(Value::as_str) {
                    Some("stderr") => Channel::Stderr,
                    _ => Channel::Stdout,
                };
                let bytes = if let Some(text) = field("data").and_then(Value::as_str) {
                    text.as_bytes().to_vec()
                } else if let Some(encoded) = field("data_b64").and_then(Value::as_str) {
                    match base64::engine::general_purpose::STANDARD.decode(encoded) {
                        Ok(bytes) => bytes,
                        Err(error) => {
                            output::note(format!("an output chunk could not be decoded: {error}"));
                            return Step::Nothing;
                        }
                    }
                } else {
                    return Step::Nothing;
                };
                Step::Output(channel, bytes)
            }
            "exec.finished" => Step::Finished(Finish {
                exit_code: field("exit_code").and_then(Value::as_i64),
                signal: field("signal").and_then(Value::as_i64),
                error: field("error").map(|error| match error {
                    Value::String(text) => text.clone(),
                    Value::Object(object) => object
                        .get("message")
                        .and_then(Value::as_str)
                        .map_or_else(|| output::compact(error), str::to_owned),
                    other => output::compact(other),
                }),
                truncated: field("truncated").and_then(Value::as_bool).unwrap_or(false),
            }),
            _ => Step::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::event;
    use clap::Parser;
    use serde_json::json;

    fn exec_event(seq: u64, topic: &str, payload: Value) -> Event {
        let mut event = event(seq, &format!("evt_{seq}"), None);
        event.topic = topic.into();
        event.payload = payload.as_object().cloned().unwrap_or_default();
        event
    }

    #[test]
    fn output_is_decoded_and_other_runs_are_ignored() {
        let mut follow = Follow::new("run_a".into(), Some(5));
        assert_eq!(follow.resume_from(), Some(5));
        let steps: Vec<Step> = [
            exec_event(5, "exec.started", json!({"run_id": "run_a", "pid": 42, "argv": ["x"]})),
            exec_event(
                6,
                "exec.output",
                json!({"run_id": "run_b", "stream": "stdout", "n": 1, "data": "other"}),
            ),
            exec_event(
                7,
                "exec.output",
                json!({"run_id": "run_a", "stream": "stdout", "n": 1, "data": "out\n"}),
            ),
            exec_event(
                8,
                "exec.output",
                json!({"run_id": "run_a", "stream": "stderr", "n": 2, "data": "err\n"}),
            ),
            exec_event(
                9,
                "exec.output",
                json!({"run_id": "run_a", "stream": "stdout", "n": 3, "data_b64": "/w=="}),
            ),
            // A repeat after a resubscribe is not shown twice.
            exec_event(
                9,
                "exec.output",
                json!({"run_id": "run_a", "stream": "stdout", "n": 3, "data_b64": "/w=="}),
            ),
            exec_event(
                10,
                "exec.output",
                json!({"run_id": "run_a", "stream": "stdout", "data_b64": "%%%"}),
            ),
        ]
        .iter()
        .map(|event| follow.event(event))
        .collect();
        assert_eq!(
            steps,
            vec![
                Step::Nothing,
                Step::Nothing,
                Step::Output(Channel::Stdout, b"out\n".to_vec()),
                Step::Output(Channel::Stderr, b"err\n".to_vec()),
                Step::Output(Channel::Stdout, vec![0xff]),
                Step::Nothing,
                Step::Nothing,
            ]
        );
        assert_eq!(follow.resume_from(), Some(11));
    }

    #[test]
    fn the_exit_status_is_the_commands() {
        let mut follow = Follow::new("run_a".into(), None);
        let finished =
            |follow: &mut Follow, seq, payload: Value| match follow.event(&exec_event(seq, "exec.finished", payload)) {
                Step::Finished(finish) => finish.status(),
                other => panic!("{other:?}"),
            };
        assert_eq!(
            finished(
                &mut follow,
                1,
                json!({"run_id": "run_a", "exit_code": 3, "signal": null})
            ),
            3
        );
        assert_eq!(finished(&mut follow, 2, json!({"run_id": "run_a", "exit_code": 0})), 0);
        assert_eq!(
            finished(
                &mut follow,
                3,
                json!({"run_id": "run_a", "exit_code": null, "signal": 9})
            ),
            137
        );
        assert_eq!(finished(&mut follow, 4, json!({"run_id": "run_a", "signal": 15})), 143);
        assert_eq!(
            finished(&mut follow, 5, json!({"run_id": "run_a", "exit_code": 256 + 7})),
            7
        );
        assert_eq!(
            finished(
                &mut follow,
                6,
                json!({"run_id": "run_a", "error": "No such file or directory (os error 2)"})
            ),
            127
        );
        assert_eq!(
            finished(
                &mut follow,
                7,
                json!({"run_id": "run_a", "error": {"message": "permission denied"}})
            ),
            126
        );
    }

    #[test]
    fn stdin_is_bounded_and_text() {
        assert_eq!(read_stdin(&mut &b""[..], 8).expect("empty"), None);
        assert_eq!(
            read_stdin(&mut &b"12345678"[..], 8).expect("at the limit").as_deref(),
            Some("12345678")
        );
        let error = read_stdin(&mut &b"123456789"[..], 8).expect_err("over");
        assert!(
            error
                .downcast_ref::<UsageError>()
                .is_some_and(|e| e.0.contains("more than 8 bytes"))
        );
        let error = read_stdin(&mut &b"\xff"[..], 8).expect_err("binary");
        assert!(error.to_string().contains("UTF-8"), "{error}");
    }

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(flatten)]
        args: RunArgs,
    }

    #[test]
    fn flags_before_the_command_belong_to_aibus() {
        let parsed = Harness::try_parse_from(["run", "--timeout", "5s", "--no-env", "--", "sh", "-c", "exit 3"])
            .expect("parses")
            .args;
        assert_eq!(parsed.timeout, Some(Duration::from_secs(5)));
        assert!(parsed.no_env);
        assert_eq!(parsed.argv, ["sh", "-c", "exit 3"]);
        // Without `--` too, and the command's own flags stay its own.
        let parsed = Harness::try_parse_from(["run", "ls", "-la", "--timeout", "x"])
            .expect("parses")
            .args;
        assert_eq!(parsed.argv, ["ls", "-la", "--timeout", "x"]);
        assert_eq!(parsed.timeout, None);
        assert!(Harness::try_parse_from(["run"]).is_err());
        assert!(Harness::try_parse_from(["run", "--timeout", "soon", "--", "ls"]).is_err());
        assert!(Harness::try_parse_from(["run", "--timeout", "0s", "--", "ls"]).is_err());
    }

    #[test]
    fn the_environment_is_passed_whole() {
        let env = own_environment();
        assert_eq!(
            env.get("PATH").map(String::as_str),
            std::env::var("PATH").ok().as_deref()
        );
        assert_eq!(
            env.len(),
            std::env::vars_os()
                .filter(|(k, v)| k.to_str().is_some() && v.to_str().is_some())
                .count()
        );
    }
}
