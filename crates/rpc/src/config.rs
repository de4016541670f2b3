//! The one config file (SPEC §17): every key has a default, so no file is needed. Unknown keys and
//! bad values are all collected and reported together, each naming the key and the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod act;

pub use act::{ArgvRule, DEFAULT_UNTRUSTED_TOPICS, ExecConfig, McpServerConfig, PolicyConfig};

/// Exit code for a bad config (EX_CONFIG-style usage error).
pub const EXIT_CONFIG: i32 = 64;

/// Durability of a bus commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Survives process crashes (WAL, `synchronous=NORMAL`).
    #[default]
    Normal,
    /// Survives power loss (`synchronous=FULL`).
    Full,
}

/// `[bus]`.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Commit durability.
    pub sync: SyncMode,
    /// Same topic + dedupe key within this window → deduped.
    pub dedupe_window: Duration,
    /// Events older than this are compacted away.
    pub retention: Duration,
    /// At most this many events are kept.
    pub max_events: u64,
    /// Largest event payload, serialized.
    pub max_payload: u64,
    /// Deepest allowed chain (a root has depth 0).
    pub max_depth: u32,
    /// Routable events per trace.
    pub trace_budget: u32,
    /// Events buffered per subscriber before it is cut off.
    pub subscriber_buffer: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            sync: SyncMode::Normal,
            dedupe_window: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 24 * 3600),
            max_events: 10_000_000,
            max_payload: 256 * 1024,
            max_depth: 10,
            trace_budget: 50,
            subscriber_buffer: 4096,
        }
    }
}

/// `[rpc]`: limits of every socket server.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// Longest message line.
    pub max_message: u64,
    /// Concurrent connections per socket.
    pub max_connections: usize,
    /// Requests in flight per connection before reading pauses.
    pub max_in_flight: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            max_message: 1024 * 1024,
            max_connections: 512,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(180),
        }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// TCP listen address for HTTP/ATP.
    pub listen: String,
    /// Largest HTTP body.
    pub max_body: u64,
    /// PEM certificate chain; with `tls_key`, HTTPS (required for a non-loopback `listen`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Host header values accepted besides `localhost`, loopback addresses and the listen address.
    pub allowed_hosts: Vec<String>,
    /// Origins accepted on state-changing requests and WebSocket upgrades besides the gateway's own.
    pub allowed_origins: Vec<String>,
    /// Deadline of one HTTP request.
    pub request_timeout: Duration,
    /// How often the gateway pings an ATP WebSocket.
    pub atp_ping_interval: Duration,
    /// An ATP connection that answers no ping for this long is closed.
    pub atp_pong_timeout: Duration,
    /// Frames waiting to be written to one ATP connection; a subscriber that lets it fill is cut
    /// off (`closing` with `ELIMIT`, close code 1008).
    pub atp_send_queue: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8420".into(),
            max_body: 1024 * 1024,
            tls_cert: None,
            tls_key: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            request_timeout: Duration::from_secs(60),
            atp_ping_interval: Duration::from_secs(20),
            atp_pong_timeout: Duration::from_secs(40),
            atp_send_queue: 1024,
        }
    }
}

/// `[init]`.
#[derive(Debug, Clone)]
pub struct InitConfig {
    /// How long a stopping service gets before SIGKILL.
    pub grace: Duration,
    /// How long a starting service gets to become ready.
    pub ready_timeout: Duration,
    /// Size of a service log file before it is rotated.
    pub log_max: u64,
    /// Consecutive crashes (without a healthy minute between) before giving up.
    pub crash_loop_limit: u32,
    /// Interval of health checks.
    pub health_interval: Duration,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            grace: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(15),
            log_max: 10 * 1024 * 1024,
            crash_loop_limit: 10,
            health_interval: Duration::from_secs(10),
        }
    }
}

