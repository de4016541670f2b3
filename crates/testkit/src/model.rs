//! A scripted model server for tests: real HTTP/1.1 on `127.0.0.1`, speaking the Ollama (`/api/chat`,
//! `/api/tags`) and OpenAI (`/v1/chat/completions`, `/v1/models`) wire formats the way the real servers
//! do — field names, content types, NDJSON and SSE streaming — answering with replies the test scripts
//! and recording every request it receives before it answers.
//!
//! It can be stopped (connections refused, open ones closed) and restarted on the same port, to act
//! out a model server that goes down and comes back.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Characters of content per streamed chunk: small, so a short answer still arrives in several chunks.
const CHUNK_CHARS: usize = 8;
/// Largest request body accepted; a bigger one gets 413 (and is not recorded).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Fixed timestamps for model listings, so they are deterministic.
const MODIFIED_AT: &str = "2024-01-01T00:00:00Z";
const MODEL_CREATED: u64 = 1_704_067_200;

/// What the server answers to one chat call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The assistant message content; streamed in several chunks when the request asks to stream.
    Content(String),
    /// Serialized, then answered like [`Reply::Content`].
    Json(Value),
    /// An HTTP error status with `message` in that API's error shape
    /// (Ollama `{"error": message}`, OpenAI `{"error": {"message", "type", "param", "code"}}`).
    Status(u16, String),
    /// The inner reply after a delay (the request is recorded at once).
    Delayed(Duration, Box<Reply>),
    /// Never answer; the connection is closed when the server stops or is dropped.
    Hang,
}

impl Reply {
    /// `reply` after `delay`.
    pub fn delayed(delay: Duration, reply: Reply) -> Reply {
        Reply::Delayed(delay, Box::new(reply))
    }

    /// The default reply: a minimal valid `AgentOutput`.
    pub fn default_answer() -> Reply {
        Reply::Json(json!({"type": "answer", "summary": "ok"}))
    }
}

/// Which wire format a request used (by path: `/v1/…` is OpenAI, everything else Ollama).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/api/chat`, `/api/tags`.
    Ollama,
    /// `/v1/chat/completions`, `/v1/models`.
    OpenAi,
}

/// One request the server received, recorded before it was answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method (`GET`, `POST`).
    pub method: String,
    /// Request path, without the query.
    pub path: String,
    /// The API the path belongs to.
    pub api: Api,
    /// Whether the request asked for a streamed answer (Ollama: `stream` absent or true; OpenAI:
    /// `stream: true`). False for requests that are not chat calls.
    pub stream: bool,
    /// The JSON body; `Null` for an empty body or one that is not JSON (which is answered 400).
    pub body: Value,
    /// The `Authorization` header, if any (OpenAI API keys come as `Bearer <key>`).
    pub authorization: Option<String>,
}

impl Recorded {
    /// Whether this was a chat call (`POST /api/chat` or `POST /v1/chat/completions`).
    pub fn is_chat(&self) -> bool {
        self.method == "POST" && (self.path == "/api/chat" || self.path == "/v1/chat/completions")
    }
}

/// The scripted server. Dropping it stops it.
pub struct ModelServer {
    shared: Arc<Shared>,
    address: SocketAddr,
    router: Router,
    running: Option<Running>,
}

