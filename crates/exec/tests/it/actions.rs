//! The other action types: notifications without a desktop, events and knowledge for agents,
//! opening things, MCP tools (with a server that crashes and comes back), and health figures.

use aiventbus_proto::exec::{ExecNotify, NotifyParams, ToolsList};
use aiventbus_proto::methods::{Health, NoParams};
use serde_json::json;

use crate::fake::mcp_script;
use crate::{DEADLINE, Harness, Setup, eventually, message};

#[tokio::test]
async fn notifications_fall_back_silently_without_a_desktop() {
    // The default setup has no session bus and no notify-send.
    let harness = Harness::new().await;
    for (action_type, params) in [
        ("notify", json!({"title": "Build", "message": "done"})),
        ("alert", json!({"message": "disk almost full"})),
    ] {
        let (_, result) = harness.execute(action_type, params).await;
        assert!(result.ok, "{action_type}: {}", result.result);
        assert_eq!(result.result, json!({"delivered": false, "via": "none"}));
    }
    let (_, result) = harness.execute("notify", json!({"message": "no title"})).await;
    assert!(message(&result).starts_with("title"));
    let answer = harness
        .client
        .call::<ExecNotify>(&NotifyParams {
            title: "aiventbus: approval needed".into(),
            message: "agent wants to run ls".into(),
            urgency: None,
        })
        .await
        .unwrap();
    assert_eq!((answer.delivered, answer.via.as_str()), (false, "none"));
}

#[tokio::test]
async fn events_and_knowledge_for_agents() {
    let harness = Harness::new().await;
    let (params, result) = harness
        .execute(
            "emit_event",
            json!({"topic": "note.taken", "payload": {"text": "hi"}, "priority": "high"}),
        )
        .await;
    assert!(result.ok, "{}", result.result);
    let id = result.result["id"].as_str().unwrap().to_owned();
    let event = harness
        .bus
        .events()
        .into_iter()
        .find(|event| event.id == id)
        .expect("published");
    assert_eq!(event.params.topic, "note.taken");
    assert_eq!(event.params.source.as_deref(), Some("agent:agt_test"));
    assert_eq!(event.params.parent_event, params.parent_event);
    assert_eq!(event.params.trace_id, params.trace_id);
    assert_eq!(event.payload()["text"], "hi");

    for topic in ["system.fake", "exec.finished", "action.approved"] {
        let (_, result) = harness.execute("emit_event", json!({"topic": topic})).await;
        assert!(message(&result).contains("reserved"), "{topic}: {}", result.result);
    }
    let (_, result) = harness
        .execute("emit_event", json!({"topic": "a.b", "payload": [1]}))
        .await;
    assert!(message(&result).starts_with("payload"));

    let (_, result) = harness
        .execute("set_knowledge", json!({"key": "user.pref.editor", "value": "vim"}))
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(harness.bus.fact("user.pref.editor").unwrap().source, "agent:agt_test");
    let (_, result) = harness
        .execute("get_knowledge", json!({"key": "user.pref.editor"}))
        .await;
    assert_eq!(
        result.result,
        json!({"key": "user.pref.editor", "found": true, "value": "vim"})
    );
    let (_, result) = harness.execute("get_knowledge", json!({"key": "nothing.here"})).await;
    assert!(result.ok);
    assert_eq!(result.result["found"], false);

    let (_, result) = harness.execute("log", json!({"message": "noted"})).await;
    assert_eq!((result.ok, result.result.clone()), (true, json!({"logged": true})));
    let (params, result) = harness.execute("teleport", json!({})).await;
    assert!(message(&result).contains("teleport"));
    assert_eq!(harness.outcome(&params.action_id).await.unwrap().status, "failed");
}

