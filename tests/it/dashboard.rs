//! The dashboard in a real headless Chromium (driven by `tests/browser/dashboard.mjs` through
//! playwright-core): the one-time link logs in, an event published after the page loaded shows up
//! live, markup inside an event is shown as text and runs nothing, a pending action approved with a
//! click leaves the list, and a human-input request is answered from the page. A screenshot goes to `target/artifacts/dashboard.png`.
//!
//! Needs `node`, Debian's `chromium` and `npm ci` in `tests/browser` (`.ci/run` installs them);
//! without them the test fails saying so, unless `AIVENTBUS_SKIP_BROWSER=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aiventbus_proto::agents::{AgentKind, AgentSpec, AgentsCreate, RuleSpec, RulesCreate};
use aiventbus_proto::auth::DashboardLink;
use aiventbus_proto::methods::{IdParams, NoParams, Trace, TraceParams};
use aiventbus_proto::policy::{
    ActionStatus, ActionsGet, RequestCreateParams, RequestStatus, RequestsCreate, RequestsGet, SessionRegisterParams,
    SessionsRegister,
};
use aiventbus_testkit::wait_for_event;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{self, event, on_path, or_log};

/// Chromium's start-up and each page step in a debug build on a busy machine.
const STEP_DEADLINE: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives in the workspace")
        .to_path_buf()
}

