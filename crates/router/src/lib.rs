//! The router service. Routes events to agents: rules, lanes, assignments.

use std::sync::Arc;

use aiventbus_proto::methods::{Health, HealthResult, NoParams};
use aiventbus_rpc::Methods;
use aiventbus_rpc::server::{Auth, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use anyhow::Context as _;

/// Runs the router service until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    let verifier = ctx
        .creds
        .verifier("router")
        .context("loading the router's credentials")?;
    let mut methods = Methods::new(Arc::new(()));
    methods.add::<Health, _, _>(|_, _, _: NoParams| async {
        Ok(HealthResult {
            service: "router".into(),
            status: "ok".into(),
            details: Default::default(),
        })
    });
    let socket = ctx.paths.socket("router");
    let listener = bind(&socket)
        .await
        .with_context(|| format!("binding {}", socket.display()))?;
    let options = ServeOptions::new("router", Auth::Token(verifier), &ctx.config.rpc);
    let server = tokio::spawn(serve(listener, Arc::new(methods), options, ctx.shutdown.clone()));
    aiventbus_rpc::notify::ready();
    ctx.shutdown.cancelled().await;
    let _ = server.await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
