//! `aibus mcp`: a Model Context Protocol server on stdio (SPEC §13) that lets an AI coding agent
//! publish events, ask the daemon's agents, decide on pending actions and use the human-input hub.
//! Each tool is one call to the daemon; a failed call is a tool error carrying the daemon's
//! message. stdout carries the protocol only; notes go to stderr.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_client::{Client, Error as ClientError};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt as _};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use crate::{Context, Target};

/// Default wait of `query` and most `poll_inbox` may wait (the daemon's own bounds).
const QUERY_DEFAULT_MS: u64 = 120_000;
const POLL_MAX_MS: u64 = 120_000;
/// Extra time past the daemon's own deadline before a call gives up.
const CALL_MARGIN: Duration = Duration::from_secs(10);
/// Deadline of every other call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One tool: its name, the method it calls, what it says about itself, and its arguments' schema.
struct ToolSpec {
    name: &'static str,
    method: &'static str,
    description: &'static str,
    schema: fn() -> Value,
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn priority() -> Value {
    json!({"type": "string", "enum": ["low", "medium", "high", "critical"], "description": "Urgency (default medium)."})
}

/// The tools, in the order `tools/list` gives them.
const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "publish_event",
        method: "events.publish",
        description: "Publish an event on the aiventbus bus; answers its id, seq and trace id once it is stored.",
        schema: || {
            object(
                json!({
                    "topic": string("Dotted lowercase topic, e.g. build.failed."),
                    "payload": {"type": "object", "description": "The event's JSON object payload (default {})."},
                    "priority": priority(),
                }),
                &["topic"],
            )
        },
    },
    ToolSpec {
        name: "query",
        method: "query.ask",
        description: "Ask the daemon's agents a question (publishes user.query) and wait for the answer.",
        schema: || {
            object(
                json!({
                    "text": string("The question."),
                    "timeout_ms": {"type": "integer", "minimum": 1, "description": "How long to wait (default 120000)."},
                }),
                &["text"],
            )
        },
    },
    ToolSpec {
        name: "list_pending_actions",
        method: "actions.pending",
        description: "Actions proposed by agents that wait for a human's approval, oldest first.",
        schema: || object(json!({}), &[]),
    },
    ToolSpec {
        name: "approve_action",
        method: "actions.approve",
        description: "Approve a waiting action so it runs; fails if it is no longer waiting.",
        schema: || object(json!({"id": string("The action id (act_…).")}), &["id"]),
    },
    ToolSpec {
        name: "deny_action",
        method: "actions.deny",
        description: "Deny a waiting action; the proposing agent is told the reason.",
        schema: || {
            object(
                json!({"id": string("The action id (act_…)."), "reason": string("Why, for the agent.")}),
                &["id"],
            )
        },
    },
    ToolSpec {
        name: "register_session",
        method: "sessions.register",
        description: "Register this agent session with the human-input hub; answers its session_id.",
        schema: || object(json!({"display_name": string("Shown to people.")}), &["display_name"]),
    },
    ToolSpec {
        name: "create_request",
        method: "requests.create",
        description: "Ask a human something on behalf of a session; the answer arrives in the session's inbox.",
        schema: || {
            object(
                json!({
                    "session_id": string("From register_session."),
                    "title": string("Short title."),
                    "question": string("The question."),
                    "priority": priority(),
                }),
                &["session_id", "title", "question"],
            )
        },
    },
    ToolSpec {
        name: "list_requests",
        method: "requests.list",
        description: "Human-input requests, oldest first.",
        schema: || {
            object(
                json!({"status": {"type": "string", "enum": ["pending", "answered", "dismissed"]}}),
                &[],
            )
        },
    },
    ToolSpec {
        name: "answer_request",
        method: "requests.respond",
        description: "Answer a pending human-input request.",
        schema: || {
            object(
                json!({"id": string("The request id (req_…)."), "response_text": string("The answer.")}),
                &["id", "response_text"],
            )
        },
    },
    ToolSpec {
        name: "dismiss_request",
        method: "requests.dismiss",
        description: "Dismiss a pending human-input request.",
        schema: || object(json!({"id": string("The request id (req_…).")}), &["id"]),
    },
    ToolSpec {
        name: "poll_inbox",
        method: "inbox.poll",
        description: "A session's messages (answers to its requests) not yet acked; waits up to timeout_ms for one.",
        schema: || {
            object(
                json!({
                    "session_id": string("From register_session."),
                    "timeout_ms": {"type": "integer", "minimum": 0, "maximum": POLL_MAX_MS,
                        "description": "How long to wait when nothing is there (default 0)."},
                }),
                &["session_id"],
            )
        },
    },
    ToolSpec {
        name: "ack_inbox",
        method: "inbox.ack",
        description: "Acknowledge an inbox message so later polls no longer return it.",
        schema: || {
            object(
                json!({"session_id": string("From register_session."), "message_id": string("The message id (msg_…).")}),
                &["session_id", "message_id"],
            )
        },
    },
];

