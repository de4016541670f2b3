//! Routing rules as the router holds them: checking a `rules.create` / `rules.update` spec (every
//! message names the field), building the stored [`Rule`], and compiling it for matching.

use aiventbus_proto::TopicPattern;
use aiventbus_proto::agents::{Rule, RuleSpec};

/// Longest rule name, in characters.
pub const MAX_NAME: usize = 128;
/// Longest `semantic_type_pattern`, `source_pattern` or `model_override`, in characters.
pub const MAX_GLOB: usize = 255;
/// Largest `token_budget_override`.
pub const MAX_TOKEN_BUDGET: u32 = 1_000_000;
/// `priority_order` of a rule created without one.
pub const DEFAULT_PRIORITY_ORDER: i64 = 100;

/// A spec field that is wrong; the message starts with the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(field: &str, message: impl std::fmt::Display) -> Invalid {
    Invalid(format!("{field}: {message}"))
}

/// A rule ready for matching: the stored rule and its compiled topic pattern.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule as stored and returned to clients.
    pub rule: Rule,
    /// Its `topic_pattern`, compiled.
    pub topic: TopicPattern,
}

impl CompiledRule {
    /// Compiles a stored rule (whose pattern was checked when it was stored).
    pub fn compile(rule: Rule) -> Result<CompiledRule, Invalid> {
        let topic = check_topic_pattern(&rule.topic_pattern)?;
        Ok(CompiledRule { rule, topic })
    }
}

