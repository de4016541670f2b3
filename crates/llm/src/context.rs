//! The context engine: the system prompt (the agent's own text plus the output contract naming
//! only the action types it may use) and the user message, built from blocks that each have their
//! own token budget (tokens estimated as characters / 4) — the event, its `context_refs` events,
//! knowledge facts newest first, recalled memories and the agent's recent runs — so a large block
//! is cut to its budget and never starves another.

use aiventbus_proto::agents::{ACTION_TYPES, Agent, PASSIVE_ACTION_TYPES, Trust};
use aiventbus_proto::exec::ToolInfo;
use aiventbus_proto::methods::{
    Fact, FactsResult, Get, IdParams, KnowledgeList, KnowledgeListParams, MemoriesResult, Memory, MemorySearch,
    MemorySearchParams,
};
use aiventbus_proto::{Event, Method};
use aiventbus_rpc::Client;
use aiventbus_rpc::config::ContextTokens;
use serde_json::Value;

use crate::providers::{ChatMessage, truncate};
use crate::transcript::{RecentRun, Transcripts};

/// Characters per estimated token.
const CHARS_PER_TOKEN: usize = 4;
/// Facts read from the bus per run (the budget decides how many are shown).
const FACTS_READ: u32 = 200;
/// Memories recalled per run.
const MEMORIES_READ: u32 = 10;
/// Recent runs read per run.
const RECENT_RUNS_READ: u32 = 5;
/// Most related events read.
const MAX_CONTEXT_REFS: usize = 10;
/// Most words in a memory search.
const MAX_SEARCH_WORDS: usize = 12;

/// The system prompt used when an agent has none.
const DEFAULT_SYSTEM_PROMPT: &str =
    "You are an agent of aiventbus, a local event bus. You receive one event and respond to it.";

/// What the blocks are built from, gathered from the bus and the transcripts.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Events named by the event's `context_refs` that exist.
    pub context_refs: Vec<Event>,
    /// Knowledge facts, newest first.
    pub facts: Vec<Fact>,
    /// Recalled memories, best first.
    pub memories: Vec<Memory>,
    /// The agent's recent runs in its memory scope, newest first.
    pub recent_runs: Vec<RecentRun>,
    /// The tools of the configured MCP servers (for `tool_call`).
    pub tools: Vec<ToolInfo>,
}

/// Characters of a tool's argument schema shown in the prompt.
const TOOL_SCHEMA_CHARS: usize = 600;
/// Tools listed in the prompt at most.
const MAX_TOOLS: usize = 50;

/// The action types an agent may use: `allowed_actions` (all when absent), only the passive ones
/// unless it is reactive, never one its trust map denies; in the order of `ACTION_TYPES`.
pub fn allowed_actions(agent: &Agent) -> Vec<&'static str> {
    ACTION_TYPES
        .iter()
        .copied()
        .filter(|action| {
            agent
                .allowed_actions
                .as_ref()
                .is_none_or(|allowed| allowed.iter().any(|a| a == action))
        })
        .filter(|action| agent.reactive || PASSIVE_ACTION_TYPES.contains(action))
        .filter(|action| agent.trust.get(*action) != Some(&Trust::Deny))
        .collect()
}

/// One line on an action type's parameters (SPEC §16).
fn action_help(action: &str) -> &'static str {
    match action {
        "emit_event" => {
            "emit_event {topic, payload}: publish a follow-up event (payload is an object; not in the system, agent, exec, action or request namespaces)"
        }
        "log" => "log {message}: write a line to the daemon's log",
        "alert" => "alert {title, message}: raise an alert for the user",
        "notify" => "notify {title, message}: show a desktop notification",
        "shell_exec" => {
            "shell_exec {argv: [program, args…]} or {command: \"shell string\"}, cwd?, timeout_ms?: run a command"
        }
        "file_read" => "file_read {path}: read a file",
        "file_write" => "file_write {path, content}: write a file",
        "file_delete" => "file_delete {path}: delete a file",
        "open_app" => "open_app {target}: open a file or URL with the desktop's default application",
        "http_request" => "http_request {method, url, headers?, body?}: make an HTTP request",
        "set_knowledge" => "set_knowledge {key, value}: remember a durable fact",
        "get_knowledge" => "get_knowledge {key}: look up a durable fact (the value comes back next round)",
        "tool_call" => "tool_call {tool, method, params}: call a tool of a tool server (listed below)",
        _ => "",
    }
}

