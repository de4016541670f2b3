//! Agents, routing rules, assignments and the structured output agents answer with (SPEC §6, §7,
//! §16). Agents belong to the llm service, rules to the router, assignments to the bus.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Event, Priority};
use crate::methods::{DeleteResult, IdParams, IdResult, MemoriesResult, Method, NoParams};

// ---------------------------------------------------------------- agents

/// How an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// A model behind a provider (`ollama` or `openai`).
    Llm,
    /// A program: event JSON on stdin, structured output on stdout.
    Command,
}

/// What happens to an action type an agent proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Carried out without asking.
    Auto,
    /// Waits for a human.
    Confirm,
    /// Refused.
    Deny,
}

/// Every action type agents may propose (SPEC §8).
pub const ACTION_TYPES: [&str; 13] = [
    "emit_event",
    "log",
    "alert",
    "notify",
    "shell_exec",
    "file_read",
    "file_write",
    "file_delete",
    "open_app",
    "http_request",
    "set_knowledge",
    "get_knowledge",
    "tool_call",
];

/// The action types a passive (`reactive: false`) agent may use.
pub const PASSIVE_ACTION_TYPES: [&str; 6] = ["log", "alert", "notify", "emit_event", "set_knowledge", "get_knowledge"];

/// An agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// `agt_<ulid>`.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// How it runs.
    pub kind: AgentKind,
    /// `ollama` or `openai` (or another configured provider) for `llm` agents.
    pub provider: Option<String>,
    /// Model name on that provider (not checked against the server).
    pub model: Option<String>,
    /// System prompt.
    pub system_prompt: Option<String>,
    /// Sampling temperature, default 0.2.
    pub temperature: f64,
    /// argv for `command` agents.
    pub command: Option<Vec<String>>,
    /// Disabled agents get no new assignments.
    pub enabled: bool,
    /// False: may only observe and notify (see [`PASSIVE_ACTION_TYPES`]).
    pub reactive: bool,
    /// Action types it may propose; all when absent.
    pub allowed_actions: Option<Vec<String>>,
    /// Per action type trust, overriding the defaults.
    pub trust: BTreeMap<String, Trust>,
    /// Runs of this agent at once.
    pub max_concurrent: u32,
    /// Memory scope; `agent:<id>` when absent.
    pub memory_scope: Option<String>,
    /// Where its answers are published besides `agent.completed`.
    pub output_topic: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

method!(
    /// Creates an agent (a duplicate name is -32003, an unknown provider -32602).
    AgentsCreate, "agents.create", AgentSpec, IdResult
);

/// The settable fields of an agent; `agents.create` needs `name` and `kind`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Unique name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AgentKind>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Provider name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Temperature 0–2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// argv of a command agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactive: Option<bool>,
    /// Allowed action types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_actions: Option<Vec<String>>,
    /// Per-type trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<BTreeMap<String, Trust>>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Memory scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_scope: Option<String>,
    /// Output topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_topic: Option<String>,
}

method!(
    /// One agent by id (or name).
    AgentsGet, "agents.get", IdParams, Agent
);

method!(
    /// Every agent.
    AgentsList, "agents.list", NoParams, AgentsResult
);

/// A list of agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentsResult {
    /// The agents, by name.
    pub agents: Vec<Agent>,
}

method!(
    /// Changes an agent's fields.
    AgentsUpdate, "agents.update", AgentUpdateParams, Agent
);

/// `agents.update` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdateParams {
    /// Which agent.
    pub id: String,
    /// The fields to change.
    #[serde(flatten)]
    pub spec: AgentSpec,
}

method!(
    /// Removes an agent.
    AgentsDelete, "agents.delete", IdParams, DeleteResult
);

method!(
    /// Enables an agent.
    AgentsEnable, "agents.enable", IdParams, Agent
);

method!(
    /// Disables an agent.
    AgentsDisable, "agents.disable", IdParams, Agent
);

method!(
    /// An agent's memories (scope `agent:<id>` or its own scope), newest first or searched.
    AgentsMemory, "agents.memory", AgentMemoryParams, MemoriesResult
);

/// `agents.memory` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMemoryParams {
    /// Which agent.
    pub id: String,
    /// Search words; newest first when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

// ---------------------------------------------------------------- rules

/// A routing rule: all given conditions must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// `rule_<ulid>`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Topic pattern.
    pub topic_pattern: String,
    /// Glob on `semantic_type` (`*` wildcards).
    pub semantic_type_pattern: Option<String>,
    /// Lowest priority matched.
    pub min_priority: Option<Priority>,
    /// Glob on `source` (`*` wildcards).
    pub source_pattern: Option<String>,
    /// The agent that gets the work.
    pub agent_id: String,
    /// Model to use instead of the agent's.
    pub model_override: Option<String>,
    /// Token budget instead of the default.
    pub token_budget_override: Option<u32>,
    /// Rules are tried in ascending order.
    pub priority_order: i64,
    /// Disabled rules match nothing.
    pub enabled: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

