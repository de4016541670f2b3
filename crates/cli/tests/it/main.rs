//! `aibus` as a real process against a scripted stand-in for the daemon's public socket: checks
//! what the agents, rules, query, run and mcp commands send, print and exit with, including that
//! `query` prints the answer while it is still being generated and that `run` passes the command's
//! bytes and exit status through. (The end-to-end tests against the real daemon live in the
//! workspace's `tests/` package.)

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiventbus_proto::{Event, EventStatus, Priority};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc};

/// Longest any step may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the stand-in does with `query.ask`.
#[derive(Clone)]
enum QueryScript {
    /// Streams `before` as `agent.stream` chunks, waits for [`Fake::release`] when `hold`, then
    /// answers; `after` chunks (and `agent.completed`) follow the answer when given.
    Streamed {
        before: Vec<&'static str>,
        after: Vec<&'static str>,
        hold: bool,
        summary: &'static str,
        response: Value,
    },
    /// Answers at once (a command agent: nothing streamed).
    Answer { summary: &'static str, response: Value },
    /// Answers with this error.
    Error {
        code: i32,
        message: &'static str,
        data: Value,
    },
}

struct State {
    script: QueryScript,
    calls: Mutex<Vec<(String, Value)>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<String>>>,
    release: Notify,
    /// Told when exec.run arrives.
    ran: Notify,
    seq: Mutex<u64>,
}

struct Fake {
    socket: PathBuf,
    state: Arc<State>,
    _dir: tempfile::TempDir,
}

impl Fake {
    async fn start(script: QueryScript) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        let state = Arc::new(State {
            script,
            calls: Mutex::new(Vec::new()),
            subscribers: Mutex::new(Vec::new()),
            release: Notify::new(),
            ran: Notify::new(),
            seq: Mutex::new(0),
        });
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(connection(stream, accepting.clone()));
            }
        });
        Fake {
            socket,
            state,
            _dir: dir,
        }
    }

    /// The params of every call of `method` so far.
    fn calls(&self, method: &str) -> Vec<Value> {
        let calls = self.state.calls.lock().expect("lock");
        calls
            .iter()
            .filter(|(name, _)| name == method)
            .map(|(_, params)| params.clone())
            .collect()
    }

    fn release(&self) {
        self.state.release.notify_one();
    }
}

async fn connection(stream: UnixStream, state: Arc<State>) {
    let (read, mut write) = stream.into_split();
    let (lines, mut outgoing) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(line) = outgoing.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        let request: Value = serde_json::from_str(&line).expect("request JSON");
        let id = request["id"].clone();
        let method = request["method"].as_str().unwrap_or_default().to_owned();
        let params = request["params"].clone();
        state.calls.lock().expect("lock").push((method.clone(), params.clone()));
        let state = state.clone();
        let lines = lines.clone();
        // Answer each request on its own, so a held query.ask does not block other calls.
        tokio::spawn(async move {
            let reply = answer(&state, &method, &params, &lines).await;
            let line = match reply {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
            };
            let _ = lines.send(format!("{line}\n"));
            if method == "query.ask" {
                follow_up(&state, &params).await;
            }
            if method == "exec.run" {
                run_script(&state, &params);
            }
        });
    }
}

