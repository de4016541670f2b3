//! The llm service: runs agents. It owns agents, providers and run transcripts (`<state>/llm.db`),
//! claims assignments from the bus, builds each run's context, calls the model (Ollama or an
//! OpenAI-compatible server) or the command agent's program, parses the structured output, hands
//! proposed actions to the action gate, and streams tokens and results as events.
//!
//! Modules: `agents` (store), `transcript`, `db`, `providers` (+ `ollama`, `openai`), `health`,
//! `context`, `output`, `stream`, `actions` (the gate), `run` (one run), `command` (programs),
//! `worker` (claiming and lanes), `bus` (calls to the bus), `api` (`llm.sock`).

pub mod actions;
pub mod agents;
pub mod api;
pub mod bus;
pub mod command;
pub mod context;
pub mod db;
pub mod health;
pub mod output;
pub mod providers;
pub mod run;
pub mod stream;
pub mod suspend;
pub mod tools;
pub mod transcript;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use aiventbus_rpc::server::{Auth, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use aiventbus_rpc::{Client, Methods};
use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::actions::PolicyGate;
use crate::agents::Agents;
use crate::bus::Bus;
use crate::db::Db;
use crate::run::{Shared, Stats};
use crate::suspend::{Resumer, Suspensions};
use crate::transcript::Transcripts;
use crate::worker::Worker;

/// How long runs get to release their work at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Runs the llm service until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let verifier = ctx.creds.verifier("llm").context("loading the llm's credentials")?;
    let path = ctx.paths.state_dir.join("llm.db");
    let db = Db::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let config = ctx.config.llm.clone();
    let providers =
        providers::from_config(&ctx.config.providers, config.request_timeout).context("setting up providers")?;
    let (generation, _) = watch::channel(0u64);
    let agents = Agents::load(db.clone(), providers.keys().cloned().collect(), generation.clone())
        .await
        .with_context(|| format!("reading agents from {}", path.display()))?;
    let bus = Bus::new(Client::new(ctx.endpoint("bus")));
    let policy = Client::new(ctx.endpoint("policy"));
    let gate = Arc::new(PolicyGate::new(policy.clone()));
    let suspensions = Suspensions::new(db.clone());
    let resumer = Resumer::new(suspensions.clone(), policy, bus.client.clone());
    let worker_id = format!(
        "llm-{}-{}",
        std::process::id(),
        aiventbus_rpc::ids::prefixed("w").trim_start_matches("w_")
    );
    let shared = Arc::new(Shared {
        config,
        bus,
        agents: Arc::new(agents),
        providers,
        transcripts: Transcripts::new(db),
        gate: gate.clone(),
        suspensions,
        resumer: resumer.clone(),
        tools: tools::Tools::new(Client::new(ctx.endpoint("exec"))),
        worker: worker_id.clone(),
        stats: Stats::default(),
    });

    let tasks = TaskTracker::new();
    for provider in shared.providers.values() {
        tasks.spawn(health::monitor(
            provider.clone(),
            generation.clone(),
            ctx.shutdown.clone(),
        ));
    }
    tasks.spawn(resumer.run(ctx.shutdown.clone()));
    let worker = Worker::new(shared.clone(), generation, ctx.shutdown.clone());
    worker.start();

    let state = Arc::new(api::State {
        shared,
        worker: worker.clone(),
        gate,
    });
    let methods: Methods<api::State> = api::methods(state);
    let socket = ctx.paths.socket("llm");
    let listener = bind(&socket)
        .await
        .with_context(|| format!("binding {}", socket.display()))?;
    let options = ServeOptions::new("llm", Auth::Token(verifier), &ctx.config.rpc);
    let server = tokio::spawn(serve(listener, Arc::new(methods), options, ctx.shutdown.clone()));
    aiventbus_rpc::notify::ready();
    tracing::info!(socket = %socket.display(), worker = %worker_id, "llm ready");

    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    worker.stopped(STOP_GRACE).await;
    tasks.close();
    tasks.wait().await;
    let _ = server.await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
