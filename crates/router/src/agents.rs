//! What the router knows about agents, which belong to llm: which exist and which are enabled,
//! from `agents.list`, cached. The cache is refreshed in the background once it is 2 s old, and at
//! once (rate-limited) when a rule names an agent it has not seen. When llm cannot be reached the
//! last list stays in use; before any list arrived every agent counts as usable (llm skips work
//! for disabled agents itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aiventbus_proto::Method;
use aiventbus_proto::agents::{Agent, AgentsList, AgentsResult};
use aiventbus_rpc::{Client, ClientError};

/// Age at which the list is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Least time between two refreshes caused by an unknown agent.
const MISS_REFRESH_GAP: Duration = Duration::from_millis(250);
/// How long routing waits for llm's list.
const FETCH_TIMEOUT: Duration = Duration::from_millis(500);

/// A snapshot of the known agents.
#[derive(Debug, Clone, Default)]
pub struct AgentView {
    /// Agent id → enabled; `None` while no list has ever arrived.
    agents: Option<Arc<HashMap<String, bool>>>,
    /// Whether the latest attempt to fetch the list succeeded, so an agent missing from it does
    /// not exist (was deleted); otherwise a missing agent gets the benefit of the doubt.
    current: bool,
}

impl AgentView {
    /// A view over a known list (for tests and `rules.match`).
    pub fn known(agents: impl IntoIterator<Item = (String, bool)>, current: bool) -> AgentView {
        AgentView {
            agents: Some(Arc::new(agents.into_iter().collect())),
            current,
        }
    }

    /// Whether work may be assigned to `agent_id`.
    pub fn usable(&self, agent_id: &str) -> bool {
        match &self.agents {
            None => true,
            Some(agents) => agents.get(agent_id).copied().unwrap_or(!self.current),
        }
    }

    /// Whether the view has never heard of `agent_id` although it holds a list.
    fn misses(&self, agent_id: &str) -> bool {
        self.agents
            .as_ref()
            .is_some_and(|agents| !agents.contains_key(agent_id))
    }

    /// How many agents the view knows, when it holds a list.
    pub fn known_agents(&self) -> Option<usize> {
        self.agents.as_ref().map(|agents| agents.len())
    }
}

struct Cache {
    view: AgentView,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
    /// Counts attempts, so waiters on the fetch lock can tell one finished meanwhile.
    attempts: u64,
}

/// The agent cache over a client of llm. Shared by the follower and `rules.match`.
pub struct AgentDirectory {
    llm: Client,
    cache: Mutex<Cache>,
    fetching: tokio::sync::Mutex<()>,
    background: AtomicBool,
}

impl AgentDirectory {
    /// A directory that has not fetched anything yet.
    pub fn new(llm: Client) -> Arc<AgentDirectory> {
        Arc::new(AgentDirectory {
            llm,
            cache: Mutex::new(Cache {
                view: AgentView::default(),
                fetched_at: None,
                attempted_at: None,
                attempts: 0,
            }),
            fetching: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Plain field updates: a panic cannot leave the cache half-written.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current view, without waiting for llm.
    pub fn snapshot(&self) -> AgentView {
        self.cache().view.clone()
    }

    /// A view good enough to route to `wanted`: refreshed first when it lacks one of them (at most
    /// every 250 ms), and in the background when it is older than 2 s.
    pub async fn view(self: &Arc<Self>, wanted: &[&str]) -> AgentView {
        let (view, stale, may_fetch_now, attempts) = {
            let cache = self.cache();
            let stale = cache.fetched_at.is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
            let since_attempt = cache.attempted_at.map(|at| at.elapsed());
            // After a failed attempt, wait the full refresh period before blocking on llm again.
            let gap = if cache.view.current || cache.attempted_at.is_none() {
                MISS_REFRESH_GAP
            } else {
                REFRESH_EVERY
            };
            (
                cache.view.clone(),
                stale && since_attempt.is_none_or(|since| since >= REFRESH_EVERY),
                since_attempt.is_none_or(|since| since >= gap),
                cache.attempts,
            )
        };
        if may_fetch_now && wanted.iter().any(|agent| view.misses(agent)) {
            self.refresh(attempts).await;
            return self.snapshot();
        }
        if stale && !self.background.swap(true, Ordering::AcqRel) {
            let directory = Arc::clone(self);
            tokio::spawn(async move {
                let attempts = directory.cache().attempts;
                directory.refresh(attempts).await;
                directory.background.store(false, Ordering::Release);
            });
        }
        view
    }

    /// Fetches the list now (waiting at most half a second for llm).
    pub async fn refresh_now(&self) {
        let attempts = self.cache().attempts;
        self.refresh(attempts).await;
    }

    /// Fetches the list unless another fetch finished since `seen_attempts`.
    async fn refresh(&self, seen_attempts: u64) {
        let _fetching = self.fetching.lock().await;
        if self.cache().attempts != seen_attempts {
            return;
        }
        self.cache().attempted_at = Some(Instant::now());
        let fetched = self.fetch().await;
        let mut cache = self.cache();
        cache.attempts += 1;
        match fetched {
            Ok(agents) => {
                cache.view = AgentView::known(agents.into_iter().map(|agent| (agent.id, agent.enabled)), true);
                cache.fetched_at = Some(Instant::now());
            }
            Err(error) => {
                tracing::debug!(%error, "cannot list agents; keeping the last known list");
                cache.view.current = false;
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Agent>, ClientError> {
        let params = serde_json::value::to_raw_value(&serde_json::json!({}))
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        let raw = self
            .llm
            .call_raw_with_timeout(AgentsList::NAME, Some(params), FETCH_TIMEOUT)
            .await?;
        let result: AgentsResult = serde_json::from_str(raw.get())
            .map_err(|error| ClientError::Protocol(format!("{} result: {error}", AgentsList::NAME)))?;
        Ok(result.agents)
    }

    /// Records an agent llm just described (`agents.get` while checking a rule), so a rule created
    /// right after its agent routes at once.
    pub fn note(&self, agent: &Agent) {
        let mut cache = self.cache();
        if let Some(agents) = &cache.view.agents {
            let mut agents = HashMap::clone(agents);
            agents.insert(agent.id.clone(), agent.enabled);
            cache.view.agents = Some(Arc::new(agents));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_agents() {
        let nothing_known = AgentView::default();
        assert!(nothing_known.usable("agt_any"), "no list yet: route to every rule");
        assert_eq!(nothing_known.known_agents(), None);

        let current = AgentView::known([("agt_on".into(), true), ("agt_off".into(), false)], true);
        assert!(current.usable("agt_on"));
        assert!(!current.usable("agt_off"));
        assert!(!current.usable("agt_deleted"), "missing from a current list: gone");
        assert!(current.misses("agt_deleted") && !current.misses("agt_on"));

        let old = AgentView::known([("agt_on".into(), true), ("agt_off".into(), false)], false);
        assert!(old.usable("agt_on"));
        assert!(!old.usable("agt_off"), "the last known list still says disabled");
        assert!(
            old.usable("agt_new"),
            "llm unreachable: an unknown agent is not refused"
        );
    }
}
