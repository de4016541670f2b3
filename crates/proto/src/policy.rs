//! Actions, approvals, the policy dry run and the human-input hub (SPEC §8, §16). All of it belongs
//! to the policy service; the gateway forwards the public methods, llm calls `actions.propose`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::agents::Trust;
use crate::methods::{IdParams, Method};

// ---------------------------------------------------------------- decisions and records

/// What policy decided about an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Carried out without asking.
    Allow,
    /// Waits for a human.
    Confirm,
    /// Refused.
    Deny,
}

impl Decision {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Confirm => "confirm",
            Decision::Deny => "deny",
        }
    }
}

/// Where an action is in its life (SPEC §8): `waiting_confirmation → approved → executing →
/// succeeded|failed|interrupted`, or `→ denied | expired`. Auto-allowed actions start at `approved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Waiting for a human.
    WaitingConfirmation,
    /// Allowed (by policy or a human), not yet handed to exec.
    Approved,
    /// Handed to exec; the record was written before the side effect.
    Executing,
    /// Ran and worked.
    Succeeded,
    /// Ran and failed.
    Failed,
    /// exec went away while it ran; never re-run.
    Interrupted,
    /// Refused by policy or a human.
    Denied,
    /// Nobody decided before `expires_at`.
    Expired,
}

impl ActionStatus {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::WaitingConfirmation => "waiting_confirmation",
            ActionStatus::Approved => "approved",
            ActionStatus::Executing => "executing",
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
            ActionStatus::Interrupted => "interrupted",
            ActionStatus::Denied => "denied",
            ActionStatus::Expired => "expired",
        }
    }

    /// Parses the wire word.
    pub fn parse(text: &str) -> Option<ActionStatus> {
        Some(match text {
            "waiting_confirmation" => ActionStatus::WaitingConfirmation,
            "approved" => ActionStatus::Approved,
            "executing" => ActionStatus::Executing,
            "succeeded" => ActionStatus::Succeeded,
            "failed" => ActionStatus::Failed,
            "interrupted" => ActionStatus::Interrupted,
            "denied" => ActionStatus::Denied,
            "expired" => ActionStatus::Expired,
            _ => return None,
        })
    }

    /// No further change can happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActionStatus::Succeeded
                | ActionStatus::Failed
                | ActionStatus::Interrupted
                | ActionStatus::Denied
                | ActionStatus::Expired
        )
    }
}

/// One action and everything decided about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// `act_<ulid>`.
    pub id: String,
    /// One of the action types of SPEC §8.
    pub action_type: String,
    /// Its parameters, flat (`argv`, `command`, `path`, `url`, …).
    pub params: Map<String, Value>,
    /// Where it is.
    pub status: ActionStatus,
    /// The proposing agent (absent for the owner's `exec.run`).
    pub agent_id: Option<String>,
    /// The event whose run proposed it.
    pub event_id: Option<String>,
    /// That event's trace.
    pub trace_id: Option<String>,
    /// The agent run (`run_…`).
    pub run_id: Option<String>,
    /// The assignment of that run.
    pub assignment_id: Option<String>,
    /// The run descends from an untrusted topic.
    pub tainted: bool,
    /// Policy's decision.
    pub decision: Decision,
    /// The rule that made it (`deny.rm_recursive_root`, `taint`, `allow[2]`, `trust.shell_exec`, …).
    pub rule: String,
    /// Why, in words.
    pub reason: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// When a waiting action expires.
    pub expires_at: Option<String>,
    /// Who approved or denied it (`user:<name>`, `policy`).
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<String>,
    /// From where (`api.sock`, `http`, `atp`, `policy`).
    pub decided_via: Option<String>,
    /// A human's reason for a denial.
    pub denial_reason: Option<String>,
    /// exec's result once it ran (`{exit_code, stdout, …}`, `{content}`, `{status, body}`, …).
    pub result: Option<Value>,
    /// The exec run of a process action (`run_…`).
    pub exec_run_id: Option<String>,
}

/// `actions.pending` / `actions.history` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActionsResult {
    /// Newest first for history, oldest first for pending.
    pub actions: Vec<ActionRecord>,
}

method!(
    /// One action by id.
    ActionsGet, "actions.get", IdParams, ActionRecord
);
method!(
    /// Actions waiting for a human, oldest first.
    ActionsPending, "actions.pending", ActionsListParams, ActionsResult
);
method!(
    /// Past and present actions, newest first.
    ActionsHistory, "actions.history", ActionsListParams, ActionsResult
);

