//! The decision pipeline (SPEC §8): validation → deny rules → (owner) → trust `deny` → taint →
//! allow rules → trust → default.

use std::path::{Path, PathBuf};

use aiventbus_proto::agents::{ACTION_TYPES, PASSIVE_ACTION_TYPES, Trust};
use aiventbus_proto::policy::Decision;
use serde_json::{Map, Value};

use crate::patterns::{Pattern, display_argv, quoted};
use crate::rules::Checker;
use crate::{Refusal, Request, Settings, Verdict, net, paths};

/// Action types a tainted run may propose only for a human to approve.
const TAINT_CAPPED: [&str; 6] = [
    "shell_exec",
    "file_write",
    "file_delete",
    "http_request",
    "tool_call",
    "open_app",
];

/// Action types carried out without asking unless configured otherwise.
const DEFAULT_AUTO: [&str; 7] = [
    "emit_event",
    "log",
    "alert",
    "notify",
    "set_knowledge",
    "get_knowledge",
    "file_read",
];

struct Outcome {
    decision: Decision,
    rule: String,
    reason: String,
}

fn outcome(decision: Decision, rule: impl Into<String>, reason: impl Into<String>) -> Outcome {
    Outcome {
        decision,
        rule: rule.into(),
        reason: reason.into(),
    }
}

impl From<Refusal> for Outcome {
    fn from(refusal: Refusal) -> Outcome {
        outcome(Decision::Deny, refusal.rule, refusal.reason)
    }
}