/// The system prompt: the agent's own, then the output contract.
pub fn system_prompt(agent: &Agent, allowed: &[&str], tools: &[ToolInfo]) -> String {
    let own = agent
        .system_prompt
        .as_deref()
        .filter(|prompt| !prompt.trim().is_empty())
        .unwrap_or(DEFAULT_SYSTEM_PROMPT);
    let mut prompt = format!(
        "{own}\n\n## Output\nAnswer with exactly one JSON object and nothing else (no prose, no code fences):\n\
         {{\"type\": \"<one word: answer, analysis, …>\", \"summary\": \"<one or a few sentences>\", \
         \"confidence\": <0 to 1, optional>, \"proposed_actions\": [{{\"action_type\": \"<type>\", …its params}}]}}\n"
    );
    if allowed.is_empty() {
        prompt.push_str("You may not propose actions: always answer with \"proposed_actions\": [].\n");
    } else {
        prompt.push_str("Action types you may propose (use [] when none is needed):\n");
        for action in allowed {
            if *action == "tool_call" && tools.is_empty() {
                continue;
            }
            prompt.push_str("- ");
            prompt.push_str(action_help(action));
            prompt.push('\n');
        }
        if allowed.contains(&"tool_call") && !tools.is_empty() {
            prompt
                .push_str("Tools (tool_call \"tool\" is the server, \"method\" the tool, \"params\" its arguments):\n");
            for tool in tools.iter().take(MAX_TOOLS) {
                let schema = truncate(&tool.input_schema.to_string(), TOOL_SCHEMA_CHARS);
                prompt.push_str(&format!(
                    "- tool {:?}, method {:?}: {} arguments: {schema}\n",
                    tool.server,
                    tool.name,
                    truncate(tool.description.trim(), 300)
                ));
            }
        }
        prompt.push_str(
            "Every action is checked by the daemon's policy: its result, or the reason it was refused, comes back \
             to you in the next message; some actions wait for a person to approve them first.\n",
        );
    }
    prompt
}

/// The per-block budgets, scaled so they add up to `total` when a rule overrides the budget.
pub fn budgets(configured: ContextTokens, total: Option<u32>) -> ContextTokens {
    let Some(total) = total else { return configured };
    let sum = u64::from(configured.event)
        + u64::from(configured.context_refs)
        + u64::from(configured.knowledge)
        + u64::from(configured.memories)
        + u64::from(configured.recent_runs);
    let scale = |budget: u32| ((u64::from(budget) * u64::from(total)) / sum.max(1)).max(1) as u32;
    ContextTokens {
        event: scale(configured.event),
        context_refs: scale(configured.context_refs),
        knowledge: scale(configured.knowledge),
        memories: scale(configured.memories),
        recent_runs: scale(configured.recent_runs),
    }
}

/// The user message: every block that has content, each within its own budget.
pub fn user_prompt(event: &Event, sources: &Sources, budgets: &ContextTokens) -> String {
    let mut blocks = vec![block("Event", &event_lines(event), budgets.event)];
    let related: Vec<String> = sources
        .context_refs
        .iter()
        .map(|event| {
            format!(
                "- {} ({}, {}, from {}): {}",
                event.topic,
                event.id,
                event.ts,
                event.source,
                Value::Object(event.payload.clone())
            )
        })
        .collect();
    blocks.push(block("Related events", &related, budgets.context_refs));
    let facts: Vec<String> = sources
        .facts
        .iter()
        .map(|fact| match &fact.value {
            Value::String(text) => format!("{} = {text}", fact.key),
            other => format!("{} = {other}", fact.key),
        })
        .collect();
    blocks.push(block("Known facts (newest first)", &facts, budgets.knowledge));
    let memories: Vec<String> = sources
        .memories
        .iter()
        .map(|memory| format!("- {}", memory.content))
        .collect();
    blocks.push(block("Memories", &memories, budgets.memories));
    let runs: Vec<String> = sources
        .recent_runs
        .iter()
        .map(|run| format!("- On {} ({}): {}", run.topic, run.event_id, run.summary))
        .collect();
    blocks.push(block("Your recent runs", &runs, budgets.recent_runs));
    blocks.retain(|block| !block.is_empty());
    blocks.join("\n\n")
}

