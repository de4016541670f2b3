//! Process runs: argv in its own process group, no PTY, a parent-death signal, stdout and stderr
//! read as they come and published in order as `exec.started`, `exec.output` (coalesced for up to
//! ~20 ms, at most 16 KiB, text or base64), `exec.finished`; an output cap past which bytes are
//! drained and discarded; a timeout and `exec.cancel` that stop the whole group (SIGTERM, SIGKILL
//! 2 s later). A run is its process group: when the leader exits, what it left in the group is
//! killed too.
//!
//! The leader's exit is observed with `waitid(WNOWAIT)`, which leaves it a zombie: its pid keeps
//! naming the group until the group has been signalled, so a reused pid can never be hit.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aiventbus_proto::exec::RunStatus;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, Thread};
use crate::output::{CHUNK_MAX, Chunk, Chunker, Kept};
use crate::store::{NewRun, RunEnd, Store};
use crate::sys;

/// How long a stopped group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output is coalesced into one chunk.
const COALESCE: Duration = Duration::from_millis(20);
/// How long the pipes are drained after the group is gone (a process that left the group may
/// hold them open).
const DRAIN: Duration = Duration::from_secs(2);
/// Events of one run waiting to be published; readers wait when it is full (and so, through the
/// pipe, does the process).
const EVENT_QUEUE: usize = 64;

/// One process to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// `run_…`.
    pub run_id: String,
    /// Where its events belong.
    pub thread: Thread,
    /// Program and arguments (non-empty).
    pub argv: Vec<String>,
    /// Working directory (checked to exist).
    pub cwd: PathBuf,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// Written to stdin, then closed; `None`: /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Stopped after this long.
    pub timeout: Option<Duration>,
    /// Bytes kept per stream.
    pub max_output: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// Exit code when it exited.
    pub exit_code: Option<i32>,
    /// Signal when it was killed.
    pub signal: Option<i32>,
    /// From start to the leader's exit.
    pub duration_ms: u64,
    /// A stream went past the cap.
    pub truncated: bool,
    /// The start of stdout (lossy UTF-8, at most 16 KiB).
    pub stdout: String,
    /// The start of stderr.
    pub stderr: String,
    /// Bytes written to stdout.
    pub stdout_bytes: u64,
    /// Bytes written to stderr.
    pub stderr_bytes: u64,
    /// Stopped by the timeout.
    pub timed_out: bool,
    /// Stopped by `exec.cancel` or shutdown.
    pub cancelled: bool,
}

impl RunOutcome {
    /// The result an agent gets.
    pub fn to_result(&self) -> Value {
        let mut result = json!({
            "exit_code": self.exit_code,
            "signal": self.signal,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "truncated": self.truncated,
            "duration_ms": self.duration_ms,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
        });
        if self.timed_out {
            result["timed_out"] = json!(true);
        }
        if self.cancelled {
            result["cancelled"] = json!(true);
        }
        result
    }
}

/// A run that was asked to start.
pub enum Started {
    /// It runs; `done` resolves when it ended.
    Running {
        /// The leader's pid.
        pid: u32,
        /// Its outcome, once over.
        done: oneshot::Receiver<RunOutcome>,
    },
    /// It could not start (recorded as `failed`, `exec.finished` published with the error).
    Failed(String),
}

struct LiveRun {
    pgid: u32,
    cancel: CancellationToken,
}

/// Every run of this exec.
pub struct Runs {
    store: Store,
    bus: Bus,
    live: Mutex<HashMap<String, LiveRun>>,
    slots: Arc<Semaphore>,
    max_runs: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Why a run was refused before starting.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `exec.max_runs` are running.
    #[error("{0} processes are running already (exec.max_runs)")]
    Busy(usize),
    /// The run could not be recorded.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

enum RunEvent {
    Output { stream: &'static str, chunk: Chunk },
    Finished(Value),
}

impl Runs {
    /// A registry; runs are tracked by `tracker` and stopped when `shutdown` is cancelled.
    pub fn new(store: Store, bus: Bus, max_runs: u32, tracker: TaskTracker, shutdown: CancellationToken) -> Runs {
        let max_runs = max_runs.max(1) as usize;
        Runs {
            store,
            bus,
            live: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max_runs)),
            max_runs,
            tracker,
            shutdown,
        }
    }