/// The validated params the later steps look at.
enum Params<'a> {
    Argv { argv: Vec<String>, cwd: Option<PathBuf> },
    Script { command: &'a str, cwd: Option<PathBuf> },
    File { path: &'a str },
    Http { url: &'a str },
    Other,
}

/// What the deny step learned that later steps need.
#[derive(Default)]
struct Found {
    commands: Vec<Vec<String>>,
    resolved_path: Option<PathBuf>,
    egress_host: Option<String>,
}

/// Decides one action: allow, confirm or deny, the rule that decided and why.
pub fn decide(settings: &Settings, request: &Request) -> Verdict {
    let mut found = Found::default();
    let outcome = evaluate(settings, request, &mut found);
    Verdict {
        decision: outcome.decision,
        rule: outcome.rule,
        reason: outcome.reason,
        commands: found.commands,
        resolved_path: found.resolved_path,
    }
}

fn evaluate(settings: &Settings, request: &Request, found: &mut Found) -> Outcome {
    let action = request.action_type;
    if !ACTION_TYPES.contains(&action) {
        return outcome(
            Decision::Deny,
            "unknown_action",
            format!(
                "{action:?} is not an action type (expected one of {})",
                ACTION_TYPES.join(", ")
            ),
        );
    }
    let params = match validate(settings, action, request.params) {
        Ok(params) => params,
        Err(message) => return outcome(Decision::Deny, "invalid_params", format!("{action}: {message}")),
    };
    if let Some(agent) = request.agent {
        if !agent.reactive && !PASSIVE_ACTION_TYPES.contains(&action) {
            return outcome(
                Decision::Deny,
                "passive_agent",
                format!(
                    "agent {} is passive (reactive: false) and may only {}; {action} is not one of them",
                    agent.id,
                    PASSIVE_ACTION_TYPES.join(", ")
                ),
            );
        }
        if let Some(allowed) = &agent.allowed_actions
            && !allowed.iter().any(|a| a == action)
        {
            return outcome(
                Decision::Deny,
                "allowed_actions",
                format!(
                    "{action} is not among agent {}'s allowed_actions ({})",
                    agent.id,
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            );
        }
    }

    // Deny rules.
    if let Err(refusal) = deny_rules(settings, action, &params, found) {
        return refusal.into();
    }
    if request.owner {
        return outcome(
            Decision::Allow,
            "owner",
            "the owner's own command; no deny rule matches it",
        );
    }
    let (trust, source) = trust_for(settings, request, action);
    let trust_rule = format!("trust.{source}.{action}");
    if trust == Trust::Deny {
        return outcome(
            Decision::Deny,
            trust_rule,
            format!("{action} is refused by {}", source_words(source, request)),
        );
    }

    // Taint.
    if request.tainted && TAINT_CAPPED.contains(&action) {
        return outcome(
            Decision::Confirm,
            "taint",
            format!(
                "the run descends from an event on an untrusted topic, so its {action} waits for a human's approval"
            ),
        );
    }

    // Allow rules.
    match &params {
        Params::Argv { argv, cwd } => {
            let shown = quoted(&display_argv(argv));
            let rule = settings
                .allow
                .iter()
                .chain(&settings.builtin_allow)
                .find(|pattern| pattern.matches(argv));
            if let Some(pattern) = rule {
                if let Some(outcome) = protected_argument(settings, argv, cwd.as_deref(), Some(pattern)) {
                    return outcome;
                }
                let why = match &pattern.reason {
                    Some(reason) => format!("{shown} matches {} ({reason})", display_argv(&pattern.tokens)),
                    None if pattern.rule.starts_with("allow.builtin") => {
                        format!(
                            "{shown} matches the built-in read-only rule {}",
                            display_argv(&pattern.tokens)
                        )
                    }
                    None => format!("{shown} matches policy.allow {}", display_argv(&pattern.tokens)),
                };
                return outcome(Decision::Allow, pattern.rule.clone(), why);
            }
        }
        Params::Script { command, .. } => {
            let count = found.commands.len();
            return outcome(
                Decision::Confirm,
                "shell_string",
                format!(
                    "{} is a shell string ({count} command{}); shell strings always wait for a human (give argv to match allow rules)",
                    quoted(command),
                    if count == 1 { "" } else { "s" }
                ),
            );
        }
        Params::Http { .. } => {
            if let Some(host) = &found.egress_host {
                return outcome(
                    Decision::Allow,
                    "egress_allow",
                    format!("{host} is on policy.egress_allow"),
                );
            }
        }
        Params::File { .. } | Params::Other => {}
    }

    // Trust.
    match trust {
        Trust::Auto => {
            if let Params::Argv { argv, cwd } = &params
                && let Some(outcome) = protected_argument(settings, argv, cwd.as_deref(), None)
            {
                return outcome;
            }
            outcome(
                Decision::Allow,
                trust_rule,
                format!(
                    "{action} is carried out without asking by {}",
                    source_words(source, request)
                ),
            )
        }
        Trust::Confirm => outcome(
            Decision::Confirm,
            trust_rule,
            format!(
                "{action} waits for a human's approval by {}",
                source_words(source, request)
            ),
        ),
        Trust::Deny => outcome(Decision::Deny, trust_rule, format!("{action} is refused")),
    }
}

fn source_words(source: &str, request: &Request) -> String {
    match (source, request.agent) {
        ("agent", Some(agent)) => format!("agent {}'s trust settings", agent.id),
        ("config", _) => "policy.trust".to_owned(),
        _ => "default".to_owned(),
    }
}

/// The trust of an action type and where it comes from (`agent`, `config`, `default`).
fn trust_for(settings: &Settings, request: &Request, action: &str) -> (Trust, &'static str) {
    if let Some(trust) = request.agent.and_then(|agent| agent.trust.get(action)) {
        return (*trust, "agent");
    }
    if let Some(trust) = settings.trust.get(action) {
        return (*trust, "config");
    }
    let default = if DEFAULT_AUTO.contains(&action) {
        Trust::Auto
    } else {
        Trust::Confirm
    };
    (default, "default")
}

fn deny_rules(settings: &Settings, action: &str, params: &Params, found: &mut Found) -> Result<(), Refusal> {
    match params {
        Params::Argv { argv, cwd } => {
            let mut checker = Checker::new(settings, cwd.clone());
            let result = checker.check_argv(argv);
            found.commands = checker.commands;
            result
        }
        Params::Script { command, cwd } => {
            let mut checker = Checker::new(settings, cwd.clone());
            let result = checker.check_script(command, "");
            found.commands = checker.commands;
            result
        }
        Params::File { path } => {
            let resolved = paths::confine(settings, path, false)?;
            found.resolved_path = Some(resolved.clone());
            if action == "file_delete" {
                if settings.roots.contains(&resolved) {
                    return Err(Refusal::new(
                        "deny.delete_root",
                        format!("{} is a file root itself; deleting it is refused", quoted(path)),
                    ));
                }
                if let Some(location) = paths::holds_protected(settings, &resolved) {
                    return Err(Refusal::new(
                        "deny.protected_path",
                        format!(
                            "deleting {} would delete the protected location {location}",
                            quoted(path)
                        ),
                    ));
                }
            }
            Ok(())
        }
        Params::Http { url } => {
            let check = net::check_url(settings, url)?;
            if check.egress_allowed {
                found.egress_host = Some(check.host);
            }
            Ok(())
        }
        Params::Other => Ok(()),
    }
}

/// Confirm when an argument (or the working directory) points into a protected location: such a
/// command is never auto-allowed, whatever rule would allow it. Arguments an allow pattern spells
/// out literally were chosen by whoever wrote the pattern, so only the others are looked at.
fn protected_argument(
    settings: &Settings,
    argv: &[String],
    cwd: Option<&Path>,
    pattern: Option<&Pattern>,
) -> Option<Outcome> {
    let shown = quoted(&display_argv(argv));
    let base = match cwd {
        Some(cwd) => {
            let resolved = paths::resolve_lenient(cwd);
            if let Some(location) = paths::protected(settings, &resolved) {
                return Some(outcome(
                    Decision::Confirm,
                    "protected_path",
                    format!(
                        "{shown} runs in {}, inside the protected location {location}",
                        cwd.display()
                    ),
                ));
            }
            resolved
        }
        None => settings.home.clone(),
    };
    for (index, arg) in argv.iter().enumerate().skip(1) {
        let literal = pattern
            .and_then(|pattern| pattern.tokens.get(index))
            .is_some_and(|token| token != "*" && token != "**");
        if literal {
            continue;
        }
        let value = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some((_, value)) => value,
                None => continue,
            }
        } else if arg.starts_with('-') && arg != "-" {
            continue;
        } else {
            arg.as_str()
        };
        if value.is_empty() || value == "-" {
            continue;
        }
        let expanded = expand_argument(value, settings);
        let resolved = if expanded.is_absolute() {
            paths::resolve_lenient(&expanded)
        } else {
            paths::resolve_under(&base, &expanded)
        };
        if let Some(location) = paths::protected(settings, &resolved) {
            return Some(outcome(
                Decision::Confirm,
                "protected_path",
                format!(
                    "{shown}: {} points into the protected location {location}",
                    quoted(value)
                ),
            ));
        }
    }
    None
}

fn expand_argument(value: &str, settings: &Settings) -> PathBuf {
    for prefix in ["$HOME", "${HOME}"] {
        if let Some(rest) = value.strip_prefix(prefix)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return settings.home.join(rest.trim_start_matches('/'));
        }
    }
    paths::expand_home(value, &settings.home).unwrap_or_else(|| PathBuf::from(value))
}

