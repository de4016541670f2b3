//! Runs every `[[case]]` of `tests/cases.toml` through `decide` and reports all mismatches at once.

use std::collections::{BTreeMap, HashSet};

use aiventbus_guard::{Request, decide};
use aiventbus_proto::agents::Trust;
use aiventbus_proto::policy::{AgentPolicy, Decision};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::fixture::{Fixture, fixture};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    action_type: String,
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    topic_tainted: bool,
    reactive: Option<bool>,
    allowed_actions: Option<Vec<String>>,
    trust: Option<BTreeMap<String, Trust>>,
    #[serde(default)]
    owner: bool,
    decision: Decision,
    rule: String,
    reason_contains: Option<String>,
    /// Every simple command the verdict lists, in order.
    commands: Option<Vec<Vec<String>>>,
}

/// `$HOME`/`$ROOT` in `path` and `cwd`, and `@HOME@` anywhere, become the fake home and root.
fn substitute(value: Value, key: Option<&str>, fixture: &Fixture) -> Value {
    let home = fixture.home.to_string_lossy();
    let root = fixture.root.to_string_lossy();
    match value {
        Value::String(text) => {
            let mut text = text.replace("@HOME@", &home);
            if matches!(key, Some("path" | "cwd")) {
                text = text.replace("$HOME", &home).replace("$ROOT", &root);
            }
            Value::String(text)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| substitute(v, None, fixture)).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = substitute(v, Some(&k), fixture);
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

fn load() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases.toml");
    let text = std::fs::read_to_string(path).expect("tests/cases.toml");
    let table: Table = toml::from_str(&text).expect("tests/cases.toml parses");
    table.case
}

#[test]
fn table_of_cases() {
    let fixture = fixture();
    let cases = load();
    assert!(cases.len() >= 80, "only {} cases", cases.len());
    let mut names = HashSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(names.insert(case.name.clone()), "duplicate case name {:?}", case.name);
        let params = serde_json::to_value(&case.params).expect("params convert to JSON");
        let Value::Object(params) = substitute(params, None, &fixture) else {
            unreachable!("a table converts to an object");
        };
        let params: Map<String, Value> = params;
        let agent =
            (case.reactive.is_some() || case.allowed_actions.is_some() || case.trust.is_some()).then(|| AgentPolicy {
                id: "agt_test".into(),
                reactive: case.reactive.unwrap_or(true),
                allowed_actions: case.allowed_actions.clone(),
                trust: case.trust.clone().unwrap_or_default(),
            });
        let request = Request {
            action_type: &case.action_type,
            params: &params,
            agent: agent.as_ref(),
            tainted: case.topic_tainted,
            owner: case.owner,
        };
        let verdict = decide(&fixture.settings, &request);
        let mut problems = Vec::new();
        if verdict.decision != case.decision {
            problems.push(format!("decision {:?}, expected {:?}", verdict.decision, case.decision));
        }
        if verdict.rule != case.rule {
            problems.push(format!("rule {:?}, expected {:?}", verdict.rule, case.rule));
        }
        if let Some(part) = &case.reason_contains
            && !verdict.reason.contains(part.as_str())
        {
            problems.push(format!("reason lacks {part:?}"));
        }
        if let Some(commands) = &case.commands
            && &verdict.commands != commands
        {
            problems.push(format!("commands {:?}, expected {commands:?}", verdict.commands));
        }
        if verdict.reason.is_empty() {
            problems.push("empty reason".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} (reason: {})",
                case.name,
                problems.join("; "),
                verdict.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
