//! The supervisor: starts the table's services in order, each once the one before is ready; learns
//! of every exit at once from a waiter task per child; restarts crashed services with backoff;
//! health-checks running ones; and at shutdown stops them in reverse order, leaving no process
//! behind. One task owns all service state; everything else reports to it through one channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_proto::methods::ServiceInfo;
use aiventbus_rpc::config::InitConfig;
use aiventbus_rpc::paths::Paths;
use aiventbus_rpc::token::Key;
use aiventbus_rpc::{Client, Endpoint, TokenSource};
use anyhow::Context as _;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::{Backoff, Verdict};
use crate::events::{Change, EventQueue, Exit, ServiceEvent};
use crate::keys;
use crate::logs::{self, LogFile};
use crate::ready;
use crate::spawn::{self, Output, signal_group};
use crate::table::{EVENTS_SERVICE, INIT, ServiceSpec};

/// Consecutive failed health checks before a service is killed (and then restarted).
const HEALTH_FAILURES_LIMIT: u32 = 3;
/// Reports waiting for the supervisor: one exit, one readiness and one health result per child at
/// most, so a small bound suffices; senders wait for room.
const MESSAGE_QUEUE: usize = 256;

/// A service's lifecycle state, as `system.services` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Spawned (or about to be), not yet ready.
    Starting,
    /// Ready and answering.
    Running,
    /// Crashed; waiting to be restarted.
    Backoff,
    /// Asked to stop.
    Stopping,
    /// Not running, on purpose.
    Stopped,
    /// Crash loop: given up.
    Failed,
}

impl State {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// What the supervisor works with, prepared by `run`.
pub struct Context {
    /// The daemon's directories.
    pub paths: Paths,
    /// `[init]`.
    pub config: InitConfig,
    /// Mints init's tokens.
    pub master: Key,
    /// Each service's executable, in table order.
    pub binaries: Vec<PathBuf>,
    /// Where children's output goes.
    pub output: Output,
    /// `system.service` events waiting for the bus.
    pub events: Arc<EventQueue>,
    /// The client of the events service while it is ready; `None` otherwise.
    pub bus: watch::Sender<Option<Client>>,
    /// What `system.services` answers.
    pub status: watch::Sender<Vec<ServiceInfo>>,
    /// Tracks every helper task (waiters, log copiers, readiness watchers).
    pub tracker: TaskTracker,
    /// Ends helper tasks once every service is gone.
    pub background: CancellationToken,
}

/// Reports from helper tasks. `generation` identifies one process of a service, so reports about
/// an earlier process are ignored.
enum Message {
    Exited {
        index: usize,
        generation: u64,
        exit: Exit,
    },
    Ready {
        index: usize,
        generation: u64,
        outcome: Result<Client, String>,
    },
    Health {
        index: usize,
        generation: u64,
        outcome: Result<(), String>,
    },
}

struct Slot {
    spec: &'static ServiceSpec,
    state: State,
    since: String,
    pid: Option<u32>,
    restarts: u32,
    generation: u64,
    backoff: Backoff,
    /// When to restart, in `Backoff`.
    retry_at: Option<Instant>,
    /// When it became ready, while `Running`.
    running_since: Option<Instant>,
    /// Whether it was ever ready (`started` vs `restarted`).
    was_ready: bool,
    /// Ends this process's readiness watcher and health checks.
    watch: Option<CancellationToken>,
    /// Connected with init's token, while `Running`.
    client: Option<Client>,
    health_failures: u32,
    health_in_flight: bool,
    /// Why init killed it, reported with its exit.
    kill_reason: Option<String>,
}

/// Owns every service's state.
pub struct Supervisor {
    context: Context,
    slots: Vec<Slot>,
    sender: mpsc::Sender<Message>,
    receiver: mpsc::Receiver<Message>,
    /// Services whose first start has begun; bring-up goes one at a time in table order.
    brought_up: usize,
    announced: bool,
    stopping: bool,
    init_since: String,
}

impl Supervisor {
    /// A supervisor for `services`, none started yet.
    pub fn new(context: Context, services: &'static [ServiceSpec]) -> Supervisor {
        let (sender, receiver) = mpsc::channel(MESSAGE_QUEUE);
        let now = aiventbus_rpc::time::now_rfc3339();
        let slots = services
            .iter()
            .map(|spec| Slot {
                spec,
                state: State::Starting,
                since: now.clone(),
                pid: None,
                restarts: 0,
                generation: 0,
                backoff: Backoff::new(context.config.crash_loop_limit),
                retry_at: None,
                running_since: None,
                was_ready: false,
                watch: None,
                client: None,
                health_failures: 0,
                health_in_flight: false,
                kill_reason: None,
            })
            .collect();
        let supervisor = Supervisor {
            context,
            slots,
            sender,
            receiver,
            brought_up: 0,
            announced: false,
            stopping: false,
            init_since: now,
        };
        supervisor.publish_status();
        supervisor
    }