fn string_field<'a>(params: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match params.get(field) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text),
        Some(Value::String(_)) => Err(format!("params.{field} is empty")),
        Some(other) => Err(format!("params.{field} must be a string, got {}", kind(other))),
        None => Err(format!("params.{field} is required")),
    }
}

fn optional_string<'a>(params: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, String> {
    match params.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string_field(params, field).map(Some),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate<'a>(settings: &Settings, action: &str, params: &'a Map<String, Value>) -> Result<Params<'a>, String> {
    match action {
        "shell_exec" => validate_shell(settings, params),
        "file_read" | "file_delete" => Ok(Params::File {
            path: string_field(params, "path")?,
        }),
        "file_write" => {
            let path = string_field(params, "path")?;
            match params.get("content") {
                Some(Value::String(_)) => Ok(Params::File { path }),
                Some(other) => Err(format!("params.content must be a string, got {}", kind(other))),
                None => Err("params.content is required".into()),
            }
        }
        "http_request" => {
            let method = string_field(params, "method")?;
            if !matches!(method, "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") {
                return Err(format!(
                    "params.method {method:?} must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
                ));
            }
            let url = string_field(params, "url")?;
            match params.get("headers") {
                None | Some(Value::Null) => {}
                Some(Value::Object(headers)) => {
                    if let Some((name, value)) = headers.iter().find(|(_, value)| !value.is_string()) {
                        return Err(format!("params.headers.{name} must be a string, got {}", kind(value)));
                    }
                }
                Some(other) => return Err(format!("params.headers must be an object, got {}", kind(other))),
            }
            Ok(Params::Http { url })
        }
        "emit_event" => {
            let topic = string_field(params, "topic")?;
            aiventbus_proto::event::validate_topic(topic).map_err(|e| format!("params.topic {topic:?}: {e}"))?;
            if aiventbus_proto::event::is_reserved(topic) {
                return Err(format!(
                    "params.topic {topic:?} is in a reserved namespace ({})",
                    aiventbus_proto::event::RESERVED_NAMESPACES.join(", ")
                ));
            }
            match params.get("payload") {
                None | Some(Value::Null | Value::Object(_)) => Ok(Params::Other),
                Some(other) => Err(format!("params.payload must be an object, got {}", kind(other))),
            }
        }
        "notify" => {
            string_field(params, "title")?;
            string_field(params, "message")?;
            Ok(Params::Other)
        }
        "alert" => {
            optional_string(params, "title")?;
            string_field(params, "message")?;
            Ok(Params::Other)
        }
        "log" => {
            string_field(params, "message")?;
            Ok(Params::Other)
        }
        "set_knowledge" => {
            string_field(params, "key")?;
            match params.get("value") {
                None => Err("params.value is required".into()),
                Some(_) => Ok(Params::Other),
            }
        }
        "get_knowledge" => {
            string_field(params, "key")?;
            Ok(Params::Other)
        }
        "tool_call" => {
            string_field(params, "tool")?;
            string_field(params, "method")?;
            match params.get("params") {
                None | Some(Value::Null | Value::Object(_)) => Ok(Params::Other),
                Some(other) => Err(format!("params.params must be an object, got {}", kind(other))),
            }
        }
        "open_app" => {
            string_field(params, "app")?;
            match params.get("args") {
                None | Some(Value::Null) => Ok(Params::Other),
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => Ok(Params::Other),
                Some(other) => Err(format!("params.args must be an array of strings, got {}", kind(other))),
            }
        }
        _ => Ok(Params::Other),
    }
}