method!(
    /// Creates a rule.
    RulesCreate, "rules.create", RuleSpec, IdResult
);

/// The settable fields of a rule; `rules.create` needs `name`, `topic_pattern` and `agent_id`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Topic pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// Glob on semantic_type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_type_pattern: Option<String>,
    /// Lowest priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_priority: Option<Priority>,
    /// Glob on source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pattern: Option<String>,
    /// Target agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Model override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_override: Option<String>,
    /// Token budget override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget_override: Option<u32>,
    /// Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_order: Option<i64>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

method!(
    /// One rule.
    RulesGet, "rules.get", IdParams, Rule
);

method!(
    /// Every rule in evaluation order.
    RulesList, "rules.list", NoParams, RulesResult
);

/// A list of rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RulesResult {
    /// Ascending `priority_order`.
    pub rules: Vec<Rule>,
}

method!(
    /// Changes a rule.
    RulesUpdate, "rules.update", RuleUpdateParams, Rule
);

/// `rules.update` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleUpdateParams {
    /// Which rule.
    pub id: String,
    /// The fields to change.
    #[serde(flatten)]
    pub spec: RuleSpec,
}

method!(
    /// Removes a rule.
    RulesDelete, "rules.delete", IdParams, DeleteResult
);

// ---------------------------------------------------------------- assignments

/// Scheduling lane of an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// `user.**`: a person is waiting.
    Interactive,
    /// Priority critical or `security.**`.
    Critical,
    /// Everything else.
    Ambient,
}

/// Where an assignment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentStatus {
    /// Waiting for a worker (or for its retry time).
    Pending,
    /// A worker holds its lease.
    Claimed,
    /// Done.
    Completed,
    /// Gave up.
    Failed,
    /// Suspended until a human decides on a proposed action.
    WaitingConfirmation,
    /// Cancelled before it ran.
    Cancelled,
}

/// One unit of work: an event for an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// `asg_<ulid>`.
    pub id: String,
    /// The event.
    pub event_id: String,
    /// Its trace.
    pub trace_id: String,
    /// The agent.
    pub agent_id: String,
    /// The rule that matched, if any.
    pub rule_id: Option<String>,
    /// Scheduling lane.
    pub lane: Lane,
    /// Status.
    pub status: AssignmentStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Not claimable before this (retry backoff), RFC 3339.
    pub not_before: Option<String>,
    /// Lease end while claimed, RFC 3339.
    pub lease_expires_at: Option<String>,
    /// Worker holding the lease.
    pub worker: Option<String>,
    /// Model override from the rule.
    pub model_override: Option<String>,
    /// Token budget override from the rule.
    pub token_budget_override: Option<u32>,
    /// Last error.
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

method!(
    /// Creates an assignment (idempotent per event and agent). Router only.
    AssignmentsCreate, "assignments.create", AssignmentCreateParams, AssignmentCreateResult
);

/// `assignments.create` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentCreateParams {
    /// The event.
    pub event_id: String,
    /// The agent.
    pub agent_id: String,
    /// The rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// Lane.
    pub lane: Lane,
    /// Attempts allowed (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Model override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_override: Option<String>,
    /// Token budget override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget_override: Option<u32>,
    /// Bound on the agent's pending ambient work: at or past it, a new ambient assignment is
    /// dropped (`dropped: true`, nothing stored); interactive and critical work is never dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
}

/// `assignments.create` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AssignmentCreateResult {
    /// The assignment id (the existing one when it was already there); empty when dropped.
    pub id: String,
    /// False when an assignment for that event and agent already existed, or it was dropped.
    pub created: bool,
    /// True when the agent's queue was full and this ambient work was dropped.
    #[serde(default)]
    pub dropped: bool,
}

method!(
    /// Claims pending work with a lease. llm only.
    AssignmentsClaim, "assignments.claim", ClaimParams, ClaimResult
);

/// `assignments.claim` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimParams {
    /// Who claims (one per llm process).
    pub worker: String,
    /// Only these agents (those with free capacity); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ids: Option<Vec<String>>,
    /// Only these lanes, in this order of preference; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<Vec<Lane>>,
    /// At most this many.
    pub limit: u32,
    /// Lease length.
    pub lease_ms: u64,
    /// When nothing is claimable, wait up to this long for work to arrive (long poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// A claimed assignment with its event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claimed {
    /// The assignment, now `claimed`.
    pub assignment: Assignment,
    /// Its event.
    pub event: Event,
}

