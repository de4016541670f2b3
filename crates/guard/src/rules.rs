//! Argv patterns (built-in and configured allow and deny rules) and the built-in deny rules.

use crate::ArgvPattern;

/// Whether a pattern allows or denies (deny patterns let wildcards match flags too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatternKind {
    Allow,
    Deny,
}

impl PatternKind {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            PatternKind::Allow => "allow",
            PatternKind::Deny => "deny",
        }
    }
}

/// A compiled argv pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    pub(crate) tokens: Vec<String>,
    pub(crate) kind: PatternKind,
    pub(crate) rule: String,
    pub(crate) reason: Option<String>,
}

impl Pattern {
    pub(crate) fn new(pattern: &ArgvPattern, kind: PatternKind, rule: String) -> Result<Pattern, String> {
        if pattern.argv.is_empty() {
            return Err("the first element must name a program".into());
        }
        Ok(Pattern {
            tokens: pattern.argv.clone(),
            kind,
            rule,
            reason: pattern.reason.clone(),
        })
    }
}

pub(crate) fn builtin_allow() -> Vec<Pattern> {
    Vec::new()
}
