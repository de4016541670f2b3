//! One end-to-end run against a real language model (SmolLM2-135M served by
//! `scripts/model-server` over both the Ollama and the OpenAI API): event → router → llm → real
//! model → valid structured output → `agent.completed`, once per provider back end.
//!
//! `scripts/fetch-model` prepares the model and the server and prints the `AIVENTBUS_TEST_MODEL*`
//! variables this test reads; `.ci/run` exports them and sets `AIVENTBUS_REQUIRE_REAL_MODEL=1`,
//! so there a missing model is a failure, while elsewhere the test says it skipped.

use std::process::Stdio;
use std::time::Duration;

use aiventbus_proto::agents::{
    AgentKind, AgentSpec, AgentsCreate, AssignmentListParams, AssignmentStatus, AssignmentsList, RuleSpec, RulesCreate,
    RulesDelete,
};
use aiventbus_proto::methods::IdParams;
use aiventbus_testkit::{eventually, wait_for_event};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{self, event, or_log};

/// A small model on a shared 2-core machine, plus a possible repair turn.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_model_answers_through_both_providers() {
    let Ok(server_js) = std::env::var("AIVENTBUS_TEST_MODEL_SERVER") else {
        assert!(
            std::env::var_os("AIVENTBUS_REQUIRE_REAL_MODEL").is_none(),
            "AIVENTBUS_REQUIRE_REAL_MODEL is set but scripts/fetch-model's variables are not"
        );
        eprintln!("skipped: real model not prepared (run scripts/fetch-model and export what it prints)");
        return;
    };
    let mut server = Command::new("node");
    server.arg(&server_js).args(["--port", "0", "--model-name", "smollm2"]);
    if let Ok(model) = std::env::var("AIVENTBUS_TEST_MODEL") {
        server.args(["--model", &model]);
    }
    if let Ok(modules) = std::env::var("AIVENTBUS_TEST_MODEL_MODULES") {
        server.args(["--modules", &modules]);
    }
    let mut server = server
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the model server (node)");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .expect("the model server listens within 120 s")
        .expect("reading its stdout")
        .expect("a first line");
    let port: u16 = first
        .strip_prefix("listening ")
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));

    let config = format!(
        "[providers.ollama]\nbase_url = \"http://127.0.0.1:{port}\"\n[providers.openai]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    );
    let daemon = support::start_with_config(&config).await;
    let client = daemon.client().await.expect("client");

    for provider in ["ollama", "openai"] {
        let agent_id = client
            .call::<AgentsCreate>(&AgentSpec {
                name: Some(format!("real-{provider}")),
                kind: Some(AgentKind::Llm),
                provider: Some(provider.into()),
                model: Some("smollm2".into()),
                system_prompt: Some("You answer the user's question in one short sentence.".into()),
                ..AgentSpec::default()
            })
            .await
            .expect("agents.create")
            .id;
        let rule_id = client
            .call::<RulesCreate>(&RuleSpec {
                name: Some(format!("real-{provider}-rule")),
                topic_pattern: Some("user.**".into()),
                agent_id: Some(agent_id.clone()),
                ..RuleSpec::default()
            })
            .await
            .expect("rules.create")
            .id;

        let published = client
            .publish(&event("user.query", json!({"text": "What is the capital of France?"})))
            .await
            .expect("publish");
        let trace = published.trace_id.clone();
        let completed = or_log(
            &daemon,
            wait_for_event(
                &client,
                "agent.completed",
                Some(published.seq),
                RUN_DEADLINE,
                move |e| e.trace_id == trace,
            )
            .await,
        );
        assert_eq!(completed.payload["agent_id"], agent_id.as_str(), "{provider}");
        assert_eq!(completed.payload["event_id"], published.id.as_str(), "{provider}");
        let summary = completed.payload["summary"].as_str().unwrap_or_default();
        assert!(
            !summary.trim().is_empty(),
            "{provider}: empty summary in {:?}",
            completed.payload
        );
        let output = &completed.payload["output"];
        assert!(output["type"].is_string(), "{provider}: structured output {output}");
        assert!(output["summary"].is_string(), "{provider}: structured output {output}");

        let list = AssignmentListParams {
            event_id: Some(published.id.clone()),
            ..AssignmentListParams::default()
        };
        let done = or_log(
            &daemon,
            eventually(RUN_DEADLINE, "the assignment to complete", || async {
                let assignments = client.call::<AssignmentsList>(&list).await.ok()?.assignments;
                assignments
                    .into_iter()
                    .find(|a| a.status == AssignmentStatus::Completed)
            })
            .await,
        );
        assert_eq!(done.agent_id, agent_id);
        client
            .call::<RulesDelete>(&IdParams { id: rule_id })
            .await
            .expect("rules.delete");
    }
    support::shut_down(daemon).await;
    let _ = server.kill().await;
}
