//! The gateway's shared state as its TCP faces (REST, ATP, the dashboard) see it: who a token
//! belongs to, what a principal may call, logins and sessions, the Host and Origin checks, and the
//! one method table every face calls. REST routes and ATP frames both end in [`App::call`], which
//! checks the role ([`crate::roles::required_role`]) and dispatches to the same table `api.sock`
//! serves, so the three faces cannot drift apart.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiventbus_proto::atp::LoginResponse;
use aiventbus_proto::auth::Role;
use aiventbus_proto::methods::{Subscribe, SubscribeParams};
use aiventbus_proto::{ErrorCode, Method};
use aiventbus_rpc::config::GatewayConfig;
use aiventbus_rpc::server::{Handler, Peer, Reply};
use aiventbus_rpc::time::{now_ms, rfc3339_ms};
use aiventbus_rpc::{Client, RpcError, Subscription};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{State, Upstreams};
use crate::auth::{AuthStore, Identity, NewSession, Refusal, lock};
use crate::metrics::HttpMetrics;
use crate::roles::required_role;
use crate::secrets::SecretStore;

/// Name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "aiventbus_session";

/// Failed logins allowed per client address and per identity within [`LOGIN_WINDOW`].
pub const LOGIN_FAILURES: usize = 5;
/// The window failed logins are counted in.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Addresses and identities tracked at most by the login limiter.
const LOGIN_TRACKED: usize = 10_000;

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User name (`user:<name>` is the subject recorded in decisions and events).
    pub user: String,
    /// What they may do.
    pub role: Role,
    /// The ATP or dashboard session, when the credential was a session token (absent for an API
    /// key).
    pub session_id: Option<String>,
    /// The door: `http`, `atp` or `api.sock`.
    pub via: &'static str,
}

impl Principal {
    /// `user:<name>`.
    pub fn subject(&self) -> String {
        format!("user:{}", self.user)
    }

    /// The same principal coming through another door (the ATP face sets `atp`).
    pub fn via(mut self, via: &'static str) -> Principal {
        self.via = via;
        self
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Missing, malformed, unknown or tampered.
    Bad,
    /// Past its expiry.
    Expired,
    /// Revoked (logout, `keys.revoke`, user deleted).
    Revoked,
}

impl AuthFailure {
    /// Human readable; the same for every unknown token.
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Bad => "missing or invalid credentials",
            AuthFailure::Expired => "the session has expired; log in again",
            AuthFailure::Revoked => "the credential has been revoked",
        }
    }

    /// The ATP code: `EEXPIRED` for an expired session, else `EAUTH`.
    pub fn atp_code(self) -> &'static str {
        match self {
            AuthFailure::Expired => "EEXPIRED",
            AuthFailure::Bad | AuthFailure::Revoked => "EAUTH",
        }
    }

    /// As a JSON-RPC error (-32001, `data.reason` = `unauthenticated|expired|revoked`).
    pub fn to_rpc(self) -> RpcError {
        let reason = match self {
            AuthFailure::Bad => "unauthenticated",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
        };
        RpcError::unauthorized(self.message()).with_data(serde_json::json!({ "reason": reason }))
    }
}

impl From<Refusal> for AuthFailure {
    fn from(refusal: Refusal) -> AuthFailure {
        match refusal {
            Refusal::Unknown => AuthFailure::Bad,
            Refusal::Expired => AuthFailure::Expired,
            Refusal::Revoked => AuthFailure::Revoked,
        }
    }
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", self.message());
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        response
    }
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginFailure {
    /// Unknown identity or wrong credential: one answer for both.
    Invalid,
    /// Too many failures from this address or for this identity.
    RateLimited {
        /// Seconds until another attempt is counted.
        retry_after: u64,
    },
    /// The store failed (logged).
    Internal,
}

impl LoginFailure {
    /// As a JSON-RPC error: -32001, -32004 (with `data.retry_after`) or -32603.
    pub fn to_rpc(&self) -> RpcError {
        match self {
            LoginFailure::Invalid => RpcError::unauthorized("invalid identity or credential"),
            LoginFailure::RateLimited { retry_after } => RpcError::new(
                ErrorCode::Overloaded,
                format!("too many failed logins; try again in {retry_after} s"),
            )
            .with_data(serde_json::json!({ "retry_after": retry_after })),
            LoginFailure::Internal => RpcError::new(ErrorCode::Internal, "internal error"),
        }
    }
}

