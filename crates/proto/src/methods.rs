//! One marker type per method: its name, its params and its result. Servers register handlers by
//! marker and clients call by marker, so a method's shape is written down exactly once.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Event, EventStatus, Priority};

/// A JSON-RPC method: its name and the shapes of its params and result.
pub trait Method {
    /// `namespace.verb`.
    const NAME: &'static str;
    /// What the caller sends.
    type Params: Serialize + DeserializeOwned + Send + 'static;
    /// What the caller gets back.
    type Result: Serialize + DeserializeOwned + Send + 'static;
}

/// Params for methods that take none; accepts `{}`, `[]` or no params at all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

// ---------------------------------------------------------------- auth

method!(
    /// The first call on an internal socket: presents a capability token.
    Hello, "auth.hello", HelloParams, HelloResult
);

/// `auth.hello` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloParams {
    /// The capability token.
    pub token: String,
}

/// `auth.hello` result: what the token grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloResult {
    /// Who the token was minted for.
    pub subject: String,
    /// The service it is addressed to.
    pub audience: String,
    /// Methods or `ns.*` it allows.
    pub scope: Vec<String>,
    /// Unix milliseconds after which it is refused.
    pub expires_at_ms: u64,
}

// ---------------------------------------------------------------- events

method!(
    /// Publishes one event; answers once it is committed.
    Publish, "events.publish", PublishParams, PublishResult
);

/// `events.publish` params. Only `topic` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishParams {
    /// Dotted topic.
    pub topic: String,
    /// A JSON object; `{}` when absent.
    #[serde(default)]
    pub payload: Option<Value>,
    /// Defaults to `medium`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// A caller-chosen `evt_` id makes the publish safe to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Who published it; services set it for their clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Classification for routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_type: Option<String>,
    /// Copies inside the dedupe window are stored as `deduped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
    /// Inherited from the parent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The event this one reacts to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_event: Option<String>,
    /// Ties the event to an action, request or run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Where an answer should go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_topic: Option<String>,
    /// Related events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_refs: Option<Vec<String>>,
    /// Memory scope for agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_scope: Option<String>,
    /// RFC 3339; not acted upon afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `events.publish` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    /// The event id.
    pub id: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its trace.
    pub trace_id: String,
    /// `published`, `deduped` or `failed`.
    pub status: EventStatus,
}

method!(
    /// One event by id.
    Get, "events.get", IdParams, Event
);

/// Params naming one object by id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdParams {
    /// The id.
    pub id: String,
}

method!(
    /// Events in seq order, filtered.
    List, "events.list", ListParams, EventsResult
);

/// Default page size of `events.list`.
pub const LIST_DEFAULT_LIMIT: u32 = 100;
/// Largest page size of `events.list`.
pub const LIST_MAX_LIMIT: u32 = 5000;

/// `events.list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Exact topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Topic pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Only events with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<EventStatus>,
    /// Only events of this trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Exclusive lower bound on seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// Default 100, at most 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A list of events in seq order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsResult {
    /// The events.
    pub events: Vec<Event>,
}

method!(
    /// An event with its ancestors, root first.
    Chain, "events.chain", IdParams, EventsResult
);

method!(
    /// Every event of a trace, system events included, in seq order.
    Trace, "events.trace", TraceParams, EventsResult
);

/// `events.trace` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceParams {
    /// `tr_…`.
    pub trace_id: String,
}

method!(
    /// Subscribes to topics; events arrive as `events.event` notifications.
    Subscribe, "events.subscribe", SubscribeParams, SubscribeResult
);

/// The notification method that carries subscribed events.
pub const EVENTS_NOTIFICATION: &str = "events.event";

/// `events.subscribe` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeParams {
    /// Topic patterns; an event matching any is delivered.
    pub patterns: Vec<String>,
    /// First seq to deliver (inclusive); absent means live only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
}

/// Result of any subscribing method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// The subscription id used in notifications.
    pub subscription: String,
    /// The first seq this subscription can deliver: `from_seq`, or for a live subscription the
    /// seq after the newest committed event. A follower that saw nothing resumes from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_seq: Option<u64>,
}

method!(
    /// Ends a subscription.
    Unsubscribe, "events.unsubscribe", UnsubscribeParams, UnsubscribeResult
);

/// `events.unsubscribe` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeParams {
    /// The subscription id.
    pub subscription: String,
}

/// `events.unsubscribe` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnsubscribeResult {
    /// False when no such subscription was open on this connection.
    pub unsubscribed: bool,
}

method!(
    /// Topics seen, with counts.
    TopicsList, "topics.list", NoParams, TopicsResult
);

/// `topics.list` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopicsResult {
    /// One entry per topic, alphabetical.
    pub topics: Vec<TopicInfo>,
}

/// One topic's statistics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic.
    pub topic: String,
    /// Events stored under it.
    pub count: u64,
    /// Seq of the newest.
    pub last_seq: u64,
    /// Timestamp of the newest.
    pub last_ts: String,
}

// ---------------------------------------------------------------- system

method!(
    /// Version of the daemon and protocol.
    Version, "system.version", NoParams, VersionResult
);

/// `system.version` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionResult {
    /// Daemon version.
    pub version: String,
    /// Wire protocol version.
    pub protocol: u32,
}

method!(
    /// The supervised services and their states (answered by init).
    Services, "system.services", NoParams, ServicesResult
);

