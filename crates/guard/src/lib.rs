//! Policy decisions as pure functions (SPEC §8): no I/O except resolving paths on disk.
//!
//! [`decide`] takes one proposed action and answers allow, confirm or deny with the rule that
//! decided and a sentence saying why. The policy service records that and waits for humans; exec
//! calls [`paths::confine`] and [`net::check_ip`] again at execution time, when the file system and
//! DNS may have changed. Order: validation → deny rules → taint → allow rules → trust → default.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aiventbus_proto::TopicPattern;
use aiventbus_proto::agents::Trust;
use aiventbus_proto::policy::{AgentPolicy, Decision};
use serde_json::{Map, Value};

mod decide;
pub mod net;
pub mod paths;
mod patterns;
mod rules;
pub mod shell;
mod wrappers;

pub use decide::decide;

/// Mirrors `aiventbus_rpc::config::PolicyConfig` field by field (the values it needs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyInput {
    /// Topic patterns whose events taint the runs they trigger.
    pub untrusted_topics: Vec<String>,
    /// Directories file actions are confined to (`~` expands to the home directory).
    pub file_roots: Vec<String>,
    /// Hosts `http_request` may reach without asking (`example.com`, `*.example.com`).
    pub egress_allow: Vec<String>,
    /// Hosts or CIDRs allowed even though loopback, link-local or private.
    pub private_allow: Vec<String>,
    /// Per action type trust (`auto|confirm|deny`), overriding the defaults.
    pub trust: BTreeMap<String, String>,
    /// Commands auto-allowed, in addition to the built-in read-only ones.
    pub allow: Vec<ArgvPattern>,
    /// Commands always refused, in addition to the built-in deny rules.
    pub deny: Vec<ArgvPattern>,
    /// Whether the built-in read-only allow rules apply.
    pub builtin_allow: bool,
}

/// An argv pattern (`[[policy.allow]]`, `[[policy.deny]]`): a literal token matches itself (the
/// program by file name unless the pattern's program has a slash); `*` matches one argument that
/// is not a flag; `**` (last only) matches any remaining non-flag arguments; flags match only when
/// written literally. In deny patterns `*` and `**` match flags too, so a deny rule cannot be
/// sidestepped by adding one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgvPattern {
    /// The pattern tokens.
    pub argv: Vec<String>,
    /// Shown in decisions.
    pub reason: Option<String>,
}

/// Everything [`decide`] needs that does not change per action, built once from config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) untrusted: Vec<TopicPattern>,
    /// Canonical home directory.
    pub(crate) home: PathBuf,
    /// The home directory as configured (before canonicalization), for literal matches.
    pub(crate) home_literal: PathBuf,
    pub(crate) roots: Vec<PathBuf>,
    pub(crate) protected: Vec<paths::Protected>,
    pub(crate) egress_allow: Vec<net::HostPattern>,
    pub(crate) private_allow: Vec<net::PrivateAllow>,
    pub(crate) trust: BTreeMap<String, Trust>,
    pub(crate) allow: Vec<patterns::Pattern>,
    pub(crate) deny: Vec<patterns::Pattern>,
    pub(crate) builtin_allow: Vec<patterns::Pattern>,
}