/// Filters of `actions.pending` and `actions.history`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsListParams {
    /// Only this status (history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ActionStatus>,
    /// Only this agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Only this trace's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

method!(
    /// Approves a waiting action (compare-and-set: -32003 unless it is `waiting_confirmation`).
    ActionsApprove, "actions.approve", DecideParams, ActionRecord
);
method!(
    /// Denies a waiting action (compare-and-set: -32003 unless it is `waiting_confirmation`).
    ActionsDeny, "actions.deny", DecideParams, ActionRecord
);

/// `actions.approve` / `actions.deny` params. `decided_by` and `via` are filled in by the gateway
/// from the connection; a value sent by a client is replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideParams {
    /// `act_…`.
    pub id: String,
    /// Why (deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Through which door (`api.sock`, `http`, `atp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

method!(
    /// Denies every waiting action (optionally one agent's).
    ActionsDenyPending, "actions.deny_pending", DenyPendingParams, DenyPendingResult
);

/// `actions.deny_pending` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyPendingParams {
    /// Only this agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Filled in by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Filled in by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// `actions.deny_pending` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DenyPendingResult {
    /// How many were denied.
    pub denied: u64,
    /// Which.
    pub ids: Vec<String>,
}

/// An agent's settings that policy weighs (llm owns agents and sends these along).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPolicy {
    /// `agt_…`.
    pub id: String,
    /// False: may only observe and notify.
    #[serde(default = "yes")]
    pub reactive: bool,
    /// The action types it may propose (`None` = all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_actions: Option<Vec<String>>,
    /// Per action type overrides of the default trust.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trust: BTreeMap<String, Trust>,
}

fn yes() -> bool {
    true
}

method!(
    /// Internal (llm → policy): one action an agent run proposes. Answers after an allowed action
    /// ran, at once for one that waits or is denied.
    ActionsPropose, "actions.propose", ProposeParams, ProposeResult
);

/// `actions.propose` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeParams {
    /// The action type.
    pub action_type: String,
    /// Its parameters (flat).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The proposing agent.
    pub agent: AgentPolicy,
    /// The event whose run proposes it (taint is computed from it and its ancestors).
    pub event_id: String,
    /// The run.
    pub run_id: String,
    /// The run's assignment.
    pub assignment_id: String,
}

/// `actions.propose` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposeResult {
    /// `act_…` (also for a denial: the record says why).
    pub action_id: String,
    /// `succeeded|failed` once run, `waiting_confirmation`, `denied`, or `interrupted`.
    pub status: ActionStatus,
    /// Policy's decision.
    pub decision: Decision,
    /// The rule.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// exec's result when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

method!(
    /// A dry run: what policy would decide about an action, and which rule decides; records nothing.
    PolicyExplain, "policy.explain", ExplainParams, Explanation
);

/// `policy.explain` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainParams {
    /// `{action_type, …params}` (params may also be nested under `params`).
    pub action: Map<String, Value>,
    /// The topic of the triggering event (taint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The agent whose settings apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// That agent's settings (filled in by the gateway from `agent_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentPolicy>,
}

/// `policy.explain` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The decision.
    pub decision: Decision,
    /// The rule that made it.
    pub rule: String,
    /// Why, in words.
    pub reason: String,
    /// Whether the run counts as tainted.
    pub tainted: bool,
    /// For shell strings: each simple command found, as argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Vec<String>>,
}

// ---------------------------------------------------------------- human input

/// A session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Busy.
    Working,
    /// Has a pending request.
    WaitingForInput,
    /// Finished.
    Done,
    /// Failed.
    Error,
    /// Silent for 120 s.
    Offline,
}

method!(
    /// Registers an agent session (in or out of the daemon).
    SessionsRegister, "sessions.register", SessionRegisterParams, SessionIdResult
);

/// `sessions.register` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRegisterParams {
    /// Shown to people.
    pub display_name: String,
    /// Anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// `{session_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionIdResult {
    /// `ses_…`.
    pub session_id: String,
}

method!(
    /// A session is still alive.
    SessionsHeartbeat, "sessions.heartbeat", SessionRef, SessionInfo
);

/// `{session_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRef {
    /// `ses_…`.
    pub session_id: String,
}