    /// Runs now.
    pub fn running(&self) -> usize {
        self.live_map().len()
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveRun>> {
        // The map holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops a run's process group (SIGTERM, SIGKILL after [`KILL_GRACE`]). False when it is not
    /// running (any more).
    pub fn cancel(&self, run_id: &str) -> bool {
        match self.live_map().get(run_id) {
            Some(run) => {
                if !run.cancel.is_cancelled() {
                    tracing::info!(run = run_id, pgid = run.pgid, "cancelling a run");
                    run.cancel.cancel();
                }
                true
            }
            None => false,
        }
    }

    /// Starts a run. Must be called from an async task (a runtime worker thread): the child's
    /// parent-death signal is tied to the thread that forks it.
    pub async fn start(self: &Arc<Self>, request: RunRequest) -> Result<Started, RunError> {
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| RunError::Busy(self.max_runs))?;
        let started_ms = aiventbus_rpc::time::now_ms();
        let mut command = tokio::process::Command::new(&request.argv[0]);
        command
            .args(&request.argv[1..])
            .env_clear()
            .envs(request.env.iter().map(|(name, value)| (name, value)))
            .current_dir(&request.cwd)
            .stdin(if request.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        sys::die_with_parent(&mut command);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                let message = format!("cannot start {:?}: {error}", request.argv[0]);
                self.record_failed_start(&request, &message, started_ms).await?;
                return Ok(Started::Failed(message));
            }
        };
        let clock = Instant::now();
        // A child that was spawned has a pid until it is reaped, and nothing has reaped it yet.
        let Some(pid) = child.id() else {
            let message = "the process vanished before it could be watched".to_owned();
            self.record_failed_start(&request, &message, started_ms).await?;
            return Ok(Started::Failed(message));
        };
        let stat = sys::stat(pid);
        let recorded = self
            .store
            .insert_run(NewRun {
                run_id: request.run_id.clone(),
                correlation_id: request.thread.correlation_id.clone(),
                argv: request.argv.clone(),
                cwd: Some(request.cwd.display().to_string()),
                status: RunStatus::Running,
                pid: Some(pid),
                start_ticks: stat.map(|stat| stat.start_ticks),
                session: stat.map(|stat| stat.session).or_else(sys::own_session),
                error: None,
                started_ms,
            })
            .await;
        if let Err(error) = recorded {
            // Unrecorded, it could not be found again after a restart: stop it now.
            sys::signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            return Err(error.into());
        }
        let cancel = self.shutdown.child_token();
        self.live_map().insert(
            request.run_id.clone(),
            LiveRun {
                pgid: pid,
                cancel: cancel.clone(),
            },
        );
        tracing::info!(run = %request.run_id, pid, argv = ?request.argv, "run started");

        let (events, queue) = mpsc::channel(EVENT_QUEUE);
        let publisher = self.tracker.spawn(publish_events(
            self.bus.clone(),
            request.thread.clone(),
            request.run_id.clone(),
            json!({"run_id": request.run_id, "pid": pid, "argv": request.argv}),
            queue,
        ));
        let (done_tx, done) = oneshot::channel();
        let runs = Arc::clone(self);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        self.tracker.spawn(async move {
            let watched = Watched {
                child,
                pid,
                clock,
                cancel,
                stdin: stdin.zip(request.stdin.clone()),
                stdout,
                stderr,
                events,
                max_output: request.max_output,
                timeout: request.timeout,
            };
            let outcome = watched.watch().await;
            runs.finish(&request, outcome, publisher, done_tx, permit).await;
        });
        Ok(Started::Running { pid, done })
    }

    async fn record_failed_start(
        &self,
        request: &RunRequest,
        message: &str,
        started_ms: u64,
    ) -> Result<(), crate::store::StoreError> {
        tracing::info!(run = %request.run_id, argv = ?request.argv, error = message, "run could not start");
        self.store
            .insert_run(NewRun {
                run_id: request.run_id.clone(),
                correlation_id: request.thread.correlation_id.clone(),
                argv: request.argv.clone(),
                cwd: Some(request.cwd.display().to_string()),
                status: RunStatus::Failed,
                pid: None,
                start_ticks: None,
                session: None,
                error: Some(message.to_owned()),
                started_ms,
            })
            .await?;
        self.bus
            .report(
                "exec.finished",
                json!({
                    "run_id": request.run_id,
                    "exit_code": null,
                    "signal": null,
                    "duration_ms": 0,
                    "truncated": false,
                    "error": message,
                }),
                &request.thread,
            )
            .await;
        Ok(())
    }

