//! The HTTP face: the axum router built from [`crate::routes::ROUTES`], the guard every request
//! passes (Host, Origin, deadline, security headers, metrics), the REST handler that turns a route
//! into a call of the shared method table, and the mapping of JSON-RPC errors to HTTP statuses.

use std::sync::Arc;
use std::time::Instant;

use aiventbus_proto::ErrorCode;
use aiventbus_rpc::RpcError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on, post};
use serde_json::value::RawValue;

use crate::app::{App, AuthFailure, Principal, error_response};
use crate::routes::{LONG_ROUTE_DEADLINE, ROUTES, Route, Verb, build_params, is_long};

/// Every route of the TCP face: REST, webhook, login, `/healthz`, `/metrics`, the OpenAPI
/// document, ATP and the dashboard, behind [`guard`].
pub fn router(app: Arc<App>) -> Router {
    let mut router: Router<Arc<App>> = Router::new();
    for route in ROUTES {
        let filter = match route.verb {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Delete => MethodFilter::DELETE,
        };
        router = router.route(
            route.path,
            on(filter, move |State(app): State<Arc<App>>, request: Request| {
                rest(app, route, request)
            }),
        );
    }
    let max_body = usize::try_from(app.config().max_body).unwrap_or(usize::MAX);
    router
        .route("/api/v1/webhook/{*path}", post(crate::webhook::receive))
        .route("/api/v1/openapi.json", get(crate::openapi::serve))
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::scrape::serve))
        .route("/login", get(crate::login::dashboard_link))
        .route("/atp/auth/login", post(crate::login::atp_login))
        .merge(crate::atp::routes(app.clone()))
        .merge(crate::dashboard::routes(app.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

async fn not_found(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_params",
        &format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

/// What every request passes: the Host must name this gateway (421), a state-changing request
/// or a WebSocket upgrade with an Origin must come from this gateway's own origin (403), the
/// handler gets a deadline (504); every response carries the security headers and is counted
/// by route template.
async fn guard(State(app): State<Arc<App>>, matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let template = matched.as_ref().map(MatchedPath::as_str);
    let mut response = match guarded(&app, template, request, next).await {
        Ok(response) | Err(response) => response,
    };
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if app.listening().tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    app.metrics()
        .record(template, response.status().as_u16(), started.elapsed());
    response
}

async fn guarded(app: &App, template: Option<&str>, request: Request, next: Next) -> Result<Response, Response> {
    app.check_host(request.headers()).map_err(IntoResponse::into_response)?;
    let changes_state = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if changes_state || upgrade {
        app.check_origin(request.headers())
            .map_err(IntoResponse::into_response)?;
    }
    let long = template.is_some_and(|template| {
        ROUTES
            .iter()
            .any(|route| route.path == template && is_long(route.method))
    });
    let deadline = if long {
        app.config().request_timeout.max(LONG_ROUTE_DEADLINE)
    } else {
        app.config().request_timeout
    };
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => Ok(response),
        Err(_) => Err(error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!("no answer within {} ms", deadline.as_millis()),
        )),
    }
}

/// The principal of an HTTP request (`Authorization: Bearer`, else the dashboard cookie).
pub fn authenticate(app: &App, headers: &axum::http::HeaderMap) -> Result<Principal, Response> {
    let Some(token) = app.credential(headers) else {
        return Err(AuthFailure::Bad.into_response());
    };
    app.authenticate_now(&token).map_err(IntoResponse::into_response)
}

/// One REST call: authenticate, check the role, build the params, call the method table.
async fn rest(app: Arc<App>, route: &'static Route, request: Request) -> Response {
    match rest_call(&app, route, request).await {
        Ok(response) | Err(response) => response,
    }
}

async fn rest_call(app: &App, route: &'static Route, request: Request) -> Result<Response, Response> {
    let principal = authenticate(app, request.headers())?;
    app.authorize(&principal, route.method).map_err(rpc_error_response)?;
    let (mut parts, body) = request.into_parts();
    let captures: Vec<(String, String)> = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        Err(rejection) => return Err(bad_request(&format!("path: {rejection}"))),
    };
    let query: Vec<(String, String)> = match parts.uri.query() {
        Some(query) => match serde_urlencoded_pairs(query) {
            Ok(pairs) => pairs,
            Err(message) => return Err(bad_request(&message)),
        },
        None => Vec::new(),
    };
    let idempotency_key = parts
        .headers
        .get("x-idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = if route.body {
        read_body(Request::from_parts(parts, body)).await?
    } else {
        Bytes::new()
    };
    let params = if captures.is_empty() && query.is_empty() && idempotency_key.is_none() {
        // The common write: the body is the params, passed on as it came (the method parses it).
        raw_object(&body)?
    } else {
        let params = build_params(route, &captures, &query, &body, idempotency_key.as_deref())
            .map_err(|error| bad_request(&error.0))?;
        Some(serde_json::value::to_raw_value(&params).map_err(|error| rpc_error_response(RpcError::internal(error)))?)
    };
    let result = app
        .call(&principal, route.method, params)
        .await
        .map_err(rpc_error_response)?;
    Ok(json_response(StatusCode::OK, String::from(Box::<str>::from(result))))
}