/// `system.services` result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServicesResult {
    /// One entry per service, in start order.
    pub services: Vec<ServiceInfo>,
}

/// A supervised service's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Short name: `bus`, `gateway`, …
    pub name: String,
    /// `starting`, `running`, `backoff`, `stopping`, `stopped` or `failed`.
    pub state: String,
    /// Process id while it runs.
    pub pid: Option<u32>,
    /// Restarts since init started.
    pub restarts: u32,
    /// RFC 3339 time of the last state change.
    pub since: String,
}

method!(
    /// The whole daemon's health: services, bus, model providers.
    Status, "system.status", NoParams, StatusResult
);

/// `system.status` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResult {
    /// Daemon version.
    pub version: String,
    /// Supervised services.
    pub services: Vec<ServiceInfo>,
    /// Bus figures, when the bus answers.
    pub bus: Option<Map<String, Value>>,
    /// Model providers (filled once the llm service exists).
    pub llm: LlmStatus,
}

/// Model provider reachability.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LlmStatus {
    /// One entry per configured provider.
    pub providers: Vec<Value>,
}

method!(
    /// A service's own liveness and figures; used by init's health checks and `system.status`.
    Health, "system.health", NoParams, HealthResult
);

/// `system.health` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthResult {
    /// The service's short name.
    pub service: String,
    /// Always `ok` when it answers.
    pub status: String,
    /// Service-specific figures.
    #[serde(default)]
    pub details: Map<String, Value>,
}

method!(
    /// Asks init to stop the daemon (answered by init).
    Shutdown, "system.shutdown", NoParams, ShutdownResult
);

/// `system.shutdown` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownResult {
    /// True once the shutdown has begun.
    pub stopping: bool,
}

// ---------------------------------------------------------------- knowledge

method!(
    /// Stores or replaces a durable fact.
    KnowledgeSet, "knowledge.set", KnowledgeSetParams, Fact
);

/// `knowledge.set` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeSetParams {
    /// Dotted key such as `user.pref.editor`: `[A-Za-z0-9_.:/-]`, at most 255 bytes.
    pub key: String,
    /// Any JSON value.
    pub value: Value,
    /// Who states it; the caller's identity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A durable fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// Who stated it last.
    pub source: String,
    /// RFC 3339 of the first set.
    pub created_at: String,
    /// RFC 3339 of the last set.
    pub updated_at: String,
}

method!(
    /// One fact by key (-32002 when absent).
    KnowledgeGet, "knowledge.get", KeyParams, Fact
);

/// Params naming one fact.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyParams {
    /// The key.
    pub key: String,
}

method!(
    /// Removes a fact.
    KnowledgeDelete, "knowledge.delete", KeyParams, DeleteResult
);

/// Result of a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResult {
    /// False when there was nothing to delete.
    pub deleted: bool,
}

method!(
    /// Facts whose key starts with a prefix, newest first.
    KnowledgeList, "knowledge.list", KnowledgeListParams, FactsResult
);

/// `knowledge.list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeListParams {
    /// Key prefix; all facts when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Default 100, at most 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A list of facts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FactsResult {
    /// Newest first.
    pub facts: Vec<Fact>,
}

// ---------------------------------------------------------------- memory

/// What kind of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// Facts and concepts.
    Semantic,
    /// Things that happened (finished runs are distilled into these).
    Episodic,
    /// How to do things.
    Procedural,
}

/// A memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// `mem_<ulid>`.
    pub id: String,
    /// Its kind.
    pub kind: MemoryKind,
    /// `global`, `agent:<id>` or a custom scope.
    pub scope: String,
    /// The text.
    pub content: String,
    /// 0 to 1.
    pub importance: f64,
    /// Free tags.
    pub tags: Vec<String>,
    /// Who added it.
    pub source: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Search rank (higher is better), present in search results only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

method!(
    /// Adds a memory.
    MemoryAdd, "memory.add", MemoryAddParams, IdResult
);

/// `memory.add` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryAddParams {
    /// Its kind.
    pub kind: MemoryKind,
    /// Scope.
    pub scope: String,
    /// The text.
    pub content: String,
    /// 0 to 1, default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<f64>,
    /// Free tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Who adds it; the caller's identity when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A created object's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdResult {
    /// The id.
    pub id: String,
}

method!(
    /// One memory by id.
    MemoryGet, "memory.get", IdParams, Memory
);

method!(
    /// Memories, newest first, filtered.
    MemoryList, "memory.list", MemoryListParams, MemoriesResult
);

/// `memory.list` params.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryListParams {
    /// Only this scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Only this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MemoryKind>,
    /// Only memories with this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Default 100, at most 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A list of memories.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoriesResult {
    /// The memories.
    pub memories: Vec<Memory>,
}

method!(
    /// Full-text search ranked by relevance, recency and importance.
    MemorySearch, "memory.search", MemorySearchParams, MemoriesResult
);

/// `memory.search` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySearchParams {
    /// Words to look for.
    pub query: String,
    /// Only this scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Default 10, at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

method!(
    /// Changes a memory's content, importance or tags.
    MemoryUpdate, "memory.update", MemoryUpdateParams, Memory
);

/// `memory.update` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryUpdateParams {
    /// Which memory.
    pub id: String,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New importance, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<f64>,
    /// New tags (replacing the old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

method!(
    /// Removes a memory.
    MemoryDelete, "memory.delete", IdParams, DeleteResult
);
