//! What the rule methods and the bus follower share: the store, the compiled rules (reloaded after
//! every change), the agent cache, the settings, and the counters `system.health` reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use aiventbus_rpc::config::RouterConfig;
use serde_json::{Map, Value, json};

use crate::agents::AgentDirectory;
use crate::matcher::{self, Facts};
use crate::rules::CompiledRule;
use crate::store::{Store, StoreError};

/// Routing settings, from `[router]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most agents per event.
    pub max_fan_out: usize,
    /// Passed to `assignments.create` as `max_queue`.
    pub max_queue: u32,
    /// Gets unmatched events instead of `system.unmatched`, when set.
    pub classifier_agent: Option<String>,
}

impl Settings {
    /// The settings a config section gives.
    pub fn from_config(config: &RouterConfig) -> Settings {
        Settings {
            max_fan_out: config.max_fan_out as usize,
            max_queue: config.max_queue,
            classifier_agent: config.classifier_agent.clone(),
        }
    }
}

/// Figures for `system.health`.
#[derive(Debug, Default)]
pub struct Counters {
    /// The stored cursor: routing is complete up to this seq.
    pub cursor: AtomicU64,
    /// Routing is complete up to this seq (ahead of `cursor` until the next write).
    pub routed_seq: AtomicU64,
    /// Events that got at least one rule's assignment.
    pub routed: AtomicU64,
    /// Assignments newly created.
    pub assignments: AtomicU64,
    /// `system.unmatched` reports.
    pub unmatched: AtomicU64,
    /// Ambient assignments dropped because the agent's queue was full.
    pub dropped: AtomicU64,
    /// Unmatched events handed to the classifier agent.
    pub classified: AtomicU64,
    /// Calls refused for good (logged and skipped).
    pub errors: AtomicU64,
    /// Whether a bus subscription is open.
    pub following: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers the latest problem for `system.health`.
    pub fn set_last_error(&self, error: impl std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The router's shared state.
pub struct State {
    /// `router.db`.
    pub store: Store,
    /// Which agents exist and are enabled.
    pub agents: Arc<AgentDirectory>,
    /// `[router]`.
    pub settings: Settings,
    /// Health figures.
    pub counters: Counters,
    rules: RwLock<Arc<Vec<CompiledRule>>>,
    /// Held across a change and the reload after it, so reloads land in the order of changes.
    changing: Mutex<()>,
}

impl State {
    /// State over an open store, with its rules loaded.
    pub fn new(store: Store, agents: Arc<AgentDirectory>, settings: Settings) -> Result<State, StoreError> {
        let state = State {
            store,
            agents,
            settings,
            counters: Counters::default(),
            rules: RwLock::new(Arc::new(Vec::new())),
            changing: Mutex::new(()),
        };
        state.reload()?;
        Ok(state)
    }

    /// The enabled and disabled rules in evaluation order.
    pub fn rules(&self) -> Arc<Vec<CompiledRule>> {
        Arc::clone(&self.rules.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn reload(&self) -> Result<(), StoreError> {
        let mut compiled = Vec::new();
        for rule in self.store.rules()? {
            let id = rule.id.clone();
            match CompiledRule::compile(rule) {
                Ok(rule) => compiled.push(rule),
                // Patterns are checked before they are stored; only a hand-edited file gets here.
                Err(error) => tracing::warn!(rule = %id, %error, "ignoring a stored rule that does not compile"),
            }
        }
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(compiled);
        Ok(())
    }

    /// Runs a change against the store, then reloads the rules. Blocking: call it from
    /// `spawn_blocking`.
    pub fn change<T>(&self, change: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let result = change(&self.store);
        self.reload()?;
        result
    }

    /// The rules that fire for these facts, agents' state applied: what the follower assigns and
    /// what `rules.match` answers.
    pub async fn plan(&self, facts: &Facts<'_>) -> Vec<CompiledRule> {
        let rules = self.rules();
        let wanted = matcher::candidate_agents(&rules, facts);
        if wanted.is_empty() {
            return Vec::new();
        }
        let view = self.agents.view(&wanted).await;
        matcher::select(&rules, facts, |agent| view.usable(agent), self.settings.max_fan_out)
            .into_iter()
            .cloned()
            .collect()
    }

    /// `system.health` details.
    pub fn health(&self) -> Map<String, Value> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        let details = json!({
            "cursor": load(&counters.cursor),
            "routed_seq": load(&counters.routed_seq),
            "following": counters.following.load(Ordering::Relaxed),
            "rules": self.rules().len(),
            "agents_known": self.agents.snapshot().known_agents(),
            "routed": load(&counters.routed),
            "assignments": load(&counters.assignments),
            "unmatched": load(&counters.unmatched),
            "dropped": load(&counters.dropped),
            "classified": load(&counters.classified),
            "errors": load(&counters.errors),
            "last_error": counters.last_error(),
            "max_fan_out": self.settings.max_fan_out,
            "max_queue": self.settings.max_queue,
            "classifier_agent": self.settings.classifier_agent,
        });
        match details {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}