/// What the browser test needs, or why it cannot run.
fn browser_setup() -> Result<(PathBuf, PathBuf), String> {
    let browser_dir = workspace_root().join("tests/browser");
    let chromium = std::env::var_os("AIVENTBUS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let mut missing = Vec::new();
    if !on_path("node") {
        missing.push("node (apt-get install nodejs)".to_owned());
    }
    if !chromium.is_file() {
        missing.push(format!("{} (apt-get install chromium)", chromium.display()));
    }
    if !browser_dir.join("node_modules/playwright-core/package.json").is_file() {
        missing.push(format!("playwright-core (npm ci in {})", browser_dir.display()));
    }
    if missing.is_empty() {
        Ok((browser_dir, chromium))
    } else {
        Err(missing.join(", "))
    }
}

/// A command agent that proposes `shell_exec {argv: ["sh", "-c", "echo approved"]}` (a shell is
/// never auto-allowed, so policy asks a human).
async fn proposing_agent(client: &aiventbus_client::Client, dir: &Path) {
    let script = dir.join("propose.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\n\
         echo '{\"type\":\"analysis\",\"summary\":\"wants a shell\",\"proposed_actions\":[{\"action_type\":\"shell_exec\",\"argv\":[\"sh\",\"-c\",\"echo approved\"]}]}'\n",
    )
    .expect("writing the agent program");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent = client
        .call::<AgentsCreate>(&AgentSpec {
            name: Some("proposer".into()),
            kind: Some(AgentKind::Command),
            command: Some(vec![script.display().to_string()]),
            ..AgentSpec::default()
        })
        .await
        .expect("agents.create")
        .id;
    client
        .call::<RulesCreate>(&RuleSpec {
            name: Some("dash-trigger".into()),
            topic_pattern: Some("dash.trigger".into()),
            agent_id: Some(agent),
            ..RuleSpec::default()
        })
        .await
        .expect("rules.create");
}

/// Reads the script's next `{"step": …}` line (its other output goes to stderr).
async fn next_step<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> Value {
    let line = tokio::time::timeout(STEP_DEADLINE, lines.next_line())
        .await
        .expect("the browser script said nothing in time")
        .expect("reading the browser script's output")
        .expect("the browser script ended early");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a step line ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_events_as_text_and_approves_in_a_real_browser() {
    let (browser_dir, chromium) = match browser_setup() {
        Ok(setup) => setup,
        Err(missing) if std::env::var("AIVENTBUS_SKIP_BROWSER").as_deref() == Ok("1") => {
            eprintln!("skipped: AIVENTBUS_SKIP_BROWSER=1 and the browser test lacks {missing}");
            return;
        }
        Err(missing) => panic!(
            "the dashboard browser test needs {missing}; .ci/run installs them (set AIVENTBUS_SKIP_BROWSER=1 to skip)"
        ),
    };
    let daemon = support::start().await;
    let client = daemon.client().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    proposing_agent(&client, scratch.path()).await;
    let link = client
        .call::<DashboardLink>(&NoParams {})
        .await
        .expect("dashboard.link");
    let artifacts = workspace_root().join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let mut script = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(&link.url)
        .arg(&artifacts)
        .current_dir(&browser_dir)
        .env("AIVENTBUS_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node");
    let mut stdin = script.stdin.take().unwrap();
    let mut steps = BufReader::new(script.stdout.take().unwrap()).lines();
    let ready = next_step(&mut steps).await;
    assert_eq!(ready["step"], "ready", "{ready}\n{}", daemon.init_output());

    // Published after the page loaded: it can only arrive live.
    let marker = format!("live-{}", aiventbus_rpc::ids::prefixed("m"));
    client
        .publish(&event("dash.live", json!({"marker": marker})))
        .await
        .expect("publish");
    let xss_text = "<img src=x onerror=window.__aiventbus_xss=1;console.log('aiventbus-xss')>";
    let xss_marker = format!("xss-{}", aiventbus_rpc::ids::prefixed("m"));
    client
        .publish(&event(
            "dash.xss",
            json!({"note": format!("{xss_text} <script>window.__aiventbus_xss=2</script> {xss_marker}")}),
        ))
        .await
        .expect("publish");
    // An action waiting for a human, created while the page is open.
    let trigger = client
        .publish(&event("dash.trigger", json!({"please": "run a shell"})))
        .await
        .expect("publish");
    let trace = trigger.trace_id.clone();
    let waited = wait_for_event(
        &client,
        "action.pending",
        Some(trigger.seq),
        STEP_DEADLINE,
        move |event| event.trace_id == trace,
    )
    .await;
    let pending = match waited {
        Ok(pending) => pending,
        Err(error) => {
            let trace = client
                .call::<Trace>(&TraceParams {
                    trace_id: trigger.trace_id.clone(),
                })
                .await
                .map(|found| {
                    found
                        .events
                        .iter()
                        .map(|event| format!("{} {:?}", event.topic, event.payload))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            or_log(&daemon, Err(error.context(format!("the trigger's trace:\n{trace}"))))
        }
    };
    let action_id = pending.payload["action_id"].as_str().expect("action_id").to_owned();

    // A question from an agent session, asked while the page is open.
    let session = client
        .call::<SessionsRegister>(&SessionRegisterParams {
            display_name: "dashboard test".into(),
            metadata: None,
        })
        .await
        .expect("sessions.register")
        .session_id;
    let request_id = client
        .call::<RequestsCreate>(&RequestCreateParams {
            session_id: session,
            title: "Which branch?".into(),
            question: "Deploy <b>main</b> or release?".into(),
            ..RequestCreateParams::default()
        })
        .await
        .expect("requests.create")
        .request_id;

    let published = json!({
        "live_topic": "dash.live",
        "live_marker": marker,
        "xss_marker": xss_marker,
        "xss_text": xss_text,
        "action_id": action_id,
        "request_id": request_id,
        "answer": "release, please",
    });
    stdin
        .write_all(format!("{published}\n").as_bytes())
        .await
        .expect("writing to the browser script");
    stdin.flush().await.unwrap();

    let mut seen = Vec::new();
    loop {
        let step = next_step(&mut steps).await;
        let name = step["step"].as_str().unwrap_or_default().to_owned();
        assert_ne!(
            name,
            "failed",
            "the browser check failed: {step}\n{}",
            daemon.init_output()
        );
        seen.push(name.clone());
        if name == "done" {
            break;
        }
    }
    assert_eq!(
        seen,
        ["live_event_seen", "markup_inert", "approved", "answered", "done"]
    );
    let status = tokio::time::timeout(STEP_DEADLINE, script.wait())
        .await
        .expect("the browser script did not exit")
        .unwrap();
    assert!(status.success(), "the browser script exited with {status}");

    // The click went through ATP and decided the action.
    let record = client
        .call::<ActionsGet>(&IdParams { id: action_id.clone() })
        .await
        .expect("actions.get");
    assert_ne!(record.status, ActionStatus::WaitingConfirmation, "{record:?}");
    assert_eq!(record.decided_via.as_deref(), Some("atp"), "{record:?}");
    // The answer went through ATP to the policy service's hub.
    let request = client
        .call::<RequestsGet>(&IdParams { id: request_id })
        .await
        .expect("requests.get");
    assert_eq!(request.status, RequestStatus::Answered, "{request:?}");
    assert_eq!(request.response_text.as_deref(), Some("release, please"));
    let png = std::fs::read(&screenshot).unwrap_or_else(|e| panic!("{}: {e}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    support::shut_down(daemon).await;
}
