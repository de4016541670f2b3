//! `[policy]` and `[exec]`: what agents may do and how it is carried out.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Visitor, nonzero_duration, size, small};

/// The default `policy.untrusted_topics` (SPEC §8).
pub const DEFAULT_UNTRUSTED_TOPICS: [&str; 6] = [
    "clipboard.**",
    "webhook.**",
    "fs.**",
    "syslog.**",
    "notification.**",
    "terminal.**",
];

/// An argv pattern rule: `argv` is matched token by token against a command's argv. A literal
/// token matches itself (the program by its file name or full path); `*` matches one argument
/// that is not a flag (does not start with `-`); `**` (last only) matches any remaining
/// non-flag arguments. Flags match only when written literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgvRule {
    /// The pattern.
    pub argv: Vec<String>,
    /// Shown in decisions.
    pub reason: Option<String>,
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Topic patterns whose events taint the runs they trigger (and their children).
    pub untrusted_topics: Vec<String>,
    /// Directories file actions are confined to (`~` expands to the home directory).
    pub file_roots: Vec<String>,
    /// Hosts `http_request` may reach without asking (`example.com`, `*.example.com`).
    pub egress_allow: Vec<String>,
    /// Hosts or CIDRs allowed even though loopback, link-local or private.
    pub private_allow: Vec<String>,
    /// How long an action waits for a human before it expires.
    pub approval_ttl: Duration,
    /// Proposals per agent and action type per minute; past it they are collapsed and refused.
    pub rate_limit: u32,
    /// Waiting actions per agent; past it new ones are refused.
    pub max_pending_per_agent: u32,
    /// Per action type trust, overriding the defaults (`auto|confirm|deny`).
    pub trust: BTreeMap<String, String>,
    /// Commands auto-allowed (argv patterns), in addition to the built-in read-only ones.
    pub allow: Vec<ArgvRule>,
    /// Commands always refused, in addition to the built-in deny rules.
    pub deny: Vec<ArgvRule>,
    /// Whether the built-in read-only allow rules apply.
    pub builtin_allow: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            untrusted_topics: DEFAULT_UNTRUSTED_TOPICS.iter().map(|s| (*s).to_owned()).collect(),
            file_roots: vec!["~".into()],
            egress_allow: Vec::new(),
            private_allow: Vec::new(),
            approval_ttl: Duration::from_secs(24 * 3600),
            rate_limit: 30,
            max_pending_per_agent: 20,
            trust: BTreeMap::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            builtin_allow: true,
        }
    }
}

/// `[exec.mcp.<name>]`: an MCP server on stdio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
}

/// `[exec]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// Timeout of agents' process actions.
    pub default_timeout: Duration,
    /// Output kept per stream of a process action (past it: `truncated`).
    pub max_output: u64,
    /// Time limit of one `http_request`.
    pub http_timeout: Duration,
    /// Largest `http_request` response body kept.
    pub http_max_body: u64,
    /// Largest file `file_read` returns.
    pub max_file_read: u64,
    /// Process runs at once.
    pub max_runs: u32,
    /// MCP servers by name.
    pub mcp: BTreeMap<String, McpServerConfig>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            default_timeout: Duration::from_secs(60),
            max_output: 1024 * 1024,
            http_timeout: Duration::from_secs(30),
            http_max_body: 1024 * 1024,
            max_file_read: 1024 * 1024,
            max_runs: 64,
            mcp: BTreeMap::new(),
        }
    }
}

fn strings(value: &toml::Value) -> Result<Vec<String>, String> {
    let array = value
        .as_array()
        .ok_or_else(|| format!("expected an array of strings, got {value}"))?;
    array
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("expected an array of strings, found {item}"))
        })
        .collect()
}

fn trust_word(value: &toml::Value) -> Result<String, String> {
    match value.as_str() {
        Some(word @ ("auto" | "confirm" | "deny")) => Ok(word.to_owned()),
        _ => Err(format!("expected \"auto\", \"confirm\" or \"deny\", got {value}")),
    }
}

