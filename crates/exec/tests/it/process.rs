//! Process runs: results, events and their order, bytes that are not text, caps, timeouts that take
//! the whole group, cancellation, environments, working directories, stdin and detached runs.

use aiventbus_proto::exec::{ExecCancel, ExecExecute, ExecGet, RunRef, RunStatus};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::fake::Published;
use crate::{Harness, Setup, eventually, message};

/// The output events of a run, in publish order.
fn outputs(events: &[Published], run_id: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|event| event.params.topic == "exec.output" && event.payload()["run_id"] == run_id)
        .map(|event| event.payload().clone())
        .collect()
}

/// A stream's published output, decoded.
fn stream_bytes(outputs: &[Value], stream: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for chunk in outputs.iter().filter(|chunk| chunk["stream"] == stream) {
        match (chunk["data"].as_str(), chunk["data_b64"].as_str()) {
            (Some(text), None) => bytes.extend_from_slice(text.as_bytes()),
            (None, Some(encoded)) => bytes.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .expect("base64"),
            ),
            _ => panic!("chunk with neither or both of data and data_b64: {chunk}"),
        }
    }
    bytes
}

#[tokio::test]
async fn a_run_answers_with_its_output_and_publishes_it_in_order() {
    let harness = Harness::new().await;
    let (params, result) = harness
        .execute(
            "shell_exec",
            json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
        )
        .await;
    assert!(!result.ok, "exit code 3 is not ok");
    assert_eq!(result.result["exit_code"], 3);
    assert_eq!(result.result["signal"], Value::Null);
    assert_eq!(result.result["stdout"], "out\n");
    assert_eq!(result.result["stderr"], "err\n");
    assert_eq!(result.result["truncated"], false);
    let run_id = result.run_id.clone().expect("a run id");
    assert!(run_id.starts_with("run_"));

    let finished = harness.bus.finished(&run_id).await;
    assert_eq!(
        (finished["exit_code"].clone(), finished["truncated"].clone()),
        (json!(3), json!(false))
    );
    let thread = harness.bus.thread(&params.action_id);
    let topics: Vec<&str> = thread.iter().map(|event| event.params.topic.as_str()).collect();
    assert_eq!(topics.first(), Some(&"exec.started"));
    assert_eq!(topics.last(), Some(&"exec.finished"));
    assert!(topics[1..topics.len() - 1].iter().all(|topic| *topic == "exec.output"));
    for event in &thread {
        assert_eq!(event.params.source.as_deref(), Some("system"));
        assert_eq!(event.params.trace_id, params.trace_id);
        assert_eq!(event.params.parent_event, params.parent_event);
    }
    let started = thread[0].payload();
    assert_eq!(started["run_id"], run_id);
    assert_eq!(started["argv"], json!(["sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert!(started["pid"].as_u64().unwrap() > 1);
    let chunks = outputs(&thread, &run_id);
    let numbers: Vec<u64> = chunks.iter().map(|chunk| chunk["n"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=chunks.len() as u64).collect::<Vec<_>>());
    assert_eq!(stream_bytes(&chunks, "stdout"), b"out\n");
    assert_eq!(stream_bytes(&chunks, "stderr"), b"err\n");

    // The run is on record, and so is the action.
    let info = harness
        .client
        .call::<ExecGet>(&RunRef { run_id: run_id.clone() })
        .await
        .unwrap();
    assert_eq!((info.status, info.exit_code), (RunStatus::Finished, Some(3)));
    assert_eq!(info.correlation_id, params.action_id);
    let outcome = harness.outcome(&params.action_id).await.unwrap();
    assert_eq!((outcome.status.as_str(), outcome.run_id), ("failed", Some(run_id)));

    let (_, result) = harness.execute("shell_exec", json!({"argv": ["true"]})).await;
    assert!(result.ok);
    assert_eq!(result.result["exit_code"], 0);
}

#[tokio::test]
async fn a_signal_and_a_program_that_cannot_start() {
    let harness = Harness::new().await;
    let (_, result) = harness.execute("shell_exec", json!({"command": "kill -9 $$"})).await;
    assert!(!result.ok);
    assert_eq!(
        (result.result["exit_code"].clone(), result.result["signal"].clone()),
        (Value::Null, json!(9))
    );

    let (params, result) = harness
        .execute("shell_exec", json!({"argv": ["/no/such/program"]}))
        .await;
    assert!(message(&result).contains("/no/such/program"), "{}", result.result);
    let run_id = result.run_id.expect("a run id even when it failed to start");
    let finished = harness.bus.finished(&run_id).await;
    assert_eq!(finished["exit_code"], Value::Null);
    assert!(finished["error"].as_str().unwrap().contains("/no/such/program"));
    let info = harness.client.call::<ExecGet>(&RunRef { run_id }).await.unwrap();
    assert_eq!(info.status, RunStatus::Failed);
    assert_eq!(harness.outcome(&params.action_id).await.unwrap().status, "failed");
}

#[tokio::test]
async fn bytes_that_are_not_text_are_base64_and_a_split_character_stays_text() {
    let harness = Harness::new().await;
    let (_, result) = harness
        .execute("shell_exec", json!({"argv": ["printf", "\\377\\376"]}))
        .await;
    let run_id = result.run_id.unwrap();
    harness.bus.finished(&run_id).await;
    let chunks = outputs(&harness.bus.events(), &run_id);
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert_eq!(chunks[0]["data_b64"], "//4=");
    assert!(chunks[0].get("data").is_none());

    // "€" is e2 82 ac: the first two bytes are written, and the last one only once the test has
    // seen the first chunk published (so they certainly came in different reads).
    let go = harness.dir.path().join("go");
    let params = harness.params(
        "shell_exec",
        json!({"command": format!(
            "printf 'a\\342\\202'; while [ ! -e {} ]; do sleep 0.01; done; printf '\\254!'",
            go.display()
        )}),
    );
    let action_id = params.action_id.clone();
    let client = harness.client.clone();
    let call = tokio::spawn(async move { client.call::<ExecExecute>(&params).await });
    harness
        .bus
        .wait_for("the first chunk", |events| {
            events.iter().any(|event| {
                event.params.correlation_id.as_deref() == Some(action_id.as_str())
                    && event.params.topic == "exec.output"
            })
        })
        .await;
    std::fs::write(&go, "").unwrap();
    let result = call.await.unwrap().unwrap();
    assert_eq!(result.result["stdout"], "a€!");
    let run_id = result.run_id.unwrap();
    harness.bus.finished(&run_id).await;
    let chunks = outputs(&harness.bus.events(), &run_id);
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert_eq!(chunks[0]["data"], "a");
    assert_eq!(chunks[1]["data"], "€!");
}

#[tokio::test]
async fn output_past_the_cap_is_dropped_while_the_process_runs_on() {
    let mut setup = Setup::default();
    setup.exec.max_output = 1000;
    let harness = Harness::start(setup).await;
    let (_, result) = harness
        .execute(
            "shell_exec",
            json!({"command": "head -c 50000 /dev/zero | tr '\\0' x; echo still running >&2"}),
        )
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["truncated"], true);
    assert_eq!(result.result["stdout_bytes"], 50000);
    assert_eq!(result.result["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(result.result["stderr"], "still running\n");
    let run_id = result.run_id.unwrap();
    let finished = harness.bus.finished(&run_id).await;
    assert_eq!(finished["truncated"], true);
    let chunks = outputs(&harness.bus.events(), &run_id);
    assert_eq!(stream_bytes(&chunks, "stdout").len(), 1000);
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["data"].as_str().is_none_or(|data| data.len() <= 16 * 1024))
    );
}

#[tokio::test]
async fn large_output_comes_in_chunks_of_at_most_16_kib() {
    let harness = Harness::new().await;
    let (_, result) = harness
        .execute(
            "shell_exec",
            json!({"command": "head -c 100000 /dev/zero | tr '\\0' y"}),
        )
        .await;
    assert!(result.ok);
    assert_eq!(result.result["stdout"].as_str().unwrap().len(), 16 * 1024);
    let run_id = result.run_id.unwrap();
    harness.bus.finished(&run_id).await;
    let chunks = outputs(&harness.bus.events(), &run_id);
    assert!(
        chunks.len() >= 7,
        "100000 bytes need at least 7 chunks, got {}",
        chunks.len()
    );
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["data"].as_str().unwrap().len() <= 16 * 1024)
    );
    assert_eq!(stream_bytes(&chunks, "stdout"), vec![b'y'; 100000]);
}

