//! The event envelope (SPEC §5) and the syntax rules every service checks the same way.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;
/// Namespaces only the services may publish to.
pub const RESERVED_NAMESPACES: [&str; 5] = ["system", "agent", "exec", "action", "request"];

/// How urgent an event is. Ordered: `Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Ahead of medium.
    High,
    /// Its own lane.
    Critical,
}

impl Priority {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "medium" => Some(Priority::Medium),
            "high" => Some(Priority::High),
            "critical" => Some(Priority::Critical),
            _ => None,
        }
    }
}

/// What happened to an event when it was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Stored and eligible for routing.
    Published,
    /// A copy of a recent event with the same topic and dedupe key: stored, never routed.
    Deduped,
    /// Refused by a chain limit (depth or trace budget): stored, never routed.
    Failed,
}

impl EventStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Published => "published",
            EventStatus::Deduped => "deduped",
            EventStatus::Failed => "failed",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<EventStatus> {
        match s {
            "published" => Some(EventStatus::Published),
            "deduped" => Some(EventStatus::Deduped),
            "failed" => Some(EventStatus::Failed),
            _ => None,
        }
    }
}

/// A stored event, as every service and client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `evt_<ulid>`.
    pub id: String,
    /// Gap-free, strictly increasing per bus, starting at 1.
    pub seq: u64,
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Dotted topic.
    pub topic: String,
    /// Always a JSON object.
    pub payload: Map<String, Value>,
    /// `producer:<name>`, `agent:<id>`, `user:<name>`, `system` or `webhook:<path>`.
    pub source: String,
    /// Urgency.
    pub priority: Priority,
    /// Free-form classification used by routing rules.
    #[serde(default)]
    pub semantic_type: Option<String>,
    /// Events with the same topic and key inside the dedupe window are copies.
    #[serde(default)]
    pub dedupe_key: Option<String>,
    /// For an original: how many copies were seen, itself included.
    #[serde(default = "one")]
    pub dedupe_count: u64,
    /// For a copy: the id of the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// `tr_<ulid>`, inherited from the parent.
    pub trace_id: String,
    /// The event this one reacts to.
    #[serde(default)]
    pub parent_event: Option<String>,
    /// Ties an event to an action, request or run.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Where an agent's answer to this event should be published.
    #[serde(default)]
    pub output_topic: Option<String>,
    /// Ids of related events an agent should see.
    #[serde(default)]
    pub context_refs: Vec<String>,
    /// Memory scope for agents working on this event.
    #[serde(default)]
    pub memory_scope: Option<String>,
    /// After this instant the event is not acted upon.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Number of ancestors; a root has 0.
    pub depth: u32,
    /// What happened at publish.
    pub status: EventStatus,
}

fn one() -> u64 {
    1
}

/// Checks a topic: dot-separated segments of `[a-z0-9_-]+`, at most 255 bytes.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic must not be empty".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!("topic is {} bytes, the limit is {MAX_TOPIC_LEN}", topic.len()));
    }
    for segment in topic.split('.') {
        if segment.is_empty() {
            return Err(format!("topic {topic:?} has an empty segment"));
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(format!(
                "topic {topic:?} contains {bad:?}; segments are [a-z0-9_-]+ separated by dots"
            ));
        }
    }
    Ok(())
}

/// The first segment of a topic.
pub fn namespace(topic: &str) -> &str {
    topic.split('.').next().unwrap_or(topic)
}

/// Whether a topic lies in a namespace only services may publish to.
pub fn is_reserved(topic: &str) -> bool {
    RESERVED_NAMESPACES.contains(&namespace(topic))
}

/// Checks a `source` field: `system` or one of the known `kind:<name>` forms.
pub fn validate_source(source: &str) -> Result<(), String> {
    if source == "system" {
        return Ok(());
    }
    let Some((kind, name)) = source.split_once(':') else {
        return Err(format!(
            "source {source:?} must be system or kind:name with kind producer, agent, user or webhook"
        ));
    };
    if !matches!(kind, "producer" | "agent" | "user" | "webhook" | "service") {
        return Err(format!(
            "source kind {kind:?} is unknown; use producer, agent, user, webhook or service"
        ));
    }
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(format!("source name in {source:?} must be 1-255 printable characters"));
    }
    Ok(())
}

/// Checks a prefixed id such as `evt_01J…`: the prefix, then 1-64 characters of `[A-Za-z0-9_-]`.
pub fn validate_prefixed_id(value: &str, prefix: &str) -> Result<(), String> {
    let rest = value
        .strip_prefix(prefix)
        .ok_or_else(|| format!("{value:?} must start with {prefix:?}"))?;
    if rest.is_empty() || rest.len() > 64 || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!(
            "{value:?} must be {prefix} followed by 1-64 characters of [A-Za-z0-9_-]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        for ok in ["a", "fs.created", "user.query", "cron.job-1", "a_b.c9"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "A.b", "a b", "a.*", "ä"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
        assert!(validate_topic(&"a".repeat(256)).is_err());
        assert!(validate_topic(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn reserved() {
        assert!(is_reserved("system.service"));
        assert!(is_reserved("agent"));
        assert!(!is_reserved("systems.x"));
        assert!(!is_reserved("user.query"));
    }

    #[test]
    fn sources() {
        for ok in ["system", "user:alice", "producer:fs", "agent:agt_1", "webhook:github"] {
            assert!(validate_source(ok).is_ok(), "{ok}");
        }
        for bad in ["", "alice", "robot:x", "user:"] {
            assert!(validate_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn priorities_order() {
        assert!(Priority::Low < Priority::Medium && Priority::High < Priority::Critical);
        assert_eq!(Priority::parse("high"), Some(Priority::High));
    }
}
