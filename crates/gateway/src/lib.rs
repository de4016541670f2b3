//! The gateway: the only boundary to the outside. It serves the public local socket `api.sock`
//! (peers checked by `SO_PEERCRED`: only the daemon's own uid and root) and, on TCP
//! (`gateway.listen`), HTTP REST under `/api/v1/`, the webhook, `/metrics`, the OpenAPI
//! document, ATP (WebSocket) and the dashboard. Every face calls the same method table
//! ([`api`]), which forwards each public method to the service that owns it with the gateway's
//! own capability tokens. Users, API keys, sessions and secrets live in `<state>/gateway.db`.
//! Its internal socket `gateway.sock` answers init's health checks.

// HTTP handlers answer with a `Response` on either path (`Result<_, Response>` short-circuits a
// rejection); boxing it would only add an allocation per request.
#![allow(clippy::result_large_err)]

mod api;
pub mod app;
mod atp;
mod auth;
mod dashboard;
mod http;
mod listener;
mod login;
mod metrics;
mod openapi;
mod query;
mod roles;
mod routes;
mod scrape;
mod secrets;
mod webhook;

use std::sync::Arc;

use aiventbus_proto::methods::{Health, HealthResult};
use aiventbus_rpc::Client;
use aiventbus_rpc::server::{Auth, Methods, ServeOptions, bind, serve};
use aiventbus_rpc::service::Context;
use anyhow::Context as _;

pub use api::Upstreams;

/// Bus connections carrying publishes.
const PUBLISH_CONNECTIONS: usize = 2;

/// File in the runtime dir holding the bound TCP address (`127.0.0.1:8420`).
pub const ADDR_FILE: &str = "gateway.addr";

/// Runs the gateway until `ctx.shutdown` is cancelled.
pub async fn run(ctx: Context) -> anyhow::Result<()> {
    // Refuse a bad listen setting before anything else (a non-loopback address needs TLS).
    let config = ctx.config.gateway.clone();
    let listen = listener::listen_address(&config)?;
    let tls = listener::tls_acceptor(&config)?;

    let verifier = ctx
        .creds
        .verifier("gateway")
        .context("loading the gateway's credentials")?;
    let secrets_key = ctx
        .creds
        .secrets_key()
        .context("loading the secrets key from the gateway's credentials")?;
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
        policy: Client::new(ctx.endpoint("policy")),
        exec: Client::new(ctx.endpoint("exec")),
    });
    let db_path = ctx.paths.state_dir.join("gateway.db");
    let store =
        auth::AuthStore::open(&db_path, &secrets_key).with_context(|| format!("opening {}", db_path.display()))?;
    let store = Arc::new(store);
    let secrets = Arc::new(secrets::SecretStore::new(store.db(), &secrets_key)?);

    let addr_file = ctx.paths.runtime_dir.join(ADDR_FILE);
    let tcp = listener::bind(listen, &addr_file)
        .await
        .with_context(|| format!("binding gateway.listen {listen}"))?;
    let listening = app::Listening {
        addr: tcp.local_addr().context("reading the bound address")?,
        tls: tls.is_some(),
    };
    listener::write_addr_file(&addr_file, listening.addr)
        .with_context(|| format!("writing {}", addr_file.display()))?;

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
    let public = Arc::new(api::methods(
        upstreams.clone(),
        api::Local {
            auth: store.clone(),
            secrets: secrets.clone(),
            base_url: listening.base_url(),
        },
    ));
    let public_options = ServeOptions::new("gateway", Auth::PeerUid(allowed), &ctx.config.rpc);

    let mut internal = Methods::new(upstreams.clone());
    internal.add::<Health, _, _>(|_, _, _| async {
        Ok(HealthResult {
            service: "gateway".into(),
            status: "ok".into(),
            details: Default::default(),
        })
    });
    let internal_options = ServeOptions::new("gateway", Auth::Token(verifier), &ctx.config.rpc);

    let app = Arc::new(app::App::new(
        config,
        upstreams,
        store,
        secrets,
        public.clone(),
        listening,
        ctx.shutdown.clone(),
    ));
    let router = http::router(app.clone());

    let api_server = tokio::spawn(serve(api_listener, public, public_options, ctx.shutdown.clone()));
    let internal_server = tokio::spawn(serve(
        internal_listener,
        Arc::new(internal),
        internal_options,
        ctx.shutdown.clone(),
    ));
    let http_server = tokio::spawn(listener::serve(
        tcp,
        tls,
        router,
        app.metrics().clone(),
        ctx.shutdown.clone(),
    ));
    aiventbus_rpc::notify::ready();
    tracing::info!(
        api = %api_path.display(),
        http = %listening.base_url(),
        "gateway ready"
    );

    ctx.shutdown.cancelled().await;
    aiventbus_rpc::notify::stopping();
    let _ = http_server.await;
    let _ = api_server.await;
    let _ = internal_server.await;
    let _ = std::fs::remove_file(&api_path);
    let _ = std::fs::remove_file(&internal_path);
    let _ = std::fs::remove_file(&addr_file);
    Ok(())
}
