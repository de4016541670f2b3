//! The report: what each phase measured, as plain text for people and as JSON for scripts.

use std::fmt::Write as _;

use aiventbus_bus::store::SyncMode;
use serde::Serialize;

use crate::Plan;

/// Everything one run measured; phases that did not run are absent.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Where and how it ran.
    pub machine: Machine,
    /// Sizes used.
    pub plan: PlanSummary,
    /// One entry per sync setting.
    pub publish: Vec<PublishRun>,
    /// Publish → delivery latency.
    pub latency: Option<LatencyReport>,
    /// Cold start and restart.
    pub start: Option<StartReport>,
    /// Resident memory.
    pub memory: Option<MemoryReport>,
    /// Agent runs through router and llm.
    pub agents: Option<AgentsReport>,
    /// The owner's `exec.run` round trip through policy and exec.
    pub exec: Option<ExecReport>,
}

/// `exec.run` of `/bin/true`, one at a time.
#[derive(Debug, Clone, Serialize)]
pub struct ExecReport {
    /// Runs measured.
    pub runs: usize,
    /// `exec.run` on api.sock until its `exec.finished` arrives.
    pub round_trip_us: Quantiles,
    /// The same program spawned straight from the tool.
    pub direct_spawn_us: Quantiles,
    /// The p50 target.
    pub target_p50_us: u64,
}

/// The machine the figures come from.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the run started (the machine may be shared).
    pub load_average_at_start: f64,
}

/// The sizes of the run.
#[derive(Debug, Serialize)]
pub struct PlanSummary {
    /// Events per publish run.
    pub events: u64,
    /// Publishing connections.
    pub connections: usize,
    /// In-flight publishes per connection.
    pub in_flight: usize,
    /// Serialized payload size of a publish-phase event.
    pub payload_bytes: usize,
    /// Latency phase rate.
    pub latency_rate: u32,
    /// Latency phase length.
    pub latency_seconds: f64,
    /// Starts and restarts measured.
    pub repeats: usize,
    /// llm agent runs measured one at a time.
    pub agent_runs: usize,
    /// Events published for the command agent.
    pub agent_events: u64,
}

/// Events completed over a time.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    /// Events that succeeded.
    pub events: u64,
    /// Wall time, first issue to last answer.
    pub seconds: f64,
    /// `events / seconds`.
    pub per_second: f64,
}

impl Rate {
    /// A rate from a count and a time.
    pub fn new(events: u64, seconds: f64) -> Rate {
        Rate {
            events,
            seconds,
            per_second: if seconds > 0.0 { events as f64 / seconds } else { 0.0 },
        }
    }
}

/// What one thread group (threads of one process sharing a name) did during a run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuShare {
    /// `load`, `init`, `bus`, `gateway`.
    pub process: String,
    /// Thread name (`bus-writer`, `aiventbus-bus` for tokio workers, …).
    pub thread: String,
    /// CPU seconds (user + system), 10 ms resolution.
    pub seconds: f64,
    /// CPU microseconds per event of the run.
    pub us_per_event: f64,
    /// Context switches (voluntary + involuntary) per event.
    pub switches_per_event: f64,
}

/// Where a run's CPU time went, from `/proc`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageReport {
    /// Per process and thread name.
    pub threads: Vec<CpuShare>,
}

impl UsageReport {
    /// `usage` divided by the `events` of the run.
    pub fn new(usage: aiventbus_benches::Usage, events: u64) -> UsageReport {
        let per_event = |value: f64| if events > 0 { value / events as f64 } else { 0.0 };
        UsageReport {
            threads: usage
                .threads
                .into_iter()
                .map(|((process, thread), used)| CpuShare {
                    process,
                    thread,
                    seconds: used.cpu.as_secs_f64(),
                    us_per_event: per_event(used.cpu.as_secs_f64() * 1e6),
                    switches_per_event: per_event((used.voluntary_switches + used.involuntary_switches) as f64),
                })
                .collect(),
        }
    }
}