async fn answer(
    state: &State,
    method: &str,
    params: &Value,
    lines: &mpsc::UnboundedSender<String>,
) -> Result<Value, Value> {
    match method {
        "events.subscribe" => {
            let patterns = &params["patterns"];
            assert!(
                *patterns == json!(["agent.stream", "agent.completed"]) || *patterns == json!(["exec.*"]),
                "{patterns}"
            );
            state.subscribers.lock().expect("lock").push(lines.clone());
            Ok(json!({"subscription": "sub_1", "next_seq": 1}))
        }
        "exec.run" => {
            state.ran.notify_one();
            if state.subscribers.lock().expect("lock").is_empty() {
                return Err(json!({"code": -32603, "message": "ran before subscribing"}));
            }
            match params["argv"][0].as_str() {
                Some("sudo") => Err(json!({"code": -32001,
                    "message": "refused by policy (deny.privilege): sudo runs commands as another user"})),
                _ => Ok(json!({"run_id": "run_1"})),
            }
        }
        "exec.cancel" => {
            publish(
                state,
                "exec.finished",
                "tr_run",
                json!({"run_id": "run_1", "exit_code": null, "signal": 15,
                "duration_ms": 5, "truncated": false}),
            );
            Ok(json!({"cancelled": true}))
        }
        "events.publish" => Ok(json!({"id": "evt_p", "seq": 7, "trace_id": "tr_p", "status": "published"})),
        "actions.pending" => Ok(json!({"actions": []})),
        "requests.respond" => Err(json!({"code": -32003, "message": "req_1 is not pending"})),
        "agents.get" => match params["id"].as_str() {
            Some("helper") => Ok(agent("agt_helper", "helper")),
            _ => Err(json!({"code": -32002, "message": "no such agent"})),
        },
        "agents.create" => Ok(json!({"id": "agt_new"})),
        "agents.list" => Ok(json!({"agents": [agent("agt_helper", "helper")]})),
        "rules.create" => Ok(json!({"id": "rule_new"})),
        "query.ask" => {
            let trace_id = params["trace_id"].as_str().expect("a trace id").to_owned();
            match &state.script {
                QueryScript::Streamed { before, hold, .. } => {
                    if state.subscribers.lock().expect("lock").is_empty() {
                        return Err(json!({"code": -32603, "message": "asked before subscribing"}));
                    }
                    // Noise the client must ignore: another trace, and another run of this one.
                    publish(
                        state,
                        "agent.stream",
                        "tr_other",
                        json!({"assignment_id": "asg_x", "chunk": "{\"summary\":\"WRONG TRACE"}),
                    );
                    for chunk in before {
                        publish(
                            state,
                            "agent.stream",
                            &trace_id,
                            json!({"assignment_id": "asg_1", "chunk": chunk}),
                        );
                        publish(
                            state,
                            "agent.stream",
                            &trace_id,
                            json!({"assignment_id": "asg_2", "chunk": "{\"summary\":\"OTHER RUN\"}"}),
                        );
                    }
                    if *hold {
                        tokio::time::timeout(DEADLINE, state.release.notified())
                            .await
                            .expect("the test releases the answer");
                    }
                    Ok(result(&state.script, &trace_id))
                }
                QueryScript::Answer { .. } => Ok(result(&state.script, &trace_id)),
                QueryScript::Error { code, message, data } => {
                    Err(json!({"code": code, "message": message, "data": data}))
                }
            }
        }
        _ => Err(json!({"code": -32601, "message": format!("no method {method}")})),
    }
}

/// After query.ask answered: late chunks, then agent.completed (or agent.completed alone when
/// nothing comes late, published before the answer in real life; order on two connections is
/// not guaranteed either way).
async fn follow_up(state: &State, params: &Value) {
    let trace_id = params["trace_id"].as_str().unwrap_or_default();
    if let QueryScript::Streamed { after, .. } = &state.script {
        for chunk in after {
            publish(
                state,
                "agent.stream",
                trace_id,
                json!({"assignment_id": "asg_1", "chunk": chunk}),
            );
        }
    }
    publish(
        state,
        "agent.completed",
        trace_id,
        json!({"event_id": "evt_q", "assignment_id": "asg_1", "summary": ""}),
    );
}

/// After exec.run answered: a scripted run of `run_1`, with noise from another run in between.
/// `sleep` never ends by itself (exec.cancel ends it); anything else prints and exits 3.
fn run_script(state: &State, params: &Value) {
    let output = |stream: &str, n: u64, data: (&str, &str)| {
        let mut payload = json!({"run_id": "run_1", "stream": stream, "n": n});
        payload[data.0] = Value::from(data.1);
        payload
    };
    publish(
        state,
        "exec.started",
        "tr_run",
        json!({"run_id": "run_1", "pid": 4242, "argv": params["argv"]}),
    );
    publish(
        state,
        "exec.output",
        "tr_other",
        json!({"run_id": "run_other", "stream": "stdout", "n": 1, "data": "NOT OURS\n"}),
    );
    if params["argv"][0] == "sleep" {
        return;
    }
    publish(state, "exec.output", "tr_run", output("stdout", 1, ("data", "out\n")));
    publish(state, "exec.output", "tr_run", output("stderr", 2, ("data", "err\n")));
    publish(
        state,
        "exec.output",
        "tr_run",
        output("stdout", 3, ("data_b64", "/w==")),
    );
    publish(
        state,
        "exec.finished",
        "tr_run",
        json!({"run_id": "run_1", "exit_code": 3, "signal": null,
        "duration_ms": 5, "truncated": false}),
    );
}

