//! The two ways in that need no token: `POST /atp/auth/login` (identity and API key or password →
//! an ATP session) and the dashboard's one-time link `GET /login?code=…` (→ the HttpOnly
//! SameSite=Strict session cookie, then a redirect to `/`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use aiventbus_proto::atp::LoginRequest;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::app::{App, SESSION_COOKIE, error_response};
use crate::auth::SESSION_TTL;
use crate::http::{bad_request, read_body};

/// `POST /atp/auth/login {identity, credential}` → `{token, expires_at, session_id}`; 401 with
/// the same body for an unknown identity and a wrong credential; 429 with `Retry-After` after
/// repeated failures.
pub async fn atp_login(State(app): State<Arc<App>>, request: Request) -> Response {
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let login: LoginRequest = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(error) => return bad_request(&format!("body: {error} (expected {{identity, credential}})")),
    };
    match app.login(&login.identity, &login.credential, client_ip).await {
        Ok(session) => (StatusCode::OK, axum::Json(session)).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// `GET /login?code=…`: consumes the one-time code minted by `dashboard.link`, sets the session
/// cookie and redirects to the dashboard. A used, expired or unknown code gets 401.
pub async fn dashboard_link(State(app): State<Arc<App>>, request: Request) -> Response {
    let code = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("code="))
        .unwrap_or("");
    let session = match app.redeem_dashboard_code(code) {
        Ok(Some(session)) => session,
        Ok(None) => {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this login link is unknown, used or expired: run `aibus dashboard` for a new one",
            );
        }
        Err(error) => return crate::http::rpc_error_response(error),
    };
    let secure = if app.listening().tls { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            headers.insert(header::SET_COOKIE, value);
            response
        }
        Err(error) => crate::http::rpc_error_response(aiventbus_rpc::RpcError::internal(error)),
    }
}