/// The end-to-end part of one publish run.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    /// Throughput through `api.sock`.
    pub rate: Rate,
    /// Failed publishes by error text.
    pub errors: Vec<(String, u64)>,
    /// The run stopped issuing at its time bound before all events were sent.
    pub cut_short: bool,
    /// Group-commit transactions the bus made during the run.
    pub commits: Option<u64>,
    /// Events the bus wrote during the run.
    pub written: Option<u64>,
    /// CPU time and context switches per process and thread during the run.
    pub usage: UsageReport,
}

/// One baseline run without sockets.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Throughput.
    pub rate: Rate,
    /// Failed writes by error text.
    pub errors: Vec<(String, u64)>,
    /// CPU time and context switches of this process during the run.
    pub usage: UsageReport,
}

/// One publish run at one sync setting.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRun {
    /// `normal` or `full`.
    pub sync: &'static str,
    /// Through the daemon.
    pub e2e: EndToEnd,
    /// Straight into SQLite, 1,000 rows per transaction.
    pub raw_sqlite: Option<Baseline>,
    /// Through `aiventbus_bus::store::Store` in this process.
    pub store: Option<Baseline>,
    /// e2e rate / raw SQLite rate.
    pub e2e_over_raw: Option<f64>,
    /// e2e rate / store rate.
    pub e2e_over_store: Option<f64>,
    /// Resident memory of the daemon right after the e2e run.
    pub rss_after: ProcessRss,
}

/// Publish → delivery latency.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Publishes issued.
    pub sent: u64,
    /// Publishes acknowledged.
    pub acknowledged: u64,
    /// Events the subscriber received.
    pub received: u64,
    /// Rate actually achieved while sending.
    pub send_rate: f64,
    /// Why the subscription ended early, if it did.
    pub ended: Option<String>,
    /// Publish issued → event delivered to the subscriber.
    pub delivery_us: Quantiles,
    /// Publish issued → publish acknowledged (committed).
    pub ack_us: Quantiles,
}

/// Order statistics in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<u64>,
    /// 90th percentile.
    pub p90: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
    /// Largest.
    pub max: Option<u64>,
}

impl Quantiles {
    /// Quantiles of nanosecond samples, in microseconds.
    pub fn of_nanos(mut samples: Vec<u64>) -> Quantiles {
        samples.sort_unstable();
        let at = |q| aiventbus_benches::quantile(&samples, q).map(|ns| ns / 1000);
        Quantiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Cold start and restart times.
#[derive(Debug, Clone, Serialize)]
pub struct StartReport {
    /// `Daemon::start()` until READY, each try, ms.
    pub cold_start_ms: Vec<f64>,
    /// Their median.
    pub cold_start_median_ms: Option<f64>,
    /// SIGKILL of the bus until a publish through `api.sock` succeeds, each try, ms.
    pub restart_ms: Vec<f64>,
    /// Their median.
    pub restart_median_ms: Option<f64>,
    /// SIGKILL of the bus until the new bus accepts on `bus.sock`, each try, ms.
    pub bus_listening_ms: Vec<f64>,
    /// Their median.
    pub bus_listening_median_ms: Option<f64>,
}

/// Resident memory of the daemon's processes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessRss {
    /// init first, then the services in init's table order.
    pub processes: Vec<ProcessMemory>,
    /// Their sum, KiB.
    pub total_kib: u64,
}

/// Resident memory of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMemory {
    /// `init`, `bus`, `gateway`, …
    pub name: String,
    /// `VmRSS` in KiB; absent when the process was gone.
    pub kib: Option<u64>,
}

/// Resident memory readings.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// How long the daemon idled first.
    pub idle_for_s: f64,
    /// After start and the idle time, no load.
    pub idle: ProcessRss,
    /// Right after the publish phase (sync = normal) on the same daemon.
    pub after_publish: Option<ProcessRss>,
}