fn result(script: &QueryScript, trace_id: &str) -> Value {
    let (summary, response) = match script {
        QueryScript::Streamed { summary, response, .. } | QueryScript::Answer { summary, response } => {
            (*summary, response.clone())
        }
        QueryScript::Error { .. } => unreachable!("errors have no result"),
    };
    json!({"event_id": "evt_q", "trace_id": trace_id, "summary": summary, "response": response})
}

fn publish(state: &State, topic: &str, trace_id: &str, payload: Value) {
    let seq = {
        let mut seq = state.seq.lock().expect("lock");
        *seq += 1;
        *seq
    };
    let event = Event {
        id: format!("evt_{seq}"),
        seq,
        ts: "2026-01-02T03:04:05.678Z".into(),
        topic: topic.into(),
        payload: payload.as_object().cloned().unwrap_or_default(),
        source: "system".into(),
        priority: Priority::Medium,
        semantic_type: None,
        dedupe_key: None,
        dedupe_count: 1,
        duplicate_of: None,
        trace_id: trace_id.into(),
        parent_event: Some("evt_q".into()),
        correlation_id: None,
        output_topic: None,
        context_refs: Vec::new(),
        memory_scope: None,
        expires_at: None,
        depth: 1,
        status: EventStatus::Published,
    };
    let line =
        json!({"jsonrpc": "2.0", "method": "events.event", "params": {"subscription": "sub_1", "result": event}});
    for subscriber in state.subscribers.lock().expect("lock").iter() {
        let _ = subscriber.send(format!("{line}\n"));
    }
}

fn agent(id: &str, name: &str) -> Value {
    json!({
        "id": id, "name": name, "description": "", "kind": "llm", "provider": "ollama", "model": "llama3.2",
        "system_prompt": null, "temperature": 0.2, "command": null, "enabled": true, "reactive": true,
        "allowed_actions": null, "trust": {}, "max_concurrent": 1, "memory_scope": null, "output_topic": null,
        "created_at": "2026-01-02T03:04:05.678Z", "updated_at": "2026-01-02T03:04:05.678Z"
    })
}

