//! `init.sock`: what init answers to the other services (token-authenticated, audience `init`):
//! `system.services`, `system.health` and `system.shutdown`.

use std::sync::Arc;

use aiventbus_proto::methods::{
    Health, HealthResult, NoParams, ServiceInfo, Services, ServicesResult, Shutdown, ShutdownResult,
};
use aiventbus_rpc::Methods;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::table::INIT;

/// What the handlers read and do.
pub struct Api {
    /// Kept current by the supervisor.
    pub status: watch::Receiver<Vec<ServiceInfo>>,
    /// Cancelled by `system.shutdown`: the same graceful stop as SIGTERM.
    pub shutdown: CancellationToken,
}

/// The method table of `init.sock`.
pub fn methods(api: Api) -> Methods<Api> {
    let mut methods = Methods::new(Arc::new(api));
    methods
        .add::<Services, _, _>(|api, _peer, _: NoParams| {
            let services = api.status.borrow().clone();
            std::future::ready(Ok(ServicesResult { services }))
        })
        .add::<Health, _, _>(|api, _peer, _: NoParams| {
            let mut details = Map::new();
            {
                let services = api.status.borrow();
                let supervised = services.iter().filter(|service| service.name != INIT);
                let mut running = 0u64;
                let mut failed = Vec::new();
                for service in supervised {
                    match service.state.as_str() {
                        "running" => running += 1,
                        "failed" => failed.push(Value::from(service.name.clone())),
                        _ => {}
                    }
                }
                details.insert("services".into(), Value::from(services.len().saturating_sub(1) as u64));
                details.insert("running".into(), Value::from(running));
                details.insert("failed".into(), Value::Array(failed));
            }
            std::future::ready(Ok(HealthResult {
                service: INIT.into(),
                status: "ok".into(),
                details,
            }))
        })
        .add::<Shutdown, _, _>(|api, peer, _: NoParams| {
            tracing::info!(subject = %peer.subject, "shutdown requested");
            api.shutdown.cancel();
            std::future::ready(Ok(ShutdownResult { stopping: true }))
        });
    methods
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiventbus_proto::ErrorCode;
    use aiventbus_rpc::config::RpcConfig;
    use aiventbus_rpc::token::Key;
    use aiventbus_rpc::{Auth, Client, Endpoint, ServeOptions, TokenSource};

    fn info(name: &str, state: &str) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            state: state.into(),
            pid: Some(7),
            restarts: 0,
            since: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_with_the_token_scope_and_shutdown_cancels() {
        let tmp = tempfile::tempdir().unwrap();
        let master = Key::generate().unwrap();
        let path = tmp.path().join("init.sock");
        let (_status, receiver) = watch::channel(vec![
            info("init", "running"),
            info("bus", "running"),
            info("gateway", "failed"),
        ]);
        let shutdown = CancellationToken::new();
        let stop = CancellationToken::new();
        let listener = aiventbus_rpc::bind(&path).await.unwrap();
        let options = ServeOptions::new(
            INIT,
            Auth::Token(crate::keys::init_verifier(&master)),
            &RpcConfig::default(),
        );
        let api = methods(Api {
            status: receiver,
            shutdown: shutdown.clone(),
        });
        let server = tokio::spawn(aiventbus_rpc::serve(listener, Arc::new(api), options, stop.clone()));

        let now = aiventbus_rpc::time::now_ms();
        let client_with = |scope: &[&str]| {
            Client::new(Endpoint {
                path: path.clone(),
                token: TokenSource::Static(crate::keys::mint(&master, "gateway", INIT, scope, now)),
            })
        };
        let gateway = client_with(&["system.services", "system.health"]);
        let services = gateway.call::<Services>(&NoParams {}).await.unwrap().services;
        let names: Vec<_> = services.iter().map(|s| (s.name.as_str(), s.state.as_str())).collect();
        assert_eq!(
            names,
            vec![("init", "running"), ("bus", "running"), ("gateway", "failed")]
        );
        let health = gateway.call::<Health>(&NoParams {}).await.unwrap();
        assert_eq!(health.service, "init");
        assert_eq!(health.details["running"], 1);
        assert_eq!(health.details["failed"], serde_json::json!(["gateway"]));

        let refused = gateway.call::<Shutdown>(&NoParams {}).await.unwrap_err();
        assert_eq!(refused.rpc().unwrap().code, ErrorCode::Unauthorized.code());
        assert!(!shutdown.is_cancelled());

        let admin = client_with(&["system.shutdown"]);
        assert!(admin.call::<Shutdown>(&NoParams {}).await.unwrap().stopping);
        assert!(shutdown.is_cancelled());

        stop.cancel();
        drop((gateway, admin));
        server.await.unwrap();
    }
}
