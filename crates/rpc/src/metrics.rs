//! Request figures every socket server keeps, and the generic `system.metrics` method that reports
//! them as Prometheus text. The server answers `system.metrics` itself (after the usual token and
//! scope checks), so every service has it without writing a handler. Names are prefixed
//! `aiventbus_` and carry a `service` label; label values are bounded (method names are capped
//! at [`MAX_METHODS`], names the server does not know count as `unknown`). A service may add
//! gauges of its own with [`Registry::register_gauge`]. [`merge`] joins several services' text
//! into one valid exposition (each family's `# HELP`/`# TYPE` once).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use aiventbus_proto::methods::NoParams;
use aiventbus_proto::{ErrorCode, Method};
use serde::{Deserialize, Serialize};

/// Distinct method labels at most; further names count as `other`.
pub const MAX_METHODS: usize = 256;

/// `system.metrics`: the service's figures as Prometheus text.
#[derive(Debug, Clone, Copy)]
pub struct SystemMetrics;

impl Method for SystemMetrics {
    const NAME: &'static str = "system.metrics";
    type Params = NoParams;
    type Result = MetricsResult;
}

/// `system.metrics` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsResult {
    /// The answering service.
    pub service: String,
    /// Prometheus text exposition (format 0.0.4).
    pub text: String,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;

struct Gauge {
    name: String,
    help: String,
    read: GaugeFn,
}

/// The process's figures.
pub struct Registry {
    methods: RwLock<HashMap<String, Arc<Counters>>>,
    connections: AtomicI64,
    gauges: Mutex<Vec<Gauge>>,
    started_ms: u64,
}

/// The process-wide registry the socket server records into.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::new)
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry {
            methods: RwLock::new(HashMap::new()),
            connections: AtomicI64::new(0),
            gauges: Mutex::new(Vec::new()),
            started_ms: crate::time::now_ms(),
        }
    }

    /// Records one answered request (`error` = its error code, if it failed).
    pub fn record(&self, method: &str, error: Option<i32>) {
        let label = if error == Some(ErrorCode::MethodNotFound.code()) {
            "unknown"
        } else {
            method
        };
        let counters = self.counters(label);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if error.is_some() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counters(&self, label: &str) -> Arc<Counters> {
        // Counters are plain atomics: a panic elsewhere cannot leave the map inconsistent.
        if let Some(counters) = self.methods.read().unwrap_or_else(PoisonError::into_inner).get(label) {
            return counters.clone();
        }
        let mut methods = self.methods.write().unwrap_or_else(PoisonError::into_inner);
        let label = if methods.len() >= MAX_METHODS && !methods.contains_key(label) {
            "other"
        } else {
            label
        };
        methods.entry(label.to_owned()).or_default().clone()
    }

    /// A connection opened.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Adds a gauge `aiventbus_<name>` read at each scrape. `name` is `[a-z0-9_]`.
    pub fn register_gauge(&self, name: &str, help: &str, read: impl Fn() -> f64 + Send + Sync + 'static) {
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.gauges.lock().unwrap_or_else(PoisonError::into_inner).push(Gauge {
            name,
            help: help.replace('\n', " "),
            read: Box::new(read),
        });
    }

    /// The figures as Prometheus text, labelled with `service`.
    pub fn render(&self, service: &str) -> String {
        let service = escape_label(service);
        let mut out = String::new();
        let mut methods: Vec<(String, Arc<Counters>)> = self
            .methods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, counters)| (name.clone(), counters.clone()))
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP aiventbus_rpc_requests_total JSON-RPC requests answered, by method.\n");
        out.push_str("# TYPE aiventbus_rpc_requests_total counter\n");
        for (name, counters) in &methods {
            let _ = writeln!(
                out,
                "aiventbus_rpc_requests_total{{service=\"{service}\",method=\"{}\"}} {}",
                escape_label(name),
                counters.requests.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP aiventbus_rpc_errors_total JSON-RPC requests answered with an error, by method.\n");
        out.push_str("# TYPE aiventbus_rpc_errors_total counter\n");
        for (name, counters) in &methods {
            let _ = writeln!(
                out,
                "aiventbus_rpc_errors_total{{service=\"{service}\",method=\"{}\"}} {}",
                escape_label(name),
                counters.errors.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP aiventbus_rpc_connections Open connections on the service's sockets.\n");
        out.push_str("# TYPE aiventbus_rpc_connections gauge\n");
        let _ = writeln!(
            out,
            "aiventbus_rpc_connections{{service=\"{service}\"}} {}",
            self.connections.load(Ordering::Relaxed).max(0)
        );
        if let Some(rss) = resident_bytes() {
            out.push_str("# HELP aiventbus_process_resident_memory_bytes Resident memory of the service's process.\n");
            out.push_str("# TYPE aiventbus_process_resident_memory_bytes gauge\n");
            let _ = writeln!(
                out,
                "aiventbus_process_resident_memory_bytes{{service=\"{service}\"}} {rss}"
            );
        }
        out.push_str("# HELP aiventbus_process_start_time_seconds When the service's process started (unix time).\n");
        out.push_str("# TYPE aiventbus_process_start_time_seconds gauge\n");
        let _ = writeln!(
            out,
            "aiventbus_process_start_time_seconds{{service=\"{service}\"}} {}",
            self.started_ms as f64 / 1000.0
        );
        for gauge in self.gauges.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = writeln!(out, "# HELP aiventbus_{} {}", gauge.name, gauge.help);
            let _ = writeln!(out, "# TYPE aiventbus_{} gauge", gauge.name);
            let _ = writeln!(
                out,
                "aiventbus_{}{{service=\"{service}\"}} {}",
                gauge.name,
                (gauge.read)()
            );
        }
        up_line(&mut out, &service, true);
        out
    }
}

/// `aiventbus_up{service} 1|0` with its HELP and TYPE, for a service that answered or not.
pub fn up(service: &str, answered: bool) -> String {
    let mut out = String::new();
    up_line(&mut out, &escape_label(service), answered);
    out
}

fn up_line(out: &mut String, service: &str, answered: bool) {
    out.push_str("# HELP aiventbus_up Whether the service answered the scrape.\n");
    out.push_str("# TYPE aiventbus_up gauge\n");
    let _ = writeln!(out, "aiventbus_up{{service=\"{service}\"}} {}", u8::from(answered));
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * u64::try_from(page_size).ok()?)
}