/// A listening server: the accept loop and its connections, all ended by `stop`.
struct Running {
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// State the handlers share with the test. The recorded requests and scripted replies are unbounded:
/// a server lives for one test, which decides how much it pushes and sends.
struct Shared {
    state: Mutex<ScriptState>,
    /// Woken whenever a request is recorded.
    recorded: Notify,
}

struct ScriptState {
    models: Vec<String>,
    replies: VecDeque<Reply>,
    default_reply: Reply,
    reject_json_schema: bool,
    requests: Vec<Recorded>,
    completions: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ScriptState> {
        // No lock holder can leave the state half-updated, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ModelServer {
    /// Starts a server on `127.0.0.1` and a free port.
    pub async fn start() -> anyhow::Result<ModelServer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(ScriptState {
                models: vec!["test-model".to_owned()],
                replies: VecDeque::new(),
                default_reply: Reply::default_answer(),
                reject_json_schema: false,
                requests: Vec::new(),
                completions: 0,
            }),
            recorded: Notify::new(),
        });
        let router = Router::new()
            .route("/api/chat", post(ollama_chat))
            .route("/api/tags", get(ollama_tags))
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/models", get(openai_models))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(shared.clone());
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).context("binding the model server")?;
        let address = listener.local_addr()?;
        let mut server = ModelServer {
            shared,
            address,
            router,
            running: None,
        };
        server.serve(listener);
        Ok(server)
    }

    /// The address the server listens on (the same across `stop`/`restart`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Base URL for an Ollama provider: `http://127.0.0.1:PORT`.
    pub fn ollama_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Base URL for an OpenAI provider: `http://127.0.0.1:PORT/v1`.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// The models `/api/tags` and `/v1/models` list and chat calls accept (default `["test-model"]`).
    /// A name matches with or without a `:latest` tag, as in Ollama.
    pub fn models(&self, names: &[&str]) {
        self.shared.lock().models = names.iter().map(|name| (*name).to_owned()).collect();
    }

    /// Queues a reply; chat calls take replies in order.
    pub fn push(&self, reply: Reply) {
        self.shared.lock().replies.push_back(reply);
    }

    /// The reply used when the queue is empty (default: [`Reply::default_answer`]).
    pub fn set_default(&self, reply: Reply) {
        self.shared.lock().default_reply = reply;
    }

    /// When set, an OpenAI chat call with `response_format.type == "json_schema"` gets 400 (it is
    /// still recorded, and takes no scripted reply), as servers without structured outputs answer.
    pub fn reject_json_schema(&self, reject: bool) {
        self.shared.lock().reject_json_schema = reject;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The chat calls so far, in arrival order.
    pub fn chat_requests(&self) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_chat())
            .cloned()
            .collect()
    }

    /// Waits until at least `count` chat calls have been received, then returns all chat calls so far.
    pub async fn wait_for_chat_requests(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<Recorded>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the wake-up before looking, so a request recorded in between is not missed.
            let mut notified = std::pin::pin!(self.shared.recorded.notified());
            notified.as_mut().enable();
            let chat = self.chat_requests();
            if chat.len() >= count {
                return Ok(chat);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "timed out after {timeout:?} waiting for {count} chat requests; received {}",
                    chat.len()
                );
            }
        }
    }

    /// Stops listening: new connections are refused and open ones (hanging or delayed requests
    /// included) are closed without an answer. Scripted replies and recorded requests are kept.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            running.tasks.close();
            // The listener is closed once the accept loop has returned.
            running.tasks.wait().await;
        }
    }

    /// Listens again on the same port. Does nothing when the server is running.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = bind(self.address).with_context(|| format!("listening again on {}", self.address))?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let running = Running {
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        running.tasks.spawn(accept_loop(
            listener,
            self.router.clone(),
            running.stop.clone(),
            running.tasks.clone(),
        ));
        self.running = Some(running);
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
        }
    }
}

/// Binds with `SO_REUSEADDR`, so a restart can take the port back while old connections linger in TIME_WAIT.
fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}

/// Accepts connections until `stop`; each connection is served by hyper until it ends or `stop`, which
/// drops it (closing the socket, answered or not). Our own loop rather than `axum::serve`, whose
/// connections can only end gracefully — a hanging request would never let them.
async fn accept_loop(listener: TcpListener, router: Router, stop: CancellationToken, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(10)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tasks.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// What a reply comes to once its delays have passed.
enum Answer {
    Content(String),
    Status(StatusCode, String),
}

/// Waits out `Delayed` replies; never returns for `Hang`.
async fn resolve(mut reply: Reply) -> Answer {
    loop {
        match reply {
            Reply::Content(content) => return Answer::Content(content),
            Reply::Json(value) => return Answer::Content(value.to_string()),
            Reply::Status(code, message) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Answer::Status(status, message);
            }
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            Reply::Hang => return std::future::pending().await,
        }
    }
}