/// `[llm.context_tokens]`: the token budget of each block of an agent's prompt (estimated as
/// characters / 4). Each block has its own budget, so a large one never starves another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextTokens {
    /// The triggering event (topic, source, priority, payload).
    pub event: u32,
    /// Related events named by `context_refs`.
    pub context_refs: u32,
    /// Knowledge facts, newest first.
    pub knowledge: u32,
    /// Recalled memories.
    pub memories: u32,
    /// Summaries of the agent's recent runs in its memory scope.
    pub recent_runs: u32,
}

impl Default for ContextTokens {
    fn default() -> Self {
        ContextTokens {
            event: 2000,
            context_refs: 1000,
            knowledge: 500,
            memories: 500,
            recent_runs: 300,
        }
    }
}

/// `[llm]`: how the llm service runs agents.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Runs at once in the general pool (all lanes).
    pub max_concurrent: u32,
    /// Runs at once reserved for interactive and critical work (0: none reserved).
    pub interactive_slots: u32,
    /// Model rounds per run (results of executed actions are fed back between rounds).
    pub max_iterations: u32,
    /// Lease asked for when claiming an assignment.
    pub lease: Duration,
    /// How often a running assignment's lease is extended (shorter than `lease`).
    pub heartbeat: Duration,
    /// Longest a run may take, all rounds together.
    pub run_deadline: Duration,
    /// Longest one model request (or one command-agent program) may take.
    pub request_timeout: Duration,
    /// Streamed tokens are published as `agent.stream` at most this often (or per 64 characters).
    pub stream_coalesce: Duration,
    /// Per-block prompt budgets.
    pub context_tokens: ContextTokens,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            max_concurrent: 4,
            interactive_slots: 1,
            max_iterations: 5,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            run_deadline: Duration::from_secs(600),
            request_timeout: Duration::from_secs(120),
            stream_coalesce: Duration::from_millis(50),
            context_tokens: ContextTokens::default(),
        }
    }
}

/// `[router]`: how events become assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Most agents one event is assigned to (one assignment per agent).
    pub max_fan_out: u32,
    /// Pending ambient assignments per agent; past it new ambient work is dropped and reported.
    pub max_queue: u32,
    /// The agent (`agt_…`) that gets events no rule matches, instead of `system.unmatched`; off
    /// when absent.
    pub classifier_agent: Option<String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_fan_out: 3,
            max_queue: 1000,
            classifier_agent: None,
        }
    }
}

/// `[providers.<name>]`: a model server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Base URL.
    pub base_url: String,
    /// Environment variable holding the API key, if any.
    pub api_key_env: Option<String>,
    /// Wire dialect, `ollama` or `openai`; when absent, a provider named `ollama…` speaks Ollama's
    /// API and any other name the OpenAI-compatible one.
    pub kind: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it was read from (or would have been).
    pub file: PathBuf,
    /// `[bus]`.
    pub bus: BusConfig,
    /// `[rpc]`.
    pub rpc: RpcConfig,
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[init]`.
    pub init: InitConfig,
    /// `[llm]`.
    pub llm: LlmConfig,
    /// `[router]`.
    pub router: RouterConfig,
    /// `[providers.*]`.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[policy]`.
    pub policy: PolicyConfig,
    /// `[exec]`.
    pub exec: ExecConfig,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// One line per problem, each starting with the key.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}:", self.file.display())?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads `file`; a missing file gives the defaults.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(file) {
            Ok(text) => Config::parse(&text, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config {
                file: file.to_path_buf(),
                ..Config::default()
            }),
            Err(e) => Err(ConfigErrors {
                file: file.to_path_buf(),
                problems: vec![format!("cannot read the file: {e}")],
            }),
        }
    }

    /// Parses config text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let mut config = Config {
            file: file.to_path_buf(),
            ..Config::default()
        };
        let mut problems = Vec::new();
        let table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(e) => {
                return Err(ConfigErrors {
                    file: file.to_path_buf(),
                    problems: vec![format!("not valid TOML: {e}")],
                });
            }
        };
        for (section, value) in &table {
            let Some(entries) = value.as_table() else {
                problems.push(format!("{section}: expected a [{section}] table"));
                continue;
            };
            let mut v = Visitor {
                section,
                problems: &mut problems,
            };
            match section.as_str() {
                "bus" => v.bus(entries, &mut config.bus),
                "rpc" => v.rpc(entries, &mut config.rpc),
                "gateway" => v.gateway(entries, &mut config.gateway),
                "init" => v.init(entries, &mut config.init),
                "llm" => v.llm(entries, &mut config.llm),
                "router" => v.router(entries, &mut config.router),
                "providers" => v.providers(entries, &mut config.providers),
                "policy" => v.policy(entries, &mut config.policy),
                "exec" => v.exec(entries, &mut config.exec),
                _ => problems.push(format!("{section}: unknown section")),
            }
        }
        if config.gateway.atp_pong_timeout <= config.gateway.atp_ping_interval {
            problems.push("gateway.atp_pong_timeout: must be longer than gateway.atp_ping_interval".into());
        }
        if (config.gateway.tls_cert.is_some()) != (config.gateway.tls_key.is_some()) {
            problems.push("gateway.tls_cert: tls_cert and tls_key must be given together".into());
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors {
                file: file.to_path_buf(),
                problems,
            })
        }
    }
}

