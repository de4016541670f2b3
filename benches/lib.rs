//! Benchmark support shared by the load tool: order statistics over samples, and what `/proc`
//! says about a process (resident memory; CPU time and context switches per thread) so a run can
//! show where the time went without a profiler.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Linux reports CPU times in `/proc/<pid>/stat` in units of `USER_HZ`, which the kernel fixes at
/// 100 per second for user space on every architecture.
const USER_HZ: u64 = 100;

/// The value at quantile `q` (0.0 to 1.0) of `sorted` by the nearest-rank rule; `None` when empty.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(sorted.len() - 1)).copied()
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

/// Resident set size (`VmRSS`) of a process in KiB; `None` when it is gone or has no memory.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) of the children of a process that it has waited for (`cutime +
/// cstime` in `/proc/<pid>/stat`), in 10 ms steps; `None` when it is gone.
pub fn children_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the name: state (field 3) … cutime (16) and cstime (17), so indexes 13 and 14 here.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cutime: u64 = fields.get(13)?.parse().ok()?;
    let cstime: u64 = fields.get(14)?.parse().ok()?;
    Some(Duration::from_millis((cutime + cstime) * 1000 / USER_HZ))
}

/// What the kernel has counted for some processes at one instant: CPU time and context switches
/// of every thread.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    threads: HashMap<(u32, u32), ThreadCounters>,
}

#[derive(Debug, Clone)]
struct ThreadCounters {
    process: String,
    name: String,
    ticks: u64,
    voluntary_switches: u64,
    involuntary_switches: u64,
}

/// What one group of threads (same process label, same thread name) did between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadUsage {
    /// User plus system CPU time, in 10 ms steps.
    pub cpu: Duration,
    /// Times a thread gave up the CPU to wait (a futex, `epoll_wait`, a blocking read).
    pub voluntary_switches: u64,
    /// Times a thread was preempted.
    pub involuntary_switches: u64,
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Per (process label, thread name).
    pub threads: BTreeMap<(String, String), ThreadUsage>,
}

impl Snapshot {
    /// Reads every thread of each `(label, pid)`; processes that are gone are skipped.
    pub fn take(processes: &[(&str, u32)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (label, pid) in processes {
            let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for entry in entries.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                    continue;
                };
                let Some((name, ticks)) = thread_ticks(*pid, tid) else {
                    continue;
                };
                let (voluntary_switches, involuntary_switches) = thread_switches(*pid, tid).unwrap_or_default();
                snapshot.threads.insert(
                    (*pid, tid),
                    ThreadCounters {
                        process: (*label).to_owned(),
                        name,
                        ticks,
                        voluntary_switches,
                        involuntary_switches,
                    },
                );
            }
        }
        snapshot
    }

    /// What happened between `before` and `self`. Threads born in between count in full;
    /// threads that ended in between are lost.
    pub fn since(&self, before: &Snapshot) -> Usage {
        let mut usage = Usage::default();
        for (key, now) in &self.threads {
            let earlier = before.threads.get(key);
            let ticks = now.ticks.saturating_sub(earlier.map_or(0, |thread| thread.ticks));
            let slot = usage
                .threads
                .entry((now.process.clone(), now.name.clone()))
                .or_default();
            slot.cpu += Duration::from_millis(ticks * 1000 / USER_HZ);
            slot.voluntary_switches += now
                .voluntary_switches
                .saturating_sub(earlier.map_or(0, |thread| thread.voluntary_switches));
            slot.involuntary_switches += now
                .involuntary_switches
                .saturating_sub(earlier.map_or(0, |thread| thread.involuntary_switches));
        }
        usage.threads.retain(|_, thread| *thread != ThreadUsage::default());
        usage
    }
}

/// `(comm, utime + stime)` of one thread.
fn thread_ticks(pid: u32, tid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // `comm` is in parentheses and may itself hold spaces or parentheses: split at the last ')'.
    let open = stat.find('(')?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.get(open + 1..)?.to_owned();
    // After the name: state (field 3) … utime (14) and stime (15), so indexes 11 and 12 here.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// `(voluntary, involuntary)` context switches of one thread.
fn thread_switches(pid: u32, tid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
    };
    Some((
        field("voluntary_ctxt_switches:")?,
        field("nonvoluntary_ctxt_switches:")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&samples, 0.5), Some(50));
        assert_eq!(quantile(&samples, 0.99), Some(99));
        assert_eq!(quantile(&samples, 1.0), Some(100));
        assert_eq!(quantile(&samples, 0.0), Some(1));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(children_cpu(pid).is_some());
        let before = Snapshot::take(&[("self", pid)]);
        // Burn CPU until /proc shows some (it counts in 10 ms ticks); a bound keeps a broken
        // reading from spinning forever.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let spent = loop {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let usage = Snapshot::take(&[("self", pid)]).since(&before);
            let spent: Duration = usage.threads.values().map(|thread| thread.cpu).sum();
            if !spent.is_zero() || start.elapsed() > Duration::from_secs(30) {
                break spent;
            }
        };
        assert!(!spent.is_zero(), "no CPU time seen in /proc/{pid}/task/*/stat");
    }
}