/// Reads a request body within `gateway.max_body` (413 beyond it).
pub async fn read_body(request: Request) -> Result<Bytes, Response> {
    match Bytes::from_request(request, &()).await {
        Ok(bytes) => Ok(bytes),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is larger than gateway.max_body",
        )),
        Err(rejection) => Err(bad_request(&format!("body: {}", rejection.body_text()))),
    }
}

/// The body as raw params: `None` when empty, else it must be one JSON object.
fn raw_object(body: &[u8]) -> Result<Option<Box<RawValue>>, Response> {
    let text = std::str::from_utf8(body).map_err(|_| bad_request("body: must be UTF-8 JSON"))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if !trimmed.starts_with('{') {
        return Err(bad_request("body: must be a JSON object"));
    }
    RawValue::from_string(trimmed.to_owned())
        .map(Some)
        .map_err(|error| bad_request(&format!("body: invalid JSON: {error}")))
}

/// Splits a query string into decoded pairs.
fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|part| !part.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = percent_decode(name).ok_or_else(|| format!("query: {name:?} is not valid percent-encoding"))?;
        let value =
            percent_decode(value).ok_or_else(|| format!("query parameter {name:?}: invalid percent-encoding"))?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(index + 1..index + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).ok()
}

/// A JSON body with `status`.
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, Body::from(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// 400 `invalid_params`.
pub fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalid_params", message)
}