pub(crate) struct Visitor<'a> {
    section: &'a str,
    problems: &'a mut Vec<String>,
}

impl Visitor<'_> {
    fn bad(&mut self, key: &str, message: impl fmt::Display) {
        self.problems.push(format!("{}.{key}: {message}", self.section));
    }

    fn set<T>(
        &mut self,
        key: &str,
        value: &toml::Value,
        slot: &mut T,
        parse: impl Fn(&toml::Value) -> Result<T, String>,
    ) {
        match parse(value) {
            Ok(parsed) => *slot = parsed,
            Err(message) => self.bad(key, message),
        }
    }

    fn bus(&mut self, entries: &toml::Table, bus: &mut BusConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "sync" => self.set(key, value, &mut bus.sync, |v| match v.as_str() {
                    Some("normal") => Ok(SyncMode::Normal),
                    Some("full") => Ok(SyncMode::Full),
                    _ => Err(format!("expected \"normal\" or \"full\", got {v}")),
                }),
                "dedupe_window" => self.set(key, value, &mut bus.dedupe_window, duration),
                "retention" => self.set(key, value, &mut bus.retention, duration),
                "max_events" => self.set(key, value, &mut bus.max_events, |v| positive(v).map(|n| n as u64)),
                "max_payload" => self.set(key, value, &mut bus.max_payload, size),
                "max_depth" => self.set(key, value, &mut bus.max_depth, |v| small(v, 1000)),
                "trace_budget" => self.set(key, value, &mut bus.trace_budget, |v| small(v, 1_000_000)),
                "subscriber_buffer" => self.set(key, value, &mut bus.subscriber_buffer, |v| {
                    small(v, 10_000_000).map(|n| n as usize)
                }),
                _ => self.bad(key, "unknown key"),
            }
        }
    }

    fn rpc(&mut self, entries: &toml::Table, rpc: &mut RpcConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "max_message" => self.set(key, value, &mut rpc.max_message, size),
                "max_connections" => self.set(key, value, &mut rpc.max_connections, |v| {
                    small(v, 1_000_000).map(|n| n as usize)
                }),
                "max_in_flight" => self.set(key, value, &mut rpc.max_in_flight, |v| {
                    small(v, 1_000_000).map(|n| n as usize)
                }),
                "request_timeout" => self.set(key, value, &mut rpc.request_timeout, duration),
                _ => self.bad(key, "unknown key"),
            }
        }
    }

    fn gateway(&mut self, entries: &toml::Table, gateway: &mut GatewayConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "listen" => self.set(key, value, &mut gateway.listen, |v| {
                    let text = v.as_str().ok_or_else(|| format!("expected \"host:port\", got {v}"))?;
                    text.parse::<std::net::SocketAddr>()
                        .map_err(|_| format!("expected an address like \"127.0.0.1:8420\", got {text:?}"))?;
                    Ok(text.to_owned())
                }),
                "max_body" => self.set(key, value, &mut gateway.max_body, size),
                "tls_cert" => self.set(key, value, &mut gateway.tls_cert, path),
                "tls_key" => self.set(key, value, &mut gateway.tls_key, path),
                "allowed_hosts" => self.set(key, value, &mut gateway.allowed_hosts, string_list),
                "allowed_origins" => self.set(key, value, &mut gateway.allowed_origins, string_list),
                "request_timeout" => self.set(key, value, &mut gateway.request_timeout, nonzero_duration),
                "atp_ping_interval" => self.set(key, value, &mut gateway.atp_ping_interval, nonzero_duration),
                "atp_pong_timeout" => self.set(key, value, &mut gateway.atp_pong_timeout, nonzero_duration),
                "atp_send_queue" => self.set(key, value, &mut gateway.atp_send_queue, |v| {
                    small(v, 1_000_000).map(|n| n as usize)
                }),
                _ => self.bad(key, "unknown key"),
            }
        }
    }

    fn init(&mut self, entries: &toml::Table, init: &mut InitConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "grace" => self.set(key, value, &mut init.grace, duration),
                "ready_timeout" => self.set(key, value, &mut init.ready_timeout, duration),
                "log_max" => self.set(key, value, &mut init.log_max, size),
                "crash_loop_limit" => self.set(key, value, &mut init.crash_loop_limit, |v| small(v, 1000)),
                "health_interval" => self.set(key, value, &mut init.health_interval, duration),
                _ => self.bad(key, "unknown key"),
            }
        }
    }

    fn llm(&mut self, entries: &toml::Table, llm: &mut LlmConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "max_concurrent" => self.set(key, value, &mut llm.max_concurrent, |v| small(v, 256)),
                "interactive_slots" => self.set(key, value, &mut llm.interactive_slots, |v| match v.as_integer() {
                    Some(n) if (0..=64).contains(&n) => Ok(n as u32),
                    _ => Err(format!("expected an integer from 0 to 64, got {v}")),
                }),
                "max_iterations" => self.set(key, value, &mut llm.max_iterations, |v| small(v, 50)),
                "lease" => self.set(key, value, &mut llm.lease, nonzero_duration),
                "heartbeat" => self.set(key, value, &mut llm.heartbeat, nonzero_duration),
                "run_deadline" => self.set(key, value, &mut llm.run_deadline, nonzero_duration),
                "request_timeout" => self.set(key, value, &mut llm.request_timeout, nonzero_duration),
                "stream_coalesce" => self.set(key, value, &mut llm.stream_coalesce, nonzero_duration),
                "context_tokens" => match value.as_table() {
                    Some(table) => self.context_tokens(table, &mut llm.context_tokens),
                    None => self.bad(key, "expected a [llm.context_tokens] table"),
                },
                _ => self.bad(key, "unknown key"),
            }
        }
        if (entries.contains_key("lease") || entries.contains_key("heartbeat")) && llm.heartbeat >= llm.lease {
            self.bad("heartbeat", format!("must be shorter than lease ({:?})", llm.lease));
        }
    }

    fn context_tokens(&mut self, entries: &toml::Table, budgets: &mut ContextTokens) {
        for (key, value) in entries {
            let full = format!("context_tokens.{key}");
            let slot = match key.as_str() {
                "event" => &mut budgets.event,
                "context_refs" => &mut budgets.context_refs,
                "knowledge" => &mut budgets.knowledge,
                "memories" => &mut budgets.memories,
                "recent_runs" => &mut budgets.recent_runs,
                _ => {
                    self.bad(&full, "unknown key");
                    continue;
                }
            };
            self.set(&full, value, slot, |v| small(v, 1_000_000));
        }
    }

    fn router(&mut self, entries: &toml::Table, router: &mut RouterConfig) {
        for (key, value) in entries {
            match key.as_str() {
                "max_fan_out" => self.set(key, value, &mut router.max_fan_out, |v| small(v, 64)),
                "max_queue" => self.set(key, value, &mut router.max_queue, |v| small(v, 10_000_000)),
                "classifier_agent" => self.set(key, value, &mut router.classifier_agent, |v| {
                    let id = v
                        .as_str()
                        .ok_or_else(|| format!("expected an agent id such as \"agt_01J…\", got {v}"))?;
                    aiventbus_proto::event::validate_prefixed_id(id, "agt_")?;
                    Ok(Some(id.to_owned()))
                }),
                _ => self.bad(key, "unknown key"),
            }
        }
    }

    fn providers(&mut self, entries: &toml::Table, providers: &mut BTreeMap<String, ProviderConfig>) {
        for (name, value) in entries {
            let Some(table) = value.as_table() else {
                self.bad(name, "expected a [providers.NAME] table");
                continue;
            };
            let mut provider = ProviderConfig {
                base_url: String::new(),
                api_key_env: None,
                kind: None,
            };
            for (key, value) in table {
                let full = format!("{name}.{key}");
                match key.as_str() {
                    "base_url" => match value.as_str() {
                        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                            provider.base_url = url.trim_end_matches('/').to_owned();
                        }
                        _ => self.bad(&full, format!("expected an http:// or https:// URL, got {value}")),
                    },
                    "kind" => match value.as_str() {
                        Some(kind @ ("ollama" | "openai")) => provider.kind = Some(kind.to_owned()),
                        _ => self.bad(&full, format!("expected \"ollama\" or \"openai\", got {value}")),
                    },
                    "api_key_env" => match value.as_str() {
                        Some(var) if !var.is_empty() => provider.api_key_env = Some(var.to_owned()),
                        _ => self.bad(&full, format!("expected an environment variable name, got {value}")),
                    },
                    _ => self.bad(&full, "unknown key"),
                }
            }
            if provider.base_url.is_empty() {
                self.bad(&format!("{name}.base_url"), "is required");
            }
            providers.insert(name.clone(), provider);
        }
    }
}