fn validate_shell<'a>(settings: &Settings, params: &'a Map<String, Value>) -> Result<Params<'a>, String> {
    let cwd = match optional_string(params, "cwd")? {
        None => None,
        Some(cwd) => match paths::expand_home(cwd, &settings.home) {
            Some(path) if path.is_absolute() => Some(paths::normalize(&path)),
            _ => return Err(format!("params.cwd {cwd:?} must be absolute or start with ~/")),
        },
    };
    if let Some(timeout) = params.get("timeout_ms")
        && !timeout.is_null()
        && timeout.as_u64().is_none()
    {
        return Err("params.timeout_ms must be a non-negative integer".into());
    }
    match (params.get("argv"), params.get("command")) {
        (Some(_), Some(_)) => Err("give either params.argv or params.command, not both".into()),
        (Some(Value::Array(items)), None) => {
            let argv = items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) if index > 0 || !text.is_empty() => Ok(text.clone()),
                    Value::String(_) => Err("params.argv[0] is empty".to_owned()),
                    other => Err(format!("params.argv[{index}] must be a string, got {}", kind(other))),
                })
                .collect::<Result<Vec<String>, String>>()?;
            if argv.is_empty() {
                return Err("params.argv must name a program".into());
            }
            if argv.iter().any(|arg| arg.contains('\0')) {
                return Err("params.argv contains a NUL byte".into());
            }
            Ok(Params::Argv { argv, cwd })
        }
        (Some(other), None) => Err(format!("params.argv must be an array of strings, got {}", kind(other))),
        (None, Some(_)) => {
            let command = string_field(params, "command")?;
            if command.trim().is_empty() {
                return Err("params.command is blank".into());
            }
            Ok(Params::Script { command, cwd })
        }
        (None, None) => Err("params.argv (an array) or params.command (a shell string) is required".into()),
    }
}