/// Escapes a label value (`\`, `"` and newlines).
pub fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Joins several expositions into one: every family's `# HELP` and `# TYPE` once, followed by all
/// of its samples from every text, families in order of first appearance.
pub fn merge<S: AsRef<str>>(texts: &[S]) -> String {
    struct Family {
        help: Option<String>,
        kind: Option<String>,
        samples: Vec<String>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut family = |name: &str, order: &mut Vec<String>| -> String {
        if !families.contains_key(name) {
            order.push(name.to_owned());
            families.insert(
                name.to_owned(),
                Family {
                    help: None,
                    kind: None,
                    samples: Vec::new(),
                },
            );
        }
        name.to_owned()
    };
    let mut entries: Vec<(String, u8, String)> = Vec::new();
    for text in texts {
        for line in text.as_ref().lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                entries.push((family(name, &mut order), 0, line.to_owned()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split_whitespace().next().unwrap_or_default();
                entries.push((family(name, &mut order), 1, line.to_owned()));
            } else if line.starts_with('#') {
                continue;
            } else {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| order.iter().any(|known| known == base))
                    .unwrap_or(name);
                entries.push((family(base, &mut order), 2, line.to_owned()));
            }
        }
    }
    for (name, kind, line) in entries {
        let Some(entry) = families.get_mut(&name) else {
            continue;
        };
        match kind {
            0 => {
                entry.help.get_or_insert(line);
            }
            1 => {
                entry.kind.get_or_insert(line);
            }
            _ => entry.samples.push(line),
        }
    }
    let mut out = String::new();
    for name in order {
        let Some(entry) = families.remove(&name) else {
            continue;
        };
        for line in entry.help.iter().chain(entry.kind.iter()).chain(entry.samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_method_with_bounded_labels() {
        let registry = Registry::new();
        registry.record("events.publish", None);
        registry.record("events.publish", Some(-32602));
        registry.record("made.up", Some(ErrorCode::MethodNotFound.code()));
        registry.connection_opened();
        registry.register_gauge("commit_queue", "Writes waiting.", || 7.0);
        let text = registry.render("bus");
        assert!(text.contains("aiventbus_rpc_requests_total{service=\"bus\",method=\"events.publish\"} 2"));
        assert!(text.contains("aiventbus_rpc_errors_total{service=\"bus\",method=\"events.publish\"} 1"));
        assert!(text.contains("aiventbus_rpc_requests_total{service=\"bus\",method=\"unknown\"} 1"));
        assert!(!text.contains("made.up"));
        assert!(text.contains("aiventbus_rpc_connections{service=\"bus\"} 1"));
        assert!(text.contains("aiventbus_commit_queue{service=\"bus\"} 7"));
        assert!(text.contains("aiventbus_up{service=\"bus\"} 1"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert!(line.starts_with("aiventbus_"), "{line}");
        }

        for index in 0..(MAX_METHODS + 10) {
            registry.record(&format!("m.{index}"), None);
        }
        let text = registry.render("bus");
        assert!(text.contains("method=\"other\""));
        let methods = text
            .lines()
            .filter(|line| line.starts_with("aiventbus_rpc_requests_total"))
            .count();
        assert!(methods <= MAX_METHODS + 1, "{methods}");
    }

    #[test]
    fn merged_text_declares_each_family_once() {
        let bus = Registry::new();
        bus.record("events.publish", None);
        let llm = Registry::new();
        llm.record("agents.list", None);
        let histogram = "# HELP aiventbus_h A histogram.\n# TYPE aiventbus_h histogram\n\
                         aiventbus_h_bucket{le=\"1\"} 1\naiventbus_h_sum 0.5\naiventbus_h_count 1\n";
        let merged = merge(&[
            bus.render("bus"),
            llm.render("llm"),
            up("policy", false),
            histogram.to_owned(),
        ]);
        assert_eq!(merged.matches("# TYPE aiventbus_rpc_requests_total").count(), 1);
        assert_eq!(merged.matches("# TYPE aiventbus_up").count(), 1);
        let up_lines: Vec<&str> = merged.lines().filter(|l| l.starts_with("aiventbus_up{")).collect();
        assert_eq!(
            up_lines,
            [
                "aiventbus_up{service=\"bus\"} 1",
                "aiventbus_up{service=\"llm\"} 1",
                "aiventbus_up{service=\"policy\"} 0"
            ]
        );
        // Samples follow their family's declaration.
        let type_at = merged.find("# TYPE aiventbus_rpc_requests_total").unwrap();
        let llm_at = merged.find("aiventbus_rpc_requests_total{service=\"llm\"").unwrap();
        assert!(type_at < llm_at);
        let h_at = merged.find("# TYPE aiventbus_h histogram").unwrap();
        assert!(merged[h_at..].starts_with("# TYPE aiventbus_h histogram\naiventbus_h_bucket"));
    }
}
