//! The start phase (cold start until READY; restart after `kill -9` of the bus until a publish
//! succeeds again) and the daemon's processes: their pids and resident memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aiventbus_benches::{median, rss_kib};
use aiventbus_proto::methods::PublishParams;
use aiventbus_testkit::Daemon;
use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::UnixStream;

use crate::report::{ProcessMemory, ProcessRss, StartReport};
use crate::{Plan, progress};

/// Longest wait for a killed bus to be replaced and answer.
const RESTART_BOUND: Duration = Duration::from_secs(60);
/// How often the restart probes look.
const PROBE_EVERY: Duration = Duration::from_millis(1);

/// The daemon's processes: init, then each supervised service, by name.
#[derive(Debug, Clone)]
pub struct Pids {
    processes: Vec<(String, u32)>,
}

impl Pids {
    /// `(name, pid)` of the daemon's processes and of this tool (`load`).
    pub fn labelled(&self) -> Vec<(&str, u32)> {
        std::iter::once(("load", std::process::id()))
            .chain(self.processes.iter().map(|(name, pid)| (name.as_str(), *pid)))
            .collect()
    }
}

/// The pids of init and of every running service, from init's service table.
pub async fn pids(daemon: &Daemon) -> anyhow::Result<Pids> {
    let init = daemon.init_pid().context("init is not running")?;
    let services = daemon
        .client()
        .await?
        .services()
        .await
        .context("reading init's service table")?;
    let mut processes = vec![("init".to_owned(), init)];
    for service in services.services {
        if let Some(pid) = service.pid
            && pid != init
        {
            processes.push((service.name, pid));
        }
    }
    Ok(Pids { processes })
}

/// Resident memory of each process now.
pub fn rss(pids: &Pids) -> ProcessRss {
    let processes: Vec<ProcessMemory> = pids
        .processes
        .iter()
        .map(|(name, pid)| ProcessMemory {
            name: name.clone(),
            kib: rss_kib(*pid),
        })
        .collect();
    ProcessRss {
        total_kib: processes.iter().filter_map(|process| process.kib).sum(),
        processes,
    }
}

/// `plan.repeats` times: start a fresh daemon and time it until READY, then kill its bus with
/// SIGKILL and time until a publish through `api.sock` succeeds. A fresh daemon per try keeps
/// init's crash backoff at its first step, as for a bus that crashes once.
pub fn start_and_restart(runtime: &tokio::runtime::Runtime, plan: &Plan) -> anyhow::Result<StartReport> {
    let mut cold = Vec::with_capacity(plan.repeats);
    let mut restart = Vec::with_capacity(plan.repeats);
    let mut listening = Vec::with_capacity(plan.repeats);
    for attempt in 1..=plan.repeats {
        let started = Instant::now();
        let daemon = Daemon::start().context("starting the daemon")?;
        let ready = started.elapsed();
        let (back, accepting) = runtime.block_on(restart_bus(&daemon))?;
        progress(format!(
            "start {attempt}/{}: ready in {} ms; after kill -9 of the bus, bus.sock accepts in {} ms, a publish succeeds in {} ms",
            plan.repeats,
            ready.as_millis(),
            accepting.map_or("?".to_owned(), |time| time.as_millis().to_string()),
            back.as_millis()
        ));
        cold.push(ready.as_secs_f64() * 1e3);
        restart.push(back.as_secs_f64() * 1e3);
        if let Some(accepting) = accepting {
            listening.push(accepting.as_secs_f64() * 1e3);
        }
        drop(daemon);
    }
    Ok(StartReport {
        cold_start_median_ms: median(&cold),
        cold_start_ms: cold,
        restart_median_ms: median(&restart),
        restart_ms: restart,
        bus_listening_median_ms: median(&listening),
        bus_listening_ms: listening,
    })
}

fn probe_params() -> PublishParams {
    PublishParams {
        topic: "bench.restart".to_owned(),
        ..PublishParams::default()
    }
}

/// Kills the bus and returns how long until a publish succeeded, and until the new bus accepted
/// connections on `bus.sock` (when that was seen).
async fn restart_bus(daemon: &Daemon) -> anyhow::Result<(Duration, Option<Duration>)> {
    let client = daemon.client().await?;
    // The gateway's connection to the bus is up once a publish has gone through.
    client
        .publish(&probe_params())
        .await
        .context("publish before the kill")?;
    let bus = daemon.service_pid("bus").await?;
    let bus_socket = daemon.paths.socket("bus");
    let pid = Pid::from_raw(i32::try_from(bus).context("bus pid out of range")?);
    let killed = Instant::now();
    let deadline = killed + RESTART_BOUND;
    kill(pid, Signal::SIGKILL).context("killing the bus")?;
    // Wait until init has reaped the old bus, so that nothing below can still reach it: its main
    // thread turns zombie while other threads may still hold the listening socket open.
    let proc_dir = PathBuf::from(format!("/proc/{bus}"));
    while proc_dir.exists() {
        if Instant::now() >= deadline {
            bail!("the bus (pid {bus}) was not reaped after SIGKILL");
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let probe = tokio::spawn(accepting_after(bus_socket, killed, deadline));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            probe.abort();
            bail!("no publish succeeded within {RESTART_BOUND:?} of killing the bus");
        }
        // The gateway holds the publish until its bus connection is back, and retries once when
        // it was lost mid-call; anything else is tried again.
        if let Ok(Ok(_)) = tokio::time::timeout(left, client.publish(&probe_params())).await {
            break;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    let back = killed.elapsed();
    let accepting = tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    Ok((back, accepting))
}

/// Polls `socket` until something accepts there, returning the time since `killed`.
async fn accepting_after(socket: PathBuf, killed: Instant, deadline: Instant) -> Option<Duration> {
    while Instant::now() < deadline {
        if UnixStream::connect(&socket).await.is_ok() {
            return Some(killed.elapsed());
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    None
}