impl Settings {
    /// From `[policy]` config values (already validated). `home` is the user's home dir;
    /// `protected` are extra dirs never touched (the daemon's state, runtime and config dirs).
    /// Errors name the offending key.
    pub fn new(config: &PolicyInput, home: &Path, protected: &[PathBuf]) -> Result<Settings, String> {
        if !home.is_absolute() {
            return Err(format!("home: {} is not an absolute path", home.display()));
        }
        let canonical_home = paths::resolve(home).map_err(|e| format!("home: {}: {e}", home.display()))?;
        let mut problems = Vec::new();
        let mut untrusted = Vec::new();
        for pattern in &config.untrusted_topics {
            match TopicPattern::parse(pattern) {
                Ok(parsed) => untrusted.push(parsed),
                Err(e) => problems.push(format!("untrusted_topics: {pattern:?}: {e}")),
            }
        }
        let mut roots = Vec::new();
        for root in &config.file_roots {
            let expanded = match paths::expand_home(root, home) {
                Some(expanded) if expanded.is_absolute() => expanded,
                _ => {
                    problems.push(format!(
                        "file_roots: {root:?} is not absolute and does not start with ~/"
                    ));
                    continue;
                }
            };
            match paths::resolve(&expanded) {
                Ok(canonical) => roots.push(canonical),
                Err(e) => problems.push(format!("file_roots: {root:?}: {e}")),
            }
        }
        let mut egress_allow = Vec::new();
        for host in &config.egress_allow {
            match net::HostPattern::parse(host) {
                Ok(pattern) => egress_allow.push(pattern),
                Err(e) => problems.push(format!("egress_allow: {host:?}: {e}")),
            }
        }
        let mut private_allow = Vec::new();
        for entry in &config.private_allow {
            match net::PrivateAllow::parse(entry) {
                Ok(allow) => private_allow.push(allow),
                Err(e) => problems.push(format!("private_allow: {entry:?}: {e}")),
            }
        }
        let mut trust = BTreeMap::new();
        for (action_type, word) in &config.trust {
            if !aiventbus_proto::agents::ACTION_TYPES.contains(&action_type.as_str()) {
                problems.push(format!("trust.{action_type}: unknown action type"));
                continue;
            }
            match parse_trust(word) {
                Some(value) => {
                    trust.insert(action_type.clone(), value);
                }
                None => problems.push(format!(
                    "trust.{action_type}: expected \"auto\", \"confirm\" or \"deny\", got {word:?}"
                )),
            }
        }
        let mut compile = |key: &str, list: &[ArgvPattern], kind: patterns::PatternKind| {
            let mut out = Vec::new();
            for (index, pattern) in list.iter().enumerate() {
                match patterns::Pattern::new(pattern, kind, format!("{}.config[{index}]", kind.prefix())) {
                    Ok(compiled) => out.push(compiled),
                    Err(e) => problems.push(format!("{key}[{index}].argv: {e}")),
                }
            }
            out
        };
        let allow = compile("allow", &config.allow, patterns::PatternKind::Allow);
        let deny = compile("deny", &config.deny, patterns::PatternKind::Deny);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let protected = paths::protected_list(&canonical_home, home, protected);
        Ok(Settings {
            untrusted,
            home: canonical_home,
            home_literal: home.to_path_buf(),
            roots,
            protected,
            egress_allow,
            private_allow,
            trust,
            allow,
            deny,
            builtin_allow: if config.builtin_allow {
                patterns::builtin_allow()
            } else {
                Vec::new()
            },
        })
    }

    /// The canonical home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The canonical file roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}

fn parse_trust(word: &str) -> Option<Trust> {
    match word {
        "auto" => Some(Trust::Auto),
        "confirm" => Some(Trust::Confirm),
        "deny" => Some(Trust::Deny),
        _ => None,
    }
}

/// One proposed action.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// One of the action types of SPEC §8.
    pub action_type: &'a str,
    /// The action's flat params.
    pub params: &'a Map<String, Value>,
    /// The proposing agent's settings (`None`: no agent settings apply).
    pub agent: Option<&'a AgentPolicy>,
    /// The run descends from an untrusted topic.
    pub tainted: bool,
    /// The local owner's own `exec.run`: only deny rules apply; anything else is allowed.
    pub owner: bool,
}

/// What [`decide`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allow, confirm or deny.
    pub decision: Decision,
    /// Stable machine name of the rule that decided (`deny.sudo`, `taint`, `allow.builtin[ls]`,
    /// `trust.default.shell_exec`, `shell_string`, …).
    pub rule: String,
    /// One human sentence naming the offending part.
    pub reason: String,
    /// For shell actions: every simple command found (argv), in order, nested ones included.
    pub commands: Vec<Vec<String>>,
    /// For file actions: the canonical path that was checked.
    pub resolved_path: Option<PathBuf>,
}

/// A check that refused: the rule and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({rule})")]
pub struct Refusal {
    /// Stable machine name of the rule (`deny.protected_path`, `deny.private_address`, …).
    pub rule: String,
    /// One human sentence.
    pub reason: String,
}

impl Refusal {
    pub(crate) fn new(rule: impl Into<String>, reason: impl Into<String>) -> Refusal {
        Refusal {
            rule: rule.into(),
            reason: reason.into(),
        }
    }
}

/// Whether any of these topics (an event and its ancestors) is untrusted.
pub fn is_tainted<'a>(settings: &Settings, topics: impl IntoIterator<Item = &'a str>) -> bool {
    topics
        .into_iter()
        .any(|topic| settings.untrusted.iter().any(|pattern| pattern.matches(topic)))
}