/// The agents phase.
#[derive(Debug, Clone, Serialize)]
pub struct AgentsReport {
    /// One llm agent run at a time against a model server that answers at once.
    pub llm: LlmRunsReport,
    /// A command agent under a burst of events.
    pub command: CommandRunsReport,
}

/// One llm agent, runs one at a time.
#[derive(Debug, Clone, Serialize)]
pub struct LlmRunsReport {
    /// Runs measured.
    pub runs: usize,
    /// Runs before the clock started.
    pub warmup_runs: usize,
    /// Publish issued → its `agent.completed` received.
    pub completed_us: Quantiles,
    /// The model server's time per chat request, measured from this tool.
    pub model_us: Quantiles,
    /// How `model_us` was measured.
    pub model_method: &'static str,
    /// `completed_us` samples minus the median of `model_us`: what bus, router and llm add.
    pub overhead_us: Quantiles,
    /// The p50 `overhead_us` is compared against.
    pub target_p50_us: u64,
    /// CPU time and context switches per run.
    pub usage: UsageReport,
}

/// A command agent under a burst of events.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRunsReport {
    /// Events to publish.
    pub events: u64,
    /// Events published.
    pub published: u64,
    /// Start until the last publish was acknowledged.
    pub publish_seconds: f64,
    /// Failed publishes by error text.
    pub publish_errors: Vec<(String, u64)>,
    /// Publishing stopped at `--max-run-secs`.
    pub cut_short: bool,
    /// The agent's `max_concurrent`.
    pub agent_max_concurrent: u32,
    /// `[llm] max_concurrent`.
    pub llm_max_concurrent: u32,
    /// `[router] max_queue`, raised so the burst is not dropped.
    pub max_queue: u64,
    /// `agent.completed` for published events; seconds from the first publish to the last of them.
    pub completed: Rate,
    /// Other outcomes for published events, by topic.
    pub other_outcomes: Vec<(String, u64)>,
    /// Why waiting stopped early, if it did.
    pub ended: Option<String>,
    /// Run time as the llm reports it (`duration_ms` of `agent.completed`).
    pub run_us: Quantiles,
    /// The same script spawned straight from this tool, one at a time, spawn to exit.
    pub spawn_us: Quantiles,
    /// CPU time of the scripts themselves per completed run, µs (waited-for children of the llm
    /// process, 10 ms resolution over the whole burst).
    pub script_cpu_us_per_run: Option<f64>,
    /// CPU time and context switches per completed run (the scripts' own processes not included).
    pub usage: UsageReport,
}

/// `normal` or `full`.
pub fn sync_name(sync: SyncMode) -> &'static str {
    match sync {
        SyncMode::Normal => "normal",
        SyncMode::Full => "full",
    }
}

impl Report {
    /// An empty report for `plan`.
    pub fn new(plan: &Plan) -> Report {
        Report {
            machine: Machine::describe(),
            plan: PlanSummary {
                events: plan.events,
                connections: plan.connections,
                in_flight: plan.in_flight,
                payload_bytes: crate::publish::payload_bytes(),
                latency_rate: plan.latency_rate,
                latency_seconds: plan.latency_time.as_secs_f64(),
                repeats: plan.repeats,
                agent_runs: plan.agent_runs,
                agent_events: plan.agent_events,
            },
            publish: Vec::new(),
            latency: None,
            start: None,
            memory: None,
            agents: None,
            exec: None,
        }
    }

