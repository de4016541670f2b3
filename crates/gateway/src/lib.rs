//! The gateway: the only boundary to the outside. It serves the public local socket `api.sock`
//! (peers checked by `SO_PEERCRED`: only the daemon's own uid and root) and forwards each public
//! method to the service that owns it, using its own capability tokens. Its internal socket
//! `gateway.sock` answers init's health checks.

mod api;
mod query;

use std::sync::Arc;

use aiventbus_proto::methods::{Health, HealthResult};
use aiventbus_rpc::Client;
use aiventbus_rpc::server::{Auth, Methods, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use anyhow::Context as _;

pub use api::Upstreams;

/// Bus connections carrying publishes.
const PUBLISH_CONNECTIONS: usize = 2;

/// Runs the gateway until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let verifier = ctx
        .creds
        .verifier("gateway")
        .context("loading the gateway's credentials")?;
    let upstreams = Arc::new(Upstreams {
        bus: Client::new(ctx.endpoint("bus")),
        // Publishes spread over their own connections: each bus connection's requests are read and
        // dispatched by one task on the bus, so one connection would serialize them all.
        publishers: (0..PUBLISH_CONNECTIONS)
            .map(|_| Client::new(ctx.endpoint("bus")))
            .collect(),
        init: Client::new(ctx.endpoint("init")),
        llm: Client::new(ctx.endpoint("llm")),
        router: Client::new(ctx.endpoint("router")),
    });

    let api_path = ctx.paths.api_socket();
    let api_listener = bind(&api_path)
        .await
        .with_context(|| format!("binding {}", api_path.display()))?;
    let internal_path = ctx.paths.socket("gateway");
    let internal_listener = bind(&internal_path)
        .await
        .with_context(|| format!("binding {}", internal_path.display()))?;

    let own_uid = nix::unistd::getuid().as_raw();
    let mut allowed = vec![own_uid];
    if own_uid != 0 {
        allowed.push(0);
    }
    let public = api::methods(upstreams.clone());
    let public_options = ServeOptions::new("gateway", Auth::PeerUid(allowed), &ctx.config.rpc);

    let mut internal = Methods::new(upstreams);
    internal.add::<Health, _, _>(|_, _, _| async {
        Ok(HealthResult {
            service: "gateway".into(),
            status: "ok".into(),
            details: Default::default(),
        })
    });
    let internal_options = ServeOptions::new("gateway", Auth::Token(verifier), &ctx.config.rpc);

    let api_server = tokio::spawn(serve(
        api_listener,
        Arc::new(public),
        public_options,
        ctx.shutdown.clone(),
    ));
    let internal_server = tokio::spawn(serve(
        internal_listener,
        Arc::new(internal),
        internal_options,
        ctx.shutdown.clone(),
    ));
    aiventbus_rpc::notify::ready();
    tracing::info!(api = %api_path.display(), "gateway ready");

    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    let _ = api_server.await;
    let _ = internal_server.await;
    let _ = std::fs::remove_file(&api_path);
    let _ = std::fs::remove_file(&internal_path);
    Ok(())
}