impl Visitor<'_> {
    pub(super) fn policy(&mut self, entries: &toml::Table, policy: &mut PolicyConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "untrusted_topics" => self.set(key, value, &mut policy.untrusted_topics, |v| {
                    let patterns = strings(v)?;
                    for pattern in &patterns {
                        aiventbus_proto::TopicPattern::parse(pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
                    }
                    Ok(patterns)
                }),
                "file_roots" => self.set(key, value, &mut policy.file_roots, |v| {
                    let roots = strings(v)?;
                    for root in &roots {
                        if !(root.starts_with('/') || root == "~" || root.starts_with("~/")) {
                            return Err(format!("{root:?}: expected an absolute path or one starting with ~/"));
                        }
                    }
                    Ok(roots)
                }),
                "egress_allow" => self.set(key, value, &mut policy.egress_allow, strings),
                "private_allow" => self.set(key, value, &mut policy.private_allow, strings),
                "approval_ttl" => self.set(key, value, &mut policy.approval_ttl, nonzero_duration),
                "rate_limit" => self.set(key, value, &mut policy.rate_limit, |v| small(v, 1_000_000)),
                "max_pending_per_agent" => {
                    self.set(key, value, &mut policy.max_pending_per_agent, |v| small(v, 1_000_000))
                }
                "builtin_allow" => self.set(key, value, &mut policy.builtin_allow, |v| {
                    v.as_bool().ok_or_else(|| format!("expected true or false, got {v}"))
                }),
                "trust" => match value.as_table() {
                    Some(table) => {
                        for (action_type, word) in table {
                            let full = format!("trust.{action_type}");
                            if !aiventbus_proto::agents::ACTION_TYPES.contains(&action_type.as_str()) {
                                self.bad(&full, "unknown action type");
                                continue;
                            }
                            match trust_word(word) {
                                Ok(word) => {
                                    policy.trust.insert(action_type.clone(), word);
                                }
                                Err(message) => self.bad(&full, message),
                            }
                        }
                    }
                    None => self.bad(key, "expected a [policy.trust] table"),
                },
                "allow" | "deny" => {
                    let rules = match self.argv_rules(key, value) {
                        Some(rules) => rules,
                        None => continue,
                    };
                    if key == "allow" {
                        policy.allow = rules;
                    } else {
                        policy.deny = rules;
                    }
                }
                _ => self.bad(key, "unknown key"),
            }
        }
    }

    fn argv_rules(&mut self, key: &str, value: &toml::Value) -> Option<Vec<ArgvRule>> {
        let Some(array) = value.as_array() else {
            self.bad(key, "expected [[policy.KEY]] tables with an argv array");
            return None;
        };
        let mut rules = Vec::new();
        for (index, item) in array.iter().enumerate() {
            let full = format!("{key}[{index}]");
            let Some(table) = item.as_table() else {
                self.bad(&full, "expected a table with argv = [...]");
                continue;
            };
            let mut rule = ArgvRule {
                argv: Vec::new(),
                reason: None,
            };
            for (field, value) in table {
                match field.as_str() {
                    "argv" => match strings(value) {
                        Ok(argv) if !argv.is_empty() && argv[0] != "*" && argv[0] != "**" => rule.argv = argv,
                        Ok(_) => self.bad(&format!("{full}.argv"), "the first element must name a program"),
                        Err(message) => self.bad(&format!("{full}.argv"), message),
                    },
                    "reason" => match value.as_str() {
                        Some(reason) => rule.reason = Some(reason.to_owned()),
                        None => self.bad(&format!("{full}.reason"), format!("expected a string, got {value}")),
                    },
                    _ => self.bad(&format!("{full}.{field}"), "unknown key"),
                }
            }
            if let Some(position) = rule.argv.iter().position(|token| token == "**")
                && position + 1 != rule.argv.len()
            {
                self.bad(&format!("{full}.argv"), "\"**\" may only be the last element");
            }
            if !rule.argv.is_empty() {
                rules.push(rule);
            }
        }
        Some(rules)
    }

    pub(super) fn exec(&mut self, entries: &toml::Table, exec: &mut ExecConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "default_timeout" => self.set(key, value, &mut exec.default_timeout, nonzero_duration),
                "max_output" => self.set(key, value, &mut exec.max_output, size),
                "http_timeout" => self.set(key, value, &mut exec.http_timeout, nonzero_duration),
                "http_max_body" => self.set(key, value, &mut exec.http_max_body, size),
                "max_file_read" => self.set(key, value, &mut exec.max_file_read, size),
                "max_runs" => self.set(key, value, &mut exec.max_runs, |v| small(v, 10_000)),
                "mcp" => match value.as_table() {
                    Some(servers) => {
                        for (name, server) in servers {
                            let full = format!("mcp.{name}");
                            let Some(table) = server.as_table() else {
                                self.bad(&full, "expected a [exec.mcp.NAME] table");
                                continue;
                            };
                            let mut config = McpServerConfig {
                                command: Vec::new(),
                                env: BTreeMap::new(),
                            };
                            for (field, value) in table {
                                match field.as_str() {
                                    "command" => match strings(value) {
                                        Ok(argv) if !argv.is_empty() => config.command = argv,
                                        Ok(_) => self.bad(&format!("{full}.command"), "must name a program"),
                                        Err(message) => self.bad(&format!("{full}.command"), message),
                                    },
                                    "env" => match value.as_table() {
                                        Some(env) => {
                                            for (var, text) in env {
                                                match text.as_str() {
                                                    Some(text) => {
                                                        config.env.insert(var.clone(), text.to_owned());
                                                    }
                                                    None => self.bad(
                                                        &format!("{full}.env.{var}"),
                                                        format!("expected a string, got {text}"),
                                                    ),
                                                }
                                            }
                                        }
                                        None => self.bad(&format!("{full}.env"), "expected a table of strings"),
                                    },
                                    _ => self.bad(&format!("{full}.{field}"), "unknown key"),
                                }
                            }
                            if config.command.is_empty() {
                                self.bad(&format!("{full}.command"), "is required");
                            } else {
                                exec.mcp.insert(name.clone(), config);
                            }
                        }
                    }
                    None => self.bad(key, "expected [exec.mcp.NAME] tables"),
                },
                _ => self.bad(key, "unknown key"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn policy_and_exec_sections() {
        let text = r#"
[policy]
untrusted_topics = ["clipboard.**", "mail.*"]
file_roots = ["~/work", "/srv/data"]
egress_allow = ["api.example.com", "*.example.org"]
approval_ttl = "1h"
[policy.trust]
http_request = "deny"
[[policy.allow]]
argv = ["git", "status", "**"]
[[policy.deny]]
argv = ["shutdown", "**"]
reason = "not from agents"
[exec]
default_timeout = "5s"
max_output = "64KiB"
[exec.mcp.files]
command = ["mcp-files", "--root", "/srv"]
"#;
        let config = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(config.policy.untrusted_topics, vec!["clipboard.**", "mail.*"]);
        assert_eq!(config.policy.trust["http_request"], "deny");
        assert_eq!(config.policy.allow[0].argv, vec!["git", "status", "**"]);
        assert_eq!(config.policy.deny[0].reason.as_deref(), Some("not from agents"));
        assert_eq!(config.exec.max_output, 64 * 1024);
        assert_eq!(config.exec.mcp["files"].command[0], "mcp-files");
    }

    #[test]
    fn bad_policy_values_name_their_keys() {
        let text = r#"
[policy]
file_roots = ["relative/dir"]
bogus = 1
[policy.trust]
shell_exec = "sometimes"
teleport = "auto"
[[policy.allow]]
argv = ["**", "x"]
[exec.mcp.broken]
env = { A = "b" }
"#;
        let errors = Config::parse(text, Path::new("c.toml")).unwrap_err().to_string();
        for key in [
            "policy.file_roots",
            "policy.bogus",
            "policy.trust.shell_exec",
            "policy.trust.teleport",
            "policy.allow[0].argv",
            "exec.mcp.broken.command",
        ] {
            assert!(errors.contains(key), "{key} missing from {errors}");
        }
    }
}