    /// The plain-text report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        let machine = &self.machine;
        writeln!(out, "aiventbus-load report (one run; repeated figures are medians)")?;
        writeln!(
            out,
            "machine: {} CPUs ({}), Linux {}, load average {:.2} at start",
            machine.cpus, machine.cpu_model, machine.kernel, machine.load_average_at_start
        )?;
        if !self.publish.is_empty() {
            let plan = &self.plan;
            writeln!(out)?;
            writeln!(
                out,
                "publish: {} events, {} connections x {} in flight, ~{} B payload, durable (acknowledged after commit)",
                plan.events, plan.connections, plan.in_flight, plan.payload_bytes
            )?;
            writeln!(
                out,
                "  {:<7} {:>12} {:>12} {:>15} {:>9} {:>9} {:>10} {:>7}",
                "sync", "e2e ev/s", "store ev/s", "raw SQLite ev/s", "e2e/store", "e2e/raw", "avg batch", "errors"
            )?;
            for run in &self.publish {
                let rate = |baseline: &Option<Baseline>| {
                    baseline
                        .as_ref()
                        .map_or("-".to_owned(), |b| format!("{:.0}", b.rate.per_second))
                };
                let ratio = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.2}"));
                let batch = match (run.e2e.commits, run.e2e.written) {
                    (Some(commits), Some(written)) if commits > 0 => format!("{:.0}", written as f64 / commits as f64),
                    _ => "-".to_owned(),
                };
                let errors: u64 = run.e2e.errors.iter().map(|(_, n)| n).sum();
                writeln!(
                    out,
                    "  {:<7} {:>12.0} {:>12} {:>15} {:>9} {:>9} {:>10} {:>7}",
                    run.sync,
                    run.e2e.rate.per_second,
                    rate(&run.store),
                    rate(&run.raw_sqlite),
                    ratio(run.e2e_over_store),
                    ratio(run.e2e_over_raw),
                    batch,
                    errors
                )?;
            }
            for run in &self.publish {
                writeln!(
                    out,
                    "  sync={}: e2e {} events in {:.2} s{}",
                    run.sync,
                    run.e2e.rate.events,
                    run.e2e.rate.seconds,
                    if run.e2e.cut_short {
                        " (cut short by --max-run-secs)"
                    } else {
                        ""
                    }
                )?;
                for (error, count) in run.e2e.errors.iter().chain(
                    run.store
                        .iter()
                        .chain(run.raw_sqlite.iter())
                        .flat_map(|baseline| baseline.errors.iter()),
                ) {
                    writeln!(out, "    {count} x {error}")?;
                }
                write_usage(out, "    during e2e", &run.e2e.usage)?;
                if let Some(store) = &run.store {
                    write_usage(out, "    during store-only", &store.usage)?;
                }
            }
        }
        if let Some(latency) = &self.latency {
            writeln!(out)?;
            writeln!(
                out,
                "latency: {} events/s for {:.0} s to a live subscriber on bench.lat, both through api.sock",
                self.plan.latency_rate, self.plan.latency_seconds
            )?;
            writeln!(
                out,
                "  sent {} at {:.0}/s, acknowledged {}, delivered {}{}",
                latency.sent,
                latency.send_rate,
                latency.acknowledged,
                latency.received,
                latency
                    .ended
                    .as_ref()
                    .map_or(String::new(), |why| format!(" (ended: {why})"))
            )?;
            write_quantiles(out, "  publish -> delivery", &latency.delivery_us)?;
            write_quantiles(out, "  publish -> ack     ", &latency.ack_us)?;
        }
        if let Some(start) = &self.start {
            writeln!(out)?;
            writeln!(
                out,
                "start ({} tries, each on a fresh daemon):",
                start.cold_start_ms.len()
            )?;
            write_times(
                out,
                "  cold start, init -> READY          ",
                start.cold_start_median_ms,
                &start.cold_start_ms,
            )?;
            write_times(
                out,
                "  kill -9 bus -> new bus.sock accepts",
                start.bus_listening_median_ms,
                &start.bus_listening_ms,
            )?;
            write_times(
                out,
                "  kill -9 bus -> publish succeeds    ",
                start.restart_median_ms,
                &start.restart_ms,
            )?;
        }
        if let Some(memory) = &self.memory {
            writeln!(out)?;
            writeln!(out, "memory (VmRSS):")?;
            write_rss(
                out,
                &format!("  idle {:.0} s after start", memory.idle_for_s),
                &memory.idle,
            )?;
            if let Some(after) = &memory.after_publish {
                write_rss(out, "  after publish (sync normal)", after)?;
            }
        }
        if let Some(exec) = &self.exec {
            writeln!(out)?;
            writeln!(
                out,
                "exec: {} runs of `exec.run /bin/true` one at a time (api.sock -> gateway -> policy deny rules -> exec spawn), \
                 until its exec.finished event",
                exec.runs
            )?;
            let q = |q: &Quantiles| {
                format!(
                    "p50 {} us, p90 {} us, p99 {} us",
                    q.p50.unwrap_or(0),
                    q.p90.unwrap_or(0),
                    q.p99.unwrap_or(0)
                )
            };
            writeln!(
                out,
                "  round trip:   {} (target p50 <= {} us)",
                q(&exec.round_trip_us),
                exec.target_p50_us
            )?;
            writeln!(out, "  direct spawn: {}", q(&exec.direct_spawn_us))?;
        }
        if let Some(agents) = &self.agents {
            write_agents(out, agents)?;
        }
        Ok(())
    }
}