    /// Supervises until `shutdown`, then stops every service; `force` (a second signal) turns the
    /// stop into SIGKILL for all. Returns once every child has been reaped.
    pub async fn run(mut self, shutdown: &CancellationToken, force: &CancellationToken) {
        if !shutdown.is_cancelled() {
            self.supervise(shutdown).await;
        }
        self.stop_all(force).await;
    }

    async fn supervise(&mut self, shutdown: &CancellationToken) {
        self.advance_bring_up();
        let period = self.context.config.health_interval;
        let mut health = tokio::time::interval_at(Instant::now() + period, period);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut remint = tokio::time::interval_at(Instant::now() + keys::REMINT_INTERVAL, keys::REMINT_INTERVAL);
        remint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let retry_at = self.next_retry();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                Some(message) = self.receiver.recv() => self.handle(message),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.restart_due();
                }
                _ = health.tick() => self.check_health(),
                _ = remint.tick() => self.remint(),
            }
        }
    }

    // ------------------------------------------------------------------ starting

    /// Starts the next service of the bring-up once the one before it is ready (or has failed for
    /// good); tells our own supervisor we are ready once the last one is.
    fn advance_bring_up(&mut self) {
        loop {
            if self.brought_up > 0 && !self.settled(self.brought_up - 1) {
                return;
            }
            if self.brought_up == self.slots.len() {
                if !self.announced {
                    self.announced = true;
                    let failed: Vec<&str> = self
                        .slots
                        .iter()
                        .filter(|slot| slot.state == State::Failed)
                        .map(|slot| slot.spec.name)
                        .collect();
                    if failed.is_empty() {
                        tracing::info!(services = self.slots.len(), "all services are running");
                    } else {
                        tracing::error!(failed = ?failed, "started, but some services failed");
                    }
                    aiventbus_rpc::notify::ready();
                }
                return;
            }
            let index = self.brought_up;
            self.brought_up += 1;
            self.start(index);
        }
    }

    fn settled(&self, index: usize) -> bool {
        matches!(self.slots[index].state, State::Running | State::Failed)
    }

    fn start(&mut self, index: usize) {
        let generation = {
            let slot = &mut self.slots[index];
            slot.generation += 1;
            slot.retry_at = None;
            slot.running_since = None;
            slot.health_failures = 0;
            slot.health_in_flight = false;
            slot.kill_reason = None;
            slot.generation
        };
        self.set_state(index, State::Starting);
        match self.launch(index, generation) {
            Ok(pid) => {
                let slot = &mut self.slots[index];
                slot.pid = Some(pid);
                tracing::info!(
                    service = slot.spec.name,
                    pid,
                    restarts = slot.restarts,
                    "spawned; waiting for READY=1"
                );
                self.publish_status();
            }
            Err(error) => {
                let reason = format!("cannot start: {error:#}");
                tracing::error!(service = self.slots[index].spec.name, %reason, "start failed");
                self.crashed(index, None, Exit::default(), reason, Duration::ZERO);
            }
        }
    }

    /// Spawns the process and its helpers: a waiter that reports the exit, a log copier, and a
    /// readiness watcher.
    fn launch(&mut self, index: usize, generation: u64) -> anyhow::Result<u32> {
        let spec = self.slots[index].spec;
        let name = spec.name;
        let notify_path = notify_dir(&self.context.paths).join(format!("{name}.sock"));
        let socket = ready::bind(&notify_path).with_context(|| format!("binding {}", notify_path.display()))?;
        let binary = &self.context.binaries[index];
        let spawned = spawn::spawn(binary, &self.context.paths, &notify_path, self.context.output)
            .with_context(|| format!("spawning {}", binary.display()))?;
        let pid = spawned.pid;

        let sender = self.sender.clone();
        let mut child = spawned.child;
        self.context.tracker.spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit::from_status(status),
                Err(error) => {
                    tracing::error!(service = name, pid, %error, "waiting for the process failed");
                    Exit::default()
                }
            };
            // Whatever it started in its process group goes with it: no orphans.
            signal_group(pid, Signal::SIGKILL);
            // The receiver lives until every child is reaped, so this only fails at process exit.
            let _ = sender
                .send(Message::Exited {
                    index,
                    generation,
                    exit,
                })
                .await;
        });

        if let Some(output) = spawned.output {
            let path = self.context.paths.log_file(name);
            let max = self.context.config.log_max;
            let stop = self.context.background.clone();
            self.context.tracker.spawn(async move {
                let log = match LogFile::open(&path, max).await {
                    Ok(log) => Some(log),
                    Err(error) => {
                        tracing::warn!(service = name, path = %path.display(), %error, "cannot open the service log; its output is dropped");
                        None
                    }
                };
                logs::copy(name, output, log, stop).await;
            });
        }

        let watch = self.context.background.child_token();
        self.slots[index].watch = Some(watch.clone());
        let endpoint = self.endpoint(index);
        let timeout = self.context.config.ready_timeout;
        let sender = self.sender.clone();
        self.context.tracker.spawn(async move {
            let outcome = tokio::select! {
                _ = watch.cancelled() => return,
                outcome = ready::wait_ready(name, &socket, endpoint, timeout) => outcome,
            };
            if sender
                .send(Message::Ready {
                    index,
                    generation,
                    outcome,
                })
                .await
                .is_err()
            {
                return;
            }
            ready::drain(name, &socket, &watch).await;
        });
        Ok(pid)
    }

    /// The service's socket, with a freshly minted init token.
    fn endpoint(&self, index: usize) -> Endpoint {
        let name = self.slots[index].spec.name;
        Endpoint {
            path: self.context.paths.socket(name),
            token: TokenSource::Static(keys::init_token(
                &self.context.master,
                name,
                aiventbus_rpc::time::now_ms(),
            )),
        }
    }

    // ------------------------------------------------------------------ reports

    fn handle(&mut self, message: Message) {
        match message {
            Message::Exited {
                index,
                generation,
                exit,
            } => {
                if self.slots[index].generation == generation {
                    self.on_exit(index, exit);
                }
            }
            Message::Ready {
                index,
                generation,
                outcome,
            } => self.on_ready(index, generation, outcome),
            Message::Health {
                index,
                generation,
                outcome,
            } => self.on_health(index, generation, outcome),
        }
    }

    fn on_ready(&mut self, index: usize, generation: u64, outcome: Result<Client, String>) {
        let slot = &mut self.slots[index];
        if slot.generation != generation || slot.state != State::Starting {
            return;
        }
        let name = slot.spec.name;
        match outcome {
            Ok(client) => {
                slot.running_since = Some(Instant::now());
                let change = if slot.was_ready {
                    Change::Restarted
                } else {
                    Change::Started
                };
                slot.was_ready = true;
                tracing::info!(service = name, pid = slot.pid, restarts = slot.restarts, "ready");
                if name == EVENTS_SERVICE {
                    self.context.bus.send_replace(Some(client.clone()));
                }
                self.slots[index].client = Some(client);
                self.set_state(index, State::Running);
                self.emit(index, change, self.slots[index].pid, Exit::default(), None);
                self.advance_bring_up();
            }
            Err(reason) => {
                tracing::warn!(
                    service = name,
                    pid = slot.pid,
                    %reason,
                    log = %self.context.paths.log_file(name).display(),
                    "not ready; killing it"
                );
                slot.kill_reason = Some(format!("not ready: {reason}"));
                if let Some(pid) = slot.pid {
                    signal_group(pid, Signal::SIGKILL);
                }
            }
        }
    }

    fn on_exit(&mut self, index: usize, exit: Exit) {
        let slot = &mut self.slots[index];
        let pid = slot.pid.take();
        if let Some(watch) = slot.watch.take() {
            watch.cancel();
        }
        slot.client = None;
        let uptime = slot
            .running_since
            .take()
            .map(|since| since.elapsed())
            .unwrap_or_default();
        let reason = slot.kill_reason.take().unwrap_or_else(|| exit.describe());
        if slot.spec.name == EVENTS_SERVICE {
            self.context.bus.send_replace(None);
        }
        self.crashed(index, pid, exit, reason, uptime);
    }

    /// Records an unplanned end (or a failed start) and schedules a restart, or gives up.
    fn crashed(&mut self, index: usize, pid: Option<u32>, exit: Exit, reason: String, uptime: Duration) {
        self.emit(index, Change::Exited, pid, exit, Some(reason.clone()));
        let slot = &mut self.slots[index];
        let name = slot.spec.name;
        match slot.backoff.on_crash(uptime) {
            Verdict::Retry(delay) => {
                slot.retry_at = Some(Instant::now() + delay);
                tracing::warn!(service = name, pid, %reason, delay_ms = delay.as_millis() as u64, "service ended; restarting after backoff");
                self.set_state(index, State::Backoff);
            }
            Verdict::GiveUp { crashes } => {
                let reason =
                    format!("crash loop: {crashes} crashes without a healthy minute between them; last: {reason}");
                tracing::error!(service = name, %reason, "giving up on the service");
                self.set_state(index, State::Failed);
                self.emit(index, Change::Failed, pid, exit, Some(reason));
                self.advance_bring_up();
            }
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|slot| slot.state == State::Backoff)
            .filter_map(|slot| slot.retry_at)
            .min()
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if slot.state == State::Backoff && slot.retry_at.is_some_and(|at| at <= now) {
                slot.restarts += 1;
                self.start(index);
            }
        }
    }

    // ------------------------------------------------------------------ health

    fn check_health(&mut self) {
        let timeout = self.context.config.health_interval;
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if slot.state != State::Running || slot.health_in_flight {
                continue;
            }
            let (Some(client), Some(watch)) = (slot.client.clone(), slot.watch.clone()) else {
                continue;
            };
            slot.health_in_flight = true;
            let generation = slot.generation;
            let sender = self.sender.clone();
            self.context.tracker.spawn(async move {
                let outcome = tokio::select! {
                    _ = watch.cancelled() => return,
                    result = ready::health(&client, timeout) => result.map(drop),
                };
                let _ = sender
                    .send(Message::Health {
                        index,
                        generation,
                        outcome,
                    })
                    .await;
            });
        }
    }

    fn on_health(&mut self, index: usize, generation: u64, outcome: Result<(), String>) {
        let slot = &mut self.slots[index];
        if slot.generation != generation {
            return;
        }
        slot.health_in_flight = false;
        if slot.state != State::Running {
            return;
        }
        match outcome {
            Ok(()) => slot.health_failures = 0,
            Err(reason) => {
                slot.health_failures += 1;
                tracing::warn!(service = slot.spec.name, pid = slot.pid, failures = slot.health_failures, %reason, "health check failed");
                if slot.health_failures >= HEALTH_FAILURES_LIMIT {
                    slot.kill_reason = Some(format!(
                        "failed {} health checks in a row; last: {reason}",
                        slot.health_failures
                    ));
                    if let Some(pid) = slot.pid {
                        signal_group(pid, Signal::SIGKILL);
                    }
                }
            }
        }
    }

    /// Mints every token again: services' credentials files (read again when they reconnect) and
    /// init's own clients.
    fn remint(&mut self) {
        let now = aiventbus_rpc::time::now_ms();
        let services: Vec<&'static ServiceSpec> = self.slots.iter().map(|slot| slot.spec).collect();
        for spec in services {
            if let Err(error) = keys::write_credentials(
                &self.context.paths,
                &self.context.master,
                std::slice::from_ref(spec),
                now,
            ) {
                tracing::error!(
                    service = spec.name,
                    error = format!("{error:#}"),
                    "cannot refresh credentials"
                );
            }
        }
        for index in 0..self.slots.len() {
            if self.slots[index].client.is_none() {
                continue;
            }
            let client = Client::new(self.endpoint(index));
            if self.slots[index].spec.name == EVENTS_SERVICE {
                self.context.bus.send_replace(Some(client.clone()));
            }
            self.slots[index].client = Some(client);
        }
        tracing::info!("tokens minted again");
    }

    // ------------------------------------------------------------------ stopping

    /// Stops services in reverse table order: SIGTERM to the group, SIGKILL after the grace
    /// period, each reaped before the next. After `force`, every remaining group gets SIGKILL.
    async fn stop_all(&mut self, force: &CancellationToken) {
        self.stopping = true;
        self.publish_status();
        tracing::info!("stopping every service");
        for index in (0..self.slots.len()).rev() {
            if self.slots[index].spec.name == EVENTS_SERVICE && self.slots[index].state == State::Running {
                self.flush_events(force).await;
            }
            self.stop_one(index, force).await;
        }
        let undelivered = self.context.events.len();
        if undelivered > 0 {
            tracing::debug!(undelivered, "system.service events left undelivered at exit");
        }
    }

    /// Gives queued events a chance to reach the bus before it stops.
    async fn flush_events(&self, force: &CancellationToken) {
        let deadline = Instant::now() + self.context.config.grace;
        tokio::select! {
            _ = force.cancelled() => {}
            delivered = self.context.events.wait_empty(deadline) => if !delivered {
                tracing::warn!(queued = self.context.events.len(), "could not deliver every system.service event before stopping the bus");
            },
        }
    }

    async fn stop_one(&mut self, index: usize, force: &CancellationToken) {
        let name = self.slots[index].spec.name;
        let Some(pid) = self.slots[index].pid else {
            if let Some(watch) = self.slots[index].watch.take() {
                watch.cancel();
            }
            if self.slots[index].state != State::Failed {
                self.set_state(index, State::Stopped);
            }
            return;
        };
        self.set_state(index, State::Stopping);
        let mut killed = force.is_cancelled();
        if killed {
            self.kill_all();
        } else {
            tracing::info!(service = name, pid, "stopping");
            signal_group(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + self.context.config.grace;
        while self.slots[index].pid.is_some() {
            tokio::select! {
                Some(message) = self.receiver.recv() => self.on_stop_message(message),
                _ = tokio::time::sleep_until(deadline), if !killed => {
                    tracing::warn!(service = name, pid, grace = ?self.context.config.grace, "did not stop in time; killing it");
                    signal_group(pid, Signal::SIGKILL);
                    killed = true;
                }
                _ = force.cancelled(), if !killed => {
                    self.kill_all();
                    killed = true;
                }
            }
        }
    }

    fn kill_all(&mut self) {
        for index in 0..self.slots.len() {
            let Some(pid) = self.slots[index].pid else { continue };
            tracing::warn!(service = self.slots[index].spec.name, pid, "killing");
            signal_group(pid, Signal::SIGKILL);
            self.set_state(index, State::Stopping);
        }
    }

    /// During the stop only exits matter: none is restarted.
    fn on_stop_message(&mut self, message: Message) {
        let Message::Exited {
            index,
            generation,
            exit,
        } = message
        else {
            return;
        };
        let slot = &mut self.slots[index];
        if slot.generation != generation {
            return;
        }
        let pid = slot.pid.take();
        if let Some(watch) = slot.watch.take() {
            watch.cancel();
        }
        slot.client = None;
        slot.running_since = None;
        let requested = slot.state == State::Stopping;
        let name = slot.spec.name;
        if name == EVENTS_SERVICE {
            self.context.bus.send_replace(None);
        }
        self.set_state(index, State::Stopped);
        if requested {
            tracing::info!(service = name, pid, exit = %exit.describe(), "stopped");
            self.emit(index, Change::Stopped, pid, exit, Some("shutdown".into()));
        } else {
            tracing::warn!(service = name, pid, exit = %exit.describe(), "ended during shutdown");
            self.emit(index, Change::Exited, pid, exit, Some(exit.describe()));
        }
    }

    // ------------------------------------------------------------------ reporting

    fn set_state(&mut self, index: usize, state: State) {
        let slot = &mut self.slots[index];
        if slot.state != state {
            slot.state = state;
            slot.since = aiventbus_rpc::time::now_rfc3339();
        }
        self.publish_status();
    }

    fn emit(&self, index: usize, change: Change, pid: Option<u32>, exit: Exit, reason: Option<String>) {
        let slot = &self.slots[index];
        self.context.events.push(&ServiceEvent {
            service: slot.spec.name,
            change,
            pid,
            exit,
            restarts: slot.restarts,
            reason,
        });
    }

    /// Publishes init and every service, in start order, for `system.services`.
    fn publish_status(&self) {
        let mut services = Vec::with_capacity(self.slots.len() + 1);
        services.push(ServiceInfo {
            name: INIT.into(),
            state: if self.stopping { State::Stopping } else { State::Running }
                .as_str()
                .into(),
            pid: Some(std::process::id()),
            restarts: 0,
            since: self.init_since.clone(),
        });
        services.extend(self.slots.iter().map(|slot| ServiceInfo {
            name: slot.spec.name.into(),
            state: slot.state.as_str().into(),
            pid: slot.pid,
            restarts: slot.restarts,
            since: slot.since.clone(),
        }));
        self.context.status.send_replace(services);
    }
}

/// Where the services' notification sockets live.
pub fn notify_dir(paths: &Paths) -> PathBuf {
    paths.runtime_dir.join("notify")
}

#[cfg(test)]
mod tests;