/// Records a request and returns its parsed JSON body (`None` when not JSON).
fn record(shared: &Shared, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let api = if path == "/v1" || path.starts_with("/v1/") {
        Api::OpenAi
    } else {
        Api::Ollama
    };
    let parsed: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    let stream_field = parsed.as_ref().and_then(|b| b.get("stream")).and_then(Value::as_bool);
    let stream = match (method == Method::POST, path) {
        (true, "/api/chat") => stream_field.unwrap_or(true),
        (true, "/v1/chat/completions") => stream_field.unwrap_or(false),
        _ => false,
    };
    let recorded = Recorded {
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        api,
        stream,
        body: parsed.clone().unwrap_or(Value::Null),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    };
    shared.lock().requests.push(recorded);
    shared.recorded.notify_waiters();
    parsed
}

/// Whether `requested` names a listed model, `:latest` being the default tag.
fn model_listed(models: &[String], requested: &str) -> bool {
    let untagged = |name: &str| name.strip_suffix(":latest").unwrap_or(name).to_owned();
    models.iter().any(|model| untagged(model) == untagged(requested))
}

/// A deterministic, nonzero token count: about four characters a token.
fn tokens(chars: usize) -> u64 {
    chars.div_ceil(4).max(1) as u64
}

/// Prompt tokens of a chat request: its messages' content.
fn prompt_tokens(body: &Value) -> u64 {
    let chars = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(|c| c.chars().count())
                .sum()
        })
        .unwrap_or(0);
    tokens(chars)
}

/// Content in streaming pieces of `CHUNK_CHARS` characters.
fn chunks(content: &str) -> Vec<String> {
    let chars: Vec<char> = content.chars().collect();
    chars.chunks(CHUNK_CHARS).map(|piece| piece.iter().collect()).collect()
}

/// A chunked (`Transfer-Encoding: chunked`) body, one HTTP chunk per piece.
fn streamed(content_type: &'static str, pieces: Vec<String>) -> Response {
    let stream = futures_util::stream::iter(pieces.into_iter().map(Ok::<_, Infallible>));
    let mut response = Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// --- Ollama ---

/// Ollama (Go's gin) answers JSON with this content type.
fn ollama_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn ollama_error(status: StatusCode, message: &str) -> Response {
    ollama_json(status, json!({ "error": message }))
}

async fn ollama_chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(request) = record(&shared, &Method::POST, "/api/chat", &headers, &body) else {
        return ollama_error(StatusCode::BAD_REQUEST, "invalid request body: not JSON");
    };
    let Some(model) = request.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return ollama_error(StatusCode::BAD_REQUEST, "model is required");
    };
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(true);
    let reply = {
        let mut state = shared.lock();
        if !model_listed(&state.models, &model) {
            return ollama_error(
                StatusCode::NOT_FOUND,
                &format!("model \"{model}\" not found, try pulling it first"),
            );
        }
        state.replies.pop_front().unwrap_or_else(|| state.default_reply.clone())
    };
    let content = match resolve(reply).await {
        Answer::Content(content) => content,
        Answer::Status(status, message) => return ollama_error(status, &message),
    };
    let prompt_eval_count = prompt_tokens(&request);
    let eval_count = tokens(content.chars().count());
    // Durations in nanoseconds, derived from the counts so they are deterministic.
    let load_duration = 1_000_000u64;
    let prompt_eval_duration = prompt_eval_count * 1_000_000;
    let eval_duration = eval_count * 10_000_000;
    // The last object carries the counts; streamed, its content is empty (it all came before).
    let done = |content: &str| {
        json!({
            "model": model,
            "created_at": now_rfc3339(),
            "message": {"role": "assistant", "content": content},
            "done": true,
            "done_reason": "stop",
            "total_duration": load_duration + prompt_eval_duration + eval_duration,
            "load_duration": load_duration,
            "prompt_eval_count": prompt_eval_count,
            "prompt_eval_duration": prompt_eval_duration,
            "eval_count": eval_count,
            "eval_duration": eval_duration,
        })
    };
    if !stream {
        return ollama_json(StatusCode::OK, done(&content));
    }
    let mut lines: Vec<String> = chunks(&content)
        .into_iter()
        .map(|piece| {
            let line = json!({
                "model": model,
                "created_at": now_rfc3339(),
                "message": {"role": "assistant", "content": piece},
                "done": false,
            });
            format!("{line}\n")
        })
        .collect();
    lines.push(format!("{}\n", done("")));
    streamed("application/x-ndjson", lines)
}

