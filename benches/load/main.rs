//! `aiventbus-load`: the end-to-end load tool. It starts its own daemons (the real binaries found
//! next to its executable, so `cargo run --release` measures release builds), runs the chosen
//! phases — durable publish throughput with raw-SQLite and in-process-store baselines, publish →
//! delivery latency, cold start and restart after `kill -9`, resident memory, agent runs through
//! router and llm — and prints a
//! plain-text report, or JSON with `--json`. Every loop is bounded in count and in time. Its
//! figures go in release notes, never in tests.

mod agents;
mod exec;
mod latency;
mod lifecycle;
mod publish;
mod report;

use std::process::ExitCode;
use std::time::Duration;

use aiventbus_bus::store::SyncMode;
use aiventbus_testkit::Daemon;
use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use crate::report::{MemoryReport, Report};

/// One part of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Every phase below.
    All,
    /// Durable publish throughput, end to end and against SQLite and the store directly.
    Publish,
    /// Publish → delivery latency to a live subscriber at a paced rate.
    Latency,
    /// Cold start until READY, and restart after `kill -9` of the bus until a publish succeeds.
    Start,
    /// Resident memory of each process when idle (and after the publish phase when it runs).
    Memory,
    /// Agent runs: one llm run at a time against an instant scripted model (publish ->
    /// agent.completed), and command-agent runs per second under a burst.
    Agents,
    /// The owner's `exec.run` of `/bin/true` through policy and exec, one at a time.
    Exec,
}

/// Which `[bus] sync` settings the publish phase measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SyncChoice {
    /// `sync = "normal"` only.
    Normal,
    /// `sync = "full"` only.
    Full,
    /// Both, normal first.
    Both,
}

/// End-to-end load tool for aiventbus; starts its own daemons from the binaries beside it.
#[derive(Debug, Parser)]
#[command(name = "aiventbus-load", version)]
struct Cli {
    /// Phases to run (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    phase: Vec<Phase>,
    /// Small sizes for a smoke run (publish 5,000 events, latency 1 s, 2 starts, 30 llm agent
    /// runs, 200 command-agent events).
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Events per publish run [default: 200000, or 5000 with --quick].
    #[arg(long)]
    events: Option<u64>,
    /// Client connections publishing at once.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Publishes in flight per connection.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Which `[bus] sync` settings to measure.
    #[arg(long, value_enum, default_value = "both")]
    sync: SyncChoice,
    /// Skip the raw SQLite and in-process store baselines of the publish phase.
    #[arg(long)]
    no_baselines: bool,
    /// Publishes per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u32,
    /// Seconds of paced publishing in the latency phase [default: 5, or 1 with --quick].
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Cold starts and restarts measured [default: 5, or 2 with --quick].
    #[arg(long)]
    repeats: Option<usize>,
    /// llm agent runs measured one at a time in the agents phase [default: 200, or 30 with --quick].
    #[arg(long)]
    agent_runs: Option<usize>,
    /// Events published for the command agent in the agents phase [default: 2000, or 200 with
    /// --quick].
    #[arg(long)]
    agent_events: Option<u64>,
    /// Seconds the daemon idles before its idle memory is read.
    #[arg(long, default_value_t = 2)]
    idle_secs: u64,
    /// Longest one publish run (or the command-agent burst) may last; it then stops issuing and
    /// reports what completed.
    #[arg(long, default_value_t = 300)]
    max_run_secs: u64,
    /// Worker threads of this tool's own runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The resolved sizes of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    phases: Vec<Phase>,
    /// Events per publish run.
    pub events: u64,
    /// Publishing connections.
    pub connections: usize,
    /// In-flight publishes per connection.
    pub in_flight: usize,
    /// Sync settings measured, in order.
    pub syncs: Vec<SyncMode>,
    /// Whether the raw SQLite and store baselines run.
    pub baselines: bool,
    /// Latency phase rate, per second.
    pub latency_rate: u32,
    /// Latency phase length.
    pub latency_time: Duration,
    /// Cold starts and restarts.
    pub repeats: usize,
    /// Idle time before the idle memory reading.
    pub idle: Duration,
    /// llm agent runs measured one at a time.
    pub agent_runs: usize,
    /// Events published for the command agent.
    pub agent_events: u64,
    /// Bound on one publish run.
    pub max_run: Duration,
    /// This tool's worker threads.
    pub threads: usize,
}

