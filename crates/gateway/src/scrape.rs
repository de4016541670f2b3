//! `GET /metrics` (viewer and up): every service's `system.metrics` text, gathered over the
//! sockets at scrape time, merged with the gateway's own figures (its sockets and its HTTP
//! requests) into one Prometheus exposition. A service that does not answer within a second adds
//! `aiventbus_up{service="x"} 0` instead.

use std::sync::Arc;
use std::time::Duration;

use aiventbus_proto::Method as _;
use aiventbus_rpc::metrics::{MetricsResult, SystemMetrics, global, merge, up};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::http::authenticate;

/// How long one service gets to answer a scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// The handler.
pub async fn serve(State(app): State<Arc<App>>, request: Request) -> Response {
    if let Err(response) = authenticate(&app, request.headers()) {
        return response;
    }
    let upstreams = app.upstreams();
    let services = [
        ("bus", &upstreams.bus),
        ("exec", &upstreams.exec),
        ("policy", &upstreams.policy),
        ("llm", &upstreams.llm),
        ("router", &upstreams.router),
    ];
    let scrapes = services.map(|(name, client)| async move {
        match client
            .call_raw_with_timeout(SystemMetrics::NAME, None, SCRAPE_TIMEOUT)
            .await
            .ok()
            .and_then(|raw| serde_json::from_str::<MetricsResult>(raw.get()).ok())
        {
            Some(result) => result.text,
            None => up(name, false),
        }
    });
    let [bus, exec, policy, llm, router] = scrapes;
    let (bus, exec, policy, llm, router) = tokio::join!(bus, exec, policy, llm, router);
    let texts = [
        bus,
        exec,
        policy,
        llm,
        router,
        global().render("gateway"),
        app.metrics().render(),
    ];
    let mut response = (StatusCode::OK, merge(&texts)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