async fn ollama_tags(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    record(&shared, &Method::GET, "/api/tags", &headers, &body);
    let models: Vec<Value> = shared
        .lock()
        .models
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "model": name,
                "modified_at": MODIFIED_AT,
                "size": 1_000_000,
                "digest": digest(name),
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "test",
                    "families": ["test"],
                    "parameter_size": "1M",
                    "quantization_level": "Q4_0",
                },
            })
        })
        .collect();
    ollama_json(StatusCode::OK, json!({ "models": models }))
}

/// A sha256-shaped (64 hex digits) digest derived from the name (FNV-1a, repeated).
fn digest(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}").repeat(4)
}

// --- OpenAI ---

fn openai_error(status: StatusCode, message: &str) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Value::from("invalid_api_key")),
        404 => ("invalid_request_error", Value::from("model_not_found")),
        429 => ("requests", Value::from("rate_limit_exceeded")),
        500..=599 => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

async fn openai_chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(request) = record(&shared, &Method::POST, "/v1/chat/completions", &headers, &body) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
        );
    };
    let Some(model) = request.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return openai_error(StatusCode::BAD_REQUEST, "you must provide a model parameter");
    };
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let wants_schema = request.pointer("/response_format/type").and_then(Value::as_str) == Some("json_schema");
    let (reply, id) = {
        let mut state = shared.lock();
        if state.reject_json_schema && wants_schema {
            return openai_error(StatusCode::BAD_REQUEST, "response_format json_schema is not supported");
        }
        if !model_listed(&state.models, &model) {
            return openai_error(
                StatusCode::NOT_FOUND,
                &format!("The model `{model}` does not exist or you do not have access to it."),
            );
        }
        state.completions += 1;
        let reply = state.replies.pop_front().unwrap_or_else(|| state.default_reply.clone());
        (reply, format!("chatcmpl-testkit{}", state.completions))
    };
    let content = match resolve(reply).await {
        Answer::Content(content) => content,
        Answer::Status(status, message) => return openai_error(status, &message),
    };
    let prompt = prompt_tokens(&request);
    let completion = tokens(content.chars().count());
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
    let created = now_unix();
    if !stream {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        return (StatusCode::OK, Json(body)).into_response();
    }
    // As OpenAI streams: the role first, then content deltas, then an empty delta with the finish
    // reason; with `include_usage`, every chunk carries `"usage": null` and one more chunk with no
    // choices carries the usage; then `[DONE]`.
    let chunk = |delta: Value, finish_reason: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    events.extend(
        chunks(&content)
            .into_iter()
            .map(|piece| chunk(json!({ "content": piece }), Value::Null)),
    );
    events.push(chunk(json!({}), Value::from("stop")));
    if include_usage {
        events.push(json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }));
    }
    let mut frames: Vec<String> = events.iter().map(|event| format!("data: {event}\n\n")).collect();
    frames.push("data: [DONE]\n\n".to_owned());
    streamed("text/event-stream", frames)
}

async fn openai_models(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    record(&shared, &Method::GET, "/v1/models", &headers, &body);
    let data: Vec<Value> = shared
        .lock()
        .models
        .iter()
        .map(|name| json!({"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "testkit"}))
        .collect();
    (StatusCode::OK, Json(json!({"object": "list", "data": data}))).into_response()
}

/// Any other path or method: recorded, then 404 as Ollama's router answers it.
async fn not_found(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, uri.path(), &headers, &body);
    (StatusCode::NOT_FOUND, "404 page not found").into_response()
}

#[cfg(test)]
mod tests;
