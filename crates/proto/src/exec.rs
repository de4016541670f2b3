//! The exec service (SPEC §9): the owner's own commands (`exec.run|get|cancel`, public), and the
//! internal methods policy uses to carry out decided actions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::methods::Method;

method!(
    /// Runs the owner's own command (argv, no shell); answers `{run_id}` at once, output follows as
    /// `exec.*` events. Deny rules apply; nothing is confirmed.
    ExecRun, "exec.run", RunParams, RunIdResult
);

/// `exec.run` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory (default: exec's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The environment, as given (absent: a scrubbed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Bytes written to stdin, then closed (absent: stdin is /dev/null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Killed after this long (absent: runs to completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Who asks (filled in by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// `{run_id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunIdResult {
    /// `run_…`.
    pub run_id: String,
}

/// A process run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started, not finished.
    Running,
    /// Exited (any code) or was killed.
    Finished,
    /// exec went away while it ran.
    Interrupted,
    /// Could not be started.
    Failed,
}

/// One process run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `run_…`.
    pub run_id: String,
    /// The action or request it belongs to (`act_…`, or the run id itself for `exec.run`).
    pub correlation_id: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// State.
    pub status: RunStatus,
    /// Process id once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Exit code when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Wall time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Output went past the cap.
    pub truncated: bool,
    /// Why it could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

method!(
    /// One run by id.
    ExecGet, "exec.get", RunRef, RunInfo
);
method!(
    /// Kills a run's process group.
    ExecCancel, "exec.cancel", RunRef, CancelResult
);

/// `{run_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    /// `run_…`.
    pub run_id: String,
}

/// `exec.cancel` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CancelResult {
    /// False when it had already finished.
    pub cancelled: bool,
}

// ---------------------------------------------------------------- internal: policy → exec

method!(
    /// Internal (policy → exec): carries out one decided action, at most once. `token` is policy's
    /// exec token attenuated with `action=<action_id>` and a short expiry; anything else is refused.
    ExecExecute, "exec.execute", ExecuteParams, ExecuteResult
);

/// `exec.execute` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteParams {
    /// `act_…` (or `run_…` for the owner's `exec.run`, which policy forwards the same way).
    pub action_id: String,
    /// The attenuated capability token for this action.
    pub token: String,
    /// The action type.
    pub action_type: String,
    /// Its parameters (flat), as decided.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Events it causes carry this trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// …and this parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_event: Option<String>,
    /// The proposing agent (`emit_event` publishes as `agent:<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The owner's own command: keep env and cwd as given, no default timeout.
    #[serde(default)]
    pub owner: bool,
    /// For process runs of the owner: answer as soon as it started (`{run_id}`), not when it ends.
    #[serde(default)]
    pub detach: bool,
}

/// `exec.execute` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteResult {
    /// It worked (a process exited 0, a file was read, an HTTP request got an answer).
    pub ok: bool,
    /// What it produced: `{exit_code, signal, stdout, stderr, truncated, duration_ms}`,
    /// `{content}`, `{status, headers, body}`, `{error: {message}}`, …
    pub result: Value,
    /// The process run, for process actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

method!(
    /// Internal (policy → exec): what became of an action exec was handed (-32002 if never).
    ExecOutcome, "exec.outcome", ActionRef, Outcome
);

/// `{action_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRef {
    /// `act_…`.
    pub action_id: String,
}

/// An executed action as exec recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `act_…`.
    pub action_id: String,
    /// `executing`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    /// As in [`ExecuteResult`], once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The process run, for process actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

method!(
    /// Internal (policy → exec): a desktop notification (DBus, else `notify-send`, else nothing).
    ExecNotify, "exec.notify", NotifyParams, NotifyResult
);

/// `exec.notify` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyParams {
    /// Title.
    pub title: String,
    /// Body.
    pub message: String,
    /// `low|normal|critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
}

/// `exec.notify` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotifyResult {
    /// Whether something showed it.
    pub delivered: bool,
    /// `dbus`, `notify-send` or `none`.
    pub via: String,
}

method!(
    /// The tools of the configured MCP servers, for agents' prompts.
    ToolsList, "tools.list", crate::methods::NoParams, ToolsResult
);

/// One MCP tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The configured server's name (`tool_call.tool`).
    pub server: String,
    /// The tool's name (`tool_call.method`).
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of its arguments (`tool_call.params`).
    #[serde(default)]
    pub input_schema: Value,
}

/// An MCP server's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolServerInfo {
    /// Configured name.
    pub name: String,
    /// Whether it is running and answered.
    pub available: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `tools.list` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolsResult {
    /// Every tool of every available server.
    pub tools: Vec<ToolInfo>,
    /// Every configured server.
    pub servers: Vec<ToolServerInfo>,
}
