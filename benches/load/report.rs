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
            },
            publish: Vec::new(),
            latency: None,
            start: None,
            memory: None,
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
        Ok(())
    }
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
