//! `aibus mcp` against the real daemon (SPEC §13): an MCP client speaking JSON-RPC over the
//! server's stdio — initialize, the tool list, `publish_event` landing on the bus, the pending
//! actions, and a human-input round trip (register, ask, answer, poll, ack) through the tools.

use std::process::Stdio;
use std::time::Duration;

use aiventbus_proto::methods::ListParams;
use aiventbus_testkit::{Daemon, binary};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::support;

/// How long one MCP answer may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// `aibus mcp` with a line-by-line JSON-RPC conversation on its stdio.
struct Mcp {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl Mcp {
    fn start(daemon: &Daemon) -> Mcp {
        let mut child = tokio::process::Command::new(binary("aibus"))
            .envs(daemon.env())
            .arg("mcp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn aibus mcp");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Mcp {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    async fn send(&mut self, message: &Value) {
        let line = format!("{message}\n");
        self.stdin.write_all(line.as_bytes()).await.expect("write to aibus mcp");
    }

    /// Sends a request and returns its answer; every line on stdout must be JSON-RPC.
    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let line = tokio::time::timeout(DEADLINE, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {DEADLINE:?}"))
                .expect("read stdout")
                .expect("aibus mcp closed stdout");
            let message: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout carried a non-JSON line ({e}): {line}"));
            assert_eq!(message["jsonrpc"], "2.0", "{message}");
            if message["id"] == id {
                return message;
            }
        }
    }

    /// Calls a tool; returns the parsed JSON of its text result, or panics on a tool error.
    async fn tool(&mut self, name: &str, arguments: Value) -> Value {
        let answer = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        let result = &answer["result"];
        assert_eq!(result["isError"], false, "{name}: {answer}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: the result is not JSON ({e}): {text}"))
    }

    /// Calls a tool that must fail; returns the error text.
    async fn tool_error(&mut self, name: &str, arguments: Value) -> String {
        let answer = self
            .request("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        assert_eq!(answer["result"]["isError"], true, "{name}: {answer}");
        answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_publish_list_and_answer() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let mut mcp = Mcp::start(&daemon);

    let init = mcp
        .request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}),
        )
        .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "aibus", "{init}");
    assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
    mcp.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;

    let listed = mcp.request("tools/list", json!({})).await;
    let tools = listed["result"]["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().filter_map(|tool| tool["name"].as_str()).collect();
    for expected in [
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
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    assert!(
        tools.iter().all(|tool| tool["inputSchema"]["type"] == "object"),
        "{listed}"
    );

    // publish_event → the event is on the bus.
    let published = mcp
        .tool(
            "publish_event",
            json!({"topic": "demo.mcp", "payload": {"from": "mcp"}, "priority": "high"}),
        )
        .await;
    let id = published["id"].as_str().expect("an event id").to_owned();
    let stored = client.get(&id).await.expect("the event is stored");
    assert_eq!(stored.topic, "demo.mcp");
    assert_eq!(stored.payload["from"], "mcp");
    assert_eq!(stored.priority, aiventbus_proto::Priority::High);
    let listed = client
        .list(&ListParams {
            topic: Some("demo.mcp".into()),
            ..ListParams::default()
        })
        .await
        .expect("events.list");
    assert_eq!(listed.len(), 1);

    let pending = mcp.tool("list_pending_actions", json!({})).await;
    assert_eq!(pending["actions"], json!([]), "{pending}");

    // The human-input hub, all through the tools.
    let session = mcp.tool("register_session", json!({"display_name": "mcp e2e"})).await;
    let session_id = session["session_id"].as_str().expect("session id").to_owned();
    let created = mcp
        .tool(
            "create_request",
            json!({"session_id": session_id, "title": "Ship?", "question": "Ship it now?", "priority": "high"}),
        )
        .await;
    let request_id = created["request_id"].as_str().expect("request id").to_owned();
    let requests = mcp.tool("list_requests", json!({"status": "pending"})).await;
    assert!(
        requests["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .any(|request| request["request_id"] == request_id.as_str()),
        "{requests}"
    );
    let answered = mcp
        .tool("answer_request", json!({"id": request_id, "response_text": "ship it"}))
        .await;
    assert_eq!(answered["status"], "answered", "{answered}");
    let polled = mcp
        .tool("poll_inbox", json!({"session_id": session_id, "timeout_ms": 5000}))
        .await;
    let message = &polled["messages"][0];
    assert_eq!(message["type"], "input_response", "{polled}");
    assert_eq!(message["payload"]["response_text"], "ship it", "{polled}");
    let message_id = message["message_id"].as_str().expect("message id").to_owned();
    mcp.tool("ack_inbox", json!({"session_id": session_id, "message_id": message_id}))
        .await;
    let polled = mcp.tool("poll_inbox", json!({"session_id": session_id})).await;
    assert_eq!(polled["messages"], json!([]), "acked messages are not returned again");

    // Daemon errors are tool errors with the daemon's message.
    let error = mcp
        .tool_error("answer_request", json!({"id": request_id, "response_text": "again"}))
        .await;
    assert!(error.contains("-32003"), "{error}");
    let error = mcp.tool_error("approve_action", json!({"id": "act_nope"})).await;
    assert!(error.contains("act_nope") || error.contains("-32002"), "{error}");

    drop(mcp.stdin);
    let status = tokio::time::timeout(DEADLINE, mcp.child.wait())
        .await
        .expect("aibus mcp exits when its input closes")
        .expect("wait");
    assert!(status.success(), "{status}");
    support::shut_down(daemon).await;
}