    async fn finish(
        &self,
        request: &RunRequest,
        outcome: Watch,
        publisher: tokio::task::JoinHandle<()>,
        done: oneshot::Sender<RunOutcome>,
        permit: OwnedSemaphorePermit,
    ) {
        let Watch { outcome, events } = outcome;
        if let Err(error) = self
            .store
            .finish_run(
                &request.run_id,
                RunEnd {
                    exit_code: outcome.exit_code,
                    signal: outcome.signal,
                    duration_ms: outcome.duration_ms,
                    truncated: outcome.truncated,
                },
            )
            .await
        {
            tracing::error!(run = %request.run_id, %error, "could not record the end of a run");
        }
        let finished = json!({
            "run_id": request.run_id,
            "exit_code": outcome.exit_code,
            "signal": outcome.signal,
            "duration_ms": outcome.duration_ms,
            "truncated": outcome.truncated,
        });
        let _ = events.send(RunEvent::Finished(finished)).await;
        drop(events);
        let _ = publisher.await;
        self.live_map().remove(&request.run_id);
        drop(permit);
        tracing::info!(
            run = %request.run_id,
            exit_code = ?outcome.exit_code,
            signal = ?outcome.signal,
            duration_ms = outcome.duration_ms,
            "run finished"
        );
        let _ = done.send(outcome);
    }
}

struct Watched {
    child: tokio::process::Child,
    pid: u32,
    clock: Instant,
    cancel: CancellationToken,
    stdin: Option<(tokio::process::ChildStdin, Vec<u8>)>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    events: mpsc::Sender<RunEvent>,
    max_output: u64,
    timeout: Option<Duration>,
}

struct Watch {
    outcome: RunOutcome,
    events: mpsc::Sender<RunEvent>,
}