/// The MCP server: the tools over one daemon connection, opened on the first call (so the server
/// starts, and says why each call fails, while the daemon is down).
#[derive(Clone)]
pub struct Server {
    target: Target,
    client: Arc<Mutex<Option<Client>>>,
}

impl Server {
    /// A server that connects where `context` says (the socket, or `--url`).
    pub fn new(context: &Context) -> Server {
        Server {
            target: context.target.clone(),
            client: Arc::new(Mutex::new(None)),
        }
    }

    async fn client(&self) -> Result<Client, ClientError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let connected = self.target.connect().await?;
        *client = Some(connected.clone());
        Ok(connected)
    }

    /// Runs one tool: `Ok` with the daemon's answer, `Err` with the message for a tool error.
    pub async fn call(&self, name: &str, arguments: Map<String, Value>) -> Result<Value, String> {
        let spec = TOOLS
            .iter()
            .find(|spec| spec.name == name)
            .ok_or_else(|| format!("no tool {name}"))?;
        let (params, timeout) = params_for(spec, arguments)?;
        let client = self.client().await.map_err(|error| describe(spec.method, &error))?;
        let raw = serde_json::value::to_raw_value(&params).map_err(|error| error.to_string())?;
        let answer = client
            .call_raw_with_timeout(spec.method, Some(raw), timeout)
            .await
            .map_err(|error| describe(spec.method, &error))?;
        serde_json::from_str(answer.get()).map_err(|error| format!("{}: unreadable answer: {error}", spec.method))
    }
}

/// The method's params from the tool's arguments, checked against the schema's required fields,
/// and how long the call may take.
fn params_for(spec: &ToolSpec, mut arguments: Map<String, Value>) -> Result<(Value, Duration), String> {
    let schema = (spec.schema)();
    let known = schema["properties"].as_object().cloned().unwrap_or_default();
    if let Some(unknown) = arguments.keys().find(|key| !known.contains_key(key.as_str())) {
        return Err(format!("{}: unknown argument {unknown:?}", spec.name));
    }
    for required in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        match arguments.get(required) {
            None | Some(Value::Null) => return Err(format!("{}: the argument {required:?} is required", spec.name)),
            Some(_) => {}
        }
    }
    let mut timeout = CALL_TIMEOUT;
    match spec.name {
        "publish_event" => {
            arguments.entry("payload").or_insert_with(|| json!({}));
        }
        "query" => {
            let wait = arguments
                .get("timeout_ms")
                .and_then(Value::as_u64)
                .unwrap_or(QUERY_DEFAULT_MS);
            timeout = Duration::from_millis(wait) + CALL_MARGIN;
        }
        "poll_inbox" => {
            let wait = arguments.get("timeout_ms").and_then(Value::as_u64).unwrap_or(0);
            if wait > POLL_MAX_MS {
                return Err(format!("poll_inbox: timeout_ms is at most {POLL_MAX_MS}"));
            }
            arguments.insert("timeout_ms".into(), Value::from(wait));
            timeout = CALL_TIMEOUT.max(Duration::from_millis(wait) + CALL_MARGIN);
        }
        _ => {}
    }
    Ok((Value::Object(arguments), timeout))
}

/// A failed call in words, for the tool error.
fn describe(method: &str, error: &ClientError) -> String {
    match error {
        ClientError::Rpc(answer) => format!("{method}: {} (code {})", answer.message, answer.code),
        ClientError::Unavailable(detail) => format!("aiventbus is not running or not reachable ({detail})"),
        other => format!("{method}: {other}"),
    }
}