#[tokio::test]
async fn open_app_without_xdg_open_is_a_clear_failure() {
    let harness = Harness::new().await;
    let (_, result) = harness
        .execute("open_app", json!({"target": "https://example.com"}))
        .await;
    assert!(message(&result).contains("xdg-open"), "{}", result.result);
    let (_, result) = harness.execute("open_app", json!({})).await;
    assert!(message(&result).starts_with("target"));

    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let opener = dir.path().join("xdg-open");
    let log = dir.path().join("opened");
    std::fs::write(&opener, format!("#!/bin/sh\necho \"$1\" > {}\n", log.display())).unwrap();
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let harness = Harness::start(Setup {
        xdg_open: Some(opener),
        ..Setup::default()
    })
    .await;
    let (_, result) = harness
        .execute("open_app", json!({"url": "https://example.com/a"}))
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "https://example.com/a\n");
}

fn python3() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

#[tokio::test]
async fn mcp_tools_are_listed_called_and_restarted() {
    if !python3() {
        eprintln!("SKIPPED mcp_tools_are_listed_called_and_restarted: python3 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let mut setup = Setup::default();
    setup.exec.mcp.insert(
        "demo".into(),
        aiventbus_rpc::config::McpServerConfig {
            command: vec!["python3".into(), mcp_script().display().to_string()],
            env: [("MCP_STARTS".to_owned(), starts.display().to_string())].into(),
        },
    );
    setup.exec.mcp.insert(
        "broken".into(),
        aiventbus_rpc::config::McpServerConfig {
            command: vec!["/no/such/mcp-server".into()],
            env: Default::default(),
        },
    );
    let harness = Harness::start(setup).await;
    let client = harness.client.clone();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let tools = loop {
        let tools = client.call::<ToolsList>(&NoParams {}).await.unwrap();
        if tools
            .servers
            .iter()
            .any(|server| server.name == "demo" && server.available)
        {
            break tools;
        }
        assert!(tokio::time::Instant::now() < deadline, "demo never came up: {tools:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let names: Vec<&str> = tools.tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(names, ["echo", "fail", "crash"]);
    assert!(tools.tools.iter().all(|tool| tool.server == "demo"));
    assert_eq!(tools.tools[0].input_schema["required"], json!(["text"]));
    let broken = tools.servers.iter().find(|server| server.name == "broken").unwrap();
    assert!(!broken.available);
    assert!(
        broken.reason.as_deref().unwrap().contains("/no/such/mcp-server"),
        "{broken:?}"
    );

    let call = |method: &str, params: serde_json::Value| json!({"tool": "demo", "method": method, "params": params});
    let (_, result) = harness
        .execute("tool_call", call("echo", json!({"text": "hi there"})))
        .await;
    assert!(result.ok, "{}", result.result);
    assert_eq!(result.result["content"], json!([{"type": "text", "text": "hi there"}]));
    assert_eq!(result.result["is_error"], false);
    let (_, result) = harness.execute("tool_call", call("fail", json!({}))).await;
    assert!(!result.ok);
    assert_eq!(result.result["is_error"], true);
    let (_, result) = harness.execute("tool_call", call("nope", json!({}))).await;
    assert!(message(&result).contains("\"nope\""), "{}", result.result);
    let (_, result) = harness
        .execute("tool_call", json!({"tool": "elsewhere", "method": "echo"}))
        .await;
    assert!(message(&result).contains("\"elsewhere\""), "{}", result.result);
    let (_, result) = harness
        .execute("tool_call", json!({"tool": "broken", "method": "x"}))
        .await;
    assert!(message(&result).contains("not available"), "{}", result.result);

    // The server dies; exec starts it again.
    let (_, result) = harness.execute("tool_call", call("crash", json!({}))).await;
    assert!(!result.ok);
    eventually("the server to start a second time", || {
        std::fs::read_to_string(&starts).is_ok_and(|text| text.lines().count() >= 2)
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, result) = harness
            .execute("tool_call", call("echo", json!({"text": "again"})))
            .await;
        if result.ok {
            assert_eq!(result.result["content"][0]["text"], "again");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never came back: {}",
            result.result
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_has_figures() {
    let harness = Harness::new().await;
    harness.execute("log", json!({"message": "one"})).await;
    let health = harness.client.call::<Health>(&NoParams {}).await.unwrap();
    assert_eq!(health.service, "exec");
    assert_eq!(health.details["running"], 0);
    assert_eq!(health.details["executions"]["succeeded"], 1);
    assert_eq!(health.details["received"], 1);
}
