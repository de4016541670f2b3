//! The service's tunables (from `[policy]` and `[exec]`, with the fixed ones a test may shorten)
//! and the translation of `[policy]` into the decision engine's input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aiventbus_guard::{ArgvPattern, PolicyInput};
use aiventbus_rpc::config::{ArgvRule, ExecConfig, PolicyConfig};

/// How long policy waits for one `exec.execute` beyond the action's own time limit before it asks
/// `exec.outcome` instead.
const EXEC_MARGIN: Duration = Duration::from_secs(30);

/// Everything the service's behaviour depends on besides the decision rules.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an action waits for a human (`policy.approval_ttl`).
    pub approval_ttl: Duration,
    /// Proposals per agent and action type per window (`policy.rate_limit`).
    pub rate_limit: u32,
    /// The rate-limit window (a minute).
    pub rate_window: Duration,
    /// Waiting actions per agent (`policy.max_pending_per_agent`).
    pub max_pending_per_agent: u32,
    /// A session is `offline` after this long without a call naming it (120 s).
    pub offline_after: Duration,
    /// The longest `inbox.poll` wait (120 s).
    pub max_poll: Duration,
    /// The time limit exec gives agents' commands (`exec.default_timeout`).
    pub exec_timeout: Duration,
    /// Extra time allowed to one `exec.execute` call beyond the action's own limit.
    pub exec_margin: Duration,
    /// First wait between `exec.outcome` attempts; doubles up to [`Settings::outcome_backoff_max`].
    pub outcome_backoff: Duration,
    /// Longest wait between `exec.outcome` attempts.
    pub outcome_backoff_max: Duration,
    /// Lifetime of the per-action exec token.
    pub action_token_ttl: Duration,
    /// Finished actions and silent sessions are removed after this long.
    pub retention: Duration,
    /// Idempotency keys are remembered this long.
    pub idempotency_ttl: Duration,
}

impl Settings {
    /// The settings a deployment runs with.
    pub fn from_config(policy: &PolicyConfig, exec: &ExecConfig) -> Settings {
        Settings {
            approval_ttl: policy.approval_ttl,
            rate_limit: policy.rate_limit,
            rate_window: Duration::from_secs(60),
            max_pending_per_agent: policy.max_pending_per_agent,
            offline_after: Duration::from_secs(120),
            max_poll: Duration::from_secs(120),
            exec_timeout: exec.default_timeout,
            exec_margin: EXEC_MARGIN,
            outcome_backoff: Duration::from_millis(100),
            outcome_backoff_max: Duration::from_secs(2),
            action_token_ttl: Duration::from_secs(120),
            retention: Duration::from_secs(30 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

fn pattern(rule: &ArgvRule) -> ArgvPattern {
    ArgvPattern {
        argv: rule.argv.clone(),
        reason: rule.reason.clone(),
    }
}

/// `[policy]` as the decision engine takes it.
pub fn guard_input(policy: &PolicyConfig) -> PolicyInput {
    PolicyInput {
        untrusted_topics: policy.untrusted_topics.clone(),
        file_roots: policy.file_roots.clone(),
        egress_allow: policy.egress_allow.clone(),
        private_allow: policy.private_allow.clone(),
        trust: policy.trust.clone(),
        allow: policy.allow.iter().map(pattern).collect(),
        deny: policy.deny.iter().map(pattern).collect(),
        builtin_allow: policy.builtin_allow,
    }
}

/// The daemon's own directories, which file actions never touch: state, runtime and the config
/// file's directory.
pub fn protected_dirs(state_dir: &Path, runtime_dir: &Path, config_file: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![state_dir.to_path_buf(), runtime_dir.to_path_buf()];
    if let Some(parent) = config_file.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        dirs.push(parent.to_path_buf());
    }
    dirs
}

/// The user's home directory (`$HOME`, else `/`).
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