impl IntoResponse for LoginFailure {
    fn into_response(self) -> Response {
        match self {
            LoginFailure::Invalid => error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid identity or credential",
            ),
            LoginFailure::RateLimited { retry_after } => {
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &format!("too many failed logins; try again in {retry_after} s"),
                );
                response.headers_mut().insert(header::RETRY_AFTER, retry_after.into());
                response
            }
            LoginFailure::Internal => error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"),
        }
    }
}

/// A request refused before it reached a method: a foreign Host (421) or Origin (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error code string (`invalid_params`, `forbidden`).
    pub code: &'static str,
    /// Why.
    pub message: String,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

/// `{"error": {"code", "message"}}` with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// Where the gateway listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The bound address (the real port when the config said 0).
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
}

impl Listening {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The base URL clients on this machine use: `http://127.0.0.1:8420` (the loopback address
    /// when bound to every interface; `localhost` under TLS, the name a certificate carries).
    pub fn base_url(&self) -> String {
        // A certificate names hosts, not loopback addresses.
        let host = match self.addr.ip() {
            ip if self.tls && (ip.is_loopback() || ip.is_unspecified()) => "localhost".to_owned(),
            IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        format!("{}://{host}:{}", self.scheme(), self.addr.port())
    }
}

/// The gateway's shared state for the TCP faces.
pub struct App {
    config: GatewayConfig,
    upstreams: Arc<Upstreams>,
    auth: Arc<AuthStore>,
    secrets: Arc<SecretStore>,
    table: Arc<aiventbus_rpc::Methods<State>>,
    listening: Listening,
    hosts: HostRules,
    limiter: LoginLimiter,
    /// Password checks at once (argon2id is CPU and memory heavy).
    password_checks: Semaphore,
    metrics: Arc<HttpMetrics>,
    shutdown: CancellationToken,
}

impl App {
    /// The state of a gateway listening on `listening`.
    pub fn new(
        config: GatewayConfig,
        upstreams: Arc<Upstreams>,
        auth: Arc<AuthStore>,
        secrets: Arc<SecretStore>,
        table: Arc<aiventbus_rpc::Methods<State>>,
        listening: Listening,
        shutdown: CancellationToken,
    ) -> App {
        let hosts = HostRules::new(&config, listening);
        App {
            config,
            upstreams,
            auth,
            secrets,
            table,
            listening,
            hosts,
            limiter: LoginLimiter::default(),
            password_checks: Semaphore::new(2),
            metrics: Arc::new(HttpMetrics::new()),
            shutdown,
        }
    }

    /// The `[gateway]` config.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Where it listens.
    pub fn listening(&self) -> Listening {
        self.listening
    }

    /// Cancelled when the gateway stops; long-lived connections (WebSockets) end on it.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The bus connection for subscriptions (each `subscribe` opens its own stream on it).
    pub fn bus(&self) -> &Client {
        &self.upstreams.bus
    }

    /// The services the gateway talks to.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// The encrypted secrets.
    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    /// HTTP request figures for `/metrics`.
    pub fn metrics(&self) -> &Arc<HttpMetrics> {
        &self.metrics
    }

    /// Who `token` belongs to: an API key (`aib_…`), an ATP session token (`ats_…`) or a
    /// dashboard session id (`ads_…`). The principal's `via` is `http`; the ATP face sets `atp`
    /// with [`Principal::via`].
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthFailure> {
        self.authenticate_now(token)
    }

    /// [`App::authenticate`] without the `async`: every credential is checked from memory.
    pub fn authenticate_now(&self, token: &str) -> Result<Principal, AuthFailure> {
        let identity = self.auth.lookup(token.trim())?;
        Ok(principal(identity, "http"))
    }

    /// Calls a public method for `principal`, after checking its role. A role that does not
    /// suffice (or a method that is not callable remotely) is -32001 with `data.reason` =
    /// `forbidden` (ATP says `EPERM`); an unknown method is -32601. Subscriptions are not called
    /// this way: see [`App::subscribe`].
    pub async fn call(
        &self,
        principal: &Principal,
        method: &str,
        params: Option<Box<RawValue>>,
    ) -> Result<Box<RawValue>, RpcError> {
        self.authorize(principal, method)?;
        if method == Subscribe::NAME || method == aiventbus_proto::methods::Unsubscribe::NAME {
            return Err(RpcError::new(
                ErrorCode::InvalidRequest,
                "subscriptions are opened with ATP's subscribe frame, or events.subscribe on api.sock",
            ));
        }
        // A token of its own (not a child of the shutdown token, whose tree every request would
        // lock): the call ends with its HTTP deadline or its WebSocket, and is cancelled here.
        let closed = CancellationToken::new();
        let peer = Peer::in_process(principal.subject(), principal.via, closed.clone());
        let result = self.table.call(&peer, method, params).await;
        closed.cancel();
        match result? {
            Reply::Value(value) => Ok(value),
            Reply::Subscribed { .. } => Err(RpcError::internal(format!("{method} subscribed in-process"))),
        }
    }

    /// Checks that `principal` may call `method`.
    pub fn authorize(&self, principal: &Principal, method: &str) -> Result<(), RpcError> {
        if principal.via == "api.sock" {
            return Ok(());
        }
        match required_role(method) {
            Some(needed) if principal.role >= needed => Ok(()),
            Some(needed) => Err(forbidden(format!(
                "{method} needs the {} role; {} is {}",
                needed.as_str(),
                principal.user,
                principal.role.as_str()
            ))),
            None if self.table.names().contains(&method) => {
                Err(forbidden(format!("{method} is only for the owner on api.sock")))
            }
            None => Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("no method {method:?}"),
            )),
        }
    }