/// The HTTP status and error code for a JSON-RPC error.
pub fn status_of(error: &RpcError) -> (StatusCode, &'static str) {
    let forbidden = error
        .0
        .data
        .as_ref()
        .and_then(|data| data.get("reason"))
        .and_then(|reason| reason.as_str())
        == Some("forbidden");
    match ErrorCode::from_code(error.code()) {
        Some(ErrorCode::Parse | ErrorCode::InvalidRequest | ErrorCode::InvalidParams) => {
            (StatusCode::BAD_REQUEST, "invalid_params")
        }
        Some(ErrorCode::MethodNotFound | ErrorCode::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
        Some(ErrorCode::Unauthorized) if forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        Some(ErrorCode::Unauthorized) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Some(ErrorCode::Conflict) => (StatusCode::CONFLICT, "conflict"),
        Some(ErrorCode::Overloaded) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        Some(ErrorCode::TooLarge) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Some(ErrorCode::Unavailable) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Some(ErrorCode::Expired) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Some(ErrorCode::Internal) | None => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// `{"error": {"code", "message", "data"?}}` for a JSON-RPC error.
pub fn rpc_error_response(error: RpcError) -> Response {
    let (status, code) = status_of(&error);
    let mut body = serde_json::json!({ "error": { "code": code, "message": error.0.message } });
    if let Some(data) = error.0.data {
        body["error"]["data"] = data;
    }
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_codes_map_to_statuses() {
        let cases = [
            (RpcError::invalid_params("x"), 400, "invalid_params"),
            (RpcError::new(ErrorCode::Parse, "x"), 400, "invalid_params"),
            (RpcError::new(ErrorCode::MethodNotFound, "x"), 404, "not_found"),
            (RpcError::unauthorized("x"), 401, "unauthorized"),
            (crate::app::forbidden("x".into()), 403, "forbidden"),
            (RpcError::not_found("x"), 404, "not_found"),
            (RpcError::conflict("x"), 409, "conflict"),
            (RpcError::new(ErrorCode::Overloaded, "x"), 429, "rate_limited"),
            (RpcError::new(ErrorCode::TooLarge, "x"), 413, "too_large"),
            (RpcError::unavailable("x"), 503, "unavailable"),
            (RpcError::new(ErrorCode::Expired, "x"), 504, "timeout"),
            (RpcError::new(ErrorCode::Internal, "x"), 500, "internal"),
        ];
        for (error, status, code) in cases {
            assert_eq!(
                status_of(&error),
                (StatusCode::from_u16(status).unwrap(), code),
                "{error}"
            );
        }
    }

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            serde_urlencoded_pairs("pattern=a.%2A&limit=5&x").unwrap(),
            [
                ("pattern".to_owned(), "a.*".to_owned()),
                ("limit".to_owned(), "5".to_owned()),
                ("x".to_owned(), String::new())
            ]
        );
        assert!(serde_urlencoded_pairs("a=%zz").unwrap_err().contains("\"a\""));
    }
}

/// The HTTP face served in-process over real TCP, with fake upstream services on Unix sockets
/// that answer only when told to: deadlines and the shutdown drain, deterministically.
#[cfg(test)]
mod serving {
    use std::path::Path;
    use std::sync::Arc;

    use aiventbus_proto::auth::Role;
    use aiventbus_rpc::config::GatewayConfig;
    use aiventbus_rpc::token::Key;
    use aiventbus_rpc::{Client, Endpoint};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream, UnixListener};
    use tokio::sync::{mpsc, watch};
    use tokio_util::sync::CancellationToken;

    use crate::api::{Local, Upstreams, methods};
    use crate::app::{App, Listening};
    use crate::auth::AuthStore;
    use crate::secrets::SecretStore;

    /// A service socket that reports each request's method and answers `{"ok": true}` once
    /// `release` turns true.
    fn fake_service(path: &Path) -> (mpsc::Receiver<String>, watch::Sender<bool>) {
        let listener = UnixListener::bind(path).unwrap();
        let (seen_tx, seen) = mpsc::channel(16);
        let (release, released) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen_tx, mut released) = (seen_tx.clone(), released.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let request: serde_json::Value = serde_json::from_str(&line).unwrap();
                        let _ = seen_tx.send(request["method"].as_str().unwrap().to_owned()).await;
                        let _ = released.wait_for(|released| *released).await;
                        let reply = serde_json::json!({"jsonrpc": "2.0", "id": request["id"], "result": {"ok": true}});
                        let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                    }
                });
            }
        });
        (seen, release)
    }

    struct Gateway {
        _dir: tempfile::TempDir,
        addr: std::net::SocketAddr,
        key: String,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<()>,
        seen: mpsc::Receiver<String>,
        release: watch::Sender<bool>,
    }

    async fn gateway(config: GatewayConfig) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (seen, release) = fake_service(&dir.path().join("bus.sock"));
        let secrets_key = Key::from_bytes([5; 32]);
        let auth = Arc::new(AuthStore::open(&dir.path().join("gateway.db"), &secrets_key).unwrap());
        let secrets = Arc::new(SecretStore::new(auth.db(), &secrets_key).unwrap());
        let key = auth.create_key("tester", Role::Viewer, None).unwrap().key;
        let client = |name: &str| Client::new(Endpoint::public(dir.path().join(format!("{name}.sock"))));
        let upstreams = Arc::new(Upstreams {
            bus: client("bus"),
            publishers: vec![client("bus")],
            init: client("init"),
            llm: client("llm"),
            router: client("router"),
            policy: client("policy"),
            exec: client("exec"),
        });
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listening = Listening {
            addr: tcp.local_addr().unwrap(),
            tls: false,
        };
        let table = Arc::new(methods(
            upstreams.clone(),
            Local {
                auth: auth.clone(),
                secrets: secrets.clone(),
                base_url: listening.base_url(),
            },
        ));
        let shutdown = CancellationToken::new();
        let app = Arc::new(App::new(
            config,
            upstreams,
            auth,
            secrets,
            table,
            listening,
            shutdown.clone(),
        ));
        let server = tokio::spawn(crate::listener::serve(
            tcp,
            None,
            super::router(app.clone()),
            app.metrics().clone(),
            shutdown.clone(),
        ));
        Gateway {
            _dir: dir,
            addr: listening.addr,
            key,
            shutdown,
            server,
            seen,
            release,
        }
    }

    /// Sends one request and returns the whole answer as text.
    async fn get(addr: std::net::SocketAddr, path: &str, key: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_504() {
        let config = GatewayConfig {
            request_timeout: std::time::Duration::from_millis(200),
            ..GatewayConfig::default()
        };
        let mut gateway = gateway(config).await;
        let answer = get(gateway.addr, "/api/v1/events/evt_1", &gateway.key).await;
        assert_eq!(gateway.seen.recv().await.as_deref(), Some("events.get"));
        assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
        assert!(answer.contains(r#""code":"timeout""#), "{answer}");
        gateway.shutdown.cancel();
        gateway.server.await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_lets_open_requests_finish_and_takes_no_new_ones() {
        let mut gateway = gateway(GatewayConfig::default()).await;
        let (addr, key) = (gateway.addr, gateway.key.clone());
        let open = tokio::spawn(async move { get(addr, "/api/v1/events/evt_1", &key).await });
        assert_eq!(gateway.seen.recv().await.as_deref(), Some("events.get"));
        gateway.shutdown.cancel();
        // The request already in flight still gets its answer.
        gateway.release.send(true).unwrap();
        let answer = open.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(r#"{"ok":true}"#), "{answer}");
        gateway.server.await.unwrap();
        assert!(
            TcpStream::connect(gateway.addr).await.is_err(),
            "no new connections after the drain"
        );
    }
}
