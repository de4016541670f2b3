//! Argv patterns: the built-in read-only allow rules and `[[policy.allow]]`/`[[policy.deny]]`,
//! matched token by token (never as string prefixes).

use std::path::Path;

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

/// A flag: starts with `-` and is not `-` alone (which names stdin).
pub(crate) fn is_flag(arg: &str) -> bool {
    arg.starts_with('-') && arg != "-"
}

/// The file name of a program path (`/bin/rm` → `rm`).
pub(crate) fn program_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// Directories an auto-allowed program given by full path may live in.
const SYSTEM_BIN_DIRS: [&str; 6] = [
    "/bin",
    "/usr/bin",
    "/usr/local/bin",
    "/sbin",
    "/usr/sbin",
    "/usr/local/sbin",
];

impl Pattern {
    pub(crate) fn new(pattern: &ArgvPattern, kind: PatternKind, rule: String) -> Result<Pattern, String> {
        match pattern.argv.first().map(String::as_str) {
            None | Some("*" | "**") => return Err("the first element must name a program".into()),
            _ => {}
        }
        if let Some(position) = pattern.argv.iter().position(|token| token == "**")
            && position + 1 != pattern.argv.len()
        {
            return Err("\"**\" may only be the last element".into());
        }
        Ok(Pattern {
            tokens: pattern.argv.clone(),
            kind,
            rule,
            reason: pattern.reason.clone(),
        })
    }

    fn builtin(tokens: &[&str]) -> Pattern {
        let mut name = tokens[0].to_owned();
        if let Some(sub) = tokens.get(1).filter(|t| !t.starts_with('-') && !t.starts_with('*')) {
            name = format!("{name} {sub}");
        }
        Pattern {
            tokens: tokens.iter().map(|t| (*t).to_owned()).collect(),
            kind: PatternKind::Allow,
            rule: format!("allow.builtin[{name}]"),
            reason: None,
        }
    }

    /// Whether the argv matches. A program token without a slash matches by file name; for allow
    /// patterns a program given by path must then live in a system bin directory, so a look-alike
    /// `./ls` written by an agent is not auto-allowed.
    pub(crate) fn matches(&self, argv: &[String]) -> bool {
        let Some((program, args)) = argv.split_first() else {
            return false;
        };
        let head = &self.tokens[0];
        let program_ok = if head.contains('/') {
            program == head
        } else if program.contains('/') {
            program_name(program) == head
                && (self.kind == PatternKind::Deny
                    || Path::new(program)
                        .parent()
                        .is_some_and(|dir| SYSTEM_BIN_DIRS.iter().any(|bin| dir == Path::new(bin))))
        } else {
            program == head
        };
        if !program_ok {
            return false;
        }
        let wildcard_ok = |arg: &String| self.kind == PatternKind::Deny || !is_flag(arg);
        let mut rest = args;
        for token in &self.tokens[1..] {
            match token.as_str() {
                "**" => return rest.iter().all(wildcard_ok),
                "*" => match rest.split_first() {
                    Some((arg, tail)) if wildcard_ok(arg) => rest = tail,
                    _ => return false,
                },
                literal => match rest.split_first() {
                    Some((arg, tail)) if arg == literal => rest = tail,
                    _ => return false,
                },
            }
        }
        rest.is_empty()
    }
}

/// The built-in read-only allow rules.
pub(crate) fn builtin_allow() -> Vec<Pattern> {
    let mut patterns = vec![Pattern::builtin(&["ls", "**"])];
    for flag in ["-l", "-a", "-la", "-al", "-h", "-lh", "-hl", "-1", "-lah", "-alh"] {
        patterns.push(Pattern::builtin(&["ls", flag, "**"]));
    }
    for tokens in [
        &["pwd"][..],
        &["date"],
        &["date", "-u"],
        &["date", "-I"],
        &["date", "-R"],
        &["whoami"],
        &["id"],
        &["uptime"],
        &["hostname"],
        &["nproc"],
        &["uname"],
        &["uname", "-a"],
        &["uname", "-r"],
        &["uname", "-m"],
        &["df"],
        &["df", "-h"],
        &["df", "-h", "**"],
        &["free"],
        &["free", "-h"],
        &["echo", "**"],
        &["true"],
        &["git", "status"],
        &["git", "status", "--short"],
        &["git", "status", "-s"],
        &["git", "log", "--oneline"],
        &["git", "log", "--oneline", "**"],
        &["git", "diff"],
        &["git", "diff", "--stat"],
        &["git", "branch"],
    ] {
        patterns.push(Pattern::builtin(tokens));
    }
    patterns
}

/// Quotes text for a reason, shortened.
pub(crate) fn quoted(text: &str) -> String {
    const MAX: usize = 160;
    if text.chars().count() <= MAX {
        format!("\"{text}\"")
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("\"{head}…\"")
    }
}

/// An argv written as a shell would show it.
pub(crate) fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%~*".contains(&b))
            {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn pattern(tokens: &[&str], kind: PatternKind) -> Pattern {
        Pattern::new(
            &ArgvPattern {
                argv: strings(tokens),
                reason: None,
            },
            kind,
            "t".into(),
        )
        .unwrap()
    }

    #[test]
    fn patterns_match_token_by_token() {
        let ls = pattern(&["ls", "-l", "**"], PatternKind::Allow);
        assert!(ls.matches(&strings(&["ls", "-l"])));
        assert!(ls.matches(&strings(&["ls", "-l", "a", "b"])));
        assert!(ls.matches(&strings(&["/bin/ls", "-l", "a"])));
        assert!(!ls.matches(&strings(&["/tmp/x/ls", "-l", "a"])));
        assert!(!ls.matches(&strings(&["./ls", "-l"])));
        assert!(!ls.matches(&strings(&["ls", "-l", "-a"])));
        assert!(!ls.matches(&strings(&["ls", "-la"])));
        assert!(!ls.matches(&strings(&["lsx", "-l"])));
        let one = pattern(&["cat", "*"], PatternKind::Allow);
        assert!(one.matches(&strings(&["cat", "x"])));
        assert!(!one.matches(&strings(&["cat"])));
        assert!(!one.matches(&strings(&["cat", "x", "y"])));
        assert!(!one.matches(&strings(&["cat", "-n"])));
        assert!(one.matches(&strings(&["cat", "-"])));
        let full = pattern(&["/usr/bin/make"], PatternKind::Allow);
        assert!(full.matches(&strings(&["/usr/bin/make"])));
        assert!(!full.matches(&strings(&["make"])));
        let deny = pattern(&["git", "push", "**"], PatternKind::Deny);
        assert!(deny.matches(&strings(&["/opt/git", "push", "--force", "origin"])));
        assert!(!deny.matches(&strings(&["git", "pull"])));
        assert!(
            Pattern::new(
                &ArgvPattern {
                    argv: strings(&["**", "x"]),
                    reason: None
                },
                PatternKind::Allow,
                "t".into()
            )
            .is_err()
        );
    }
}