#[tokio::test]
async fn a_timeout_kills_the_whole_group() {
    let harness = Harness::new().await;
    let pid_file = harness.dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; sleep 300", pid_file.display());
    let (_, result) = harness
        .execute("shell_exec", json!({"argv": ["sh", "-c", script], "timeout_ms": 300}))
        .await;
    assert!(!result.ok);
    assert_eq!(result.result["timed_out"], true);
    assert_eq!(result.result["signal"], 15, "{}", result.result);
    let grandchild: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    eventually("the grandchild to die", || aiventbus_exec::sys::is_gone(grandchild)).await;
}

#[tokio::test]
async fn a_detached_run_answers_at_once_and_can_be_cancelled() {
    let harness = Harness::new().await;
    let run_id = aiventbus_rpc::ids::prefixed("run");
    let mut params = harness.params("shell_exec", json!({"argv": ["sleep", "300"]}));
    params.action_id = run_id.clone();
    params.token = harness.action_token(&run_id);
    params.owner = true;
    params.detach = true;
    let result = harness.try_execute(&params).await.unwrap();
    assert!(result.ok);
    assert_eq!(result.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(result.result, json!({"run_id": run_id}));
    let info = harness
        .client
        .call::<ExecGet>(&RunRef { run_id: run_id.clone() })
        .await
        .unwrap();
    assert_eq!(info.status, RunStatus::Running);
    assert_eq!(harness.outcome(&run_id).await.unwrap().status, "executing");

    let cancelled = harness
        .client
        .call::<ExecCancel>(&RunRef { run_id: run_id.clone() })
        .await
        .unwrap();
    assert!(cancelled.cancelled);
    let finished = harness.bus.finished(&run_id).await;
    assert_eq!(finished["signal"], 15);
    let outcome = harness.final_outcome(&run_id).await;
    assert_eq!(outcome.status, "failed");
    assert_eq!(outcome.result.unwrap()["cancelled"], true);
    let info = harness
        .client
        .call::<ExecGet>(&RunRef { run_id: run_id.clone() })
        .await
        .unwrap();
    assert_eq!((info.status, info.signal), (RunStatus::Finished, Some(15)));
    // Over: nothing left to cancel.
    let again = harness.client.call::<ExecCancel>(&RunRef { run_id }).await.unwrap();
    assert!(!again.cancelled);
    let unknown = harness
        .client
        .call::<ExecCancel>(&RunRef {
            run_id: "run_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(crate::code(&unknown), -32002);
}

#[tokio::test]
async fn agents_get_a_scrubbed_environment_and_the_owner_keeps_its_own() {
    let harness = Harness::new().await;
    // cargo sets this for the test process: exec has it, its agents' processes must not.
    let secret = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests");
    assert!(!secret.is_empty());
    let (_, result) = harness.execute("shell_exec", json!({"argv": ["/usr/bin/env"]})).await;
    let env = result.result["stdout"].as_str().unwrap().to_owned();
    assert!(!env.contains("CARGO_MANIFEST_DIR"), "{env}");
    assert!(
        env.lines().any(|line| line == "PATH=/usr/local/bin:/usr/bin:/bin"),
        "{env}"
    );
    if let Ok(home) = std::env::var("HOME") {
        assert!(env.lines().any(|line| line == format!("HOME={home}")), "{env}");
    }

    // An agent may not bring its own environment.
    let (_, result) = harness
        .execute("shell_exec", json!({"argv": ["/usr/bin/env"], "env": {"A": "b"}}))
        .await;
    assert!(message(&result).starts_with("env"));

    let mut params = harness.params(
        "shell_exec",
        json!({"argv": ["/usr/bin/env"], "env": {"ONLY": "this", "CARGO_MANIFEST_DIR": secret}}),
    );
    params.owner = true;
    let result = harness.try_execute(&params).await.unwrap();
    assert_eq!(
        result.result["stdout"],
        format!("CARGO_MANIFEST_DIR={secret}\nONLY=this\n")
    );
}

#[tokio::test]
async fn working_directory_and_stdin() {
    let harness = Harness::new().await;
    let dir = harness.dir.path().canonicalize().unwrap();
    let (_, result) = harness
        .execute("shell_exec", json!({"argv": ["pwd"], "cwd": dir}))
        .await;
    assert_eq!(result.result["stdout"], format!("{}\n", dir.display()));

    // Without a cwd: the home directory.
    let (_, result) = harness.execute("shell_exec", json!({"command": "pwd -P"})).await;
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/".into()));
    assert_eq!(
        result.result["stdout"],
        format!("{}\n", home.canonicalize().unwrap().display())
    );

    let (_, result) = harness
        .execute("shell_exec", json!({"argv": ["pwd"], "cwd": "/no/such/dir"}))
        .await;
    assert!(message(&result).starts_with("cwd"));

    let (_, result) = harness
        .execute("shell_exec", json!({"argv": ["cat"], "stdin": "from stdin\n"}))
        .await;
    assert_eq!(result.result["stdout"], "from stdin\n");
    // No stdin given: /dev/null, so a reader ends at once.
    let (_, result) = harness.execute("shell_exec", json!({"argv": ["cat"]})).await;
    assert_eq!((result.ok, result.result["stdout"].clone()), (true, json!("")));
}

#[tokio::test]
async fn a_process_that_leaves_the_group_cannot_hold_the_run_open() {
    let harness = Harness::new().await;
    let pid_file = harness.dir.path().join("escaped.pid");
    let script = format!(
        "echo before; setsid sh -c 'echo $$ > {}; exec sleep 60' & while [ ! -s {} ]; do :; done; echo after",
        pid_file.display(),
        pid_file.display()
    );
    let (_, result) = harness.execute("shell_exec", json!({"command": script})).await;
    // The escaped process still has the output pipe; the run ends anyway, with what was read.
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["stdout"], "before\nafter\n");
    let escaped: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    harness.bus.finished(result.run_id.as_deref().unwrap()).await;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(escaped), nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test]
async fn the_deny_rules_hold_at_execution_whoever_decided() {
    let harness = Harness::new().await;
    let victim = harness.home.join("keep");
    std::fs::create_dir_all(&victim).unwrap();
    // Each would be harmless here if it ran (the home directory is the test's own temp dir, the
    // device does not exist), so a broken check fails the test without doing damage.
    for params in [
        json!({"argv": ["sudo", "true"]}),
        json!({"command": format!("ls && rm -rf {}", harness.home.display())}),
        json!({"command": "echo ok; mkfs.ext4 /dev/aiventbus-no-such-device"}),
    ] {
        let mut action = harness.params("shell_exec", params.clone());
        action.owner = true;
        let result = harness.try_execute(&action).await.unwrap();
        let error = message(&result);
        assert!(error.contains("refused at execution (deny."), "{params}: {error}");
        assert!(result.run_id.is_none(), "{params}: a process was started");
        assert_eq!(harness.outcome(&action.action_id).await.unwrap().status, "failed");
    }
    assert!(victim.is_dir());
}
