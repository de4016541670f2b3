//! MCP tool backends (`[exec.mcp.NAME] command = […]`): each server runs as a child over stdio
//! (its own process group, the parent-death signal, a scrubbed environment plus its configured
//! one), is initialized and listed with `rmcp`'s client, and is restarted with backoff (100 ms
//! doubling to 30 s, reset after a minute up) whenever it exits. `tools.list` shows every server,
//! the failed ones with the reason; `tool_call` calls one tool of one available server.

use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aiventbus_proto::exec::{ToolInfo, ToolServerInfo, ToolsResult};
use aiventbus_rpc::config::McpServerConfig;
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a server has to start and list its tools.
const HANDSHAKE: Duration = Duration::from_secs(15);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server up this long starts its next backoff from the beginning.
const STABLE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct ServerState {
    peer: Option<Peer<RoleClient>>,
    tools: Vec<ToolInfo>,
    reason: Option<String>,
    restarts: u64,
}

struct Server {
    name: String,
    config: McpServerConfig,
    state: RwLock<ServerState>,
}

impl Server {
    fn state(&self) -> std::sync::RwLockReadGuard<'_, ServerState> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut ServerState)) {
        let mut state = self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut state);
    }
}

/// Every configured MCP server.
pub struct Tools {
    servers: Vec<Arc<Server>>,
}

impl Tools {
    /// Starts a supervisor per server (tracked by `tracker`, stopped by `shutdown`).
    /// `base_env` is the scrubbed environment the servers start from.
    pub fn start(
        configs: &std::collections::BTreeMap<String, McpServerConfig>,
        base_env: &[(String, String)],
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Arc<Tools> {
        let servers: Vec<Arc<Server>> = configs
            .iter()
            .map(|(name, config)| {
                Arc::new(Server {
                    name: name.clone(),
                    config: config.clone(),
                    state: RwLock::new(ServerState {
                        reason: Some("starting".into()),
                        ..Default::default()
                    }),
                })
            })
            .collect();
        for server in &servers {
            tracker.spawn(supervise(Arc::clone(server), base_env.to_vec(), shutdown.clone()));
        }
        Arc::new(Tools { servers })
    }

    /// The tools of the available servers and the state of every server.
    pub fn list(&self) -> ToolsResult {
        let mut result = ToolsResult::default();
        for server in &self.servers {
            let state = server.state();
            let available = state.peer.is_some();
            if available {
                result.tools.extend(state.tools.iter().cloned());
            }
            result.servers.push(ToolServerInfo {
                name: server.name.clone(),
                available,
                reason: if available { None } else { state.reason.clone() },
            });
        }
        result
    }

    /// `(available, configured)` servers, for health.
    pub fn counts(&self) -> (usize, usize) {
        let available = self
            .servers
            .iter()
            .filter(|server| server.state().peer.is_some())
            .count();
        (available, self.servers.len())
    }

    /// Calls `method` of server `tool`: `(ok, {content, is_error, structured_content?})`, or a
    /// failure naming the unknown or unavailable server or tool.
    pub async fn call(&self, params: &Map<String, Value>, timeout: Duration) -> Result<(bool, Value), String> {
        let tool = match params.get("tool") {
            Some(Value::String(tool)) if !tool.is_empty() => tool,
            Some(_) => return Err("tool: must be a non-empty string (the MCP server's name)".into()),
            None => return Err("tool: required (the MCP server's name)".into()),
        };
        let method = match params.get("method") {
            Some(Value::String(method)) if !method.is_empty() => method,
            Some(_) => return Err("method: must be a non-empty string (the tool's name)".into()),
            None => return Err("method: required (the tool's name)".into()),
        };
        let arguments = match params.get("params").or_else(|| params.get("arguments")) {
            None | Some(Value::Null) => None,
            Some(Value::Object(arguments)) => Some(arguments.clone()),
            Some(_) => return Err("params: must be an object (the tool's arguments)".into()),
        };
        let Some(server) = self.servers.iter().find(|server| &server.name == tool) else {
            let known: Vec<&str> = self.servers.iter().map(|server| server.name.as_str()).collect();
            return Err(format!("tool: no MCP server named {tool:?} (configured: {known:?})"));
        };
        let peer = {
            let state = server.state();
            let Some(peer) = state.peer.clone() else {
                let reason = state.reason.clone().unwrap_or_else(|| "not running".into());
                return Err(format!("tool: MCP server {tool:?} is not available: {reason}"));
            };
            if !state.tools.iter().any(|info| &info.name == method) {
                return Err(format!("method: MCP server {tool:?} has no tool {method:?}"));
            }
            peer
        };
        let mut request = CallToolRequestParams::new(method.clone());
        if let Some(arguments) = arguments {
            request = request.with_arguments(arguments);
        }
        let result = match tokio::time::timeout(timeout, peer.call_tool(request)).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => return Err(format!("MCP server {tool:?}: {error}")),
            Err(_) => return Err(format!("MCP server {tool:?}: no answer within {} s", timeout.as_secs())),
        };
        let is_error = result.is_error.unwrap_or(false);
        let content = serde_json::to_value(&result.content).map_err(|error| format!("MCP content: {error}"))?;
        let mut value = json!({"content": content, "is_error": is_error});
        if let Some(structured) = result.structured_content {
            value["structured_content"] = structured;
        }
        Ok((!is_error, value))
    }
}

