//! The exec service: the only process that carries out actions — process runs (argv, no PTY,
//! output streamed as `exec.*` events), files, HTTP, desktop notifications, MCP tools, events and
//! knowledge for agents. Each action arrives from policy with a token bound to it, is recorded in
//! `<state>/exec.db` before anything happens, and runs at most once; what a restart cut short is
//! marked `interrupted`, never re-run. Paths, addresses and the deny rules are checked again at
//! execution time with `aiventbus-guard`.

pub mod actions;
pub mod api;
pub mod bus;
pub mod files;
pub mod http;
pub mod mcp;
pub mod notify;
pub mod output;
pub mod process;
pub mod shell;
pub mod store;
pub mod sys;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use aiventbus_rpc::config::{ExecConfig, PolicyConfig, RpcConfig};
use aiventbus_rpc::server::{Auth, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use aiventbus_rpc::token::Verifier;
use aiventbus_rpc::{Client, Endpoint};
use anyhow::Context as _;
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::State;
use crate::bus::Bus;
use crate::notify::Notifier;
use crate::process::Runs;
use crate::shell::BaseEnv;
use crate::store::Store;

/// Everything exec needs, wherever it comes from (the daemon, or a test).
pub struct Options {
    /// `exec.db`.
    pub database: PathBuf,
    /// `exec.sock`.
    pub socket: PathBuf,
    /// exec's own verifier: authenticates connections and checks each action's token.
    pub verifier: Verifier,
    /// Socket limits.
    pub rpc: RpcConfig,
    /// `[exec]`.
    pub exec: ExecConfig,
    /// The execution-time checks, built from `[policy]`.
    pub guard: aiventbus_guard::Settings,
    /// The bus.
    pub bus: Endpoint,
    /// The environment agents' processes get.
    pub base_env: BaseEnv,
    /// Where notifications go.
    pub notifier: Notifier,
    /// `xdg-open`, when installed.
    pub xdg_open: Option<PathBuf>,
    /// Names answered without DNS (like /etc/hosts); the addresses are checked all the same.
    pub fixed_hosts: HashMap<String, Vec<IpAddr>>,
}

/// A started exec.
pub struct Running {
    /// The shared state (tests read its counters).
    pub state: Arc<State>,
    server: JoinHandle<()>,
    tracker: TaskTracker,
    socket: PathBuf,
}

impl Running {
    /// Waits, after `shutdown`, for the server to drain and every run (stopped by the shutdown:
    /// SIGTERM, SIGKILL 2 s later) and MCP server to end.
    pub async fn stopped(self) {
        let _ = self.server.await;
        self.tracker.close();
        self.tracker.wait().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Opens the store, settles what a previous exec left (executions `interrupted`, leftover process
/// groups killed), starts the MCP servers and serves `exec.sock`.
pub async fn start(options: Options, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let database = options.database.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&database))
        .await
        .context("opening the exec store")?
        .with_context(|| format!("opening {}", options.database.display()))?;
    let (interrupted, leftovers) = store.recover().await.context("recovering the exec store")?;
    for leftover in &leftovers {
        if let (Some(pid), Some(ticks), Some(session)) = (leftover.pid, leftover.start_ticks, leftover.session)
            && sys::leftover_group_is_ours(pid, ticks, session)
        {
            tracing::warn!(run = %leftover.run_id, pgid = pid, "killing a process group left by a previous exec");
            sys::signal_group(pid, Signal::SIGKILL);
        }
    }
    if interrupted > 0 || !leftovers.is_empty() {
        tracing::warn!(
            executions = interrupted,
            runs = leftovers.len(),
            "marked what a previous exec left unfinished as interrupted"
        );
    }

    let tracker = TaskTracker::new();
    let bus = Bus::new(Client::new(options.bus));
    let runs = Arc::new(Runs::new(
        store.clone(),
        bus.clone(),
        options.exec.max_runs,
        tracker.clone(),
        shutdown.clone(),
    ));
    let guard = Arc::new(options.guard);
    let http = http::Http::new(
        Arc::clone(&guard),
        options.fixed_hosts,
        options.exec.http_timeout,
        options.exec.http_max_body,
    )
    .context("building the HTTP client")?;
    let tools = mcp::Tools::start(&options.exec.mcp, &options.base_env.vars, &tracker, &shutdown);
    let state = Arc::new(State {
        store,
        bus,
        runs,
        verifier: options.verifier.clone(),
        config: options.exec,
        guard,
        http,
        notifier: options.notifier,
        tools,
        base_env: options.base_env,
        xdg_open: options.xdg_open,
        tracker: tracker.clone(),
        received: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });

    let listener = bind(&options.socket)
        .await
        .with_context(|| format!("binding {}", options.socket.display()))?;
    let server = tokio::spawn(serve(
        listener,
        Arc::new(api::methods(Arc::clone(&state))),
        ServeOptions::new("exec", Auth::Token(options.verifier), &options.rpc),
        shutdown,
    ));
    tracing::info!(socket = %options.socket.display(), "exec ready");
    Ok(Running {
        state,
        server,
        tracker,
        socket: options.socket,
    })
}

/// The guard settings from `[policy]`: the roots, protected paths, private-address exceptions and
/// deny rules exec re-checks at execution time.
pub fn guard_settings(
    policy: &PolicyConfig,
    home: &std::path::Path,
    protected: &[PathBuf],
) -> Result<aiventbus_guard::Settings, String> {
    let patterns = |rules: &[aiventbus_rpc::config::ArgvRule]| {
        rules
            .iter()
            .map(|rule| aiventbus_guard::ArgvPattern {
                argv: rule.argv.clone(),
                reason: rule.reason.clone(),
            })
            .collect()
    };
    let input = aiventbus_guard::PolicyInput {
        untrusted_topics: policy.untrusted_topics.clone(),
        file_roots: policy.file_roots.clone(),
        egress_allow: policy.egress_allow.clone(),
        private_allow: policy.private_allow.clone(),
        trust: policy.trust.clone(),
        allow: patterns(&policy.allow),
        deny: patterns(&policy.deny),
        builtin_allow: policy.builtin_allow,
    };
    aiventbus_guard::Settings::new(&input, home, protected)
}

/// Runs the exec service until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let verifier = ctx.creds.verifier("exec").context("loading exec's credentials")?;
    let base_env = BaseEnv::from_process();
    let mut protected = vec![ctx.paths.state_dir.clone(), ctx.paths.runtime_dir.clone()];
    if let Some(dir) = ctx.paths.config_file.parent() {
        protected.push(dir.to_path_buf());
    }
    let guard = guard_settings(&ctx.config.policy, &base_env.home, &protected)
        .map_err(|problem| anyhow::anyhow!("[policy] in {}: {problem}", ctx.config.file.display()))?;
    let options = Options {
        database: ctx.paths.state_dir.join("exec.db"),
        socket: ctx.paths.socket("exec"),
        verifier,
        rpc: ctx.config.rpc.clone(),
        exec: ctx.config.exec.clone(),
        guard,
        bus: ctx.endpoint("bus"),
        notifier: Notifier::from_env(),
        xdg_open: notify::find_program("xdg-open", std::env::var_os("PATH").as_deref()),
        base_env,
        fixed_hosts: HashMap::new(),
    };
    let running = start(options, ctx.shutdown.clone()).await?;
    aiventbus_rpc::notify::ready();
    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    running.stopped().await;
    Ok(())
}
