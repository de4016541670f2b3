//! Rate limiting of proposals per (agent, action type): at most `limit` per window; the excess is
//! refused and counted, and the first refusal of a window hands out a [`Summary`] whose count keeps
//! growing until the window ends, so one report per window covers every suppressed proposal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Past this many tracked keys, windows that have ended are forgotten.
const PRUNE_AT: usize = 4096;

struct Window {
    start_ms: u64,
    admitted: u32,
    suppressed: Arc<AtomicU32>,
}

/// The suppressed proposals of one window, reported once when it ends.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The agent.
    pub agent_id: String,
    /// The action type.
    pub action_type: String,
    /// Unix ms the window started.
    pub window_start_ms: u64,
    /// Unix ms it ends.
    pub window_end_ms: u64,
    suppressed: Arc<AtomicU32>,
}

impl Summary {
    /// Proposals refused in the window so far.
    pub fn suppressed(&self) -> u32 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// Whether a proposal may go on.
#[derive(Debug)]
pub enum Admission {
    /// Within the limit.
    Admitted,
    /// Over it; `Some` for the window's first refusal (its report is the caller's to schedule).
    Limited(Option<Summary>),
}

/// Per (agent, action type) windows.
pub struct Limiter {
    limit: u32,
    window_ms: u64,
    windows: Mutex<HashMap<(String, String), Window>>,
}

impl Limiter {
    /// At most `limit` per `window`.
    pub fn new(limit: u32, window: Duration) -> Limiter {
        Limiter {
            limit,
            window_ms: (window.as_millis() as u64).max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a proposal at `now_ms`.
    pub fn admit(&self, agent_id: &str, action_type: &str, now_ms: u64) -> Admission {
        // The map holds plain counters; a panic elsewhere cannot leave it inconsistent.
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= PRUNE_AT {
            let window_ms = self.window_ms;
            windows.retain(|_, window| window.start_ms + window_ms > now_ms);
        }
        let key = (agent_id.to_owned(), action_type.to_owned());
        let window = windows.entry(key).or_insert_with(|| Window {
            start_ms: now_ms,
            admitted: 0,
            suppressed: Arc::new(AtomicU32::new(0)),
        });
        if now_ms >= window.start_ms + self.window_ms {
            *window = Window {
                start_ms: now_ms,
                admitted: 0,
                suppressed: Arc::new(AtomicU32::new(0)),
            };
        }
        if window.admitted < self.limit {
            window.admitted += 1;
            return Admission::Admitted;
        }
        let before = window.suppressed.fetch_add(1, Ordering::Relaxed);
        let summary = (before == 0).then(|| Summary {
            agent_id: agent_id.to_owned(),
            action_type: action_type.to_owned(),
            window_start_ms: window.start_ms,
            window_end_ms: window.start_ms + self.window_ms,
            suppressed: Arc::clone(&window.suppressed),
        });
        Admission::Limited(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_summary_per_window_counting_every_refusal() {
        let limiter = Limiter::new(2, Duration::from_secs(60));
        assert!(matches!(limiter.admit("a", "shell_exec", 0), Admission::Admitted));
        assert!(matches!(limiter.admit("a", "shell_exec", 1), Admission::Admitted));
        // Another type and another agent have their own windows.
        assert!(matches!(limiter.admit("a", "notify", 2), Admission::Admitted));
        assert!(matches!(limiter.admit("b", "shell_exec", 2), Admission::Admitted));
        let Admission::Limited(Some(summary)) = limiter.admit("a", "shell_exec", 3) else {
            panic!("the first refusal carries the summary");
        };
        assert!(matches!(limiter.admit("a", "shell_exec", 4), Admission::Limited(None)));
        assert!(matches!(limiter.admit("a", "shell_exec", 5), Admission::Limited(None)));
        assert_eq!(summary.suppressed(), 3);
        assert_eq!(summary.window_end_ms, 60_000);
        // A new window admits again and starts a new count.
        assert!(matches!(limiter.admit("a", "shell_exec", 60_000), Admission::Admitted));
        assert_eq!(summary.suppressed(), 3);
    }
}
