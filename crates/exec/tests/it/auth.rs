//! Who may have exec act, and how often: forged, misbound, expired and unbound tokens are refused
//! with nothing run; an action id runs at most once; a restart marks what it cut short
//! `interrupted` and kills process groups left behind.

use std::os::unix::process::CommandExt as _;
use std::path::Path;

use aiventbus_exec::store::{NewExecution, NewRun, Store};
use aiventbus_proto::exec::{ExecExecute, ExecGet, ExecuteParams, RunRef, RunStatus};
use aiventbus_rpc::token::{Key, Minter, attenuate};
use aiventbus_rpc::{Client, Endpoint, TokenSource};
use serde_json::json;

use crate::{Harness, code};

/// A command that leaves a trace if it runs.
fn touch(path: &Path) -> serde_json::Value {
    json!({"argv": ["touch", path]})
}

#[tokio::test]
async fn actions_without_a_token_bound_to_them_are_refused_and_nothing_runs() {
    let harness = Harness::new().await;
    let marker = harness.dir.path().join("ran");
    let now = aiventbus_rpc::time::now_ms();
    let base = harness.params("shell_exec", touch(&marker));
    let bind = |token: &str, action: &str| attenuate(token, &format!("action={action}")).unwrap();
    let policy_token = harness.minter().mint("policy", &["exec.execute"], now + 60_000);
    let other_key = Key::generate().unwrap();

    let cases: Vec<(&str, String)> = vec![
        (
            "forged: signed with another key",
            bind(
                &Minter::new("exec", &other_key).mint("policy", &["exec.execute"], now + 60_000),
                &base.action_id,
            ),
        ),
        ("bound to another action", bind(&policy_token, "act_other")),
        (
            "expired",
            attenuate(&bind(&policy_token, &base.action_id), &format!("exp={}", now - 1)).unwrap(),
        ),
        ("not attenuated to any action", policy_token.clone()),
        (
            "held by someone else than policy",
            bind(
                &harness.minter().mint("llm", &["exec.execute"], now + 60_000),
                &base.action_id,
            ),
        ),
        (
            "a scope without exec.execute",
            bind(
                &harness.minter().mint("policy", &["exec.outcome"], now + 60_000),
                &base.action_id,
            ),
        ),
        (
            "bound twice to different actions",
            bind(&bind(&policy_token, &base.action_id), "act_other"),
        ),
        ("not a token", "v1.garbage".into()),
    ];
    for (case, token) in cases {
        let params = ExecuteParams { token, ..base.clone() };
        let error = harness.try_execute(&params).await.expect_err(case);
        assert_eq!(code(&error), -32001, "{case}: {error}");
    }
    // A correct token on a connection that is not policy's.
    let gateway_token = harness.minter().mint("gateway", &["exec.*"], now + 60_000);
    let gateway = Client::new(Endpoint {
        path: harness.dir.path().join("exec.sock"),
        token: TokenSource::Static(gateway_token),
    });
    let error = gateway
        .call::<ExecExecute>(&base)
        .await
        .expect_err("gateway connection");
    assert_eq!(code(&error), -32001, "{error}");

    assert!(!marker.exists(), "a refused action ran");
    let never = harness.outcome(&base.action_id).await.unwrap_err();
    assert_eq!(code(&never), -32002, "a refused action was recorded");

    // The same action with its proper token runs.
    let result = harness.try_execute(&base).await.unwrap();
    assert!(result.ok, "{}", result.result);
    assert!(marker.exists());
}

#[tokio::test]
async fn an_action_runs_at_most_once() {
    let harness = Harness::new().await;
    let log = harness.dir.path().join("runs.log");
    let params = harness.params(
        "shell_exec",
        json!({"command": format!("echo ran >> {}", log.display())}),
    );
    let first = harness.try_execute(&params).await.unwrap();
    assert!(first.ok);
    let second = harness.try_execute(&params).await.unwrap_err();
    assert_eq!(code(&second), -32003, "{second}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\n");
    let outcome = harness.outcome(&params.action_id).await.unwrap();
    assert_eq!(outcome.status, "succeeded");
    assert_eq!(outcome.result.unwrap()["exit_code"], 0);
    assert_eq!(outcome.run_id, first.run_id);

    // Still refused after a restart, and not run again.
    let mut harness = harness;
    harness.restart_exec().await;
    let third = harness.try_execute(&params).await.unwrap_err();
    assert_eq!(code(&third), -32003);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\n");
}

#[tokio::test]
async fn a_restart_interrupts_what_was_executing_and_kills_groups_left_behind() {
    let mut harness = Harness::new().await;
    harness.stop_exec().await;

    // What a killed exec would leave: an execution still executing, a run still running whose
    // process group is alive.
    let mut leftover = std::process::Command::new("sleep");
    leftover.arg("300").process_group(0);
    let mut leftover = leftover.spawn().unwrap();
    let pid = leftover.id();
    let stat = aiventbus_exec::sys::stat(pid).unwrap();
    {
        let store = Store::open(&harness.database()).unwrap();
        assert!(
            store
                .begin(NewExecution {
                    action_id: "act_cut_short".into(),
                    action_type: "shell_exec".into(),
                    agent_id: None,
                    trace_id: None,
                    owner: false,
                })
                .await
                .unwrap()
        );
        store
            .insert_run(NewRun {
                run_id: "run_left".into(),
                correlation_id: "act_cut_short".into(),
                argv: vec!["sleep".into(), "300".into()],
                cwd: None,
                status: RunStatus::Running,
                pid: Some(pid),
                start_ticks: Some(stat.start_ticks),
                session: Some(stat.session),
                error: None,
                started_ms: aiventbus_rpc::time::now_ms(),
            })
            .await
            .unwrap();
        store.set_run("act_cut_short", "run_left").await.unwrap();
    }
    harness.start_exec().await;

    let outcome = harness.outcome("act_cut_short").await.unwrap();
    assert_eq!(outcome.status, "interrupted");
    assert_eq!(
        outcome.result.unwrap()["error"]["message"],
        "exec restarted while this ran; not re-run"
    );
    let info = harness
        .client
        .call::<ExecGet>(&RunRef {
            run_id: "run_left".into(),
        })
        .await
        .unwrap();
    assert_eq!(info.status, RunStatus::Interrupted);
    let status = tokio::task::spawn_blocking(move || leftover.wait())
        .await
        .unwrap()
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "the leftover group was not killed");

    // A record whose pid now belongs to someone else (another start time) is left alone.
    harness.stop_exec().await;
    let mut bystander = std::process::Command::new("sleep");
    bystander.arg("300").process_group(0);
    let mut bystander = bystander.spawn().unwrap();
    let bystander_pid = bystander.id();
    let stat = aiventbus_exec::sys::stat(bystander_pid).unwrap();
    {
        let store = Store::open(&harness.database()).unwrap();
        store
            .insert_run(NewRun {
                run_id: "run_reused".into(),
                correlation_id: "act_x".into(),
                argv: vec!["sleep".into()],
                cwd: None,
                status: RunStatus::Running,
                pid: Some(bystander_pid),
                start_ticks: Some(stat.start_ticks + 1),
                session: Some(stat.session),
                error: None,
                started_ms: aiventbus_rpc::time::now_ms(),
            })
            .await
            .unwrap();
    }
    harness.start_exec().await;
    let info = harness
        .client
        .call::<ExecGet>(&RunRef {
            run_id: "run_reused".into(),
        })
        .await
        .unwrap();
    assert_eq!(info.status, RunStatus::Interrupted);
    assert!(
        !aiventbus_exec::sys::is_gone(bystander_pid),
        "a process that is not ours was killed"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
