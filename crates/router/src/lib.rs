//! The router service: routing rules (`<state>/router.db`), and the follower that routes every bus
//! event to agents — matching rules, picking the lane, creating assignments on the bus — with a
//! durable cursor so a restart neither skips nor repeats an event. See docs/agents.md.

pub mod agents;
pub mod api;
pub mod follower;
pub mod matcher;
pub mod rules;
pub mod state;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use aiventbus_rpc::config::{RouterConfig, RpcConfig};
use aiventbus_rpc::server::{Auth, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use aiventbus_rpc::{Client, Endpoint};
use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agents::AgentDirectory;
use crate::follower::Follower;
use crate::state::{Settings, State};
use crate::store::Store;

/// Everything the router needs, wherever it comes from (the daemon, or a test).
pub struct Options {
    /// `router.db`.
    pub database: PathBuf,
    /// `router.sock`.
    pub socket: PathBuf,
    /// How `router.sock` authenticates.
    pub auth: Auth,
    /// Socket limits.
    pub rpc: RpcConfig,
    /// `[router]`.
    pub router: RouterConfig,
    /// The bus.
    pub bus: Endpoint,
    /// llm.
    pub llm: Endpoint,
}

/// A started router.
pub struct Running {
    /// The shared state (tests read its counters).
    pub state: Arc<State>,
    server: JoinHandle<()>,
    follower: JoinHandle<()>,
    socket: PathBuf,
}

impl Running {
    /// Waits for the server to drain and the follower to write its cursor after `shutdown`.
    pub async fn stopped(self) {
        let _ = self.follower.await;
        let _ = self.server.await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Opens the store, finds where to follow the bus from, serves `router.sock` and starts following.
/// `None` when `shutdown` came first. When this returns, events published from now on are routed.
pub async fn start(options: Options, shutdown: CancellationToken) -> anyhow::Result<Option<Running>> {
    let database = options.database.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&database))
        .await
        .context("opening the router store")?
        .with_context(|| format!("opening {}", options.database.display()))?;
    let llm = Client::new(options.llm);
    let bus = Client::new(options.bus);
    let agents = AgentDirectory::new(llm.clone());
    let state = Arc::new(
        State::new(store, agents, Settings::from_config(&options.router)).context("loading the routing rules")?,
    );
    let follower = Follower::new(Arc::clone(&state), bus);
    let Some(from) = follower.start(&shutdown).await.context("reading the router's cursor")? else {
        return Ok(None);
    };
    // Fetch the agent list first (waiting at most half a second), so the first events are not
    // routed to disabled agents.
    state.agents.refresh_now().await;

    let listener = bind(&options.socket)
        .await
        .with_context(|| format!("binding {}", options.socket.display()))?;
    let api = Arc::new(api::Api {
        state: Arc::clone(&state),
        llm,
    });
    let serve_options = ServeOptions::new("router", options.auth, &options.rpc);
    let server = tokio::spawn(serve(
        listener,
        Arc::new(api::methods(api)),
        serve_options,
        shutdown.clone(),
    ));
    tracing::info!(
        socket = %options.socket.display(),
        cursor = from.cursor,
        rules = state.rules().len(),
        "router ready"
    );
    let follower = tokio::spawn(follower.run(from, shutdown));
    Ok(Some(Running {
        state,
        server,
        follower,
        socket: options.socket,
    }))
}

/// Runs the router service until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let verifier = ctx
        .creds
        .verifier("router")
        .context("loading the router's credentials")?;
    let options = Options {
        database: ctx.paths.state_dir.join("router.db"),
        socket: ctx.paths.socket("router"),
        auth: Auth::Token(verifier),
        rpc: ctx.config.rpc.clone(),
        router: ctx.config.router.clone(),
        bus: ctx.endpoint("bus"),
        llm: ctx.endpoint("llm"),
    };
    let Some(running) = start(options, ctx.shutdown.clone()).await? else {
        return Ok(());
    };
    aiventbus_rpc::notify::ready();
    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    running.stopped().await;
    Ok(())
}
