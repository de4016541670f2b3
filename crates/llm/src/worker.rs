//! The worker: claims assignments from the bus and runs them (docs/agents.md, "Lanes and
//! fairness"). Two pools — a reserved one (`llm.interactive_slots`) claiming only interactive and
//! critical work, and a general one (`llm.max_concurrent`) claiming interactive, critical, ambient,
//! with every fourth claim asking for ambient first. Claims long-poll the bus (`wait_ms`) for the
//! agents that may run now: enabled, with their provider up and a free `max_concurrent` slot.
//! When that set grows (a run ends, a provider comes back, an agent is enabled) a new claim is
//! sent at once; anything a claim returns that cannot run now is released (no attempt used).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiventbus_proto::ErrorCode;
use aiventbus_proto::agents::{AgentKind, ClaimParams, ClaimResult, Claimed, FailParams, Lane};
use aiventbus_rpc::ClientError;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::run::{Ending, Run, Shared};

/// How long a claim waits on the bus for work.
pub const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// Claims one pool may have outstanding (older ones keep waiting while a wider one is sent).
const MAX_OUTSTANDING: usize = 4;
/// Every this many general claims asks for ambient work first.
const AMBIENT_EVERY: u64 = 4;
/// Releases of one assignment for a down provider before it is failed (counting an attempt), so a
/// server that answers probes but fails every chat cannot loop forever.
const MAX_DOWN_RELEASES: u32 = 5;
/// Bound on the release counts kept.
const MAX_TRACKED_RELEASES: usize = 10_000;

/// Which pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// Interactive and critical work only.
    Reserved,
    /// Every lane, with weighted fairness for ambient work.
    General,
}

impl PoolKind {
    /// The lanes the `n`th claim (from 1) asks for, in order of preference.
    pub fn lanes(self, n: u64) -> Vec<Lane> {
        match self {
            PoolKind::Reserved => vec![Lane::Interactive, Lane::Critical],
            PoolKind::General if n % AMBIENT_EVERY == 0 => vec![Lane::Ambient, Lane::Interactive, Lane::Critical],
            PoolKind::General => vec![Lane::Interactive, Lane::Critical, Lane::Ambient],
        }
    }

    fn name(self) -> &'static str {
        match self {
            PoolKind::Reserved => "reserved",
            PoolKind::General => "general",
        }
    }
}

/// Claims and runs work until shutdown.
pub struct Worker {
    shared: Arc<Shared>,
    generation: watch::Sender<u64>,
    running: Mutex<HashMap<String, u32>>,
    down_releases: Mutex<HashMap<String, u32>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic elsewhere cannot leave them half-updated.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Worker {
    /// A worker over the shared state; `generation` changes whenever claimability may have.
    pub fn new(shared: Arc<Shared>, generation: watch::Sender<u64>, shutdown: CancellationToken) -> Arc<Worker> {
        Arc::new(Worker {
            shared,
            generation,
            running: Mutex::new(HashMap::new()),
            down_releases: Mutex::new(HashMap::new()),
            shutdown,
            tracker: TaskTracker::new(),
        })
    }

    /// Starts the pools.
    pub fn start(self: &Arc<Worker>) {
        let config = &self.shared.config;
        if config.interactive_slots > 0 {
            let slots = Arc::new(Semaphore::new(config.interactive_slots as usize));
            self.tracker.spawn(self.clone().pool(PoolKind::Reserved, slots));
        }
        let slots = Arc::new(Semaphore::new(config.max_concurrent as usize));
        self.tracker.spawn(self.clone().pool(PoolKind::General, slots));
    }

    /// Waits for the pools and runs to end after shutdown (runs release their work), at most `grace`.
    pub async fn stopped(&self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!("runs still settling at shutdown; their leases will expire");
        }
    }

    /// Runs in progress.
    pub fn running(&self) -> u32 {
        lock(&self.running).values().sum()
    }

