//! Which rules fire for an event, and in which lane its work runs: pure functions over compiled
//! rules and the routing-relevant fields of an event, shared by the bus follower and `rules.match`.

use aiventbus_proto::agents::Lane;
use aiventbus_proto::event::{is_reserved, namespace};
use aiventbus_proto::{Event, EventStatus, Priority, TopicPattern};

use crate::rules::CompiledRule;

/// What routing looks at in an event.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Priority.
    pub priority: Priority,
    /// Source, when known.
    pub source: Option<&'a str>,
    /// Semantic type, when set.
    pub semantic_type: Option<&'a str>,
}

impl<'a> Facts<'a> {
    /// The facts of a stored event.
    pub fn of(event: &'a Event) -> Facts<'a> {
        Facts {
            topic: &event.topic,
            priority: event.priority,
            source: Some(&event.source),
            semantic_type: event.semantic_type.as_deref(),
        }
    }
}

/// Whether a topic can ever be routed: `system.*` (the daemon's reports) and `agent.stream` (token
/// chunks) never are, whatever the rules say.
pub fn routable_topic(topic: &str) -> bool {
    namespace(topic) != "system" && topic != "agent.stream"
}

/// Whether a stored event is routed at all: its topic is routable and it was published (copies
/// and events refused by a chain limit are stored but never routed).
pub fn routable(event: &Event) -> bool {
    event.status == EventStatus::Published && routable_topic(&event.topic)
}

/// The lane of an event's work: `user.**` is interactive, priority critical or `security.**` is
/// critical, everything else ambient.
pub fn lane(topic: &str, priority: Priority) -> Lane {
    match namespace(topic) {
        "user" => Lane::Interactive,
        "security" => Lane::Critical,
        _ if priority == Priority::Critical => Lane::Critical,
        _ => Lane::Ambient,
    }
}

/// A `*` glob: `*` matches any run of characters (also none), every other character itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    // The last `*` seen and the text position it currently stands for; one backtrack point
    // suffices for `*`-only globs, so this is linear in practice.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

fn optional_glob(pattern: Option<&str>, value: Option<&str>) -> bool {
    match (pattern, value) {
        (None, _) => true,
        (Some(pattern), Some(value)) => glob_matches(pattern, value),
        // A condition on a field the event does not carry cannot hold.
        (Some(_), None) => false,
    }
}

/// Whether a topic in a reserved namespace may be routed by a rule with this pattern: only when
/// the pattern names that namespace literally, so `**` never sends agents the daemon's output.
fn reserved_allows(pattern: &TopicPattern, topic: &str) -> bool {
    !is_reserved(topic) || pattern.names_namespace(namespace(topic))
}

/// Whether one rule fires for these facts: enabled, and every condition it gives holds.
pub fn rule_matches(compiled: &CompiledRule, facts: &Facts<'_>) -> bool {
    let rule = &compiled.rule;
    rule.enabled
        && routable_topic(facts.topic)
        && compiled.topic.matches(facts.topic)
        && reserved_allows(&compiled.topic, facts.topic)
        && rule.min_priority.is_none_or(|min| facts.priority >= min)
        && optional_glob(rule.semantic_type_pattern.as_deref(), facts.semantic_type)
        && optional_glob(rule.source_pattern.as_deref(), facts.source)
}

/// The rules that fire for these facts, in evaluation order (`rules` is in ascending
/// `priority_order`, then creation): one per agent (the first matching rule of an agent wins),
/// agents `usable` says no to skipped, at most `max_fan_out`.
pub fn select<'r>(
    rules: &'r [CompiledRule],
    facts: &Facts<'_>,
    mut usable: impl FnMut(&str) -> bool,
    max_fan_out: usize,
) -> Vec<&'r CompiledRule> {
    let mut chosen: Vec<&CompiledRule> = Vec::new();
    for compiled in rules {
        if chosen.len() >= max_fan_out {
            break;
        }
        if !rule_matches(compiled, facts) {
            continue;
        }
        let agent = compiled.rule.agent_id.as_str();
        if chosen.iter().any(|earlier| earlier.rule.agent_id == agent) || !usable(agent) {
            continue;
        }
        chosen.push(compiled);
    }
    chosen
}