fn check_name(name: &str) -> Result<(), Invalid> {
    let length = name.chars().count();
    if length == 0 || length > MAX_NAME || name.trim().is_empty() {
        return Err(invalid("name", format!("must be 1-{MAX_NAME} characters, not blank")));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(())
}

fn check_topic_pattern(pattern: &str) -> Result<TopicPattern, Invalid> {
    let compiled = TopicPattern::parse(pattern).map_err(|message| invalid("topic_pattern", message))?;
    // `system.*` events are never routed (SPEC §5), so such a rule could never fire.
    if compiled.names_namespace("system") {
        return Err(invalid(
            "topic_pattern",
            format!("{pattern:?} names the system namespace, whose events are never routed"),
        ));
    }
    Ok(compiled)
}

/// A `*` glob: 1-255 characters without control characters; every character but `*` is literal.
fn check_glob(field: &str, glob: &str) -> Result<(), Invalid> {
    let length = glob.chars().count();
    if length == 0 || length > MAX_GLOB {
        return Err(invalid(field, format!("must be 1-{MAX_GLOB} characters")));
    }
    if glob.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_token_budget(budget: u32) -> Result<(), Invalid> {
    if budget == 0 || budget > MAX_TOKEN_BUDGET {
        return Err(invalid(
            "token_budget_override",
            format!("must be from 1 to {MAX_TOKEN_BUDGET}, got {budget}"),
        ));
    }
    Ok(())
}

fn check_agent_id(agent_id: &str) -> Result<(), Invalid> {
    if agent_id.is_empty() || agent_id.len() > 128 || agent_id.chars().any(char::is_control) {
        return Err(invalid("agent_id", "must be an agent id such as agt_01J…"));
    }
    Ok(())
}

/// An optional text field of an update: `""` clears it.
fn cleared(value: &str) -> bool {
    value.is_empty()
}

/// Checks every field `spec` sets, in field order; `create` also needs `name`, `topic_pattern`
/// and `agent_id`. Does not look the agent up (that needs llm).
pub fn check_spec(spec: &RuleSpec, create: bool) -> Result<(), Invalid> {
    match &spec.name {
        Some(name) => check_name(name)?,
        None if create => return Err(invalid("name", "is required")),
        None => {}
    }
    match &spec.topic_pattern {
        Some(pattern) => {
            check_topic_pattern(pattern)?;
        }
        None if create => return Err(invalid("topic_pattern", "is required")),
        None => {}
    }
    for (field, value) in [
        ("semantic_type_pattern", &spec.semantic_type_pattern),
        ("source_pattern", &spec.source_pattern),
        ("model_override", &spec.model_override),
    ] {
        // An update may clear these with "".
        if let Some(value) = value
            && (create || !cleared(value))
        {
            check_glob(field, value)?;
        }
    }
    match &spec.agent_id {
        Some(agent_id) => check_agent_id(agent_id)?,
        None if create => return Err(invalid("agent_id", "is required")),
        None => {}
    }
    if let Some(budget) = spec.token_budget_override {
        check_token_budget(budget)?;
    }
    Ok(())
}

/// The rule `rules.create` stores: `spec` (checked with [`check_spec`]) with the defaults filled
/// in. `agent_id` is the agent's canonical id as llm reported it.
pub fn new_rule(spec: RuleSpec, id: String, agent_id: String, now: &str) -> Result<Rule, Invalid> {
    check_spec(&spec, true)?;
    let (Some(name), Some(topic_pattern)) = (spec.name, spec.topic_pattern) else {
        return Err(invalid("name", "is required"));
    };
    Ok(Rule {
        id,
        name,
        topic_pattern,
        semantic_type_pattern: spec.semantic_type_pattern,
        min_priority: spec.min_priority,
        source_pattern: spec.source_pattern,
        agent_id,
        model_override: spec.model_override,
        token_budget_override: spec.token_budget_override,
        priority_order: spec.priority_order.unwrap_or(DEFAULT_PRIORITY_ORDER),
        enabled: spec.enabled.unwrap_or(true),
        created_at: now.to_owned(),
        updated_at: now.to_owned(),
    })
}

/// `rule` with the fields `spec` sets replaced (a partial update). `""` clears
/// `semantic_type_pattern`, `source_pattern` and `model_override`. `agent_id`, when given, is the
/// canonical id llm reported.
pub fn updated_rule(mut rule: Rule, spec: RuleSpec, agent_id: Option<String>, now: &str) -> Result<Rule, Invalid> {
    check_spec(&spec, false)?;
    let text = |value: Option<String>, current: Option<String>| match value {
        Some(value) if cleared(&value) => None,
        Some(value) => Some(value),
        None => current,
    };
    if let Some(name) = spec.name {
        rule.name = name;
    }
    if let Some(pattern) = spec.topic_pattern {
        rule.topic_pattern = pattern;
    }
    rule.semantic_type_pattern = text(spec.semantic_type_pattern, rule.semantic_type_pattern);
    rule.source_pattern = text(spec.source_pattern, rule.source_pattern);
    rule.model_override = text(spec.model_override, rule.model_override);
    if spec.min_priority.is_some() {
        rule.min_priority = spec.min_priority;
    }
    if let Some(agent_id) = agent_id {
        rule.agent_id = agent_id;
    }
    if spec.token_budget_override.is_some() {
        rule.token_budget_override = spec.token_budget_override;
    }
    if let Some(order) = spec.priority_order {
        rule.priority_order = order;
    }
    if let Some(enabled) = spec.enabled {
        rule.enabled = enabled;
    }
    rule.updated_at = now.to_owned();
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiventbus_proto::Priority;

    fn spec(name: &str, pattern: &str, agent: &str) -> RuleSpec {
        RuleSpec {
            name: Some(name.into()),
            topic_pattern: Some(pattern.into()),
            agent_id: Some(agent.into()),
            ..RuleSpec::default()
        }
    }

    fn message(result: Result<(), Invalid>) -> String {
        result.expect_err("expected a validation error").0
    }

    #[test]
    fn create_needs_name_pattern_and_agent() {
        let mut missing = spec("n", "fs.*", "agt_1");
        missing.name = None;
        assert_eq!(message(check_spec(&missing, true)), "name: is required");
        let mut missing = spec("n", "fs.*", "agt_1");
        missing.topic_pattern = None;
        assert_eq!(message(check_spec(&missing, true)), "topic_pattern: is required");
        let mut missing = spec("n", "fs.*", "agt_1");
        missing.agent_id = None;
        assert_eq!(message(check_spec(&missing, true)), "agent_id: is required");
        // An update may leave all of them out.
        assert!(check_spec(&RuleSpec::default(), false).is_ok());
    }

    #[test]
    fn every_message_names_its_field() {
        let long_name = "n".repeat(MAX_NAME + 1);
        let long_glob = "g".repeat(MAX_GLOB + 1);
        let cases: Vec<(RuleSpec, &str)> = vec![
            (spec("", "fs.*", "agt_1"), "name:"),
            (spec("   ", "fs.*", "agt_1"), "name:"),
            (spec(&long_name, "fs.*", "agt_1"), "name:"),
            (spec("a\u{7}b", "fs.*", "agt_1"), "name:"),
            (spec("n", "fs..x", "agt_1"), "topic_pattern:"),
            (spec("n", "FS.*", "agt_1"), "topic_pattern:"),
            (spec("n", "system.**", "agt_1"), "topic_pattern:"),
            (
                RuleSpec {
                    semantic_type_pattern: Some(long_glob.clone()),
                    ..spec("n", "fs.*", "agt_1")
                },
                "semantic_type_pattern:",
            ),
            (
                RuleSpec {
                    source_pattern: Some(String::new()),
                    ..spec("n", "fs.*", "agt_1")
                },
                "source_pattern:",
            ),
            (
                RuleSpec {
                    model_override: Some(long_glob),
                    ..spec("n", "fs.*", "agt_1")
                },
                "model_override:",
            ),
            (spec("n", "fs.*", ""), "agent_id:"),
            (
                RuleSpec {
                    token_budget_override: Some(0),
                    ..spec("n", "fs.*", "agt_1")
                },
                "token_budget_override:",
            ),
            (
                RuleSpec {
                    token_budget_override: Some(MAX_TOKEN_BUDGET + 1),
                    ..spec("n", "fs.*", "agt_1")
                },
                "token_budget_override:",
            ),
        ];
        for (spec, field) in cases {
            let message = message(check_spec(&spec, true));
            assert!(message.starts_with(field), "{field} not named first in {message:?}");
        }
        // The edges of every range are allowed.
        let edges = RuleSpec {
            semantic_type_pattern: Some("g".repeat(MAX_GLOB)),
            source_pattern: Some("*".into()),
            token_budget_override: Some(MAX_TOKEN_BUDGET),
            ..spec(&"n".repeat(MAX_NAME), "agent.**", "agt_1")
        };
        assert!(check_spec(&edges, true).is_ok());
        assert!(
            check_spec(
                &RuleSpec {
                    token_budget_override: Some(1),
                    ..spec("é", "**", "agt_1")
                },
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn new_rule_fills_defaults() {
        let rule = new_rule(
            spec("watch", "fs.**", "agt_x"),
            "rule_1".into(),
            "agt_X".into(),
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap();
        assert_eq!(rule.priority_order, DEFAULT_PRIORITY_ORDER);
        assert!(rule.enabled);
        assert_eq!(rule.agent_id, "agt_X", "the canonical id from llm is stored");
        assert_eq!(rule.created_at, rule.updated_at);
        assert!(CompiledRule::compile(rule).is_ok());
    }

    #[test]
    fn update_changes_only_given_fields_and_empty_text_clears() {
        let mut start = spec("watch", "fs.**", "agt_1");
        start.semantic_type_pattern = Some("file*".into());
        start.source_pattern = Some("producer:*".into());
        start.min_priority = Some(Priority::High);
        let rule = new_rule(start, "rule_1".into(), "agt_1".into(), "t0").unwrap();
        let changed = updated_rule(
            rule.clone(),
            RuleSpec {
                priority_order: Some(5),
                semantic_type_pattern: Some(String::new()),
                enabled: Some(false),
                ..RuleSpec::default()
            },
            None,
            "t1",
        )
        .unwrap();
        assert_eq!(changed.priority_order, 5);
        assert_eq!(changed.semantic_type_pattern, None);
        assert_eq!(changed.source_pattern.as_deref(), Some("producer:*"));
        assert_eq!(changed.min_priority, Some(Priority::High));
        assert!(!changed.enabled);
        assert_eq!((changed.created_at.as_str(), changed.updated_at.as_str()), ("t0", "t1"));
        assert_eq!(
            (&changed.name, &changed.topic_pattern),
            (&rule.name, &rule.topic_pattern)
        );

        let error = updated_rule(
            changed.clone(),
            RuleSpec {
                topic_pattern: Some("a.**.**b".into()),
                ..RuleSpec::default()
            },
            None,
            "t2",
        )
        .unwrap_err();
        assert!(error.0.starts_with("topic_pattern:"), "{error}");
    }
}