    fn bump(&self) {
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Agents that may run one more assignment now.
    fn eligible(&self) -> BTreeSet<String> {
        let running = lock(&self.running);
        self.shared
            .agents
            .list()
            .into_iter()
            .filter(|agent| agent.enabled)
            .filter(|agent| running.get(&agent.id).copied().unwrap_or(0) < agent.max_concurrent)
            .filter(|agent| self.provider_up(agent))
            .map(|agent| agent.id)
            .collect()
    }

    fn provider_up(&self, agent: &aiventbus_proto::agents::Agent) -> bool {
        match agent.kind {
            AgentKind::Command => true,
            AgentKind::Llm => agent
                .provider
                .as_deref()
                .and_then(|name| self.shared.providers.get(name))
                .is_some_and(|provider| provider.is_up()),
        }
    }

    async fn pool(self: Arc<Worker>, kind: PoolKind, slots: Arc<Semaphore>) {
        type ClaimFuture = BoxFuture<'static, (u64, Result<ClaimResult, ClientError>)>;
        let mut generation = self.generation.subscribe();
        let mut claims: FuturesUnordered<ClaimFuture> = FuturesUnordered::new();
        let mut newest: Option<(u64, BTreeSet<String>)> = None;
        let mut issued: u64 = 0;
        let mut paused_until: Option<Instant> = None;
        let mut backoff = Duration::from_millis(250);
        loop {
            generation.borrow_and_update();
            let paused = paused_until.is_some_and(|until| Instant::now() < until);
            if !paused && slots.available_permits() > 0 && claims.len() < MAX_OUTSTANDING {
                let eligible = self.eligible();
                let covered = newest.as_ref().is_some_and(|(_, agents)| eligible.is_subset(agents));
                if !eligible.is_empty() && !covered {
                    issued += 1;
                    let params = ClaimParams {
                        worker: self.shared.worker.clone(),
                        agent_ids: Some(eligible.iter().cloned().collect()),
                        lanes: Some(kind.lanes(issued)),
                        limit: 1,
                        lease_ms: self.shared.config.lease.as_millis() as u64,
                        wait_ms: Some(CLAIM_WAIT.as_millis() as u64),
                    };
                    let bus = self.shared.bus.clone();
                    let number = issued;
                    claims.push(Box::pin(async move { (number, bus.claim(&params).await) }));
                    newest = Some((number, eligible));
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = generation.changed() => {}
                _ = sleep_until(paused_until), if paused => {}
                Some((number, result)) = claims.next(), if !claims.is_empty() => {
                    if newest.as_ref().is_some_and(|(newest, _)| *newest == number) {
                        newest = None;
                    }
                    match result {
                        Ok(result) => {
                            backoff = Duration::from_millis(250);
                            paused_until = None;
                            for claimed in result.claimed {
                                self.accept(kind, &slots, claimed).await;
                            }
                        }
                        Err(error) => {
                            let method_missing = error.rpc().is_some_and(|rpc| rpc.code == ErrorCode::MethodNotFound.code());
                            if method_missing {
                                tracing::warn!(pool = kind.name(), "the bus has no assignments queue; retrying later");
                                backoff = Duration::from_secs(10);
                            } else {
                                tracing::debug!(pool = kind.name(), %error, "claim failed; retrying");
                            }
                            paused_until = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        }
    }

    /// Runs a claimed assignment if it may run now, else hands it back.
    async fn accept(self: &Arc<Worker>, kind: PoolKind, slots: &Arc<Semaphore>, claimed: Claimed) {
        let assignment = &claimed.assignment;
        let Some(agent) = self.shared.agents.by_id(&assignment.agent_id) else {
            self.settle(
                &claimed,
                Ending::Failed {
                    error: format!("agent {} no longer exists", assignment.agent_id),
                    retry: false,
                },
            )
            .await;
            return;
        };
        let reason = if !agent.enabled {
            Some("agent disabled")
        } else if !self.provider_up(&agent) {
            Some("model server unavailable")
        } else {
            None
        };
        let permit = match (reason, slots.clone().try_acquire_owned()) {
            (None, Ok(permit)) => {
                let mut running = lock(&self.running);
                let count = running.entry(agent.id.clone()).or_insert(0);
                if *count < agent.max_concurrent {
                    *count += 1;
                    Ok(permit)
                } else {
                    Err("agent at max_concurrent")
                }
            }
            (Some(reason), _) => Err(reason),
            (None, Err(_)) => Err("no free slot"),
        };
        let permit = match permit {
            Ok(permit) => permit,
            Err(reason) => {
                tracing::debug!(assignment = %assignment.id, reason, "releasing claimed work");
                self.settle(
                    &claimed,
                    Ending::Released {
                        error: reason.to_owned(),
                    },
                )
                .await;
                return;
            }
        };
        tracing::debug!(pool = kind.name(), assignment = %assignment.id, agent = %agent.id, lane = ?assignment.lane, "running");
        let worker = self.clone();
        self.tracker.spawn(async move {
            worker.clone().run(agent, claimed).await;
            // The slot is free before the pools are told to look again.
            drop(permit);
            worker.bump();
        });
    }

    async fn run(self: Arc<Worker>, agent: aiventbus_proto::agents::Agent, claimed: Claimed) {
        let shared = self.shared.clone();
        let config = &shared.config;
        let lease_lost = CancellationToken::new();
        let heartbeat = self.tracker.spawn(heartbeat(
            shared.clone(),
            claimed.assignment.id.clone(),
            lease_lost.clone(),
        ));
        let mut run = Run::new(&shared, &agent, &claimed);
        let finished = tokio::select! {
            ending = run.execute() => Ok(ending),
            _ = tokio::time::sleep(config.run_deadline) => Err(Cut::Deadline),
            _ = self.shutdown.cancelled() => Err(Cut::Stopping),
            _ = lease_lost.cancelled() => Err(Cut::LeaseLost),
        };
        let outcome = match finished {
            Ok(ending) => Some(ending),
            Err(Cut::Deadline) => {
                let error = format!("run deadline of {:?} exceeded", config.run_deadline);
                let ending = Ending::Failed { error, retry: true };
                run.abandon(&ending).await;
                Some(ending)
            }
            Err(Cut::Stopping) => {
                let ending = Ending::Released {
                    error: "llm is stopping".into(),
                };
                run.abandon(&ending).await;
                Some(ending)
            }
            Err(Cut::LeaseLost) => None,
        };
        heartbeat.abort();
        match outcome {
            Some(ending) => self.settle(&claimed, ending).await,
            None => tracing::warn!(assignment = %claimed.assignment.id, "lease lost; the run was abandoned"),
        }
        if let Some(count) = lock(&self.running).get_mut(&agent.id) {
            *count = count.saturating_sub(1);
        }
    }

    /// Reports the ending to the bus.
    async fn settle(&self, claimed: &Claimed, ending: Ending) {
        let id = claimed.assignment.id.clone();
        let worker = self.shared.worker.clone();
        let ending = match ending {
            Ending::Released { error } if error.starts_with("model server unavailable") => {
                let mut counts = lock(&self.down_releases);
                if counts.len() >= MAX_TRACKED_RELEASES {
                    counts.clear();
                }
                let count = counts.entry(id.clone()).or_insert(0);
                *count += 1;
                if *count > MAX_DOWN_RELEASES {
                    counts.remove(&id);
                    Ending::Failed { error, retry: true }
                } else {
                    Ending::Released { error }
                }
            }
            other => {
                if !matches!(other, Ending::Released { .. }) {
                    lock(&self.down_releases).remove(&id);
                }
                other
            }
        };
        let result = match ending {
            Ending::Completed => self.shared.bus.complete(&id, &worker).await.map(drop),
            Ending::Suspended { .. } => {
                let suspended = self.shared.bus.suspend(&id, &worker).await.map(drop);
                if suspended.is_ok() {
                    // A decision that came before the suspension was recorded resumes it now.
                    self.shared.resumer.check(&id).await;
                }
                suspended
            }
            Ending::Failed { error, retry } => self
                .shared
                .bus
                .fail(FailParams {
                    id: id.clone(),
                    worker,
                    error,
                    retry,
                    release: false,
                })
                .await
                .map(drop),
            Ending::Released { error } => self
                .shared
                .bus
                .fail(FailParams {
                    id: id.clone(),
                    worker,
                    error,
                    retry: true,
                    release: true,
                })
                .await
                .map(drop),
        };
        if let Err(error) = result {
            tracing::warn!(assignment = %id, %error, "could not settle the assignment; its lease will expire");
        }
    }
}

/// Why a run was cut short.
enum Cut {
    Deadline,
    Stopping,
    LeaseLost,
}

/// Extends the lease every `llm.heartbeat`; cancels `lease_lost` when the bus says it is gone.
async fn heartbeat(shared: Arc<Shared>, id: String, lease_lost: CancellationToken) {
    let mut interval = tokio::time::interval(shared.config.heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        match shared.bus.heartbeat(&id, &shared.worker, shared.config.lease).await {
            Ok(_) => {}
            Err(error) => {
                let lost = error.rpc().is_some_and(|rpc| {
                    [ErrorCode::NotFound, ErrorCode::Conflict, ErrorCode::Expired]
                        .iter()
                        .any(|code| code.code() == rpc.code)
                });
                if lost {
                    tracing::warn!(assignment = %id, %error, "lease lost");
                    lease_lost.cancel();
                    return;
                }
                tracing::debug!(assignment = %id, %error, "heartbeat failed; retrying");
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fourth_general_claim_prefers_ambient() {
        let firsts: Vec<Lane> = (1..=8).map(|n| PoolKind::General.lanes(n)[0]).collect();
        assert_eq!(
            firsts,
            [
                Lane::Interactive,
                Lane::Interactive,
                Lane::Interactive,
                Lane::Ambient,
                Lane::Interactive,
                Lane::Interactive,
                Lane::Interactive,
                Lane::Ambient
            ]
        );
        for n in 1..=8 {
            assert_eq!(PoolKind::General.lanes(n).len(), 3);
            assert_eq!(PoolKind::Reserved.lanes(n), [Lane::Interactive, Lane::Critical]);
        }
    }
}