fn write_agents(out: &mut String, agents: &AgentsReport) -> std::fmt::Result {
    let llm = &agents.llm;
    writeln!(out)?;
    writeln!(
        out,
        "agents, llm: one llm agent (ollama -> scripted model server answering at once), {} runs one at a time \
         (after {} warm-up runs)",
        llm.runs, llm.warmup_runs
    )?;
    write_quantiles(out, "  publish -> agent.completed         ", &llm.completed_us)?;
    write_quantiles(out, "  model server, direct POST          ", &llm.model_us)?;
    write_quantiles(out, "  publish -> completed - model median", &llm.overhead_us)?;
    let ms = |us: u64| us as f64 / 1000.0;
    writeln!(
        out,
        "  target: <= {:.0} ms p50 without the model: {}",
        ms(llm.target_p50_us),
        match llm.overhead_us.p50 {
            Some(p50) if p50 <= llm.target_p50_us => format!("met ({:.2} ms)", ms(p50)),
            Some(p50) => format!("missed ({:.2} ms)", ms(p50)),
            None => "no runs".to_owned(),
        }
    )?;
    writeln!(out, "  model time: {}", llm.model_method)?;
    write_usage(out, "  during the runs", &llm.usage)?;

    let command = &agents.command;
    writeln!(out)?;
    writeln!(
        out,
        "agents, command: one command agent (a /bin/sh script echoing a fixed answer), agent max_concurrent {}, \
         [llm] max_concurrent {}, [router] max_queue {}",
        command.agent_max_concurrent, command.llm_max_concurrent, command.max_queue
    )?;
    writeln!(
        out,
        "  published {} of {} in {:.2} s{}; completed {} in {:.2} s: {:.0} completed/s{}",
        command.published,
        command.events,
        command.publish_seconds,
        if command.cut_short {
            " (cut short by --max-run-secs)"
        } else {
            ""
        },
        command.completed.events,
        command.completed.seconds,
        command.completed.per_second,
        command
            .ended
            .as_ref()
            .map_or(String::new(), |why| format!(" (ended: {why})"))
    )?;
    for (error, count) in &command.publish_errors {
        writeln!(out, "    {count} x publish error: {error}")?;
    }
    for (topic, count) in &command.other_outcomes {
        writeln!(out, "    {count} x {topic}")?;
    }
    write_quantiles(out, "  run, as the llm times it (duration_ms)", &command.run_us)?;
    write_quantiles(out, "  the script spawned here, one at a time", &command.spawn_us)?;
    if let Some(p50) = command.spawn_us.p50.filter(|us| *us > 0) {
        writeln!(
            out,
            "  every run spawns a process (fork/exec of /bin/sh): alone, one spawn takes {:.2} ms p50, \
             at most {:.0}/s one at a time",
            ms(p50),
            1e6 / p50 as f64
        )?;
    }
    write_usage(
        out,
        "  during the runs (not counting the scripts themselves)",
        &command.usage,
    )?;
    if let Some(us) = command.script_cpu_us_per_run {
        let others: f64 = command.usage.threads.iter().map(|share| share.us_per_event).sum();
        let all = others + us;
        writeln!(
            out,
            "      scripts  {us:>5.1} µs  (the spawned processes themselves, children of llm: {:.0} % of the {all:.0} µs \
             per run with them)",
            if all > 0.0 { us * 100.0 / all } else { 0.0 }
        )?;
    }
    Ok(())
}