fn aibus(socket: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_aibus"));
    command
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(socket: &Path, args: &[&str]) -> Finished {
    let output = tokio::time::timeout(DEADLINE, aibus(socket, args).output())
        .await
        .expect("aibus finishes")
        .expect("aibus runs");
    Finished {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn query_prints_the_summary_while_it_is_generated() {
    let fake = Fake::start(QueryScript::Streamed {
        before: vec![
            "```json\n{\"type\": \"answer\", \"proposed_actions\": [{\"action_type\": \"notify\", \"title\": \"t\", \"message\": \"m\", \"summary\": \"nested\"}], \"sum",
            "mary\": \"The answ",
            "er is 4 \\u00",
            "e9 \\ud83d",
            "\\ude00",
            " \\\"ok\\\".\"}",
        ],
        after: vec![],
        hold: true,
        summary: "The answer is 4 é 😀 \"ok\".",
        response: json!({"type": "answer", "summary": "The answer is 4 é 😀 \"ok\".",
            "proposed_actions": [{"action_type": "notify", "title": "t", "message": "m", "summary": "nested"}]}),
    })
    .await;
    let mut child = aibus(&fake.socket, &["query", "what", "is", "2+2?", "--timeout", "30"])
        .spawn()
        .expect("spawn aibus");
    let mut stdout = child.stdout.take().expect("stdout");
    // The streamed summary must appear while query.ask is still unanswered.
    let streamed = "The answer is 4 é 😀 \"ok\".";
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !String::from_utf8_lossy(&seen).contains(streamed) {
            let mut buffer = [0u8; 256];
            let read = stdout.read(&mut buffer).await.expect("read stdout");
            assert!(read > 0, "stdout closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no streamed text; saw {:?}", String::from_utf8_lossy(&seen)));
    assert_eq!(fake.calls("query.ask").len(), 1);
    fake.release();
    stdout.read_to_end(&mut seen).await.expect("read stdout");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("aibus exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "The answer is 4 é 😀 \"ok\".\n→ notify {\"message\":\"m\",\"summary\":\"nested\",\"title\":\"t\"}\n"
    );
    let asked = &fake.calls("query.ask")[0];
    assert_eq!(asked["text"], "what is 2+2?");
    assert_eq!(asked["timeout_ms"], 30_000);
    assert!(
        asked["trace_id"].as_str().is_some_and(|trace| trace.starts_with("tr_")),
        "{asked}"
    );
}

#[tokio::test]
async fn query_prints_chunks_that_arrive_after_the_answer_once() {
    let fake = Fake::start(QueryScript::Streamed {
        before: vec!["{\"type\":\"answer\",\"summary\":\"Hel"],
        after: vec!["lo there.\"}"],
        hold: false,
        summary: "Hello there.",
        response: json!({"type": "answer", "summary": "Hello there."}),
    })
    .await;
    let finished = run(&fake.socket, &["query", "hi"]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert_eq!(finished.stdout, "Hello there.\n");
    assert_eq!(fake.calls("query.ask")[0].get("timeout_ms"), None);
}

#[tokio::test]
async fn query_prints_an_unstreamed_answer_and_json_on_request() {
    let fake = Fake::start(QueryScript::Answer {
        summary: "Disk is 80% full.",
        response: json!({"type": "analysis", "summary": "Disk is 80% full.",
            "proposed_actions": [{"action_type": "shell_exec", "params": {"argv": ["df", "-h"]}}]}),
    })
    .await;
    let finished = run(&fake.socket, &["query", "disk?"]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert_eq!(
        finished.stdout,
        "Disk is 80% full.\n→ shell_exec {\"argv\":[\"df\",\"-h\"]}\n"
    );

    let finished = run(&fake.socket, &["--json", "query", "disk?"]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let printed: Value = serde_json::from_str(&finished.stdout).expect("one JSON document");
    assert_eq!(printed["summary"], "Disk is 80% full.");
    assert_eq!(printed["event_id"], "evt_q");
    assert_eq!(printed["trace_id"], fake.calls("query.ask")[1]["trace_id"]);
    // --json does not follow the stream.
    assert_eq!(fake.calls("events.subscribe").len(), 1);
}

#[tokio::test]
async fn query_failures_explain_and_exit_1() {
    let fake = Fake::start(QueryScript::Error {
        code: -32002,
        message: "no agent takes user.query",
        data: Value::Null,
    })
    .await;
    let finished = run(&fake.socket, &["query", "hello"]).await;
    assert_eq!(finished.code, Some(1));
    assert!(finished.stderr.contains("aibus agents create"), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("aibus rules create ask --topic 'user.**'"),
        "{}",
        finished.stderr
    );
    assert_eq!(finished.stdout, "");

    let fake = Fake::start(QueryScript::Error {
        code: -32007,
        message: "no answer within 5000 ms",
        data: json!({"event_id": "evt_q", "trace_id": "tr_q", "pending_actions": ["act_1"]}),
    })
    .await;
    let finished = run(&fake.socket, &["query", "hello", "--timeout", "5"]).await;
    assert_eq!(finished.code, Some(1));
    assert!(
        finished
            .stderr
            .contains("no answer within 5000 ms; the run waits for approval of act_1"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("aibus trace tr_q"), "{}", finished.stderr);
}

#[tokio::test]
async fn a_missing_daemon_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    for args in [
        &["query", "hello"][..],
        &["agents", "list"],
        &["rules", "list"],
        &["assignments", "list"],
    ] {
        let finished = run(&socket, args).await;
        assert_eq!(finished.code, Some(3), "{args:?}: {}", finished.stderr);
        assert!(finished.stderr.contains("aibus up"), "{}", finished.stderr);
    }
}

#[tokio::test]
async fn agents_and_rules_send_what_the_flags_say() {
    let fake = Fake::start(QueryScript::Answer {
        summary: "",
        response: json!({}),
    })
    .await;
    let finished = run(
        &fake.socket,
        &[
            "agents",
            "create",
            "runner",
            "--kind",
            "command",
            "--trust",
            "shell_exec=confirm",
            "--",
            "python3",
            "agent.py",
            "--verbose",
        ],
    )
    .await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert_eq!(finished.stdout, "agt_new\n");
    assert_eq!(
        fake.calls("agents.create"),
        vec![
            json!({"name": "runner", "kind": "command", "command": ["python3", "agent.py", "--verbose"],
            "trust": {"shell_exec": "confirm"}})
        ]
    );

    // A rule's agent may be given by name; it is sent as the id.
    let finished = run(
        &fake.socket,
        &["rules", "create", "ask", "--topic", "user.**", "--agent", "helper"],
    )
    .await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert_eq!(finished.stdout, "rule_new\n");
    assert_eq!(
        fake.calls("rules.create"),
        vec![json!({"name": "ask", "topic_pattern": "user.**", "agent_id": "agt_helper"})]
    );

    let finished = run(&fake.socket, &["agents", "list"]).await;
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert_eq!(
        finished.stdout,
        "NAME    ID          KIND  MODEL/COMMAND    ENABLED\nhelper  agt_helper  llm   ollama/llama3.2  yes\n"
    );

    // Mistakes in flags never reach the daemon: exit 2.
    let finished = run(
        &fake.socket,
        &["rules", "create", "r", "--topic", "Bad..Topic", "--agent", "a"],
    )
    .await;
    assert_eq!(finished.code, Some(2), "{}", finished.stderr);
    let finished = run(
        &fake.socket,
        &["agents", "create", "x", "--kind", "llm", "--trust", "rm=auto"],
    )
    .await;
    assert_eq!(finished.code, Some(2), "{}", finished.stderr);
    assert_eq!(fake.calls("rules.create").len(), 1);
    assert_eq!(fake.calls("agents.create").len(), 1);

    // An unknown agent name fails like any not-found answer.
    let finished = run(&fake.socket, &["agents", "disable", "nobody"]).await;
    assert_eq!(finished.code, Some(1));
    assert!(
        finished.stderr.contains("agents.get nobody: no such agent"),
        "{}",
        finished.stderr
    );
}

fn idle() -> QueryScript {
    QueryScript::Answer {
        summary: "",
        response: json!({}),
    }
}

#[tokio::test]
async fn run_passes_bytes_and_the_exit_code_through() {
    let fake = Fake::start(idle()).await;
    let output = tokio::time::timeout(
        DEADLINE,
        aibus(
            &fake.socket,
            &[
                "run",
                "--timeout",
                "5s",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; printf '\\377'; exit 3",
            ],
        )
        .output(),
    )
    .await
    .expect("aibus finishes")
    .expect("aibus runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert_eq!(output.stdout, b"out\n\xff", "{stderr}");
    assert_eq!(stderr, "err\n");
    let sent = &fake.calls("exec.run")[0];
    assert_eq!(
        sent["argv"],
        json!(["sh", "-c", "echo out; echo err >&2; printf '\\377'; exit 3"])
    );
    assert_eq!(sent["timeout_ms"], 5000);
    assert_eq!(
        sent["cwd"].as_str(),
        std::env::current_dir().expect("cwd").to_str(),
        "the command runs where aibus runs"
    );
    assert_eq!(sent["env"]["PATH"].as_str(), std::env::var("PATH").ok().as_deref());
    assert!(sent.get("stdin").is_none(), "an empty stdin is not sent: {sent}");

    let output = aibus(&fake.socket, &["run", "--no-env", "--", "true"])
        .output()
        .await
        .expect("runs");
    assert_eq!(output.status.code(), Some(3));
    assert!(fake.calls("exec.run")[1].get("env").is_none());
}

#[tokio::test]
async fn run_refused_by_policy_exits_125_with_the_reason() {
    let fake = Fake::start(idle()).await;
    let finished = run(&fake.socket, &["run", "--", "sudo", "true"]).await;
    assert_eq!(finished.code, Some(125));
    assert!(
        finished.stderr.contains("sudo runs commands as another user"),
        "{}",
        finished.stderr
    );
    assert_eq!(finished.stdout, "");

    // No daemon: 125 as well (aibus failed, not the command), saying so.
    let dir = tempfile::tempdir().expect("tempdir");
    let finished = run(&dir.path().join("api.sock"), &["run", "--", "true"]).await;
    assert_eq!(finished.code, Some(125));
    assert!(finished.stderr.contains("not running"), "{}", finished.stderr);
}

#[tokio::test]
async fn ctrl_c_cancels_the_run() {
    let fake = Fake::start(idle()).await;
    let mut child = aibus(&fake.socket, &["run", "--", "sleep", "30"])
        .spawn()
        .expect("spawn");
    // SIGINT once the run exists (aibus handles it from before it calls exec.run).
    tokio::time::timeout(DEADLINE, fake.state.ran.notified())
        .await
        .expect("exec.run comes");
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(128 + 15));
    assert_eq!(fake.calls("exec.cancel"), vec![json!({"run_id": "run_1"})]);
}

/// One JSON-RPC exchange with `aibus mcp` over its stdio.
struct Mcp {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Mcp {
    fn start(socket: &Path) -> Mcp {
        let mut command = aibus(socket, &["mcp"]);
        command.stdin(Stdio::piped());
        let mut child = command.spawn().expect("spawn aibus mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Mcp { child, stdin, stdout }
    }

    async fn send(&mut self, message: Value) {
        self.stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .expect("write");
    }

    async fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let line = tokio::time::timeout(DEADLINE, self.stdout.next_line())
                .await
                .expect("an answer in time")
                .expect("read")
                .expect("stdout open");
            let message: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if message["id"] == id {
                return message;
            }
        }
    }
}

#[tokio::test]
async fn mcp_lists_the_tools_and_calls_the_daemon() {
    let fake = Fake::start(idle()).await;
    let mut mcp = Mcp::start(&fake.socket);
    let init = mcp
        .request(
            1,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"}}),
        )
        .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "aibus", "{init}");
    assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
    mcp.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;

    let listed = mcp.request(2, "tools/list", json!({})).await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    for tool in [
        "publish_event",
        "query",
        "list_pending_actions",
        "approve_action",
        "deny_action",
        "register_session",
        "create_request",
        "list_requests",
        "answer_request",
        "dismiss_request",
        "poll_inbox",
        "ack_inbox",
    ] {
        assert!(names.contains(&tool), "{tool} missing from {names:?}");
    }

    let published = mcp
        .request(
            3,
            "tools/call",
            json!({"name": "publish_event", "arguments": {"topic": "demo.mcp", "payload": {"a": 1}}}),
        )
        .await;
    assert_eq!(published["result"]["isError"], false, "{published}");
    let text = published["result"]["content"][0]["text"].as_str().expect("text");
    assert_eq!(serde_json::from_str::<Value>(text).expect("JSON")["seq"], 7);
    assert_eq!(
        fake.calls("events.publish"),
        vec![json!({"topic": "demo.mcp", "payload": {"a": 1}})]
    );

    // A daemon error is a tool error carrying its message, not a protocol error.
    let refused = mcp
        .request(
            4,
            "tools/call",
            json!({"name": "answer_request", "arguments": {"id": "req_1", "response_text": "y"}}),
        )
        .await;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    assert!(
        refused["result"]["content"][0]["text"]
            .as_str()
            .expect("text")
            .contains("req_1 is not pending")
    );
    // A missing argument never reaches the daemon.
    let missing = mcp
        .request(5, "tools/call", json!({"name": "approve_action", "arguments": {}}))
        .await;
    assert_eq!(missing["result"]["isError"], true, "{missing}");
    assert!(fake.calls("actions.approve").is_empty());

    drop(mcp.stdin);
    let status = tokio::time::timeout(DEADLINE, mcp.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status}");
}
