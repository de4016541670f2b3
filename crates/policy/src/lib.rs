//! The policy service (SPEC §8): decides allow / confirm / deny for every action an agent proposes
//! (the rules are the `aiventbus-guard` crate's), records each decision in `<state>/policy.db`,
//! holds what waits for a human (with expiry), hands what is allowed to exec at most once, and
//! hosts the human-input hub (sessions, requests, inboxes). See `actions` for an action's life and
//! `hub` for human input.

pub mod actions;
pub mod api;
pub mod canonical;
pub mod db;
pub mod hub;
pub mod limiter;
pub mod publisher;
pub mod records;
pub mod sessions;
pub mod settings;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_rpc::config::{PolicyConfig, RpcConfig};
use aiventbus_rpc::server::{Auth, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use aiventbus_rpc::{Client, Endpoint};
use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::Db;
use crate::hub::Waiters;
use crate::limiter::Limiter;
use crate::publisher::{Publisher, PublisherTask};
pub use crate::settings::Settings;
use crate::state::State;

/// How long background work (runs being settled, reports) may take to finish at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Everything policy needs, wherever it comes from (the daemon, or a test).
pub struct Options {
    /// `policy.db`.
    pub database: PathBuf,
    /// `policy.sock`.
    pub socket: PathBuf,
    /// How `policy.sock` authenticates.
    pub auth: Auth,
    /// Socket limits.
    pub rpc: RpcConfig,
    /// `[policy]`: the decision rules.
    pub policy: PolicyConfig,
    /// Tunables.
    pub settings: Settings,
    /// The user's home directory (`~` in file roots and protected paths).
    pub home: PathBuf,
    /// The daemon's own directories, never touched by file actions.
    pub protected: Vec<PathBuf>,
    /// The bus.
    pub bus: Endpoint,
    /// exec.
    pub exec: Endpoint,
    /// The file holding policy's token for exec (read again for every action).
    pub exec_token: PathBuf,
}

/// A started policy service.
pub struct Running {
    /// The shared state (tests read it).
    pub state: Arc<State>,
    server: JoinHandle<()>,
    expiry: JoinHandle<()>,
    publisher: PublisherTask,
    socket: PathBuf,
}

impl Running {
    /// After `shutdown`: waits for the server to drain, background work to settle and queued
    /// events to be published.
    pub async fn stopped(self) {
        let _ = self.server.await;
        let _ = self.expiry.await;
        self.state.tasks.close();
        if tokio::time::timeout(STOP_GRACE, self.state.tasks.wait()).await.is_err() {
            tracing::warn!("background work did not finish in time");
        }
        self.publisher.finish().await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Opens the store, serves `policy.sock`, starts the expiry timer and resumes actions left from
/// before a restart.
pub async fn start(options: Options, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let input = settings::guard_input(&options.policy);
    let guard = aiventbus_guard::Settings::new(&input, &options.home, &options.protected)
        .map_err(|message| anyhow::anyhow!("[policy]: {message}"))?;
    let database = options.database.clone();
    let retention = options.settings.retention;
    let idempotency_ttl = options.settings.idempotency_ttl;
    let db = tokio::task::spawn_blocking(move || Db::open(&database))
        .await
        .context("opening the policy store")?
        .with_context(|| format!("opening {}", options.database.display()))?;
    db.run(move |connection| {
        let now = aiventbus_rpc::time::now_ms();
        let before = now.saturating_sub(retention.as_millis() as u64);
        let actions = records::prune(connection, before)?;
        let sessions = sessions::prune(
            connection,
            before,
            now.saturating_sub(idempotency_ttl.as_millis() as u64),
        )?;
        if actions + sessions > 0 {
            tracing::info!(actions, sessions, "removed records past retention");
        }
        Ok(())
    })
    .await
    .context("pruning the policy store")?;

    let bus = Client::new(options.bus);
    let (events, publisher) = Publisher::start(bus.clone());
    let state = Arc::new(State {
        db,
        guard,
        limiter: Limiter::new(options.settings.rate_limit, options.settings.rate_window),
        settings: options.settings,
        bus,
        exec: Client::new(options.exec),
        exec_token: options.exec_token,
        events,
        expiry: tokio::sync::Notify::new(),
        waiters: Waiters::default(),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });

    let listener = bind(&options.socket)
        .await
        .with_context(|| format!("binding {}", options.socket.display()))?;
    let server = tokio::spawn(serve(
        listener,
        Arc::new(api::methods(Arc::clone(&state))),
        ServeOptions::new("policy", options.auth, &options.rpc),
        shutdown,
    ));
    let expiry = tokio::spawn(actions::expiry_timer(Arc::clone(&state)));
    actions::recover(&state);
    tracing::info!(socket = %options.socket.display(), "policy ready");
    Ok(Running {
        state,
        server,
        expiry,
        publisher,
        socket: options.socket,
    })
}

/// Runs the policy service until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let verifier = ctx
        .creds
        .verifier("policy")
        .context("loading the policy service's credentials")?;
    let options = Options {
        database: ctx.paths.state_dir.join("policy.db"),
        socket: ctx.paths.socket("policy"),
        auth: Auth::Token(verifier),
        rpc: ctx.config.rpc.clone(),
        settings: Settings::from_config(&ctx.config.policy, &ctx.config.exec),
        policy: ctx.config.policy.clone(),
        home: settings::home_dir(),
        protected: settings::protected_dirs(&ctx.paths.state_dir, &ctx.paths.runtime_dir, &ctx.paths.config_file),
        bus: ctx.endpoint("bus"),
        exec: ctx.endpoint("exec"),
        exec_token: ctx.creds.token_path("exec"),
    };
    let running = start(options, ctx.shutdown.clone()).await?;
    aiventbus_rpc::notify::ready();
    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    running.stopped().await;
    Ok(())
}
