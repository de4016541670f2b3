//! `aibus` against the real daemon for what goes through policy and exec (SPEC §8, §9, §13): `run`
//! (both streams, the exit code, raw bytes, a policy refusal as 125, Ctrl-C cancelling the process),
//! `pending`/`approve`/`deny` on actions a command agent proposes, `policy explain`, `requests`,
//! `users`, `dashboard`, and `keys create` followed by commands over ATP with `--url`/`--token`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use aiventbus_client::Client;
use aiventbus_proto::agents::{AgentKind, AgentSpec, AgentsCreate, RuleSpec, RulesCreate};
use aiventbus_proto::policy::{
    ActionStatus, ActionsListParams, RequestCreateParams, RequestStatus, RequestsListParams, SessionRegisterParams,
};
use aiventbus_testkit::{Daemon, binary, eventually, process_alive, wait_for_event};
use serde_json::{Value, json};

use crate::support::{self, event, or_log};

/// How long a run or a decision may take end to end (debug builds on a busy machine).
const DEADLINE: Duration = Duration::from_secs(60);

fn aibus(daemon: &Daemon, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| daemon.aibus(args))
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json_stdout(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{}", describe(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", describe(output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_streams_the_commands_output_and_exits_with_its_code() {
    let daemon = support::start().await;

    let output = aibus(&daemon, &["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "out\n",
        "{}",
        describe(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("err\n"),
        "{}",
        describe(&output)
    );

    // Bytes that are not UTF-8 come through as they are.
    let output = aibus(&daemon, &["run", "--", "printf", r"\377\376"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(output.stdout, [0xff, 0xfe], "{}", describe(&output));

    // The command runs where aibus runs, with aibus's environment.
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(binary("aibus"))
            .envs(daemon.env())
            .env("AIBUS_TEST_MARK", "from-the-caller")
            .current_dir(dir.path())
            .args(["run", "--", "sh", "-c", "pwd; echo \"$AIBUS_TEST_MARK\""])
            .stdin(Stdio::null())
            .output()
            .expect("aibus runs")
    });
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let canonical = dir.path().canonicalize().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}\nfrom-the-caller\n", canonical.display()),
        "{}",
        describe(&output)
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refused_by_policy_exits_125_with_the_reason() {
    let daemon = support::start().await;
    let output = aibus(&daemon, &["run", "--", "sudo", "true"]);
    assert_eq!(output.status.code(), Some(125), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sudo"), "the reason names what was refused: {stderr}");
    assert!(output.stdout.is_empty(), "{}", describe(&output));

    // The dry run says the same, and why.
    let explained = json_stdout(&aibus(&daemon, &["policy", "explain", "--json", "--", "sudo", "true"]));
    assert_eq!(explained["decision"], "deny", "{explained}");
    assert!(
        explained["rule"].as_str().is_some_and(|rule| rule.starts_with("deny.")),
        "{explained}"
    );
    let explained = aibus(&daemon, &["policy", "explain", "--command", "ls | rm -rf ~"]);
    assert_eq!(explained.status.code(), Some(0), "{}", describe(&explained));
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(text.starts_with("decision: deny\n"), "{text}");
    assert!(text.contains("commands:\n  ls\n"), "{text}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_run_and_the_process_is_gone() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let head = client
        .status()
        .await
        .expect("status")
        .bus
        .and_then(|bus| bus.get("head")?.as_u64());

    let mut child = tokio::process::Command::new(binary("aibus"))
        .envs(daemon.env())
        .args(["run", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn aibus run");
    let started = or_log(
        &daemon,
        wait_for_event(&client, "exec.started", head.map(|seq| seq + 1), DEADLINE, |event| {
            event.payload["argv"] == json!(["sleep", "30"])
        })
        .await,
    );
    let pid = started.payload["pid"].as_u64().expect("a pid") as u32;
    assert!(process_alive(pid));

    let aibus_pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(aibus_pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("aibus exits after Ctrl-C")
        .expect("wait");
    let code = status.code().expect("an exit code");
    assert!(code != 0 && code != 125, "exit {code}");
    or_log(
        &daemon,
        eventually(DEADLINE, "the sleep process to be gone", || async move {
            (!process_alive(pid)).then_some(())
        })
        .await,
    );
    support::shut_down(daemon).await;
}

/// A command agent that proposes `shell_exec {argv: [touch, <file named by the event>]}`, and a
/// rule sending it `demo.touch`.
async fn toucher(client: &Client, dir: &Path) -> String {
    let script = dir.join("agent.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nfile=$(cat | sed -n 's/.*\"file\":\"\\([^\"]*\\)\".*/\\1/p')\n\
         printf '{\"type\":\"action\",\"summary\":\"touching\",\"proposed_actions\":[{\"action_type\":\"shell_exec\",\"argv\":[\"touch\",\"%s\"]}]}\\n' \"$file\"\n",
    )
    .expect("write the agent script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod the agent script");
    let id = client
        .call::<AgentsCreate>(&AgentSpec {
            name: Some("toucher".into()),
            kind: Some(AgentKind::Command),
            command: Some(vec![script.display().to_string()]),
            ..AgentSpec::default()
        })
        .await
        .expect("agents.create")
        .id;
    client
        .call::<RulesCreate>(&RuleSpec {
            name: Some("touch".into()),
            topic_pattern: Some("demo.touch".into()),
            agent_id: Some(id.clone()),
            ..RuleSpec::default()
        })
        .await
        .expect("rules.create");
    id
}

/// Publishes `demo.touch {file}` and waits for the action it leads to to wait for a human.
async fn proposed(daemon: &Daemon, client: &Client, file: &Path) -> String {
    let published = client
        .publish(&event("demo.touch", json!({"file": file.display().to_string()})))
        .await
        .expect("publish");
    let pending = wait_for_event(client, "action.pending", Some(published.seq), DEADLINE, |event| {
        event.trace_id == published.trace_id
    })
    .await;
    let pending = or_log(daemon, pending);
    pending.payload["action_id"]
        .as_str()
        .or_else(|| pending.payload["id"].as_str())
        .unwrap_or_else(|| panic!("no action id in {pending:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approve_and_deny_round_trip() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let dir = tempfile::tempdir().unwrap();
    let agent_id = toucher(&client, dir.path()).await;

    let approved_file = dir.path().join("approved");
    let first = proposed(&daemon, &client, &approved_file).await;
    let listing = json_stdout(&aibus(&daemon, &["pending", "--json"]));
    let waiting = listing["actions"].as_array().expect("actions");
    let found = waiting
        .iter()
        .find(|action| action["id"] == first.as_str())
        .unwrap_or_else(|| panic!("{first} not pending: {listing}"));
    assert_eq!(found["action_type"], "shell_exec");
    assert_eq!(found["agent_id"], agent_id.as_str());
    let table = aibus(&daemon, &["pending"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID "), "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with(&first) && line.contains(&format!("touch {}", approved_file.display()))),
        "{text}"
    );
    assert!(!approved_file.exists(), "nothing runs before the approval");

    let approve = aibus(&daemon, &["approve", &first]);
    assert_eq!(approve.status.code(), Some(0), "{}", describe(&approve));
    assert!(String::from_utf8_lossy(&approve.stdout).starts_with(&format!("approved {first}")));
    let file = approved_file.clone();
    or_log(
        &daemon,
        eventually(DEADLINE, "the approved command to run", || {
            let file = file.clone();
            async move { file.exists().then_some(()) }
        })
        .await,
    );
    // A second decision is a conflict: exit 1 and nothing runs twice.
    let again = aibus(&daemon, &["approve", &first]);
    assert_eq!(again.status.code(), Some(1), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("conflict"),
        "{}",
        describe(&again)
    );

    let denied_file = dir.path().join("denied");
    let second = proposed(&daemon, &client, &denied_file).await;
    let deny = aibus(&daemon, &["deny", &second, "--reason", "not today", "--json"]);
    let record = json_stdout(&deny);
    assert_eq!(record["id"], second.as_str());
    assert_eq!(record["status"], "denied");
    assert_eq!(record["denial_reason"], "not today");
    let after = client
        .pending_actions(&ActionsListParams::default())
        .await
        .expect("actions.pending");
    assert!(
        after.iter().all(|action| action.id != first && action.id != second),
        "{after:?}"
    );
    assert!(!denied_file.exists(), "a denied action never runs");

    let history = json_stdout(&aibus(&daemon, &["actions", "--status", "denied", "--json"]));
    assert!(
        history["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .any(|action| action["id"] == second.as_str()),
        "{history}"
    );
    let shown = aibus(&daemon, &["actions", "show", &second]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("status:") && text.contains("denied"),
        "{}",
        describe(&shown)
    );
    assert!(text.contains("not today"), "{text}");
    assert_eq!(
        client.action(&second).await.expect("actions.get").status,
        ActionStatus::Denied
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_list_answer_and_dismiss() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let session_id = client
        .register_session(&SessionRegisterParams {
            display_name: "cli-test".into(),
            metadata: None,
        })
        .await
        .expect("sessions.register");
    let ask = |title: &str| RequestCreateParams {
        session_id: session_id.clone(),
        title: title.into(),
        question: format!("{title}?"),
        ..RequestCreateParams::default()
    };
    let first = client.create_request(&ask("Deploy")).await.expect("requests.create");
    let second = client.create_request(&ask("Migrate")).await.expect("requests.create");

    let listing = json_stdout(&aibus(&daemon, &["requests", "list", "--status", "pending", "--json"]));
    let ids: Vec<&str> = listing["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|request| request["request_id"].as_str())
        .collect();
    assert_eq!(ids, [first.as_str(), second.as_str()], "{listing}");
    let table = aibus(&daemon, &["requests", "list"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("Deploy?"),
        "{}",
        describe(&table)
    );

    let answered = aibus(&daemon, &["requests", "answer", &first, "yes,", "go", "ahead"]);
    assert_eq!(answered.status.code(), Some(0), "{}", describe(&answered));
    let dismissed = aibus(&daemon, &["requests", "dismiss", &second, "--reason", "later"]);
    assert_eq!(dismissed.status.code(), Some(0), "{}", describe(&dismissed));
    // Answering what is no longer pending: exit 1.
    let late = aibus(&daemon, &["requests", "answer", &second, "too late"]);
    assert_eq!(late.status.code(), Some(1), "{}", describe(&late));

    let answered = client.request(&first).await.expect("requests.get");
    assert_eq!(answered.status, RequestStatus::Answered);
    assert_eq!(answered.response_text.as_deref(), Some("yes, go ahead"));
    assert_eq!(
        client.request(&second).await.expect("requests.get").status,
        RequestStatus::Dismissed
    );
    let messages = client.poll_inbox(&session_id, 0).await.expect("inbox.poll");
    assert!(
        messages
            .iter()
            .any(|message| message.kind == "input_response" && message.payload["response_text"] == "yes, go ahead"),
        "{messages:?}"
    );
    let remaining = client
        .requests(&RequestsListParams {
            status: Some(RequestStatus::Pending),
            ..RequestsListParams::default()
        })
        .await
        .expect("requests.list");
    assert!(remaining.is_empty(), "{remaining:?}");

    let sessions = json_stdout(&aibus(&daemon, &["sessions", "--json"]));
    assert!(
        sessions["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|session| session["session_id"] == session_id.as_str()),
        "{sessions}"
    );
    support::shut_down(daemon).await;
}

/// `http://127.0.0.1:PORT` of the gateway, from the address file it writes once bound.
async fn http_base(daemon: &Daemon) -> String {
    let path = daemon.paths.runtime_dir.join("gateway.addr");
    let path = &path;
    let addr = or_log(
        daemon,
        eventually(DEADLINE, "the gateway's address file", move || async move {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty())
        })
        .await,
    );
    if addr.starts_with("http") {
        addr
    } else {
        format!("http://{addr}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_key_works_remotely() {
    let daemon = support::start_with_config("[gateway]\nlisten = \"127.0.0.1:0\"\n").await;
    let client = daemon.client().await.expect("client");
    let published = client
        .publish(&event("demo.remote", json!({"n": 1})))
        .await
        .expect("publish");

    let created = aibus(
        &daemon,
        &["keys", "create", "remote-viewer", "--role", "viewer", "--json"],
    );
    let key = json_stdout(&created);
    let token = key["key"].as_str().expect("the key").to_owned();
    assert!(
        String::from_utf8_lossy(&created.stderr).contains("only this once"),
        "{}",
        describe(&created)
    );
    let base = http_base(&daemon).await;

    let listed = json_stdout(&aibus(
        &daemon,
        &[
            "--url",
            &base,
            "--token",
            &token,
            "events",
            "--topic",
            "demo.remote",
            "--json",
        ],
    ));
    let events = listed["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{listed}");
    assert_eq!(events[0]["id"], published.id.as_str());

    // The same through the environment; a viewer may not publish; up stays local.
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(binary("aibus"))
            .env("AIVENTBUS_URL", &base)
            .env("AIVENTBUS_TOKEN", &token)
            .args(["publish", "demo.remote", "{}"])
            .stdin(Stdio::null())
            .output()
            .expect("aibus runs")
    });
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let up = aibus(&daemon, &["--url", &base, "--token", &token, "up"]);
    assert_eq!(up.status.code(), Some(2), "{}", describe(&up));

    // A wrong key is refused; a gateway that is not there is "not running".
    let wrong = aibus(&daemon, &["--url", &base, "--token", "aib_wrong", "events"]);
    assert_eq!(wrong.status.code(), Some(1), "{}", describe(&wrong));
    let nowhere = aibus(&daemon, &["--url", "http://127.0.0.1:9", "--token", &token, "events"]);
    assert_eq!(nowhere.status.code(), Some(3), "{}", describe(&nowhere));

    // An admin's key runs commands remotely: the call and the exec.* stream both go over ATP.
    let admin = json_stdout(&aibus(
        &daemon,
        &["keys", "create", "remote-admin", "--role", "admin", "--json"],
    ));
    let admin_token = admin["key"].as_str().expect("the key").to_owned();
    let ran = aibus(
        &daemon,
        &[
            "--url",
            &base,
            "--token",
            &admin_token,
            "run",
            "--",
            "sh",
            "-c",
            "echo remote; exit 4",
        ],
    );
    assert_eq!(ran.status.code(), Some(4), "{}", describe(&ran));
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "remote\n", "{}", describe(&ran));

    // Users: the key made its user; roles change; a password comes from stdin when it is not a terminal.
    let users = json_stdout(&aibus(&daemon, &["users", "list", "--json"]));
    let viewer = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|user| user["name"] == "remote-viewer")
        .unwrap_or_else(|| panic!("no remote-viewer in {users}"))
        .clone();
    assert_eq!(viewer["role"], "viewer");
    let changed = json_stdout(&aibus(
        &daemon,
        &["users", "set-role", "remote-viewer", "operator", "--json"],
    ));
    assert_eq!(changed["role"], "operator");
    let set_password = tokio::task::block_in_place(|| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(binary("aibus"))
            .envs(daemon.env())
            .args(["users", "set-password", "remote-viewer", "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("aibus runs");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"a long enough password\n")
            .expect("write the password");
        drop(stdin);
        child.wait_with_output().expect("aibus finishes")
    });
    assert_eq!(json_stdout(&set_password)["has_password"], true);
    let link = json_stdout(&aibus(&daemon, &["dashboard", "--json"]));
    assert!(
        link["url"].as_str().is_some_and(|url| url.starts_with("http://")),
        "{link}"
    );

    let keys = json_stdout(&aibus(&daemon, &["keys", "list", "--json"]));
    let key_id = key["key_id"].as_str().expect("key id");
    assert!(
        keys["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["key_id"] == key_id),
        "{keys}"
    );
    assert!(!keys.to_string().contains(&token), "a listing never shows the key");
    let revoked = aibus(&daemon, &["keys", "revoke", key_id]);
    assert_eq!(revoked.status.code(), Some(0), "{}", describe(&revoked));
    let after = aibus(&daemon, &["--url", &base, "--token", &token, "events"]);
    assert_eq!(after.status.code(), Some(1), "{}", describe(&after));
    support::shut_down(daemon).await;
}