/// The tool list as MCP gives it.
pub fn tools() -> Vec<Tool> {
    TOOLS
        .iter()
        .map(|spec| {
            let schema: JsonObject = match (spec.schema)() {
                Value::Object(schema) => schema,
                _ => JsonObject::new(),
            };
            Tool::new(spec.name, spec.description, schema)
        })
        .collect()
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("aibus", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "aiventbus, the local AI control plane: publish events, ask its agents, approve or deny the actions \
                 they propose, and ask the user questions through the human-input hub (register_session, \
                 create_request, poll_inbox, ack_inbox).",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name: Cow<'static, str> = request.name;
        if !TOOLS.iter().any(|spec| spec.name == name) {
            return Err(ErrorData::invalid_params(format!("no tool {name}"), None));
        }
        let result = match self.call(&name, request.arguments.unwrap_or_default()).await {
            Ok(answer) => {
                let text = serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string());
                CallToolResult::success(vec![ContentBlock::text(text)])
            }
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        };
        Ok(result.into())
    }
}

/// Serves MCP on stdin/stdout until the client closes it.
pub async fn run(context: &Context) -> anyhow::Result<()> {
    let server = Server::new(context);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|error| anyhow::anyhow!("MCP initialization failed: {error}"))?;
    running
        .waiting()
        .await
        .map_err(|error| anyhow::anyhow!("the MCP server stopped: {error}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> &'static ToolSpec {
        TOOLS.iter().find(|spec| spec.name == name).expect("a tool")
    }

    fn arguments(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn every_tool_is_listed_with_an_object_schema() {
        let names: Vec<String> = tools().iter().map(|tool| tool.name.to_string()).collect();
        assert_eq!(
            names,
            [
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
                "ack_inbox"
            ]
        );
        for spec in TOOLS {
            let schema = (spec.schema)();
            assert_eq!(schema["type"], "object", "{}", spec.name);
            let properties = schema["properties"].as_object().expect("properties");
            for required in schema["required"].as_array().expect("required") {
                assert!(
                    properties.contains_key(required.as_str().expect("a name")),
                    "{}: {required}",
                    spec.name
                );
            }
            assert!(spec.method.contains('.'), "{}", spec.method);
        }
    }

    #[test]
    fn arguments_become_params_and_mistakes_name_the_argument() {
        let (params, timeout) = params_for(spec("publish_event"), arguments(json!({"topic": "demo.x"}))).expect("ok");
        assert_eq!(params, json!({"topic": "demo.x", "payload": {}}));
        assert_eq!(timeout, CALL_TIMEOUT);
        let (_, timeout) = params_for(spec("query"), arguments(json!({"text": "hi", "timeout_ms": 5000}))).expect("ok");
        assert_eq!(timeout, Duration::from_millis(5000) + CALL_MARGIN);
        let (params, timeout) = params_for(spec("poll_inbox"), arguments(json!({"session_id": "ses_1"}))).expect("ok");
        assert_eq!(params, json!({"session_id": "ses_1", "timeout_ms": 0}));
        assert_eq!(timeout, CALL_TIMEOUT);
        let (params, _) = params_for(
            spec("answer_request"),
            arguments(json!({"id": "req_1", "response_text": "yes"})),
        )
        .expect("ok");
        assert_eq!(params, json!({"id": "req_1", "response_text": "yes"}));

        let missing = params_for(spec("approve_action"), Map::new()).expect_err("missing");
        assert!(missing.contains("\"id\""), "{missing}");
        let unknown = params_for(spec("approve_action"), arguments(json!({"id": "a", "force": true}))).expect_err("x");
        assert!(unknown.contains("\"force\""), "{unknown}");
        let long = params_for(
            spec("poll_inbox"),
            arguments(json!({"session_id": "s", "timeout_ms": 200000})),
        );
        assert!(long.expect_err("too long").contains("timeout_ms"));
    }

    #[test]
    fn failed_calls_keep_the_daemons_words() {
        let error = ClientError::Rpc(aiventbus_proto::ErrorObject::new(
            aiventbus_proto::ErrorCode::Conflict,
            "act_1 is not waiting for confirmation",
        ));
        assert_eq!(
            describe("actions.approve", &error),
            "actions.approve: act_1 is not waiting for confirmation (code -32003)"
        );
        assert!(describe("x.y", &ClientError::Unavailable("refused".into())).contains("not running"));
    }
}
