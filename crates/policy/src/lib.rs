//! The policy service.

use std::sync::Arc;

use aiventbus_proto::methods::{Health, HealthResult, NoParams};
use aiventbus_rpc::Methods;
use aiventbus_rpc::server::{Auth, ServeOptions, bind, serve};
use anyhow::Context as _;

/// Runs the service until shutdown.
pub async fn run(ctx: aiventbus_rpc::service::Context) -> anyhow::Result<()> {
    let verifier = ctx.creds.verifier("policy").context("loading credentials")?;
    let socket = ctx.paths.socket("policy");
    let listener = bind(&socket)
        .await
        .with_context(|| format!("binding {}", socket.display()))?;
    let mut table = Methods::new(Arc::new(()));
    table.add::<Health, _, _>(|_, _, _: NoParams| async move {
        Ok(HealthResult {
            service: "policy".into(),
            status: "ok".into(),
            details: Default::default(),
        })
    });
    let server = tokio::spawn(serve(
        listener,
        Arc::new(table),
        ServeOptions::new("policy", Auth::Token(verifier), &ctx.config.rpc),
        ctx.shutdown.clone(),
    ));
    aiventbus_rpc::notify::ready();
    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    let _ = server.await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