/// `assignments.claim` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimResult {
    /// What was claimed, in the order to run it.
    pub claimed: Vec<Claimed>,
}

method!(
    /// Extends a lease.
    AssignmentsHeartbeat, "assignments.heartbeat", LeaseParams, LeaseResult
);

/// Params naming a claimed assignment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseParams {
    /// The assignment.
    pub id: String,
    /// The worker holding it.
    pub worker: String,
    /// New lease length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// Lease state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseResult {
    /// RFC 3339.
    pub lease_expires_at: String,
}

method!(
    /// Marks claimed work done.
    AssignmentsComplete, "assignments.complete", LeaseParams, Assignment
);

method!(
    /// Suspends claimed work while a human decides on an action it proposed: the lease is dropped
    /// and the assignment waits in `waiting_confirmation` until `assignments.resume`.
    AssignmentsSuspend, "assignments.suspend", LeaseParams, Assignment
);

method!(
    /// Returns suspended work to `pending` (the attempt it used does not count again).
    AssignmentsResume, "assignments.resume", IdParams, Assignment
);

method!(
    /// Marks claimed work failed: retried with backoff while attempts remain (unless `retry` is
    /// false), else `failed` plus `system.agent_failure`.
    AssignmentsFail, "assignments.fail", FailParams, Assignment
);

/// `assignments.fail` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailParams {
    /// The assignment.
    pub id: String,
    /// The worker holding it.
    pub worker: String,
    /// What went wrong.
    pub error: String,
    /// False: fail now without further attempts.
    #[serde(default = "yes")]
    pub retry: bool,
    /// True: the attempt does not count (the model server was down); back to pending.
    #[serde(default)]
    pub release: bool,
}

fn yes() -> bool {
    true
}

method!(
    /// Assignments, newest first.
    AssignmentsList, "assignments.list", AssignmentListParams, AssignmentsResult
);

/// `assignments.list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentListParams {
    /// Only this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AssignmentStatus>,
    /// Only this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Only this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Default 100, at most 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A list of assignments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AssignmentsResult {
    /// The assignments.
    pub assignments: Vec<Assignment>,
}

method!(
    /// Cancels pending assignments (of one agent, or all).
    AssignmentsCancelPending, "assignments.cancel_pending", CancelPendingParams, CancelPendingResult
);

/// `assignments.cancel_pending` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelPendingParams {
    /// Only this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// `assignments.cancel_pending` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelPendingResult {
    /// How many were cancelled.
    pub cancelled: u64,
}

method!(
    /// The enabled rules an event with these fields would match, in order (fan-out applied).
    RulesMatch, "rules.match", RuleMatchParams, RulesResult
);

/// `rules.match` params: the routing-relevant fields of an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatchParams {
    /// Topic.
    pub topic: String,
    /// Priority (default medium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Semantic type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_type: Option<String>,
}

method!(
    /// Model providers: reachable or not, why, which models.
    LlmStatus, "llm.status", NoParams, LlmStatusResult
);

/// `llm.status` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LlmStatusResult {
    /// One per configured provider.
    pub providers: Vec<ProviderStatus>,
}

/// One provider's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderStatus {
    /// `ollama`, `openai`, …
    pub name: String,
    /// Base URL.
    pub base_url: String,
    /// Whether the last health probe succeeded.
    pub reachable: bool,
    /// Why not, when not.
    pub why: Option<String>,
    /// Models the server lists.
    pub models: Vec<String>,
    /// RFC 3339 of the last probe.
    pub checked_at: Option<String>,
}

// ---------------------------------------------------------------- query

method!(
    /// Publishes `user.query` and answers with the final response of the first run of it.
    QueryAsk, "query.ask", QueryParams, QueryResult
);

/// `query.ask` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    /// The question.
    pub text: String,
    /// How long to wait (default 120 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A trace id chosen by the caller (`tr_…`), so it can follow the answer's `agent.stream`
    /// events while it waits; a new one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// `query.ask` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryResult {
    /// The `user.query` event.
    pub event_id: String,
    /// Its trace.
    pub trace_id: String,
    /// The agent's summary.
    pub summary: String,
    /// The agent's whole structured output.
    pub response: Value,
}

// ---------------------------------------------------------------- structured output

/// What an agent answers with (the model is asked for exactly this JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentOutput {
    /// A free word: `analysis`, `answer`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// One or a few sentences.
    pub summary: String,
    /// 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Actions it proposes.
    #[serde(default)]
    pub proposed_actions: Vec<ProposedAction>,
}

/// One proposed action: its type and its parameters (flat, or nested under `params`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposedAction {
    /// One of [`ACTION_TYPES`] (others become `system.unknown_action`).
    pub action_type: String,
    /// Everything else.
    #[serde(flatten)]
    pub params: Map<String, Value>,
}