fn path(value: &toml::Value) -> Result<Option<PathBuf>, String> {
    match value.as_str() {
        Some(text) if text.starts_with('/') => Ok(Some(PathBuf::from(text))),
        _ => Err(format!("expected an absolute path, got {value}")),
    }
}

fn string_list(value: &toml::Value) -> Result<Vec<String>, String> {
    let array = value
        .as_array()
        .ok_or_else(|| format!("expected an array of strings, got {value}"))?;
    array
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("expected an array of strings, found {item}"))
        })
        .collect()
}

fn nonzero_duration(value: &toml::Value) -> Result<Duration, String> {
    match duration(value)? {
        Duration::ZERO => Err("must be greater than zero".into()),
        positive => Ok(positive),
    }
}

fn duration(value: &toml::Value) -> Result<Duration, String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("expected a duration string such as \"500ms\" or \"60s\", got {value}"))?;
    parse_duration(text)
}

/// Parses `"500ms"`, `"60s"`, `"24h"`, `"30d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. \"500ms\", \"60s\", \"30d\""))
}

fn size(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        toml::Value::String(text) => parse_size(text),
        _ => Err(format!("expected a size such as \"1MiB\", got {value}")),
    }
}

/// Parses `"1MiB"`, `"256KiB"`, `"10MB"`, `"512"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; use e.g. \"1MiB\", \"256KiB\""))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?} has an unknown unit {other:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    match number.checked_mul(multiplier) {
        Some(0) => Err(format!("{text:?} must be greater than zero")),
        Some(n) => Ok(n),
        None => Err(format!("{text:?} is too large")),
    }
}

