//! Agents end to end (SPEC §6, §7, §16; docs/agents.md): the real daemon with the testkit's
//! scripted model server as both providers. Agents CRUD over `api.sock`; an agent with a rule on
//! `user.**` answering `user.query` through each provider; `emit_event` children; the repair turn
//! and `system.parse_failure`; queued work finishing once a stopped model server returns; a command
//! agent; knowledge in the prompt; agents kept across a restart.

use std::time::Duration;

use aiventbus_client::Client;
use aiventbus_proto::Event;
use aiventbus_proto::agents::{
    AgentKind, AgentMemoryParams, AgentSpec, AgentUpdateParams, AgentsCreate, AgentsDelete, AgentsDisable,
    AgentsEnable, AgentsGet, AgentsList, AgentsMemory, AgentsUpdate, AssignmentListParams, AssignmentStatus,
    AssignmentsList, RuleSpec, RulesCreate,
};
use aiventbus_proto::methods::{IdParams, KnowledgeSet, KnowledgeSetParams, NoParams, PublishResult};
use aiventbus_testkit::model::{ModelServer, Reply};
use aiventbus_testkit::{Daemon, eventually, wait_for_event};
use serde_json::{Value, json};

use crate::support::{self, event, or_log, rpc_code};

/// How long a run may take end to end (debug builds on a busy machine).
const RUN_DEADLINE: Duration = Duration::from_secs(60);

fn config(server: &ModelServer) -> String {
    format!(
        "[providers.ollama]\nbase_url = \"{}\"\n[providers.openai]\nbase_url = \"{}\"\n",
        server.ollama_url(),
        server.openai_url()
    )
}

async fn start(server: &ModelServer) -> (Daemon, Client) {
    let daemon = support::start_with_config(&config(server)).await;
    let client = daemon.client().await.expect("client");
    (daemon, client)
}

fn llm_spec(name: &str, provider: &str) -> AgentSpec {
    AgentSpec {
        name: Some(name.into()),
        kind: Some(AgentKind::Llm),
        provider: Some(provider.into()),
        model: Some("test-model".into()),
        system_prompt: Some("You answer questions.".into()),
        ..AgentSpec::default()
    }
}

/// Creates the agent and a rule sending it `user.**`; returns the agent id.
async fn agent_with_rule(client: &Client, spec: AgentSpec) -> String {
    let name = spec.name.clone().unwrap_or_default();
    let id = client.call::<AgentsCreate>(&spec).await.expect("agents.create").id;
    client
        .call::<RulesCreate>(&RuleSpec {
            name: Some(format!("{name}-rule")),
            topic_pattern: Some("user.**".into()),
            agent_id: Some(id.clone()),
            ..RuleSpec::default()
        })
        .await
        .expect("rules.create");
    id
}

async fn ask(client: &Client, text: &str) -> PublishResult {
    client
        .publish(&event("user.query", json!({ "text": text })))
        .await
        .expect("publish user.query")
}

/// The first event on `topic` in the trace of `published`.
async fn in_trace(daemon: &Daemon, client: &Client, published: &PublishResult, topic: &str) -> Event {
    let trace = published.trace_id.clone();
    or_log(
        daemon,
        wait_for_event(client, topic, Some(published.seq), RUN_DEADLINE, move |event| {
            event.trace_id == trace
        })
        .await,
    )
}

async fn trace(client: &Client, published: &PublishResult) -> Vec<Event> {
    client.trace(&published.trace_id).await.expect("events.trace").events
}