/// The agents the matching rules name, in order, each once: what [`select`] needs to know about.
pub fn candidate_agents<'r>(rules: &'r [CompiledRule], facts: &Facts<'_>) -> Vec<&'r str> {
    let mut agents: Vec<&str> = Vec::new();
    for compiled in rules {
        if rule_matches(compiled, facts) && !agents.contains(&compiled.rule.agent_id.as_str()) {
            agents.push(&compiled.rule.agent_id);
        }
    }
    agents
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiventbus_proto::agents::Rule;

    fn rule(id: &str, pattern: &str, agent: &str, order: i64) -> Rule {
        Rule {
            id: id.into(),
            name: id.into(),
            topic_pattern: pattern.into(),
            semantic_type_pattern: None,
            min_priority: None,
            source_pattern: None,
            agent_id: agent.into(),
            model_override: None,
            token_budget_override: None,
            priority_order: order,
            enabled: true,
            created_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    fn compile(rules: Vec<Rule>) -> Vec<CompiledRule> {
        let mut compiled: Vec<CompiledRule> = rules
            .into_iter()
            .map(|rule| CompiledRule::compile(rule).unwrap())
            .collect();
        // The store hands rules over in this order; stable, so equal orders keep creation order.
        compiled.sort_by_key(|c| c.rule.priority_order);
        compiled
    }

    fn facts(topic: &str) -> Facts<'_> {
        Facts {
            topic,
            priority: Priority::Medium,
            source: Some("user:alice"),
            semantic_type: None,
        }
    }

    fn ids(chosen: &[&CompiledRule]) -> Vec<String> {
        chosen.iter().map(|c| c.rule.id.clone()).collect()
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("file", "file", true),
            ("file", "files", false),
            ("file*", "file.created", true),
            ("*.created", "file.created", true),
            ("*.created", "file.deleted", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b", "ab", true),
            ("a**b", "aZb", true),
            ("user:*", "user:alice", true),
            ("user:*", "producer:fs", false),
            ("*:fs", "producer:fs", true),
            ("é*", "été", true),
            ("", "", true),
            ("", "x", false),
            ("x*", "", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern:?} ~ {text:?}");
        }
    }

    #[test]
    fn each_condition_and_their_conjunction() {
        let mut full = rule("full", "fs.*", "agt_a", 1);
        full.semantic_type_pattern = Some("file*".into());
        full.source_pattern = Some("producer:*".into());
        full.min_priority = Some(Priority::High);
        let rules = compile(vec![full]);
        let base = Facts {
            topic: "fs.created",
            priority: Priority::High,
            source: Some("producer:fs"),
            semantic_type: Some("file.text"),
        };
        // (what changes, matches?)
        let cases: Vec<(Facts<'_>, bool)> = vec![
            (base, true),
            (
                Facts {
                    priority: Priority::Critical,
                    ..base
                },
                true,
            ),
            (Facts { topic: "fs", ..base }, false),
            (
                Facts {
                    topic: "fs.a.b",
                    ..base
                },
                false,
            ),
            (
                Facts {
                    priority: Priority::Medium,
                    ..base
                },
                false,
            ),
            (
                Facts {
                    source: Some("user:bob"),
                    ..base
                },
                false,
            ),
            (Facts { source: None, ..base }, false),
            (
                Facts {
                    semantic_type: Some("image"),
                    ..base
                },
                false,
            ),
            (
                Facts {
                    semantic_type: None,
                    ..base
                },
                false,
            ),
        ];
        for (index, (facts, expected)) in cases.into_iter().enumerate() {
            assert_eq!(rule_matches(&rules[0], &facts), expected, "case {index}: {facts:?}");
        }
        // A rule without conditions besides the topic ignores the other fields.
        let bare = compile(vec![rule("bare", "fs.*", "agt_a", 1)]);
        assert!(rule_matches(
            &bare[0],
            &Facts {
                source: None,
                semantic_type: None,
                priority: Priority::Low,
                ..base
            }
        ));
    }

    #[test]
    fn disabled_rules_never_fire() {
        let mut off = rule("off", "**", "agt_a", 1);
        off.enabled = false;
        let rules = compile(vec![off, rule("on", "**", "agt_b", 2)]);
        assert_eq!(ids(&select(&rules, &facts("fs.created"), all, 3)), ["on"]);
    }

    #[test]
    fn ascending_order_one_per_agent_and_fan_out() {
        let rules = compile(vec![
            rule("late_a", "fs.**", "agt_a", 50),
            rule("early_a", "fs.*", "agt_a", 10),
            rule("b", "**", "agt_b", 20),
            rule("c", "fs.created", "agt_c", 30),
            rule("d", "fs.created", "agt_d", 40),
            rule("e_other_topic", "net.*", "agt_e", 0),
        ]);
        let chosen = select(&rules, &facts("fs.created"), all, 3);
        assert_eq!(ids(&chosen), ["early_a", "b", "c"], "ordered, capped at 3, agt_a once");
        let chosen = select(&rules, &facts("fs.created"), all, 10);
        assert_eq!(ids(&chosen), ["early_a", "b", "c", "d"]);
        let chosen = select(&rules, &facts("fs.created"), all, 1);
        assert_eq!(ids(&chosen), ["early_a"]);
        // Only agt_a's later rule matches a deeper topic.
        let chosen = select(&rules, &facts("fs.a.b"), all, 3);
        assert_eq!(ids(&chosen), ["b", "late_a"]);
        assert!(
            select(&rules, &facts("other"), |_| true, 3)
                .iter()
                .all(|c| c.rule.id == "b")
        );
        assert_eq!(
            candidate_agents(&rules, &facts("fs.created")),
            ["agt_a", "agt_b", "agt_c", "agt_d"]
        );
    }

    #[test]
    fn equal_order_keeps_creation_order() {
        let rules = compile(vec![
            rule("first", "**", "agt_a", 100),
            rule("second", "**", "agt_b", 100),
            rule("third", "**", "agt_a", 100),
        ]);
        assert_eq!(ids(&select(&rules, &facts("x"), all, 3)), ["first", "second"]);
    }

    #[test]
    fn disabled_agents_are_skipped_and_do_not_use_the_fan_out() {
        let rules = compile(vec![
            rule("a", "**", "agt_a", 1),
            rule("b", "**", "agt_b", 2),
            rule("b_again", "**", "agt_b", 3),
            rule("c", "**", "agt_c", 4),
            rule("d", "**", "agt_d", 5),
        ]);
        let chosen = select(&rules, &facts("x"), |agent| agent != "agt_b", 3);
        assert_eq!(ids(&chosen), ["a", "c", "d"]);
        assert!(select(&rules, &facts("x"), |_| false, 3).is_empty());
    }

    #[test]
    fn reserved_namespaces_need_a_rule_that_names_them() {
        let rules = compile(vec![
            rule("everything", "**", "agt_any", 1),
            rule("star", "*.completed", "agt_star", 2),
            rule("agents", "agent.**", "agt_agent", 3),
            rule("exec", "exec.finished", "agt_exec", 4),
            rule("actions", "action.*", "agt_action", 5),
            rule("requests", "request.**", "agt_request", 6),
        ]);
        let cases: [(&str, &[&str]); 8] = [
            ("fs.completed", &["everything", "star"]),
            ("agent.completed", &["agents"]),
            ("agent.stream", &[]),
            ("exec.finished", &["exec"]),
            ("exec.output", &[]),
            ("action.pending", &["actions"]),
            ("request.created", &["requests"]),
            ("system.unmatched", &[]),
        ];
        for (topic, expected) in cases {
            assert_eq!(ids(&select(&rules, &facts(topic), all, 10)), expected, "{topic}");
        }
        assert!(!routable_topic("system.service"));
        assert!(!routable_topic("agent.stream"));
        assert!(routable_topic("agent.completed"));
        assert!(routable_topic("systems.x"));
    }

    #[test]
    fn lanes() {
        let cases = [
            ("user.query", Priority::Medium, Lane::Interactive),
            ("user", Priority::Low, Lane::Interactive),
            ("user.query", Priority::Critical, Lane::Interactive),
            ("security.login", Priority::Low, Lane::Critical),
            ("security", Priority::Medium, Lane::Critical),
            ("disk.full", Priority::Critical, Lane::Critical),
            ("disk.full", Priority::High, Lane::Ambient),
            ("fs.created", Priority::Medium, Lane::Ambient),
            ("users.x", Priority::Medium, Lane::Ambient),
            ("securityx.y", Priority::Medium, Lane::Ambient),
        ];
        for (topic, priority, expected) in cases {
            assert_eq!(lane(topic, priority), expected, "{topic} {priority:?}");
        }
    }

    #[test]
    fn only_published_events_are_routed() {
        let event = |topic: &str, status| Event {
            id: "evt_1".into(),
            seq: 1,
            ts: "t".into(),
            topic: topic.into(),
            payload: Default::default(),
            source: "system".into(),
            priority: Priority::Medium,
            semantic_type: None,
            dedupe_key: None,
            dedupe_count: 1,
            duplicate_of: None,
            trace_id: "tr_1".into(),
            parent_event: None,
            correlation_id: None,
            output_topic: None,
            context_refs: Vec::new(),
            memory_scope: None,
            expires_at: None,
            depth: 0,
            status,
        };
        assert!(routable(&event("fs.created", EventStatus::Published)));
        assert!(!routable(&event("fs.created", EventStatus::Deduped)));
        assert!(!routable(&event("fs.created", EventStatus::Failed)));
        assert!(!routable(&event("system.service", EventStatus::Published)));
        assert!(!routable(&event("agent.stream", EventStatus::Published)));
    }
}