fn positive(value: &toml::Value) -> Result<i64, String> {
    match value.as_integer() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive integer, got {value}")),
    }
}

fn small(value: &toml::Value, max: i64) -> Result<u32, String> {
    match value.as_integer() {
        Some(n) if n > 0 && n <= max => Ok(n as u32),
        _ => Err(format!("expected an integer from 1 to {max}, got {value}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let config = Config::load(Path::new("/nonexistent/aiventbus.toml")).unwrap();
        assert_eq!(config.bus.sync, SyncMode::Normal);
        assert_eq!(config.bus.dedupe_window, Duration::from_secs(60));
        assert_eq!(config.rpc.max_message, 1 << 20);
        assert_eq!(config.gateway.listen, "127.0.0.1:8420");
    }

    #[test]
    fn reads_the_spec_example() {
        let text = r#"
[providers.ollama]
base_url = "http://127.0.0.1:11434"
[providers.openai]
base_url = "http://127.0.0.1:8080/v1"
api_key_env = "OPENAI_API_KEY"
[gateway]
listen = "127.0.0.1:8420"
[bus]
sync = "full"
dedupe_window = "500ms"
max_payload = "1MiB"
"#;
        let config = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(config.bus.sync, SyncMode::Full);
        assert_eq!(config.bus.dedupe_window, Duration::from_millis(500));
        assert_eq!(config.bus.max_payload, 1 << 20);
        assert_eq!(
            config.providers["openai"].api_key_env.as_deref(),
            Some("OPENAI_API_KEY")
        );
        let gpu = Config::parse(
            "[providers.gpu]\nbase_url = \"http://10.0.0.2:11434\"\nkind = \"ollama\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(gpu.providers["gpu"].kind.as_deref(), Some("ollama"));
        let bad = Config::parse(
            "[providers.gpu]\nbase_url = \"http://x\"\nkind = \"llamafile\"\n",
            Path::new("c.toml"),
        );
        assert!(bad.unwrap_err().to_string().contains("providers.gpu.kind"));
    }

    #[test]
    fn reports_every_problem_with_key_and_file() {
        let text = r#"
[bus]
sync = "sometimes"
colour = "blue"
retention = 5
[nonsense]
x = 1
[gateway]
listen = "everywhere"
"#;
        let errors = Config::parse(text, Path::new("/etc/x.toml")).unwrap_err();
        let message = errors.to_string();
        assert!(message.contains("/etc/x.toml"), "{message}");
        for key in ["bus.sync", "bus.colour", "bus.retention", "nonsense", "gateway.listen"] {
            assert!(message.contains(key), "{key} missing from {message}");
        }
        assert_eq!(errors.problems.len(), 5);
    }

    #[test]
    fn llm_section_is_read_and_validated() {
        let text = r#"
[llm]
max_concurrent = 8
interactive_slots = 0
max_iterations = 3
lease = "20s"
heartbeat = "5s"
run_deadline = "2m"
request_timeout = "30s"
stream_coalesce = "100ms"
[llm.context_tokens]
knowledge = 50
"#;
        let llm = Config::parse(text, Path::new("c.toml")).unwrap().llm;
        assert_eq!(
            (llm.max_concurrent, llm.interactive_slots, llm.max_iterations),
            (8, 0, 3)
        );
        assert_eq!(
            (llm.lease, llm.heartbeat),
            (Duration::from_secs(20), Duration::from_secs(5))
        );
        assert_eq!(llm.run_deadline, Duration::from_secs(120));
        assert_eq!(llm.request_timeout, Duration::from_secs(30));
        assert_eq!(llm.stream_coalesce, Duration::from_millis(100));
        assert_eq!(llm.context_tokens.knowledge, 50);
        assert_eq!(llm.context_tokens.event, ContextTokens::default().event);

        let bad = r#"
[llm]
max_concurrent = 0
interactive_slots = -1
max_iterations = 100
lease = "5s"
heartbeat = "10s"
run_deadline = "0s"
request_timeout = 3
stream_coalesce = "soon"
colour = "red"
[llm.context_tokens]
event = 0
everything = 5
"#;
        let errors = Config::parse(bad, Path::new("c.toml")).unwrap_err();
        let message = errors.to_string();
        for key in [
            "llm.max_concurrent",
            "llm.interactive_slots",
            "llm.max_iterations",
            "llm.heartbeat",
            "llm.run_deadline",
            "llm.request_timeout",
            "llm.stream_coalesce",
            "llm.colour",
            "llm.context_tokens.event",
            "llm.context_tokens.everything",
        ] {
            assert!(message.contains(key), "{key} missing from {message}");
        }
        assert_eq!(errors.problems.len(), 10, "{message}");
    }

    #[test]
    fn router_section_is_read_and_validated() {
        let text = r#"
[router]
max_fan_out = 1
max_queue = 50
classifier_agent = "agt_01JCLASSIFIER"
"#;
        let router = Config::parse(text, Path::new("c.toml")).unwrap().router;
        assert_eq!((router.max_fan_out, router.max_queue), (1, 50));
        assert_eq!(router.classifier_agent.as_deref(), Some("agt_01JCLASSIFIER"));
        let defaults = Config::parse("", Path::new("c.toml")).unwrap().router;
        assert_eq!(defaults, RouterConfig::default());
        assert_eq!(
            (defaults.max_fan_out, defaults.max_queue, defaults.classifier_agent),
            (3, 1000, None)
        );

        let bad = r#"
[router]
max_fan_out = 0
max_queue = -3
classifier_agent = "rule_1"
colour = "red"
"#;
        let errors = Config::parse(bad, Path::new("c.toml")).unwrap_err();
        let message = errors.to_string();
        for key in [
            "router.max_fan_out",
            "router.max_queue",
            "router.classifier_agent",
            "router.colour",
        ] {
            assert!(message.contains(key), "{key} missing from {message}");
        }
        assert_eq!(errors.problems.len(), 4, "{message}");
        let errors =
            Config::parse("[router]\nmax_fan_out = 65\nclassifier_agent = 7", Path::new("c.toml")).unwrap_err();
        assert_eq!(errors.problems.len(), 2, "{errors}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("256KiB").unwrap(), 262_144);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5XB").is_err());
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_duration("soon").is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The shipped example must stay valid and must show the real defaults.
    #[test]
    fn example_file_matches_the_defaults() {
        let text = include_str!("../../../etc/config.example.toml");
        let config = Config::parse(text, Path::new("etc/config.example.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(config.bus.sync, defaults.bus.sync);
        assert_eq!(config.bus.dedupe_window, defaults.bus.dedupe_window);
        assert_eq!(config.bus.retention, defaults.bus.retention);
        assert_eq!(config.bus.max_events, defaults.bus.max_events);
        assert_eq!(config.bus.max_payload, defaults.bus.max_payload);
        assert_eq!(config.bus.subscriber_buffer, defaults.bus.subscriber_buffer);
        assert_eq!(config.rpc.max_message, defaults.rpc.max_message);
        assert_eq!(config.rpc.request_timeout, defaults.rpc.request_timeout);
        assert_eq!(config.init.grace, defaults.init.grace);
        assert_eq!(config.init.log_max, defaults.init.log_max);
        assert_eq!(config.gateway.listen, defaults.gateway.listen);
        assert_eq!(config.llm.max_concurrent, defaults.llm.max_concurrent);
        assert_eq!(config.llm.interactive_slots, defaults.llm.interactive_slots);
        assert_eq!(config.llm.max_iterations, defaults.llm.max_iterations);
        assert_eq!(config.llm.lease, defaults.llm.lease);
        assert_eq!(config.llm.heartbeat, defaults.llm.heartbeat);
        assert_eq!(config.llm.run_deadline, defaults.llm.run_deadline);
        assert_eq!(config.llm.request_timeout, defaults.llm.request_timeout);
        assert_eq!(config.llm.stream_coalesce, defaults.llm.stream_coalesce);
        assert_eq!(config.llm.context_tokens, defaults.llm.context_tokens);
        assert_eq!(config.router, defaults.router);
    }
}