/// All message contents of a recorded chat request, joined.
fn prompt_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|message| message["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_crud_over_api_sock() {
    let server = ModelServer::start().await.unwrap();
    let (daemon, client) = start(&server).await;

    let id = client
        .call::<AgentsCreate>(&llm_spec("helper", "ollama"))
        .await
        .unwrap()
        .id;
    assert!(id.starts_with("agt_"), "{id}");
    let by_name = client
        .call::<AgentsGet>(&IdParams { id: "helper".into() })
        .await
        .unwrap();
    assert_eq!(
        (by_name.id.as_str(), by_name.temperature, by_name.enabled),
        (id.as_str(), 0.2, true)
    );
    assert_eq!(by_name.max_concurrent, 1);

    let (code, message) = rpc_code(client.call::<AgentsCreate>(&llm_spec("helper", "openai")).await);
    assert_eq!(code, -32003, "{message}");
    let (code, message) = rpc_code(client.call::<AgentsCreate>(&llm_spec("other", "mystery")).await);
    assert_eq!(code, -32602);
    assert!(message.contains("provider"), "{message}");
    let relative = AgentSpec {
        name: Some("prog".into()),
        kind: Some(AgentKind::Command),
        command: Some(vec!["./run-me".into()]),
        ..AgentSpec::default()
    };
    let (code, message) = rpc_code(client.call::<AgentsCreate>(&relative).await);
    assert_eq!(code, -32602);
    assert!(message.contains("command"), "{message}");
    let hot = AgentSpec {
        temperature: Some(5.0),
        ..llm_spec("hot", "ollama")
    };
    assert_eq!(rpc_code(client.call::<AgentsCreate>(&hot).await).0, -32602);

    let updated = client
        .call::<AgentsUpdate>(&AgentUpdateParams {
            id: id.clone(),
            spec: AgentSpec {
                temperature: Some(1.0),
                allowed_actions: Some(vec!["log".into()]),
                ..AgentSpec::default()
            },
        })
        .await
        .unwrap();
    assert_eq!(updated.temperature, 1.0);
    assert_eq!(updated.model.as_deref(), Some("test-model"), "update is partial");
    assert!(
        !client
            .call::<AgentsDisable>(&IdParams { id: id.clone() })
            .await
            .unwrap()
            .enabled
    );
    assert!(
        client
            .call::<AgentsEnable>(&IdParams { id: id.clone() })
            .await
            .unwrap()
            .enabled
    );
    let list = client.call::<AgentsList>(&NoParams {}).await.unwrap();
    assert_eq!(list.agents.len(), 1);

    // Provider health reaches system.status (llm.status is internal).
    let status = client.status().await.unwrap();
    let names: Vec<&str> = status.llm.providers.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["ollama", "openai"]);

    assert!(
        client
            .call::<AgentsDelete>(&IdParams { id: id.clone() })
            .await
            .unwrap()
            .deleted
    );
    assert_eq!(rpc_code(client.call::<AgentsGet>(&IdParams { id }).await).0, -32002);
    support::shut_down(daemon).await;
}