    /// Opens an event subscription on the bus for `principal` (viewer and up). `from_seq` is the
    /// first seq to deliver (ATP's `since_seq` + 1).
    pub async fn subscribe(
        &self,
        principal: &Principal,
        patterns: Vec<String>,
        from_seq: Option<u64>,
    ) -> Result<Subscription, RpcError> {
        self.authorize(principal, Subscribe::NAME)?;
        let bus = &self.upstreams.bus;
        bus.subscribe(Subscribe::NAME, &SubscribeParams { patterns, from_seq })
            .await
            .map_err(|error| crate::api::upstream_error(bus, error))
    }

    /// Logs in with a user name and one of their API keys or their password; answers an ATP
    /// session (12 h). Unknown users and wrong credentials fail alike; after
    /// [`LOGIN_FAILURES`] failures within [`LOGIN_WINDOW`] from one address or for one identity,
    /// attempts are refused with `RateLimited` until the window moves on.
    pub async fn login(
        &self,
        identity: &str,
        credential: &str,
        client_ip: IpAddr,
    ) -> Result<LoginResponse, LoginFailure> {
        let now = now_ms();
        let keys = [
            format!("ip:{client_ip}"),
            format!("id:{}", identity.chars().take(64).collect::<String>().to_lowercase()),
        ];
        if let Some(retry_after) = self.limiter.blocked(&keys, now) {
            return Err(LoginFailure::RateLimited { retry_after });
        }
        let checked = if identity.len() > 64 || credential.len() > 1024 {
            None
        } else {
            let _permit = self
                .password_checks
                .acquire()
                .await
                .map_err(|_| LoginFailure::Internal)?;
            let auth = self.auth.clone();
            let (identity, credential) = (identity.to_owned(), credential.to_owned());
            tokio::task::spawn_blocking(move || auth.check_login(&identity, &credential))
                .await
                .map_err(|_| LoginFailure::Internal)?
        };
        let Some(found) = checked else {
            self.limiter.fail(&keys, now);
            tracing::info!(%client_ip, "failed login");
            return Err(LoginFailure::Invalid);
        };
        self.limiter.clear(&keys[1]);
        let session = self.auth.create_session(&found.user).map_err(|error| {
            tracing::error!(%error, "creating a session failed");
            LoginFailure::Internal
        })?;
        tracing::info!(user = %found.user, session = %session.session_id, "logged in");
        Ok(login_response(session))
    }

    /// A new token for `principal`'s session with a fresh expiry (the old token stops working);
    /// for an API key, a new ATP session.
    pub async fn refresh(&self, principal: &Principal) -> Result<LoginResponse, RpcError> {
        let session = match &principal.session_id {
            Some(session_id) => self.auth.refresh_session(session_id)?,
            None => self.auth.create_session(&principal.user)?,
        };
        Ok(login_response(session))
    }

    /// Ends `principal`'s session for good (persisted: it stays revoked across restarts). An
    /// API key has no session; it is revoked with `keys.revoke`.
    pub async fn logout(&self, principal: &Principal) -> Result<(), RpcError> {
        if let Some(session_id) = &principal.session_id {
            self.auth.revoke_session(session_id)?;
            tracing::info!(user = %principal.user, session = %session_id, "logged out");
        }
        Ok(())
    }

    /// Redeems a one-time dashboard code: the new dashboard session's id (the cookie value).
    pub fn redeem_dashboard_code(&self, code: &str) -> Result<Option<String>, RpcError> {
        Ok(self.auth.redeem_code(code)?.map(|session| session.token))
    }

