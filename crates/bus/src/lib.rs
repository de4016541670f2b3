//! The durable event bus: the SQLite event store with group commit, the subscription hub,
//! knowledge, memory and the assignments queue in the same database, and the `bus.sock` service
//! that exposes them.

pub mod api;
pub mod assignments;
mod checkpoint;
pub mod hub;
pub mod knowledge;
pub mod memory;
mod schema;
pub mod store;
mod writer;

/// The first schema step (events, topics, traces), for benchmarks comparing raw SQLite inserts
/// with the bus.
pub const BASE_SCHEMA: &str = schema::MIGRATIONS[0];

use std::sync::Arc;

use aiventbus_rpc::server::{Auth, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use anyhow::Context as _;

use crate::store::{Store, StoreConfig};

/// Runs the bus until `ctx.shutdown` is cancelled: opens the store, serves `bus.sock`, reports
/// ready, then drains connections and closes the store (every queued commit finishes).
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let verifier = ctx.creds.verifier("bus").context("loading the bus's credentials")?;
    let bus = &ctx.config.bus;
    let config = StoreConfig {
        path: ctx.paths.state_dir.join("bus.db"),
        sync: bus.sync,
        dedupe_window_ms: bus.dedupe_window.as_millis() as u64,
        max_depth: bus.max_depth,
        trace_budget: bus.trace_budget,
        max_payload_bytes: bus.max_payload as usize,
        retention_ms: bus.retention.as_millis() as u64,
        max_events: bus.max_events,
    };
    let path = config.path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(config))
        .await
        .context("opening the event store")?
        .with_context(|| format!("opening {}", path.display()))?;
    let state = Arc::new(api::State::new(
        store.clone(),
        bus.subscriber_buffer,
        ctx.shutdown.clone(),
    ));

    let socket = ctx.paths.socket("bus");
    let listener = bind(&socket)
        .await
        .with_context(|| format!("binding {}", socket.display()))?;
    let options = ServeOptions::new("bus", Auth::Token(verifier), &ctx.config.rpc);
    let server = tokio::spawn(serve(
        listener,
        Arc::new(api::methods(state)),
        options,
        ctx.shutdown.clone(),
    ));
    // Takes back expired leases every second; the first sweep, at once, picks up work whose
    // lease ran out while the bus was down.
    let sweeper = tokio::spawn(assignments::sweep_every(store.clone(), ctx.shutdown.clone()));
    aiventbus_rpc::notify::ready();
    tracing::info!(socket = %socket.display(), head = store.head(), "bus ready");

    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    let _ = server.await;
    let _ = sweeper.await;
    store.close().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
