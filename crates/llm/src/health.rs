//! Provider health: each provider's reachability (what `llm.status` reports) and the probe loop
//! that keeps it current — at start, then every 30 s while up; while down, with backoff from
//! 500 ms doubling to 10 s. A chat call that finds the server down marks it down at once and
//! restarts the backoff, so claims for its agents stop and resume within seconds of its return.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aiventbus_proto::agents::ProviderStatus;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::providers::Provider;

/// First retry delay while a provider is down.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest retry delay while down.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Probe period while up.
pub const UP_INTERVAL: Duration = Duration::from_secs(30);

/// One provider's reachability.
pub struct Health {
    status: Mutex<ProviderStatus>,
    up: AtomicBool,
    kick: Notify,
}

impl Health {
    /// Not probed yet: down until the first probe answers.
    pub fn new(name: &str, base_url: &str) -> Health {
        Health {
            status: Mutex::new(ProviderStatus {
                name: name.to_owned(),
                base_url: base_url.to_owned(),
                reachable: false,
                why: Some("not probed yet".into()),
                models: Vec::new(),
                checked_at: None,
            }),
            up: AtomicBool::new(false),
            kick: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProviderStatus> {
        // Fields are replaced whole; a poisoned lock still holds a consistent status.
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the server answered last time.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The status as `llm.status` shows it.
    pub fn status(&self) -> ProviderStatus {
        self.lock().clone()
    }

    /// A call found the server down: stop claiming for it and probe again soon.
    pub fn report_down(&self, why: &str) {
        {
            let mut status = self.lock();
            status.reachable = false;
            status.why = Some(why.to_owned());
            status.checked_at = Some(aiventbus_rpc::time::now_rfc3339());
        }
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(provider = %self.lock().name, why, "model server is down");
        }
        self.kick.notify_one();
    }

    /// Records a probe's outcome; returns whether reachability changed.
    pub fn record(&self, outcome: &Result<Vec<String>, String>) -> bool {
        let mut status = self.lock();
        status.checked_at = Some(aiventbus_rpc::time::now_rfc3339());
        match outcome {
            Ok(models) => {
                status.reachable = true;
                status.why = None;
                status.models = models.clone();
            }
            Err(why) => {
                status.reachable = false;
                status.why = Some(why.clone());
            }
        }
        let up = outcome.is_ok();
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed && up {
            tracing::info!(provider = %status.name, models = status.models.len(), "model server is up");
        } else if changed {
            tracing::warn!(provider = %status.name, why = ?status.why, "model server is down");
        }
        changed
    }
}

/// Probes `provider` until shutdown; bumps `generation` whenever it comes up or goes down.
pub async fn monitor(provider: Arc<Provider>, generation: watch::Sender<u64>, shutdown: CancellationToken) {
    let mut delay = Duration::ZERO;
    let mut backoff = BACKOFF_START;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            _ = provider.health.kick.notified() => {
                // A call just found it down: restart the backoff from its first step.
                generation.send_modify(|generation| *generation += 1);
                backoff = BACKOFF_START;
                delay = BACKOFF_START;
                continue;
            }
        }
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = provider.probe() => outcome,
        };
        if provider.health.record(&outcome) {
            generation.send_modify(|generation| *generation += 1);
        }
        if outcome.is_ok() {
            backoff = BACKOFF_START;
            delay = UP_INTERVAL;
        } else {
            delay = backoff;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_reports_changes_only() {
        let health = Health::new("ollama", "http://x");
        assert!(!health.is_up());
        assert!(!health.record(&Err("refused".into())));
        assert_eq!(health.status().why.as_deref(), Some("refused"));
        assert!(health.record(&Ok(vec!["m".into()])));
        assert!(health.is_up());
        assert!(!health.record(&Ok(vec!["m".into()])));
        let status = health.status();
        assert!(status.reachable && status.why.is_none() && status.checked_at.is_some());
        assert_eq!(status.models, ["m"]);
        health.report_down("connection lost");
        assert!(!health.is_up());
        assert_eq!(health.status().why.as_deref(), Some("connection lost"));
    }
}