async fn supervise(server: Arc<Server>, base_env: Vec<(String, String)>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_FIRST;
    while !shutdown.is_cancelled() {
        let began = Instant::now();
        let reason = run_once(&server, &base_env, &shutdown).await;
        server.update(|state| {
            state.peer = None;
            state.tools.clear();
            state.reason = Some(reason.clone());
        });
        if shutdown.is_cancelled() {
            break;
        }
        if began.elapsed() >= STABLE {
            backoff = BACKOFF_FIRST;
        }
        tracing::warn!(server = %server.name, %reason, retry_in_ms = backoff.as_millis() as u64, "MCP server down");
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        server.update(|state| state.restarts += 1);
    }
}

/// Starts the server, serves it until it exits (or shutdown), and says why it is no longer there.
async fn run_once(server: &Server, base_env: &[(String, String)], shutdown: &CancellationToken) -> String {
    let config = &server.config;
    let mut command = tokio::process::Command::new(&config.command[0]);
    command
        .args(&config.command[1..])
        .env_clear()
        .envs(base_env.iter().map(|(name, value)| (name, value)))
        .envs(&config.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    crate::sys::die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return format!("cannot start {:?}: {error}", config.command[0]),
    };
    let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return "the server's stdio could not be taken".into();
    };
    let pid = child.id();
    let handshake = async {
        let running = ().serve((stdout, stdin)).await.map_err(|error| error.to_string())?;
        let tools = running
            .peer()
            .list_all_tools()
            .await
            .map_err(|error| error.to_string())?;
        Ok::<_, String>((running, tools))
    };
    let (running, tools) = tokio::select! {
        _ = shutdown.cancelled() => return "exec is stopping".into(),
        status = child.wait() => return format!("exited during startup ({})", describe_exit(status)),
        outcome = tokio::time::timeout(HANDSHAKE, handshake) => match outcome {
            Ok(Ok(started)) => started,
            Ok(Err(error)) => {
                stop(&mut child, pid).await;
                return format!("MCP handshake failed: {error}");
            }
            Err(_) => {
                stop(&mut child, pid).await;
                return format!("no MCP handshake within {} s", HANDSHAKE.as_secs());
            }
        },
    };
    let tools: Vec<ToolInfo> = tools
        .into_iter()
        .map(|tool| ToolInfo {
            server: server.name.clone(),
            name: tool.name.to_string(),
            description: tool.description.map(|text| text.to_string()).unwrap_or_default(),
            input_schema: Value::Object((*tool.input_schema).clone()),
        })
        .collect();
    tracing::info!(server = %server.name, pid = ?pid, tools = tools.len(), "MCP server ready");
    let peer = running.peer().clone();
    server.update(|state| {
        state.peer = Some(peer);
        state.tools = tools;
        state.reason = None;
    });
    let reason = tokio::select! {
        // Reaped: its pid may be reused from now on, so its group is not signalled.
        status = child.wait() => return format!("exited ({})", describe_exit(status)),
        _ = shutdown.cancelled() => "exec is stopping".to_owned(),
        quit = running.waiting() => format!("the connection ended ({quit:?})"),
    };
    stop(&mut child, pid).await;
    reason
}

/// Kills a server that has not been reaped yet (its group with it), then reaps it.
async fn stop(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(pid) = pid {
        crate::sys::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.wait().await;
}

fn describe_exit(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => error.to_string(),
    }
}