impl Watched {
    async fn watch(mut self) -> Watch {
        let writer = self.stdin.take().map(|(mut pipe, bytes)| {
            tokio::spawn(async move {
                // A process that exits without reading its input closes the pipe: not our failure.
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            })
        });
        // The counts live outside the readers, so they survive a reader that has to be abandoned.
        let out = Arc::new(Mutex::new(Kept::new(self.max_output)));
        let err = Arc::new(Mutex::new(Kept::new(self.max_output)));
        let readers: Vec<tokio::task::JoinHandle<()>> = [
            self.stdout
                .take()
                .map(|pipe| tokio::spawn(read_stream(pipe, "stdout", Arc::clone(&out), self.events.clone()))),
            self.stderr
                .take()
                .map(|pipe| tokio::spawn(read_stream(pipe, "stderr", Arc::clone(&err), self.events.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect();

        let pid = self.pid;
        let mut exited = tokio::task::spawn_blocking(move || {
            // Waits for the leader's exit without reaping it (WNOWAIT): the zombie keeps its pid.
            loop {
                match nix::sys::wait::waitid(
                    Id::Pid(nix::unistd::Pid::from_raw(pid as i32)),
                    WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => return other,
                }
            }
        });
        let timeout = async {
            match self.timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let (mut timed_out, mut cancelled) = (false, false);
        tokio::select! {
            _ = &mut exited => {}
            _ = timeout => timed_out = true,
            _ = self.cancel.cancelled() => cancelled = true,
        }
        if timed_out || cancelled {
            sys::signal_group(pid, Signal::SIGTERM);
            tokio::select! {
                _ = &mut exited => {}
                _ = tokio::time::sleep(KILL_GRACE) => {
                    sys::signal_group(pid, Signal::SIGKILL);
                    let _ = (&mut exited).await;
                }
            }
        }
        let duration_ms = self.clock.elapsed().as_millis() as u64;
        // The leader is a zombie: whatever is left in its group goes with it.
        sys::signal_group(pid, Signal::SIGKILL);
        let status = self.child.wait().await;

        let aborts: Vec<_> = readers.iter().map(|reader| reader.abort_handle()).collect();
        let drained = futures_util::future::join_all(readers);
        if tokio::time::timeout(DRAIN, drained).await.is_err() {
            tracing::warn!(
                pid,
                "the run's output did not end 2 s after its group was gone (a process that left the group \
                 holds it open, or the bus is slow); stopped reading"
            );
            // The readers hold senders of the run's events: they must go for the events to end.
            for abort in aborts {
                abort.abort();
            }
        }
        if let Some(writer) = writer {
            writer.abort();
        }
        let (exit_code, signal) = match status {
            Ok(status) => (status.code(), status.signal()),
            Err(error) => {
                tracing::error!(pid, %error, "could not reap a run's process");
                (None, None)
            }
        };
        let out = take_kept(&out);
        let err = take_kept(&err);
        Watch {
            outcome: RunOutcome {
                exit_code,
                signal,
                duration_ms,
                truncated: out.truncated() || err.truncated(),
                stdout: out.text(),
                stderr: err.text(),
                stdout_bytes: out.total,
                stderr_bytes: err.total,
                timed_out,
                cancelled,
            },
            events: self.events,
        }
    }
}

fn lock_kept(kept: &Mutex<Kept>) -> std::sync::MutexGuard<'_, Kept> {
    // Plain counters and bytes: a panic elsewhere cannot leave them inconsistent.
    kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn take_kept(kept: &Mutex<Kept>) -> Kept {
    std::mem::replace(&mut *lock_kept(kept), Kept::new(0))
}

/// Reads one stream to its end: chunks of at most [`CHUNK_MAX`] bytes, each gathering what arrives
/// within [`COALESCE`] of its first byte; past the cap, bytes are read and dropped.
async fn read_stream<R: AsyncRead + Unpin>(
    mut pipe: R,
    stream: &'static str,
    kept: Arc<Mutex<Kept>>,
    events: mpsc::Sender<RunEvent>,
) {
    let mut chunker = Chunker::default();
    let mut buffer = vec![0u8; CHUNK_MAX];
    let mut discard = vec![0u8; 64 * 1024];
    loop {
        if lock_kept(&kept).full() {
            // Drain and discard so the process keeps running.
            match pipe.read(&mut discard).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    lock_kept(&kept).admit(&discard[..n]);
                    continue;
                }
            }
        }
        let room = CHUNK_MAX - chunker.carried();
        let mut filled = match pipe.read(&mut buffer[..room]).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let mut end = filled == 0;
        if !end {
            let deadline = tokio::time::Instant::now() + COALESCE;
            while filled < room {
                tokio::select! {
                    read = pipe.read(&mut buffer[filled..room]) => match read {
                        Ok(0) | Err(_) => { end = true; break; }
                        Ok(n) => filled += n,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        let chunk = {
            let mut kept = lock_kept(&kept);
            let admitted = kept.admit(&buffer[..filled]);
            let flush = end || kept.full();
            chunker.cut(admitted, flush)
        };
        if let Some(chunk) = chunk
            && events.send(RunEvent::Output { stream, chunk }).await.is_err()
        {
            return;
        }
        if end {
            return;
        }
    }
}

/// Publishes a run's events in order: `exec.started`, every `exec.output` (numbered from 1 across
/// both streams), `exec.finished`. After a publish fails, later output is dropped (and counted in
/// the log) so a bus outage cannot hold the run; `exec.finished` is still attempted.
async fn publish_events(bus: Bus, thread: Thread, run_id: String, started: Value, mut queue: mpsc::Receiver<RunEvent>) {
    let mut healthy = bus.report("exec.started", started, &thread).await;
    let mut n = 0u64;
    let mut dropped = 0u64;
    while let Some(event) = queue.recv().await {
        match event {
            RunEvent::Output { stream, chunk } => {
                n += 1;
                if !healthy {
                    dropped += 1;
                    continue;
                }
                let mut payload = Map::new();
                payload.insert("run_id".into(), json!(run_id));
                payload.insert("stream".into(), json!(stream));
                payload.insert("n".into(), json!(n));
                chunk.write_to(&mut payload);
                healthy = bus.report("exec.output", Value::Object(payload), &thread).await;
            }
            RunEvent::Finished(payload) => {
                bus.report("exec.finished", payload, &thread).await;
            }
        }
    }
    if dropped > 0 {
        tracing::warn!(run = %run_id, dropped, "output events were dropped while the bus was unreachable");
    }
}