fn write_usage(out: &mut String, title: &str, usage: &UsageReport) -> std::fmt::Result {
    if usage.threads.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{title}, per event: CPU µs by process (and by thread), context switches:"
    )?;
    let mut processes: Vec<&str> = Vec::new();
    for share in &usage.threads {
        if !processes.contains(&share.process.as_str()) {
            processes.push(&share.process);
        }
    }
    let mut total = 0.0;
    for process in processes {
        let shares: Vec<&CpuShare> = usage.threads.iter().filter(|share| share.process == process).collect();
        let cpu: f64 = shares.iter().map(|share| share.us_per_event).sum();
        let switches: f64 = shares.iter().map(|share| share.switches_per_event).sum();
        total += cpu;
        let parts: Vec<String> = shares
            .iter()
            .map(|share| format!("{} {:.1}", thread_label(&share.thread), share.us_per_event))
            .collect();
        writeln!(
            out,
            "      {process:<8} {cpu:>5.1} µs  ({})  {switches:.2} switches",
            parts.join(", ")
        )?;
    }
    writeln!(out, "      {:<8} {total:>5.1} µs", "total")
}

/// Tokio names its threads after the runtime (`aiventbus-bus`, `load-worker`); call them what
/// they are. Other names (`bus-writer`, `bus-notify`) are the store's own threads.
fn thread_label(name: &str) -> &str {
    match name {
        "aiventbus-load" => "main",
        "load-worker" => "tokio",
        name if name.starts_with("aiventbus-") => "tokio",
        name => name,
    }
}

fn write_quantiles(out: &mut String, title: &str, quantiles: &Quantiles) -> std::fmt::Result {
    let show = |value: Option<u64>| value.map_or("-".to_owned(), |us| format!("{:.2} ms", us as f64 / 1000.0));
    writeln!(
        out,
        "{title}  p50 {}  p90 {}  p99 {}  max {}",
        show(quantiles.p50),
        show(quantiles.p90),
        show(quantiles.p99),
        show(quantiles.max)
    )
}

fn write_times(out: &mut String, title: &str, median: Option<f64>, samples: &[f64]) -> std::fmt::Result {
    let samples: Vec<String> = samples.iter().map(|ms| format!("{ms:.0}")).collect();
    writeln!(
        out,
        "{title}  median {}  (tries: {} ms)",
        median.map_or("-".to_owned(), |ms| format!("{ms:.0} ms")),
        samples.join(", ")
    )
}

fn write_rss(out: &mut String, title: &str, rss: &ProcessRss) -> std::fmt::Result {
    let mib = |kib: Option<u64>| kib.map_or("-".to_owned(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0));
    let parts: Vec<String> = rss
        .processes
        .iter()
        .map(|process| format!("{} {}", process.name, mib(process.kib)))
        .collect();
    writeln!(
        out,
        "{title:<29}: {}, total {}",
        parts.join(", "),
        mib(Some(rss.total_kib))
    )
}

impl Machine {
    fn describe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, model)| model.trim().to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_average_at_start: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|first| first.parse().ok())
                .unwrap_or(0.0),
        }
    }
}
