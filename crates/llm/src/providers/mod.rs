//! Model providers: the configured servers (plus the built-in `ollama` and `openai` defaults), one
//! HTTP client each, the chat call in the two wire dialects, and the classification of failures
//! into "the server is down" (the work is released, no attempt used) and "this request failed".

pub mod ollama;
pub mod openai;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aiventbus_rpc::config::ProviderConfig;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::health::Health;

/// Base URL of the built-in `ollama` provider.
pub const OLLAMA_DEFAULT_URL: &str = "http://127.0.0.1:11434";
/// Base URL of the built-in `openai` provider (an OpenAI-compatible server on this machine).
pub const OPENAI_DEFAULT_URL: &str = "http://127.0.0.1:8080/v1";
/// Largest response body read from a model server; a longer one fails the request.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Largest error body kept for the message.
const MAX_ERROR_BODY: usize = 8 * 1024;
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which wire dialect a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /api/chat`, NDJSON stream.
    Ollama,
    /// `POST <base>/chat/completions`, SSE stream.
    OpenAi,
}

impl Protocol {
    /// The configured `kind`, else by name: `ollama…` speaks Ollama's API, every other name is
    /// OpenAI-compatible.
    pub fn for_provider(name: &str, kind: Option<&str>) -> Protocol {
        if kind.map_or(name.starts_with("ollama"), |kind| kind == "ollama") {
            Protocol::Ollama
        } else {
            Protocol::OpenAi
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with a role.
    pub fn new(role: &str, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// One chat call.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Cap on generated tokens, when set.
    pub max_tokens: Option<u32>,
    /// JSON schema of the answer.
    pub schema: Value,
}

/// What the model answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatReply {
    /// The whole text.
    pub content: String,
    /// Prompt tokens (the server's count, else an estimate).
    pub prompt_tokens: u64,
    /// Generated tokens (the server's count, else an estimate).
    pub completion_tokens: u64,
}

/// Why a chat call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Connection refused or lost, timeout, 5xx: the server is down. The work is released.
    #[error("model server unavailable: {0}")]
    Down(String),
    /// The server refused the request (4xx): retrying the same request will not help.
    #[error("model server refused the request: {0}")]
    Rejected(String),
    /// Something that may pass on a later attempt (429, a malformed or oversized stream).
    #[error("model call failed: {0}")]
    Failed(String),
}

/// A model server.
pub struct Provider {
    /// Its name in the config (`ollama`, `openai`, …).
    pub name: String,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// Its dialect.
    pub protocol: Protocol,
    api_key_env: Option<String>,
    http: reqwest::Client,
    /// Set once the server refused `json_schema` response formats (OpenAI dialect).
    pub json_object_only: AtomicBool,
    /// Reachability, kept by the health monitor.
    pub health: Health,
}

impl Provider {
    /// A provider with its own connection pool.
    pub fn new(name: &str, config: &ProviderConfig, request_timeout: Duration) -> anyhow::Result<Provider> {
        install_crypto();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(request_timeout)
            .user_agent(concat!("aiventbus-llm/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        Ok(Provider {
            name: name.to_owned(),
            health: Health::new(name, &base_url),
            base_url,
            protocol: Protocol::for_provider(name, config.kind.as_deref()),
            api_key_env: config.api_key_env.clone(),
            http,
            json_object_only: AtomicBool::new(false),
        })
    }

    /// The API key from the environment variable named by `api_key_env`, when set and present.
    fn api_key(&self) -> Option<String> {
        let var = self.api_key_env.as_deref()?;
        std::env::var(var).ok().filter(|key| !key.is_empty())
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match self.api_key() {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// One chat call, streaming; text chunks go to `chunks` as they arrive.
    pub async fn chat(&self, request: &ChatRequest, chunks: &mpsc::Sender<String>) -> Result<ChatReply, ProviderError> {
        let result = match self.protocol {
            Protocol::Ollama => ollama::chat(self, request, chunks).await,
            Protocol::OpenAi => openai::chat(self, request, chunks).await,
        };
        if let Err(ProviderError::Down(why)) = &result {
            self.health.report_down(why);
        }
        result
    }

    /// Probes the server's model list: `Ok(models)` when it answers.
    pub async fn probe(&self) -> Result<Vec<String>, String> {
        let url = match self.protocol {
            Protocol::Ollama => format!("{}/api/tags", self.base_url),
            Protocol::OpenAi => format!("{}/models", self.base_url),
        };
        let response = self
            .request(reqwest::Method::GET, &url)
            .timeout(CONNECT_TIMEOUT)
            .send()
            .await
            .map_err(|error| describe(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered HTTP {}", status.as_u16()));
        }
        let body = read_capped(response, MAX_RESPONSE)
            .await
            .map_err(|error| error.to_string())?;
        let list: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let names = match self.protocol {
            Protocol::Ollama => list["models"].as_array().map(|models| {
                models
                    .iter()
                    .filter_map(|m| m["name"].as_str().map(str::to_owned))
                    .collect()
            }),
            Protocol::OpenAi => list["data"].as_array().map(|models| {
                models
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            }),
        };
        Ok(names.unwrap_or_default())
    }

    /// Whether the last probe (or call) found the server up.
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    fn remember_json_object_only(&self) {
        if !self.json_object_only.swap(true, Ordering::Relaxed) {
            tracing::info!(provider = %self.name, "server refused json_schema; using json_object from now on");
        }
    }
}

/// The configured providers, with `ollama` and `openai` at their default URLs unless configured.
pub fn from_config(
    configured: &BTreeMap<String, ProviderConfig>,
    request_timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Arc<Provider>>> {
    let mut all = BTreeMap::new();
    for (name, default_url) in [("ollama", OLLAMA_DEFAULT_URL), ("openai", OPENAI_DEFAULT_URL)] {
        let config = configured.get(name).cloned().unwrap_or(ProviderConfig {
            base_url: default_url.to_owned(),
            api_key_env: None,
            kind: None,
        });
        all.insert(
            name.to_owned(),
            Arc::new(Provider::new(name, &config, request_timeout)?),
        );
    }
    for (name, config) in configured {
        if !all.contains_key(name) {
            all.insert(name.clone(), Arc::new(Provider::new(name, config, request_timeout)?));
        }
    }
    Ok(all)
}

/// rustls needs a process-wide crypto provider; ring keeps the build free of aws-lc.
fn install_crypto() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A transport error in words, without the URL's query or credentials.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "connection lost while reading"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Classifies a transport error: every one means the server is (or went) away.
fn transport(error: &reqwest::Error) -> ProviderError {
    ProviderError::Down(describe(error))
}

/// Classifies an HTTP error status with the body the server sent.
fn status_error(status: reqwest::StatusCode, body: &str) -> ProviderError {
    let message = format!("HTTP {}: {}", status.as_u16(), error_text(body));
    match status.as_u16() {
        500..=599 => ProviderError::Down(message),
        408 | 429 => ProviderError::Failed(message),
        _ => ProviderError::Rejected(message),
    }
}

/// The error message inside a JSON error body (`{"error": "…"}` or `{"error": {"message": "…"}}`).
fn error_text(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(value) => value["error"]["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
            .or_else(|| value["message"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_owned()),
        Err(_) => body.to_owned(),
    };
    truncate(text.trim(), 500)
}

/// Reads a whole body, failing past `cap` bytes.
async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|error| transport(&error))?;
        if body.len() + piece.len() > cap {
            return Err(ProviderError::Failed(format!("response larger than {cap} bytes")));
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

/// The error body of a failed response, capped.
async fn error_body(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(piece)) = stream.next().await {
        body.extend_from_slice(&piece);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// One wire dialect's parser of a streamed answer (Ollama's NDJSON, OpenAI's server-sent events).
trait StreamParser {
    /// Feeds one line; returns content to stream on, if the line carried any.
    fn line(&mut self, line: &str) -> Result<Option<String>, ProviderError>;
    /// Whether the server said the answer is complete.
    fn done(&self) -> bool;
    /// The whole reply.
    fn finish(self, request: &ChatRequest) -> Result<ChatReply, ProviderError>;
}

/// Reads a streamed answer line by line, passing content on as it arrives.
async fn read_stream<P: StreamParser>(
    response: reqwest::Response,
    mut parser: P,
    request: &ChatRequest,
    chunks: &mpsc::Sender<String>,
) -> Result<ChatReply, ProviderError> {
    let mut lines = Lines::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|error| transport(&error))?;
        for line in lines.push(&piece)? {
            if let Some(text) = parser.line(&line)? {
                let _ = chunks.send(text).await;
            }
        }
        if parser.done() {
            break;
        }
    }
    if let Some(line) = lines.finish()
        && let Some(text) = parser.line(&line)?
    {
        let _ = chunks.send(text).await;
    }
    parser.finish(request)
}

/// Splits a byte stream into lines (without the `\n`, `\r` trimmed), enforcing the response cap.
struct Lines {
    buffer: Vec<u8>,
    total: usize,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            buffer: Vec::new(),
            total: 0,
        }
    }

    /// Adds bytes and returns the complete lines they finish.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, ProviderError> {
        self.total += bytes.len();
        if self.total > MAX_RESPONSE {
            return Err(ProviderError::Failed(format!(
                "response larger than {MAX_RESPONSE} bytes"
            )));
        }
        self.buffer.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            lines.push(text.trim_end_matches('\r').to_owned());
        }
        Ok(lines)
    }

    /// What is left after the stream ended (a last line without `\n`).
    fn finish(&mut self) -> Option<String> {
        let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buffer))
            .trim()
            .to_owned();
        (!rest.is_empty()).then_some(rest)
    }
}

/// Tokens estimated from characters (about four per token).
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_pieces_and_keep_the_tail() {
        let mut lines = Lines::new();
        assert!(lines.push(b"{\"a\":").unwrap().is_empty());
        assert_eq!(lines.push(b"1}\r\n{\"b\"").unwrap(), vec!["{\"a\":1}"]);
        assert_eq!(lines.push(b":2}\n").unwrap(), vec!["{\"b\":2}"]);
        assert!(lines.push(b"tail").unwrap().is_empty());
        assert_eq!(lines.finish().as_deref(), Some("tail"));
    }

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            status_error(reqwest::StatusCode::SERVICE_UNAVAILABLE, ""),
            ProviderError::Down(_)
        ));
        assert!(matches!(
            status_error(reqwest::StatusCode::TOO_MANY_REQUESTS, ""),
            ProviderError::Failed(_)
        ));
        let rejected = status_error(reqwest::StatusCode::NOT_FOUND, r#"{"error":"model 'x' not found"}"#);
        assert_eq!(
            rejected,
            ProviderError::Rejected("HTTP 404: model 'x' not found".into())
        );
    }

    #[test]
    fn protocol_follows_the_name() {
        assert_eq!(Protocol::for_provider("ollama", None), Protocol::Ollama);
        assert_eq!(Protocol::for_provider("ollama-gpu", None), Protocol::Ollama);
        assert_eq!(Protocol::for_provider("openai", None), Protocol::OpenAi);
        assert_eq!(Protocol::for_provider("groq", None), Protocol::OpenAi);
        assert_eq!(Protocol::for_provider("gpu-box", Some("ollama")), Protocol::Ollama);
        assert_eq!(Protocol::for_provider("ollama-proxy", Some("openai")), Protocol::OpenAi);
    }

    #[test]
    fn built_ins_are_always_there() {
        let providers = from_config(&BTreeMap::new(), Duration::from_secs(1)).unwrap();
        assert_eq!(providers["ollama"].base_url, OLLAMA_DEFAULT_URL);
        assert_eq!(providers["openai"].base_url, OPENAI_DEFAULT_URL);
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}

#[cfg(test)]
mod server_tests;