impl Plan {
    fn new(cli: &Cli) -> anyhow::Result<Plan> {
        let mut problems = Vec::new();
        if cli.connections == 0 {
            problems.push("--connections must be at least 1");
        }
        if cli.in_flight == 0 || cli.in_flight > u32::MAX as usize {
            problems.push("--in-flight must be between 1 and 2^32-1");
        }
        if cli.latency_rate == 0 || cli.latency_rate > 1_000_000 {
            problems.push("--latency-rate must be between 1 and 1000000");
        }
        if cli.threads == 0 {
            problems.push("--threads must be at least 1");
        }
        if cli.repeats == Some(0) {
            problems.push("--repeats must be at least 1");
        }
        if cli.agent_runs == Some(0) {
            problems.push("--agent-runs must be at least 1");
        }
        if cli
            .agent_events
            .is_some_and(|events| events == 0 || events > 10_000_000)
        {
            problems.push("--agent-events must be between 1 and 10000000");
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let phases = if cli.phase.contains(&Phase::All) {
            vec![
                Phase::Start,
                Phase::Memory,
                Phase::Publish,
                Phase::Latency,
                Phase::Agents,
                Phase::Exec,
            ]
        } else {
            cli.phase.clone()
        };
        Ok(Plan {
            phases,
            events: cli.events.unwrap_or(if cli.quick { 5_000 } else { 200_000 }),
            connections: cli.connections,
            in_flight: cli.in_flight,
            syncs: match cli.sync {
                SyncChoice::Normal => vec![SyncMode::Normal],
                SyncChoice::Full => vec![SyncMode::Full],
                SyncChoice::Both => vec![SyncMode::Normal, SyncMode::Full],
            },
            baselines: !cli.no_baselines,
            latency_rate: cli.latency_rate,
            latency_time: Duration::from_secs(cli.latency_secs.unwrap_or(if cli.quick { 1 } else { 5 })),
            repeats: cli.repeats.unwrap_or(if cli.quick { 2 } else { 5 }),
            idle: Duration::from_secs(cli.idle_secs),
            agent_runs: cli.agent_runs.unwrap_or(if cli.quick { 30 } else { 200 }),
            agent_events: cli.agent_events.unwrap_or(if cli.quick { 200 } else { 2_000 }),
            max_run: Duration::from_secs(cli.max_run_secs.max(1)),
            threads: cli.threads,
        })
    }

    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

/// The config file that selects `sync`.
pub fn daemon_config(sync: SyncMode) -> &'static str {
    match sync {
        SyncMode::Normal => "",
        SyncMode::Full => "[bus]\nsync = \"full\"\n",
    }
}

/// A line of progress on stderr, so `--json` output stays clean.
pub fn progress(message: impl std::fmt::Display) {
    eprintln!("[aiventbus-load] {message}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match Plan::new(&cli) {
        Ok(plan) => plan,
        Err(error) => {
            // A usage mistake, like the ones clap reports itself.
            eprintln!("aiventbus-load: {error:#}");
            return ExitCode::from(2);
        }
    };
    match run(&cli, &plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aiventbus-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, plan: &Plan) -> anyhow::Result<()> {
    check_binaries()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads)
        .enable_all()
        .thread_name("load-worker")
        .build()
        .context("starting the runtime")?;
    let mut report = Report::new(plan);

    if plan.runs(Phase::Start) {
        report.start = Some(lifecycle::start_and_restart(&runtime, plan)?);
    }

    let measure_memory = plan.runs(Phase::Memory);
    let publish_normal = plan.runs(Phase::Publish) && plan.syncs.contains(&SyncMode::Normal);
    // The idle reading and the normal publish run share one daemon, so "after publish" is the
    // same processes that were idle.
    let mut shared_daemon = None;
    if measure_memory || publish_normal {
        progress("starting a daemon (sync = normal)");
        let daemon = Daemon::start().context("starting the daemon")?;
        if measure_memory {
            progress(format!("idling {:?} before reading memory", plan.idle));
            std::thread::sleep(plan.idle);
            let pids = runtime.block_on(lifecycle::pids(&daemon))?;
            report.memory = Some(MemoryReport {
                idle_for_s: plan.idle.as_secs_f64(),
                idle: lifecycle::rss(&pids),
                after_publish: None,
            });
        }
        shared_daemon = Some(daemon);
    }

    if plan.runs(Phase::Publish) {
        for &sync in &plan.syncs {
            let daemon = match (sync, shared_daemon.take()) {
                (SyncMode::Normal, Some(daemon)) => daemon,
                (_, _) => {
                    progress(format!("starting a daemon (sync = {})", report::sync_name(sync)));
                    Daemon::start_with_config(daemon_config(sync)).context("starting the daemon")?
                }
            };
            let run = publish::run(&runtime, plan, daemon, sync)?;
            if sync == SyncMode::Normal
                && let Some(memory) = report.memory.as_mut()
            {
                memory.after_publish = Some(run.rss_after.clone());
            }
            report.publish.push(run);
        }
    }
    drop(shared_daemon);

    if plan.runs(Phase::Latency) {
        progress("starting a daemon for the latency phase");
        let daemon = Daemon::start().context("starting the daemon")?;
        report.latency = Some(runtime.block_on(latency::run(&daemon, plan))?);
    }

    if plan.runs(Phase::Agents) {
        report.agents = Some(agents::run(&runtime, plan)?);
    }

    if plan.runs(Phase::Exec) {
        progress("starting a daemon for the exec phase");
        let daemon = Daemon::start().context("starting the daemon")?;
        report.exec = Some(runtime.block_on(exec::run(&daemon, plan.agent_runs))?);
    }

    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// Fails with instructions when the daemon's binaries were not built beside this tool.
fn check_binaries() -> anyhow::Result<()> {
    let dir = aiventbus_testkit::bin_dir();
    let missing: Vec<&str> = aiventbus_testkit::BINARIES
        .into_iter()
        .filter(|name| *name != "aibus" && !dir.join(name).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} missing from {}: build them first with `cargo build --release --workspace --bins` \
             (or point AIVENTBUS_LIBEXEC_DIR at them)",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(())
}