fn event_lines(event: &Event) -> Vec<String> {
    let mut lines = vec![
        format!("topic: {}", event.topic),
        format!("id: {}", event.id),
        format!("source: {}", event.source),
        format!("priority: {}", event.priority.as_str()),
        format!("ts: {}", event.ts),
    ];
    if let Some(semantic_type) = &event.semantic_type {
        lines.push(format!("semantic_type: {semantic_type}"));
    }
    lines.push(format!("payload: {}", Value::Object(event.payload.clone())));
    lines
}

/// A titled block holding as many lines as fit in `budget` tokens, in order; the first line that
/// does not fit is cut to the room left (when there is some) and the rest are left out, so a
/// block with content is never empty and never over its budget.
pub fn block(title: &str, lines: &[String], budget: u32) -> String {
    if lines.is_empty() || budget == 0 {
        return String::new();
    }
    let header = format!("## {title}\n");
    let limit = (budget as usize * CHARS_PER_TOKEN)
        .saturating_sub(header.chars().count())
        .max(16);
    let mut body = String::new();
    let mut used = 0;
    for (index, line) in lines.iter().enumerate() {
        let length = line.chars().count() + 1;
        if used + length > limit {
            // Room for the cut line, its ellipsis and newline.
            let room = limit - used;
            if index == 0 || room >= MIN_CUT_LINE {
                body.push_str(&truncate(line, room.saturating_sub(2)));
                body.push('\n');
            }
            break;
        }
        body.push_str(line);
        body.push('\n');
        used += length;
    }
    format!("{header}{}", body.trim_end())
}

/// The shortest useful remainder of a cut line.
const MIN_CUT_LINE: usize = 24;

/// Words to recall memories with: the topic's segments and the payload's text, longest first.
pub fn search_words(event: &Event) -> Option<String> {
    let mut text = event.topic.replace(['.', '_', '-'], " ");
    collect_text(&Value::Object(event.payload.clone()), &mut text, 4096);
    let mut words: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        let word = word.to_lowercase();
        if word.chars().count() < 3 || STOP_WORDS.contains(&word.as_str()) || words.contains(&word) {
            continue;
        }
        words.push(word);
        if words.len() == MAX_SEARCH_WORDS {
            break;
        }
    }
    (!words.is_empty()).then(|| words.join(" "))
}

const STOP_WORDS: [&str; 24] = [
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "her", "was", "one", "our", "out", "has",
    "have", "this", "that", "with", "what", "from", "they", "will",
];

fn collect_text(value: &Value, out: &mut String, limit: usize) {
    if out.len() >= limit {
        return;
    }
    match value {
        Value::String(text) => {
            out.push(' ');
            out.push_str(&truncate(text, limit - out.len().min(limit)));
        }
        Value::Array(items) => items.iter().for_each(|item| collect_text(item, out, limit)),
        Value::Object(map) => map.values().for_each(|item| collect_text(item, out, limit)),
        _ => {}
    }
}

/// Reads the sources from the bus and the transcripts; a source that fails is left out (logged).
pub async fn gather(bus: &Client, transcripts: &Transcripts, event: &Event, memory_scope: &str) -> Sources {
    let refs = async {
        let mut found = Vec::new();
        for id in event.context_refs.iter().take(MAX_CONTEXT_REFS) {
            match bus.call::<Get>(&IdParams { id: id.clone() }).await {
                Ok(event) => found.push(event),
                Err(error) => tracing::debug!(event = %id, %error, "context_ref not readable"),
            }
        }
        found
    };
    let facts = async {
        let params = KnowledgeListParams {
            prefix: None,
            limit: Some(FACTS_READ),
        };
        bus.call::<KnowledgeList>(&params)
            .await
            .map(|FactsResult { facts }| facts)
            .unwrap_or_else(|error| {
                tracing::warn!(method = KnowledgeList::NAME, %error, "context source failed");
                Vec::new()
            })
    };
    let memories = async {
        let Some(query) = search_words(event) else {
            return Vec::new();
        };
        let params = MemorySearchParams {
            query,
            scope: Some(memory_scope.to_owned()),
            limit: Some(MEMORIES_READ),
        };
        bus.call::<MemorySearch>(&params)
            .await
            .map(|MemoriesResult { memories }| memories)
            .unwrap_or_else(|error| {
                tracing::warn!(method = MemorySearch::NAME, %error, "context source failed");
                Vec::new()
            })
    };
    let recent = async {
        transcripts
            .recent(memory_scope, RECENT_RUNS_READ)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "recent runs unreadable");
                Vec::new()
            })
    };
    let (context_refs, mut facts, memories, recent_runs) = tokio::join!(refs, facts, memories, recent);
    // The bus lists newest first; keep that order whatever the source.
    facts.sort_by(|a, b| b.updated_at.cmp(&a.updated_at));
    Sources {
        tools: Vec::new(),
        context_refs,
        facts,
        memories,
        recent_runs,
    }
}