method!(
    /// Sets a session's state (`working|done|error`; `waiting_for_input` follows its requests).
    SessionsSetState, "sessions.set_state", SetStateParams, SessionInfo
);

/// `sessions.set_state` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStateParams {
    /// `ses_…`.
    pub session_id: String,
    /// The new state.
    pub state: SessionState,
}

method!(
    /// Every session.
    SessionsList, "sessions.list", SessionsListParams, SessionsResult
);

/// `sessions.list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsListParams {
    /// Only this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SessionState>,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// `ses_…`.
    pub session_id: String,
    /// Shown to people.
    pub display_name: String,
    /// Current state (`offline` after 120 s of silence).
    pub state: SessionState,
    /// Requests still pending.
    pub pending_requests: u64,
    /// RFC 3339 UTC.
    pub last_seen: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// As registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// `sessions.list` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionsResult {
    /// Newest first.
    pub sessions: Vec<SessionInfo>,
}

/// A human-input request's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for an answer.
    Pending,
    /// Answered.
    Answered,
    /// Dismissed; cannot be answered.
    Dismissed,
}

method!(
    /// Asks a human something on behalf of a session.
    RequestsCreate, "requests.create", RequestCreateParams, RequestIdResult
);

/// `requests.create` params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCreateParams {
    /// `ses_…`.
    pub session_id: String,
    /// Short title.
    pub title: String,
    /// The question.
    pub question: String,
    /// `low|medium|high|critical` (default `medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::Priority>,
    /// Anything that helps answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    /// Same key + same body → the same request; same key + another body → -32003.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `{request_id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestIdResult {
    /// `req_…`.
    pub request_id: String,
}

/// One human-input request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// `req_…`.
    pub request_id: String,
    /// `ses_…`.
    pub session_id: String,
    /// Short title.
    pub title: String,
    /// The question.
    pub question: String,
    /// Priority.
    pub priority: crate::Priority,
    /// As given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    /// State.
    pub status: RequestStatus,
    /// The answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_text: Option<String>,
    /// Who answered or dismissed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC, once answered or dismissed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
}

method!(
    /// One request by id.
    RequestsGet, "requests.get", IdParams, RequestInfo
);
method!(
    /// Requests, oldest first.
    RequestsList, "requests.list", RequestsListParams, RequestsResult
);

/// `requests.list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsListParams {
    /// Only this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RequestStatus>,
    /// Only this session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `requests.list` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestsResult {
    /// The requests.
    pub requests: Vec<RequestInfo>,
}

method!(
    /// Answers a pending request; the answer lands in the session's inbox.
    RequestsRespond, "requests.respond", RespondParams, RequestInfo
);

/// `requests.respond` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondParams {
    /// `req_…`.
    pub id: String,
    /// The answer.
    pub response_text: String,
    /// Makes a retry safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Filled in by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

method!(
    /// Dismisses a pending request; it can no longer be answered.
    RequestsDismiss, "requests.dismiss", DismissParams, RequestInfo
);

/// `requests.dismiss` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DismissParams {
    /// `req_…`.
    pub id: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Makes a retry safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Filled in by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
}

method!(
    /// A session's undelivered and unacked messages; waits up to `timeout_ms` (≤ 120 s) for one.
    InboxPoll, "inbox.poll", PollParams, PollResult
);

/// `inbox.poll` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// `ses_…`.
    pub session_id: String,
    /// How long to wait when nothing is there (default 0, at most 120 000).
    #[serde(default)]
    pub timeout_ms: u64,
}

/// A message's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Not yet returned by a poll.
    Pending,
    /// Returned by a poll, not acked.
    Delivered,
    /// Acked.
    Acked,
}

/// One inbox message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// `msg_…`.
    pub message_id: String,
    /// `input_response` or `request_dismissed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `{request_id, response_text}` …
    pub payload: Value,
    /// Delivery state.
    pub status: MessageStatus,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// `inbox.poll` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PollResult {
    /// Oldest first.
    pub messages: Vec<InboxMessage>,
}

method!(
    /// Acknowledges a message (acking twice is fine).
    InboxAck, "inbox.ack", AckParams, AckResult
);

/// `inbox.ack` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckParams {
    /// `ses_…`.
    pub session_id: String,
    /// `msg_…`.
    pub message_id: String,
}

/// `inbox.ack` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AckResult {
    /// False when it was already acked.
    pub acked: bool,
}