    /// The Host header must name this gateway: `localhost`, `127.0.0.1` or `[::1]` with its port,
    /// the listen address, or one of `gateway.allowed_hosts` (no DNS rebinding). Else 421.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if self.hosts.host_allowed(host) {
            Ok(())
        } else {
            Err(Rejection {
                status: StatusCode::MISDIRECTED_REQUEST,
                code: "invalid_params",
                message: format!("Host {host:?} is not a name of this gateway (add it to gateway.allowed_hosts)"),
            })
        }
    }

    /// A present Origin header must be the gateway's own origin or one of
    /// `gateway.allowed_origins` (a request without one — a script, curl — passes). Else 403.
    /// Applied to every state-changing request and to the WebSocket upgrade.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        if self.hosts.origin_allowed(origin) {
            Ok(())
        } else {
            Err(Rejection {
                status: StatusCode::FORBIDDEN,
                code: "forbidden",
                message: format!("cross-site request refused: Origin {origin:?} is not this gateway"),
            })
        }
    }

    /// The dashboard session id from the `aiventbus_session` cookie, if any.
    pub fn session_from_cookie(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .map(|(_, value)| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// The credential of an HTTP request: `Authorization: Bearer …`, else the dashboard cookie.
    pub fn credential(&self, headers: &HeaderMap) -> Option<String> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
            });
        bearer.or_else(|| self.session_from_cookie(headers))
    }
}

fn principal(identity: Identity, via: &'static str) -> Principal {
    Principal {
        user: identity.user,
        role: identity.role,
        session_id: identity.session_id,
        via,
    }
}

fn login_response(session: NewSession) -> LoginResponse {
    LoginResponse {
        token: session.token,
        expires_at: rfc3339_ms(session.expires_at_ms),
        session_id: session.session_id,
    }
}

/// -32001 with `data.reason = "forbidden"` (ATP: `EPERM`; HTTP: 403).
pub fn forbidden(message: String) -> RpcError {
    RpcError::unauthorized(message).with_data(serde_json::json!({ "reason": "forbidden" }))
}

// ---------------------------------------------------------------- Host and Origin

/// The names and origins this gateway answers to.
struct HostRules {
    /// `host:port` forms, lower case.
    exact: Vec<String>,
    /// Configured host names without a port: any port.
    any_port: Vec<String>,
    /// Full origins (`scheme://host[:port]`), lower case.
    origins: Vec<String>,
}

