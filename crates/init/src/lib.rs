//! `aiventbus-init`, the supervisor: holds the master key and the service table, writes every
//! service's credentials, starts the services in order, restarts crashed ones, answers on
//! `init.sock`, and stops everything in reverse order on SIGTERM/SIGINT, leaving no process behind.
//!
//! Module map: `table` (the services, as data), `lock` (single instance), `keys` (master key,
//! credentials, tokens), `spawn` (process creation, the one unsafe block), `logs` (per-service
//! log files), `ready` (READY=1 and health calls), `backoff`, `supervisor` (the state machine),
//! `events` (`system.service` to the bus), `api` (`init.sock`), `signals`.

pub mod api;
pub mod backoff;
pub mod events;
pub mod keys;
pub mod lock;
pub mod logs;
pub mod ready;
pub mod signals;
pub mod spawn;
pub mod supervisor;
pub mod table;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_rpc::config::Config;
use aiventbus_rpc::paths::{Paths, ensure_private_dir, write_private_file};
use aiventbus_rpc::{Auth, ServeOptions};
use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::EventQueue;
use crate::lock::InstanceLock;
use crate::supervisor::{Context, Supervisor, notify_dir};
use crate::table::{INIT, SERVICES};

/// How long helper tasks get to finish once every service is gone.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` (or SIGTERM/SIGINT, or `system.shutdown`), then stops every
/// service and removes the pid file and sockets. Must run on a current-thread runtime: children's
/// parent-death signal follows the thread that spawned them.
pub async fn run(paths: Paths, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    paths.ensure_dirs().with_context(|| {
        format!(
            "preparing {} and {}",
            paths.runtime_dir.display(),
            paths.state_dir.display()
        )
    })?;
    let lock = InstanceLock::acquire(&paths)?;
    let result = run_locked(&paths, &config, &shutdown).await;
    remove_runtime_files(&paths);
    remove_if_present(&paths.pid_file());
    drop(lock);
    result
}

async fn run_locked(paths: &Paths, config: &Config, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let pid_file = paths.pid_file();
    write_private_file(&pid_file, format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    remove_runtime_files(paths);
    let notify = notify_dir(paths);
    ensure_private_dir(&notify).with_context(|| format!("creating {}", notify.display()))?;

    let background = CancellationToken::new();
    let force = CancellationToken::new();
    signals::listen(shutdown.clone(), force.clone(), background.clone()).context("installing signal handlers")?;

    let libexec = spawn::libexec_dir()?;
    let binaries = spawn::resolve_binaries(&libexec, SERVICES)?;
    let master = keys::load_or_create_master(&paths.master_key())?;
    keys::write_credentials(paths, &master, SERVICES, aiventbus_rpc::time::now_ms())?;

    let init_socket = paths.socket(INIT);
    let listener = aiventbus_rpc::bind(&init_socket)
        .await
        .with_context(|| format!("binding {}", init_socket.display()))?;
    let (status, status_receiver) = watch::channel(Vec::new());
    let (bus, bus_receiver) = watch::channel(None);
    let events = Arc::new(EventQueue::new(events::QUEUE_LIMIT));
    let tracker = TaskTracker::new();
    tracker.spawn(events::publish_loop(events.clone(), bus_receiver, background.clone()));
    let api = api::methods(api::Api {
        status: status_receiver,
        shutdown: shutdown.clone(),
    });
    let options = ServeOptions::new(INIT, Auth::Token(keys::init_verifier(&master)), &config.rpc);
    tracker.spawn(aiventbus_rpc::serve(
        listener,
        Arc::new(api),
        options,
        background.clone(),
    ));

    let output = spawn::Output::detect();
    tracing::info!(
        runtime_dir = %paths.runtime_dir.display(),
        state_dir = %paths.state_dir.display(),
        libexec = %libexec.display(),
        logs = if output == spawn::Output::Pipe { "files" } else { "inherited" },
        "starting services"
    );
    let supervisor = Supervisor::new(
        Context {
            paths: paths.clone(),
            config: config.init.clone(),
            master,
            binaries,
            output,
            events,
            bus,
            status,
            tracker: tracker.clone(),
            background: background.clone(),
        },
        SERVICES,
    );
    supervisor.run(shutdown, &force).await;

    background.cancel();
    tracker.close();
    if tokio::time::timeout(WIND_DOWN, tracker.wait()).await.is_err() {
        tracing::warn!("some helper tasks did not finish; exiting anyway");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Removes the sockets of every service, `api.sock`, `init.sock` and the notification sockets.
/// Only called while holding the lock.
fn remove_runtime_files(paths: &Paths) {
    let mut files: Vec<_> = SERVICES.iter().map(|spec| paths.socket(spec.name)).collect();
    files.push(paths.api_socket());
    files.push(paths.socket(INIT));
    if let Ok(entries) = std::fs::read_dir(notify_dir(paths)) {
        files.extend(entries.flatten().map(|entry| entry.path()));
    }
    for file in &files {
        remove_if_present(file);
    }
}

fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed"),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove"),
    }
}