/// The first two messages of a run.
pub fn messages(
    agent: &Agent,
    allowed: &[&str],
    event: &Event,
    sources: &Sources,
    budgets: &ContextTokens,
) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", system_prompt(agent, allowed, &sources.tools)),
        ChatMessage::new("user", user_prompt(event, sources, budgets)),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use aiventbus_proto::agents::AgentKind;
    use aiventbus_proto::methods::MemoryKind;
    use aiventbus_proto::{EventStatus, Priority};
    use serde_json::json;

    pub fn agent() -> Agent {
        Agent {
            id: "agt_1".into(),
            name: "helper".into(),
            description: String::new(),
            kind: AgentKind::Llm,
            provider: Some("ollama".into()),
            model: Some("m".into()),
            system_prompt: Some("You help.".into()),
            temperature: 0.2,
            command: None,
            enabled: true,
            reactive: true,
            allowed_actions: None,
            trust: Default::default(),
            max_concurrent: 1,
            memory_scope: None,
            output_topic: None,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    pub fn event(topic: &str, payload: Value) -> Event {
        Event {
            id: "evt_1".into(),
            seq: 1,
            ts: "2026-01-01T00:00:00.000Z".into(),
            topic: topic.into(),
            payload: payload.as_object().cloned().unwrap_or_default(),
            source: "user:alice".into(),
            priority: Priority::Medium,
            semantic_type: None,
            dedupe_key: None,
            dedupe_count: 1,
            duplicate_of: None,
            trace_id: "tr_1".into(),
            parent_event: None,
            correlation_id: None,
            output_topic: None,
            context_refs: vec![],
            memory_scope: None,
            expires_at: None,
            depth: 0,
            status: EventStatus::Published,
        }
    }

    fn fact(key: &str, value: Value) -> Fact {
        Fact {
            key: key.into(),
            value,
            source: "user:alice".into(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn memory(content: &str) -> Memory {
        Memory {
            id: "mem_1".into(),
            kind: MemoryKind::Episodic,
            scope: "agent:agt_1".into(),
            content: content.into(),
            importance: 0.3,
            tags: vec![],
            source: "x".into(),
            created_at: String::new(),
            updated_at: String::new(),
            score: None,
        }
    }

    fn section<'a>(prompt: &'a str, title: &str) -> &'a str {
        let start = prompt
            .find(&format!("## {title}"))
            .unwrap_or_else(|| panic!("no {title} in {prompt}"));
        let rest = &prompt[start..];
        match rest[3..].find("\n\n## ") {
            Some(end) => &rest[..end + 3],
            None => rest,
        }
    }

    #[test]
    fn tools_are_listed_only_when_tool_call_is_allowed_and_some_exist() {
        let agent = agent();
        let allowed = allowed_actions(&agent);
        let none = system_prompt(&agent, &allowed, &[]);
        assert!(!none.contains("tool_call {"), "no tools, no tool_call: {none}");
        let tools = vec![ToolInfo {
            server: "files".into(),
            name: "search".into(),
            description: "Finds files by name".into(),
            input_schema: serde_json::json!({"type": "object", "properties": {"pattern": {"type": "string"}}}),
        }];
        let listed = system_prompt(&agent, &allowed, &tools);
        assert!(listed.contains("tool_call {tool, method, params}"));
        assert!(
            listed.contains("tool \"files\", method \"search\": Finds files by name"),
            "{listed}"
        );
        assert!(listed.contains("\"pattern\""));
        let mut limited = agent.clone();
        limited.allowed_actions = Some(vec!["log".into()]);
        let without = system_prompt(&limited, &allowed_actions(&limited), &tools);
        assert!(!without.contains("files"), "{without}");
    }

    #[test]
    fn allowed_actions_intersect_passive_and_trust() {
        let mut agent = agent();
        assert_eq!(allowed_actions(&agent).len(), ACTION_TYPES.len());
        agent.reactive = false;
        assert_eq!(allowed_actions(&agent), PASSIVE_ACTION_TYPES_IN_ORDER);
        agent.allowed_actions = Some(vec!["shell_exec".into(), "log".into(), "emit_event".into()]);
        assert_eq!(allowed_actions(&agent), ["emit_event", "log"]);
        agent.trust.insert("log".into(), Trust::Deny);
        assert_eq!(allowed_actions(&agent), ["emit_event"]);

        let prompt = system_prompt(&agent, &allowed_actions(&agent), &[]);
        assert!(prompt.starts_with("You help."));
        assert!(prompt.contains("emit_event {topic, payload}"));
        assert!(!prompt.contains("shell_exec"), "{prompt}");
        assert!(!prompt.contains("- log"), "{prompt}");
        let none = system_prompt(&agent, &[], &[]);
        assert!(none.contains("You may not propose actions"));
    }

    const PASSIVE_ACTION_TYPES_IN_ORDER: [&str; 6] =
        ["emit_event", "log", "alert", "notify", "set_knowledge", "get_knowledge"];

    #[test]
    fn no_block_starves_another() {
        let huge = "x".repeat(100_000);
        let event = event("user.query", json!({"text": huge}));
        let sources = Sources {
            tools: Vec::new(),
            context_refs: vec![self::event("note.big", json!({"body": "y".repeat(50_000)}))],
            facts: (0..2000)
                .map(|n| fact(&format!("fact.{n:04}"), json!("z".repeat(40))))
                .collect(),
            memories: (0..100)
                .map(|n| memory(&format!("memory {n} {}", "m".repeat(500))))
                .collect(),
            recent_runs: (0..5)
                .map(|n| RecentRun {
                    topic: "user.query".into(),
                    event_id: format!("evt_{n}"),
                    summary: "s".repeat(2000),
                    finished_ms: 0,
                })
                .collect(),
        };
        let budgets = ContextTokens::default();
        let prompt = user_prompt(&event, &sources, &budgets);
        for (title, budget) in [
            ("Event", budgets.event),
            ("Related events", budgets.context_refs),
            ("Known facts (newest first)", budgets.knowledge),
            ("Memories", budgets.memories),
            ("Your recent runs", budgets.recent_runs),
        ] {
            let text = section(&prompt, title);
            let chars = text.chars().count();
            assert!(
                chars <= budget as usize * CHARS_PER_TOKEN,
                "{title}: {chars} chars over {budget} tokens"
            );
            assert!(chars > 40, "{title} starved: {text:?}");
        }
        // Whole facts, newest (first) first, as many as fit.
        let facts = section(&prompt, "Known facts (newest first)");
        assert!(facts.contains("fact.0000 = zzz"));
        assert!(!facts.contains("fact.1999"));
        assert!(section(&prompt, "Event").contains("topic: user.query"));
    }

    #[test]
    fn a_single_oversized_fact_is_cut_not_dropped() {
        let sources = Sources {
            tools: Vec::new(),
            facts: vec![fact("user.bio", json!("b".repeat(10_000)))],
            ..Sources::default()
        };
        let budgets = ContextTokens {
            knowledge: 20,
            ..ContextTokens::default()
        };
        let prompt = user_prompt(&event("user.query", json!({})), &sources, &budgets);
        let facts = section(&prompt, "Known facts (newest first)");
        assert!(facts.contains("user.bio = bbb"), "{facts}");
        assert!(facts.chars().count() <= 80);
        // Empty sources make no blocks at all.
        assert!(!prompt.contains("## Memories"));
    }

    #[test]
    fn overrides_scale_every_block() {
        let scaled = budgets(ContextTokens::default(), Some(430));
        assert_eq!(scaled.event, 200);
        assert_eq!(scaled.knowledge, 50);
        assert!(scaled.recent_runs >= 1);
        assert_eq!(budgets(ContextTokens::default(), None), ContextTokens::default());
    }

    #[test]
    fn search_words_come_from_topic_and_payload() {
        let event = event("user.query", json!({"text": "What is the capital of France?", "n": 3}));
        let words = search_words(&event).unwrap();
        assert_eq!(words, "user query capital france");
        assert_eq!(search_words(&self::event("a.b", json!({}))), None);
    }
}