impl HostRules {
    fn new(config: &GatewayConfig, listening: Listening) -> HostRules {
        let port = listening.addr.port();
        let scheme = listening.scheme();
        let mut exact = vec![
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            listening.addr.to_string(),
        ];
        let mut any_port = Vec::new();
        for host in &config.allowed_hosts {
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty() {
                continue;
            }
            if has_port(&host) {
                exact.push(host);
            } else {
                any_port.push(host);
            }
        }
        let mut origins: Vec<String> = exact.iter().map(|host| format!("{scheme}://{host}")).collect();
        for host in &any_port {
            origins.push(format!("{scheme}://{host}"));
            origins.push(format!("{scheme}://{host}:{port}"));
        }
        origins.extend(
            config
                .allowed_origins
                .iter()
                .map(|origin| origin.trim().trim_end_matches('/').to_ascii_lowercase()),
        );
        exact.sort();
        exact.dedup();
        HostRules {
            exact,
            any_port,
            origins,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty() {
            return false;
        }
        if self.exact.contains(&host) {
            return true;
        }
        let name = strip_port(&host);
        self.any_port.iter().any(|allowed| *allowed == name)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        self.origins.contains(&origin)
    }
}

fn has_port(host: &str) -> bool {
    // `name:80` and `[::1]:80` carry a port; `name` and `[::1]` do not.
    match (host.rfind(':'), host.rfind(']')) {
        (Some(colon), Some(bracket)) => colon > bracket,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

fn strip_port(host: &str) -> &str {
    if has_port(host) {
        host.rfind(':').map(|index| &host[..index]).unwrap_or(host)
    } else {
        host
    }
}

// ---------------------------------------------------------------- login rate limit

/// Failed logins per key (`ip:…`, `id:…`) within the window; bounded.
#[derive(Default)]
struct LoginLimiter {
    failures: Mutex<HashMap<String, VecDeque<u64>>>,
}

impl LoginLimiter {
    /// Seconds to wait when any of `keys` has used up its failures.
    fn blocked(&self, keys: &[String], now: u64) -> Option<u64> {
        let window = LOGIN_WINDOW.as_millis() as u64;
        let mut failures = lock(&self.failures);
        keys.iter()
            .filter_map(|key| {
                let times = failures.get_mut(key)?;
                while times.front().is_some_and(|&t| t + window <= now) {
                    times.pop_front();
                }
                (times.len() >= LOGIN_FAILURES).then(|| {
                    let oldest = times.front().copied().unwrap_or(now);
                    ((oldest + window).saturating_sub(now)).div_ceil(1000).max(1)
                })
            })
            .max()
    }

    fn fail(&self, keys: &[String], now: u64) {
        let window = LOGIN_WINDOW.as_millis() as u64;
        let mut failures = lock(&self.failures);
        if failures.len() >= LOGIN_TRACKED {
            failures.retain(|_, times| times.back().is_some_and(|&t| t + window > now));
            if failures.len() >= LOGIN_TRACKED {
                // Still full of live entries: forget the lot rather than grow without bound.
                failures.clear();
            }
        }
        for key in keys {
            let times = failures.entry(key.clone()).or_default();
            times.push_back(now);
            while times.len() > LOGIN_FAILURES {
                times.pop_front();
            }
        }
    }

    fn clear(&self, key: &str) {
        lock(&self.failures).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allowed_hosts: &[&str], allowed_origins: &[&str]) -> HostRules {
        let config = GatewayConfig {
            allowed_hosts: allowed_hosts.iter().map(|s| (*s).to_owned()).collect(),
            allowed_origins: allowed_origins.iter().map(|s| (*s).to_owned()).collect(),
            ..GatewayConfig::default()
        };
        let listening = Listening {
            addr: "127.0.0.1:8420".parse().unwrap(),
            tls: false,
        };
        HostRules::new(&config, listening)
    }

    #[test]
    fn hosts_are_this_gateway_only() {
        let rules = rules(&["box.lan", "proxy.example:443"], &[]);
        for good in [
            "localhost:8420",
            "LOCALHOST:8420",
            "127.0.0.1:8420",
            "[::1]:8420",
            "box.lan",
            "box.lan:9000",
            "proxy.example:443",
        ] {
            assert!(rules.host_allowed(good), "{good}");
        }
        for bad in [
            "",
            "localhost",
            "localhost:8421",
            "evil.example:8420",
            "127.0.0.1.evil.example:8420",
            "proxy.example",
            "[::1]",
        ] {
            assert!(!rules.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn origins_are_this_gateway_only() {
        let rules = rules(&["box.lan"], &["https://app.example/"]);
        for good in [
            "http://localhost:8420",
            "http://127.0.0.1:8420",
            "http://box.lan",
            "http://box.lan:8420",
            "https://app.example",
        ] {
            assert!(rules.origin_allowed(good), "{good}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "https://localhost:8420",
            "http://localhost:8421",
            "http://localhost",
        ] {
            assert!(!rules.origin_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn login_limiter_blocks_after_five_failures_per_key() {
        let limiter = LoginLimiter::default();
        let keys = ["ip:127.0.0.1".to_owned(), "id:alice".to_owned()];
        for attempt in 0..LOGIN_FAILURES {
            assert_eq!(limiter.blocked(&keys, 1_000 + attempt as u64), None);
            limiter.fail(&keys, 1_000 + attempt as u64);
        }
        let wait = limiter.blocked(&keys, 2_000).unwrap();
        assert!((59..=60).contains(&wait), "{wait}");
        // Another identity from the same address is blocked too; the same identity from elsewhere as well.
        assert!(limiter.blocked(&["ip:127.0.0.1".to_owned()], 2_000).is_some());
        assert!(
            limiter
                .blocked(&["ip:10.0.0.2".to_owned(), "id:alice".to_owned()], 2_000)
                .is_some()
        );
        assert!(
            limiter
                .blocked(&["ip:10.0.0.2".to_owned(), "id:bob".to_owned()], 2_000)
                .is_none()
        );
        // The window moves on.
        assert_eq!(limiter.blocked(&keys, 1_000 + 60_000 + LOGIN_FAILURES as u64), None);
    }

    #[test]
    fn base_urls_point_at_a_reachable_address() {
        let url = |addr: &str, tls| {
            Listening {
                addr: addr.parse().unwrap(),
                tls,
            }
            .base_url()
        };
        assert_eq!(url("127.0.0.1:8420", false), "http://127.0.0.1:8420");
        assert_eq!(url("0.0.0.0:443", true), "https://localhost:443");
        assert_eq!(url("127.0.0.1:8420", true), "https://localhost:8420");
        assert_eq!(url("192.168.1.5:443", true), "https://192.168.1.5:443");
        assert_eq!(url("[::]:80", false), "http://[::1]:80");
    }
}