async fn answers_via(provider: &str) {
    let server = ModelServer::start().await.expect("model server");
    let summary = format!("Answered through {provider}.");
    server.set_default(Reply::Json(
        json!({"type": "answer", "summary": summary, "confidence": 0.9}),
    ));
    let (daemon, client) = start(&server).await;
    let agent = agent_with_rule(&client, llm_spec("answerer", provider)).await;

    let published = ask(&client, "What is the capital of France?").await;
    let completed = in_trace(&daemon, &client, &published, "agent.completed").await;
    let payload = &completed.payload;
    assert_eq!(payload["summary"], summary.as_str());
    assert_eq!(payload["agent_id"], agent.as_str());
    assert_eq!(payload["event_id"], published.id.as_str());
    assert!(
        payload["assignment_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("asg_")
    );
    assert!(payload["run_id"].as_str().unwrap_or_default().starts_with("run_"));
    assert_eq!(payload["proposed_actions"], json!([]));
    assert_eq!(payload["output"]["type"], "answer");
    assert_eq!(completed.parent_event.as_deref(), Some(published.id.as_str()));
    assert_eq!(completed.source, format!("agent:{agent}"));

    let events = trace(&client, &published).await;
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert!(topics.contains(&"agent.started"), "{topics:?}");
    let streamed: String = events
        .iter()
        .filter(|e| e.topic == "agent.stream")
        .filter_map(|e| e.payload["chunk"].as_str())
        .collect();
    assert!(streamed.contains(&summary), "streamed text {streamed:?}");

    let requests = server.chat_requests();
    let request = requests.first().expect("a chat request");
    let path = if provider == "ollama" {
        "/api/chat"
    } else {
        "/v1/chat/completions"
    };
    assert_eq!(request.path, path);
    assert!(request.stream);
    assert!(prompt_text(&request.body).contains("What is the capital of France?"));

    // The run was distilled into an episodic memory in the agent's scope.
    let memory = AgentMemoryParams {
        id: agent.clone(),
        query: None,
        limit: None,
    };
    let episode = eventually(RUN_DEADLINE, "the run's episodic memory", || async {
        let memories = client.call::<AgentsMemory>(&memory).await.ok()?.memories;
        memories.into_iter().next()
    })
    .await
    .expect("an episodic memory");
    assert_eq!(episode.scope, format!("agent:{agent}"));
    assert_eq!(episode.importance, 0.3);
    assert!(
        episode
            .content
            .starts_with(&format!("On user.query ({}): Answered through", published.id)),
        "{}",
        episode.content
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_a_user_query_through_ollama() {
    answers_via("ollama").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_a_user_query_through_openai() {
    answers_via("openai").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_emit_event_publishes_a_child_in_the_same_trace() {
    let server = ModelServer::start().await.unwrap();
    server.push(Reply::Json(json!({
        "type": "answer",
        "summary": "Noted it.",
        "proposed_actions": [
            {"action_type": "emit_event", "params": {"topic": "note.created", "payload": {"text": "buy milk"}}},
            {"action_type": "emit_event", "topic": "system.sneaky", "payload": {}},
            {"action_type": "shell_exec", "argv": ["ls"]},
            {"action_type": "teleport", "to": "mars"}
        ]
    })));
    server.push(Reply::Json(json!({"type": "answer", "summary": "Done."})));
    let (daemon, client) = start(&server).await;
    let agent = agent_with_rule(&client, llm_spec("noter", "ollama")).await;

    let published = ask(&client, "remember to buy milk").await;
    let child = in_trace(&daemon, &client, &published, "note.created").await;
    assert_eq!(child.parent_event.as_deref(), Some(published.id.as_str()));
    assert_eq!(child.source, format!("agent:{agent}"));
    assert_eq!(child.payload["text"], "buy milk");

    let completed = in_trace(&daemon, &client, &published, "agent.completed").await;
    assert_eq!(completed.payload["summary"], "Done.");
    let statuses: Vec<&str> = completed.payload["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|action| action["status"].as_str().unwrap_or_default())
        .collect();
    // Policy refuses the reserved topic; `ls` is one of the built-in read-only commands that run
    // without asking; the unknown type never reaches policy.
    assert_eq!(statuses, ["executed", "denied", "executed", "unknown"]);
    let unknown = in_trace(&daemon, &client, &published, "system.unknown_action").await;
    assert_eq!(unknown.payload["action_type"], "teleport");
    assert_eq!(unknown.payload["agent_id"], agent.as_str());
    assert_eq!(unknown.payload["event_id"], published.id.as_str());
    let proposed = completed.payload["proposed_actions"].as_array().unwrap();
    assert_eq!(proposed[2], json!({"action_type": "shell_exec", "argv": ["ls"]}));
    assert!(
        trace(&client, &published)
            .await
            .iter()
            .all(|e| e.topic != "system.sneaky")
    );

    // The results of round one went back to the model in round two.
    let requests = server.chat_requests();
    assert_eq!(requests.len(), 2);
    let second = prompt_text(&requests[1].body);
    assert!(second.contains("Results of your actions"), "{second}");
    assert!(second.contains("reserved namespace"), "{second}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_bad_output_gets_one_repair_turn() {
    let server = ModelServer::start().await.unwrap();
    server.push(Reply::Content("I think the answer is probably four.".into()));
    server.push(Reply::Content(
        "```json\n{\"type\": \"answer\", \"summary\": \"It is four.\"}\n```".into(),
    ));
    let (daemon, client) = start(&server).await;
    agent_with_rule(&client, llm_spec("fixer", "openai")).await;

    let published = ask(&client, "2 + 2?").await;
    let completed = in_trace(&daemon, &client, &published, "agent.completed").await;
    assert_eq!(completed.payload["summary"], "It is four.");
    let requests = server.chat_requests();
    assert_eq!(requests.len(), 2);
    let repair = prompt_text(&requests[1].body);
    assert!(repair.contains("I think the answer is probably four."), "{repair}");
    assert!(repair.contains("could not be used"), "{repair}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_persistent_bad_output_is_a_parse_failure() {
    let server = ModelServer::start().await.unwrap();
    server.set_default(Reply::Content("no JSON here, sorry".into()));
    let (daemon, client) = start(&server).await;
    let agent = agent_with_rule(&client, llm_spec("hopeless", "ollama")).await;

    let published = ask(&client, "anything").await;
    let failure = in_trace(&daemon, &client, &published, "system.parse_failure").await;
    assert_eq!(failure.payload["agent_id"], agent.as_str());
    assert_eq!(failure.payload["event_id"], published.id.as_str());
    assert!(failure.payload["assignment_id"].as_str().is_some());
    assert!(failure.payload["error"].as_str().is_some());
    assert_eq!(failure.payload["output"], "no JSON here, sorry");
    let error = in_trace(&daemon, &client, &published, "agent.error").await;
    assert_eq!(error.payload["final"], true);

    // Failed without retry: one attempt, two chat calls (the answer and the repair).
    let list = AssignmentListParams {
        event_id: Some(published.id.clone()),
        ..AssignmentListParams::default()
    };
    let failed = eventually(RUN_DEADLINE, "the assignment to fail", || async {
        let assignments = client.call::<AssignmentsList>(&list).await.ok()?.assignments;
        assignments.into_iter().find(|a| a.status == AssignmentStatus::Failed)
    })
    .await
    .unwrap();
    assert_eq!(failed.attempts, 1);
    assert_eq!(server.chat_requests().len(), 2);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_work_resumes_after_the_model_server_returns() {
    let mut server = ModelServer::start().await.unwrap();
    server.push(Reply::Hang);
    server.set_default(Reply::Json(json!({"type": "answer", "summary": "Back again."})));
    let (daemon, client) = start(&server).await;
    agent_with_rule(&client, llm_spec("patient", "ollama")).await;

    let published = ask(&client, "are you there?").await;
    or_log(&daemon, server.wait_for_chat_requests(1, RUN_DEADLINE).await);
    server.stop().await;
    let why = eventually(RUN_DEADLINE, "system.status to report ollama down", || async {
        let status = client.status().await.ok()?;
        let ollama = status.llm.providers.into_iter().find(|p| p["name"] == "ollama")?;
        (ollama["reachable"] == false).then(|| ollama["why"].clone())
    })
    .await
    .unwrap();
    assert!(why.is_string(), "{why}");

    server.restart().await.unwrap();
    let completed = in_trace(&daemon, &client, &published, "agent.completed").await;
    assert_eq!(completed.payload["summary"], "Back again.");
    // The outage used no attempt (the assignment is completed just after agent.completed).
    let list = AssignmentListParams {
        event_id: Some(published.id.clone()),
        ..AssignmentListParams::default()
    };
    let done = eventually(RUN_DEADLINE, "the assignment to complete", || async {
        let assignments = client.call::<AssignmentsList>(&list).await.ok()?.assignments;
        assert_eq!(assignments.len(), 1, "{assignments:?}");
        assignments
            .into_iter()
            .find(|a| a.status == AssignmentStatus::Completed)
    })
    .await
    .unwrap();
    assert_eq!(done.attempts, 1);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_command_program_answers_from_stdin() {
    let server = ModelServer::start().await.unwrap();
    let (daemon, client) = start(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ninput=$(cat)\ncase \"$input\" in\n  *'\"topic\":\"user.query\"'*) \
         echo '{\"type\":\"answer\",\"summary\":\"saw a user.query\",\"proposed_actions\":[{\"action_type\":\"log\",\"message\":\"hi\"}]}' ;;\n  \
         *) echo 'unexpected input' >&2; exit 2 ;;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = AgentSpec {
        name: Some("scripted".into()),
        kind: Some(AgentKind::Command),
        command: Some(vec![script.display().to_string()]),
        output_topic: Some("answers.scripted".into()),
        ..AgentSpec::default()
    };
    let agent = agent_with_rule(&client, spec).await;

    let published = ask(&client, "hello program").await;
    let completed = in_trace(&daemon, &client, &published, "agent.completed").await;
    assert_eq!(completed.payload["summary"], "saw a user.query");
    assert_eq!(completed.payload["agent_id"], agent.as_str());
    assert_eq!(completed.payload["actions"][0]["status"], "executed");
    assert!(server.chat_requests().is_empty(), "a command agent calls no model");
    let answer = in_trace(&daemon, &client, &published, "answers.scripted").await;
    assert_eq!(answer.parent_event.as_deref(), Some(published.id.as_str()));
    assert_eq!(answer.payload["output"]["summary"], "saw a user.query");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_prompt_carries_knowledge() {
    let server = ModelServer::start().await.unwrap();
    let (daemon, client) = start(&server).await;
    client
        .call::<KnowledgeSet>(&KnowledgeSetParams {
            key: "user.pref.editor".into(),
            value: json!("vim-9000"),
            source: None,
        })
        .await
        .unwrap();
    agent_with_rule(&client, llm_spec("knower", "ollama")).await;

    let published = ask(&client, "which editor do I use?").await;
    in_trace(&daemon, &client, &published, "agent.completed").await;
    let prompt = prompt_text(&server.chat_requests()[0].body);
    assert!(prompt.contains("user.pref.editor = vim-9000"), "{prompt}");
    assert!(prompt.contains("emit_event {topic, payload}"), "{prompt}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_survive_a_daemon_restart() {
    let server = ModelServer::start().await.unwrap();
    let (mut daemon, client) = start(&server).await;
    let id = client
        .call::<AgentsCreate>(&llm_spec("durable", "openai"))
        .await
        .unwrap()
        .id;
    let before = client.call::<AgentsGet>(&IdParams { id: id.clone() }).await.unwrap();
    drop(client);
    let daemon = tokio::task::spawn_blocking(move || {
        daemon.stop(Duration::from_secs(30)).expect("stopping");
        daemon.launch().expect("restarting");
        daemon
    })
    .await
    .unwrap();
    let client = daemon.client().await.unwrap();
    let after = client
        .call::<AgentsGet>(&IdParams { id: "durable".into() })
        .await
        .unwrap();
    assert_eq!(after, before);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tool_loop_stops_at_max_iterations() {
    let server = ModelServer::start().await.unwrap();
    server.set_default(Reply::Json(json!({
        "type": "answer",
        "summary": "Still logging.",
        "proposed_actions": [{"action_type": "log", "message": "again"}]
    })));
    let config = format!("{}[llm]\nmax_iterations = 2\n", config(&server));
    let daemon = support::start_with_config(&config).await;
    let client = daemon.client().await.expect("client");
    agent_with_rule(&client, llm_spec("looper", "ollama")).await;

    let published = ask(&client, "loop forever").await;
    let exhausted = in_trace(&daemon, &client, &published, "system.tool_loop_exhausted").await;
    assert_eq!(exhausted.payload["rounds"], 2);
    let completed = in_trace(&daemon, &client, &published, "agent.completed").await;
    assert_eq!(completed.payload["summary"], "Still logging.");
    assert_eq!(completed.payload["rounds"], 2);
    assert_eq!(server.chat_requests().len(), 2);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_command_bad_stdout_is_a_parse_failure_without_repair() {
    let server = ModelServer::start().await.unwrap();
    let (daemon, client) = start(&server).await;
    let spec = AgentSpec {
        name: Some("chatty".into()),
        kind: Some(AgentKind::Command),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat >/dev/null; echo 'hello, not JSON'".into(),
        ]),
        ..AgentSpec::default()
    };
    agent_with_rule(&client, spec).await;

    let published = ask(&client, "say something").await;
    let failure = in_trace(&daemon, &client, &published, "system.parse_failure").await;
    assert_eq!(failure.payload["output"], "hello, not JSON\n");
    assert!(
        failure.payload["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not one JSON object"),
        "{:?}",
        failure.payload
    );
    assert!(server.chat_requests().is_empty(), "no repair turn for programs");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_queued_work_runs_one_slot_at_a_time() {
    let server = ModelServer::start().await.unwrap();
    server.set_default(Reply::delayed(
        Duration::from_millis(100),
        Reply::Json(json!({"type": "answer", "summary": "next"})),
    ));
    // One slot in all: every run after the first waits for the one before to free it.
    let config = format!("{}[llm]\ninteractive_slots = 0\nmax_concurrent = 1\n", config(&server));
    let daemon = support::start_with_config(&config).await;
    let client = daemon.client().await.expect("client");
    agent_with_rule(&client, llm_spec("serial", "openai")).await;

    let mut published = Vec::new();
    for n in 0..3 {
        published.push(ask(&client, &format!("question {n}")).await);
    }
    for question in &published {
        let completed = in_trace(&daemon, &client, question, "agent.completed").await;
        assert_eq!(completed.payload["summary"], "next");
    }
    assert_eq!(server.chat_requests().len(), 3);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_cancels_its_pending_work() {
    let mut server = ModelServer::start().await.unwrap();
    // The model server is down: the work is released back to pending and waits there.
    server.stop().await;
    let (daemon, client) = start(&server).await;
    let agent_id = agent_with_rule(&client, llm_spec("gone-soon", "ollama")).await;
    let published = ask(&client, "anyone?").await;
    let list = AssignmentListParams {
        event_id: Some(published.id.clone()),
        ..AssignmentListParams::default()
    };
    or_log(
        &daemon,
        eventually(RUN_DEADLINE, "the assignment to exist", || async {
            let assignments = client.call::<AssignmentsList>(&list).await.ok()?.assignments;
            assignments.into_iter().next()
        })
        .await,
    );

    let deleted = client
        .call::<aiventbus_proto::agents::AgentsDelete>(&aiventbus_proto::methods::IdParams { id: agent_id })
        .await
        .expect("agents.delete");
    assert!(deleted.deleted);
    let cancelled = or_log(
        &daemon,
        eventually(RUN_DEADLINE, "the pending work to be cancelled", || async {
            let assignments = client.call::<AssignmentsList>(&list).await.ok()?.assignments;
            assignments
                .into_iter()
                .find(|a| a.status == AssignmentStatus::Cancelled)
        })
        .await,
    );
    assert_eq!(cancelled.event_id, published.id);
    support::shut_down(daemon).await;
}
