//! ATP, the gateway's WebSocket protocol at `GET /atp` (SPEC §12). A connection is authenticated
//! before the upgrade — `Authorization: Bearer <token>`, else a `?token=` query parameter (for
//! clients that cannot set headers), else the dashboard's session cookie — and a bad, expired or
//! revoked credential gets HTTP 401 with no upgrade; the Host and Origin checks apply as to every
//! request (421, 403). After the upgrade every frame is a JSON object with a `type`:
//!
//! - `cmd {id, token?, domain, op, body}` → exactly one `reply {id, ok, body | error}`; `domain.op`
//!   is a public method called through [`App::call`] (so the role table applies), `body` its
//!   params. `auth.refresh`, `auth.logout` (the connection closes after the reply) and
//!   `auth.whoami` are answered here. A reused `cmd.id` is refused with `EPARSE` and not run.
//! - `subscribe {events, since_seq}` → `subscribed {events, next_seq}`, then `event` frames:
//!   stored events after `since_seq`, then live ones, with no gap and no duplicate. A later
//!   `subscribe` replaces the subscription; `unsubscribe` ends it.
//! - Malformed frames (not JSON, no `type`, unknown `type`, a `cmd` without id/domain/op, binary
//!   frames) get an `EPARSE` reply (id null when unknown); the connection lives on.
//!
//! The per-connection machinery (queue, keepalive, slow consumers, shutdown) is in
//! [`connection`]; the frame formats in [`frame`].

mod connection;
mod frame;

use std::sync::Arc;

use aiventbus_rpc::config::GatewayConfig;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::{App, AuthFailure};

/// Room for a frame's envelope around a body of `gateway.max_body`.
const FRAME_OVERHEAD: usize = 64 * 1024;

/// The `/atp` route (the WebSocket endpoint; `POST /atp/auth/login` is mounted beside it). The
/// state is the router's own ([`crate::http::router`] provides it).
pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    let _ = app;
    Router::new().route("/atp", get(upgrade))
}

/// Largest frame a client may send: a command whose body is as large as an HTTP body may be.
fn max_frame(config: &GatewayConfig) -> usize {
    usize::try_from(config.max_body)
        .unwrap_or(usize::MAX)
        .saturating_add(FRAME_OVERHEAD)
}

async fn upgrade(
    State(app): State<Arc<App>>,
    websocket: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    request: Request,
) -> Response {
    let headers = request.headers();
    if let Err(rejection) = app.check_host(headers) {
        return rejection.into_response();
    }
    if let Err(rejection) = app.check_origin(headers) {
        return rejection.into_response();
    }
    let Some(credential) = credential(&app, headers, request.uri().query()) else {
        return AuthFailure::Bad.into_response();
    };
    let principal = match app.authenticate(&credential).await {
        Ok(principal) => principal.via("atp"),
        Err(failure) => {
            tracing::debug!(?failure, "ATP upgrade refused");
            return failure.into_response();
        }
    };
    let websocket = match websocket {
        Ok(websocket) => websocket,
        Err(rejection) => return rejection.into_response(),
    };
    let limit = max_frame(app.config());
    websocket
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_failed_upgrade(|error| tracing::debug!(%error, "ATP upgrade failed"))
        .on_upgrade(move |socket| connection::serve(app, socket, credential, principal))
}

/// The upgrade's credential: `Authorization: Bearer`, else `?token=`, else the session cookie.
fn credential(app: &App, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
        })
        .filter(|token| !token.is_empty());
    bearer
        .or_else(|| query.and_then(query_token))
        .or_else(|| app.session_from_cookie(headers))
}

/// `token` from a query string (percent-decoded).
fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .and_then(|(_, value)| percent_decode(value))
        .filter(|token| !token.is_empty())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_token_is_found_and_decoded() {
        assert_eq!(query_token("token=ats_abc").as_deref(), Some("ats_abc"));
        assert_eq!(query_token("x=1&token=a%2Db&y=2").as_deref(), Some("a-b"));
        assert_eq!(query_token("tokens=a"), None);
        assert_eq!(query_token("token="), None);
        assert_eq!(query_token("token=%zz"), None);
    }

    #[test]
    fn frames_may_carry_a_full_body() {
        let config = GatewayConfig::default();
        assert_eq!(max_frame(&config), (1 << 20) + FRAME_OVERHEAD);
    }
}
