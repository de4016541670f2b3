//! The client side of the socket protocol: one pipelined connection per [`Client`], reconnected in
//! the background with backoff. Requests queued while the service is down are sent once it is back;
//! a request already written when the connection dropped fails with [`ClientError::Disconnected`]
//! (it may or may not have run, so only the caller can decide to retry). Subscriptions use their
//! own connection so a slow reader never delays calls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aiventbus_proto::jsonrpc::{Incoming, OutgoingRequest};
use aiventbus_proto::methods::{Hello, HelloParams};
use aiventbus_proto::{ErrorObject, Method};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::codec::LineCodec;

/// Largest reply a client accepts.
const MAX_REPLY: usize = 256 * 1024 * 1024;
/// Requests waiting for a connection.
const QUEUE: usize = 4096;
/// Requests in flight on one connection (below the server's default `rpc.max_in_flight`).
const MAX_OUTSTANDING: usize = 512;

/// Where a service listens and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Socket path.
    pub path: PathBuf,
    /// Token to present with `auth.hello`.
    pub token: TokenSource,
}

impl Endpoint {
    /// An endpoint that needs no token (the public socket).
    pub fn public(path: impl Into<PathBuf>) -> Endpoint {
        Endpoint {
            path: path.into(),
            token: TokenSource::None,
        }
    }

    /// An internal endpoint whose token is read from a credentials file on every connect.
    pub fn internal(path: impl Into<PathBuf>, token_file: impl Into<PathBuf>) -> Endpoint {
        Endpoint {
            path: path.into(),
            token: TokenSource::File(token_file.into()),
        }
    }
}

/// Where the token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// No `auth.hello`.
    None,
    /// A fixed token.
    Static(String),
    /// Read from this file at each (re)connect, so refreshed tokens apply.
    File(PathBuf),
}

impl TokenSource {
    fn load(&self) -> Result<Option<String>, ClientError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(token) => Ok(Some(token.clone())),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| ClientError::Unavailable(format!("cannot read token {}: {e}", path.display()))),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The service answered with an error.
    #[error("{0}")]
    Rpc(ErrorObject),
    /// The service could not be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The connection dropped after the request was sent; it may or may not have run.
    #[error("connection lost before the reply arrived")]
    Disconnected,
    /// No reply within the deadline.
    #[error("timed out waiting for the reply")]
    Timeout,
    /// The reply could not be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error object, if the server answered with one.
    pub fn rpc(&self) -> Option<&ErrorObject> {
        match self {
            ClientError::Rpc(error) => Some(error),
            _ => None,
        }
    }
}

struct Command {
    method: String,
    params: Option<Box<RawValue>>,
    reply: oneshot::Sender<Result<Box<RawValue>, ClientError>>,
}

/// A pipelined, self-reconnecting connection to one service. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    commands: mpsc::Sender<Command>,
    connected: Arc<AtomicBool>,
    timeout: Duration,
    _stop: DropGuard,
}

impl Client {
    /// A client that connects in the background and keeps reconnecting.
    pub fn new(endpoint: Endpoint) -> Client {
        let (commands, queue) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let connected = Arc::new(AtomicBool::new(false));
        tokio::spawn(connection_task(
            endpoint.clone(),
            queue,
            connected.clone(),
            stop.clone(),
        ));
        Client {
            inner: Arc::new(Inner {
                endpoint,
                commands,
                connected,
                timeout: Duration::from_secs(30),
                _stop: stop.drop_guard(),
            }),
        }
    }

    /// Connects once to check the service is there (fails fast with `Unavailable` otherwise), then
    /// behaves like [`Client::new`].
    pub async fn connect(endpoint: Endpoint) -> Result<Client, ClientError> {
        let stream = open(&endpoint).await?;
        drop(stream);
        Ok(Client::new(endpoint))
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Calls `M` with typed params.
    pub async fn call<M: Method>(&self, params: &M::Params) -> Result<M::Result, ClientError> {
        let params = serde_json::value::to_raw_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let raw = self.call_raw(M::NAME, Some(params)).await?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Protocol(format!("{} result: {e}", M::NAME)))
    }

    /// Calls a method with raw params, returning the raw result.
    pub async fn call_raw(&self, method: &str, params: Option<Box<RawValue>>) -> Result<Box<RawValue>, ClientError> {
        self.call_raw_with_timeout(method, params, self.inner.timeout).await
    }

    /// Like [`Client::call_raw`] with an explicit deadline.
    pub async fn call_raw_with_timeout(
        &self,
        method: &str,
        params: Option<Box<RawValue>>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, ClientError> {
        let (reply, answer) = oneshot::channel();
        let command = Command {
            method: method.to_owned(),
            params,
            reply,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = tokio::time::timeout_at(deadline, self.inner.commands.send(command)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ClientError::Unavailable("client stopped".into())),
            Err(_) => return Err(self.timeout_error()),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Err(_) => Err(self.timeout_error()),
        }
    }

    fn timeout_error(&self) -> ClientError {
        if self.inner.connected.load(Ordering::Relaxed) {
            ClientError::Timeout
        } else {
            ClientError::Unavailable(format!("{} is not answering", self.inner.endpoint.path.display()))
        }
    }

    /// Opens a dedicated connection and calls a subscribing method on it.
    pub async fn subscribe<P: Serialize>(&self, method: &str, params: &P) -> Result<Subscription, ClientError> {
        Subscription::open(&self.inner.endpoint, method, params).await
    }
}

async fn open(endpoint: &Endpoint) -> Result<(OwnedReadHalf, OwnedWriteHalf), ClientError> {
    open_until(endpoint).await.map(|(read, write, _)| (read, write))
}

/// Connects and authenticates; also returns when the presented token expires (unix ms).
async fn open_until(endpoint: &Endpoint) -> Result<(OwnedReadHalf, OwnedWriteHalf, Option<u64>), ClientError> {
    let token = endpoint.token.load()?;
    let stream = UnixStream::connect(&endpoint.path)
        .await
        .map_err(|e| ClientError::Unavailable(format!("{}: {e}", endpoint.path.display())))?;
    let (read, mut write) = stream.into_split();
    if let Some(token) = token {
        let mut frames = FramedRead::new(read, LineCodec::new(MAX_REPLY));
        let hello = request_line(0, Hello::NAME, &HelloParams { token })?;
        write
            .write_all(hello.as_bytes())
            .await
            .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        let reply = read_reply(&mut frames).await??;
        let expires_at_ms = serde_json::from_str::<aiventbus_proto::methods::HelloResult>(reply.get())
            .ok()
            .map(|hello| hello.expires_at_ms);
        let read = frames.into_inner();
        return Ok((read, write, expires_at_ms));
    }
    Ok((read, write, None))
}

async fn read_reply(
    frames: &mut FramedRead<OwnedReadHalf, LineCodec>,
) -> Result<Result<Box<RawValue>, ClientError>, ClientError> {
    loop {
        let line = match frames.next().await {
            Some(Ok(line)) => line,
            Some(Err(e)) => return Err(ClientError::Unavailable(e.to_string())),
            None => return Err(ClientError::Unavailable("connection closed".into())),
        };
        let incoming: Incoming = serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if incoming.id.is_none() {
            continue;
        }
        return Ok(match (incoming.result, incoming.error) {
            (_, Some(error)) => Err(ClientError::Rpc(error)),
            (Some(result), None) => Ok(result),
            (None, None) => Err(ClientError::Protocol("reply without result or error".into())),
        });
    }
}

fn request_line<P: Serialize + ?Sized>(id: u64, method: &str, params: &P) -> Result<String, ClientError> {
    let mut line = serde_json::to_string(&OutgoingRequest {
        jsonrpc: "2.0",
        id,
        method,
        params: &params,
    })
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    Ok(line)
}

fn raw_request_line(id: u64, method: &str, params: Option<&RawValue>) -> String {
    let method = serde_json::Value::from(method).to_string();
    let params = params.map(RawValue::get).unwrap_or("{}");
    format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":{method},\"params\":{params}}}\n")
}

type Waiting = HashMap<u64, oneshot::Sender<Result<Box<RawValue>, ClientError>>>;

async fn connection_task(
    endpoint: Endpoint,
    mut queue: mpsc::Receiver<Command>,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    let mut next_id: u64 = 1;
    loop {
        let (read, write, expires_at_ms) = tokio::select! {
            _ = stop.cancelled() => return,
            opened = open_until(&endpoint) => match opened {
                Ok(halves) => halves,
                Err(error) => {
                    connected.store(false, Ordering::Relaxed);
                    tracing::debug!(path = %endpoint.path.display(), %error, "connect failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    // A Unix socket refuses at once, so retrying often is cheap and a restarted
                    // service is reached within ~100 ms of listening.
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                    continue;
                }
            },
        };
        connected.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(10);
        let mut waiting: Waiting = HashMap::new();
        let mut frames = FramedRead::with_capacity(read, LineCodec::new(MAX_REPLY), 64 * 1024);
        // Writing happens on its own task, so replies keep being read while a write waits for the
        // server: a client that stopped reading while the server stopped reading would deadlock.
        // At most MAX_OUTSTANDING requests are in flight (below the server's per-connection bound),
        // so the line channel never fills; further calls wait in the queue, unsent.
        let (lines, outbox) = mpsc::channel::<bytes::Bytes>(MAX_OUTSTANDING);
        let mut writer = tokio::spawn(crate::server::write_loop(write, outbox));
        // Reconnect (re-reading the token file, which init refreshes) well before the token expires.
        let mut rotate_at = expires_at_ms.map(|ms| {
            let left = Duration::from_millis(ms.saturating_sub(crate::time::now_ms()));
            tokio::time::Instant::now() + left.saturating_sub(left / 10 + Duration::from_secs(60))
        });
        let ended = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep_until_some(rotate_at) => {
                    if waiting.is_empty() {
                        break "token refresh";
                    }
                    rotate_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                command = queue.recv(), if waiting.len() < MAX_OUTSTANDING => {
                    let Some(command) = command else { return };
                    if command.reply.is_closed() {
                        continue;
                    }
                    let id = next_id;
                    next_id += 1;
                    let line = raw_request_line(id, &command.method, command.params.as_deref());
                    if lines.try_send(bytes::Bytes::from(line)).is_err() {
                        let _ = command.reply.send(Err(ClientError::Disconnected));
                        break "write failed";
                    }
                    waiting.insert(id, command.reply);
                }
                frame = frames.next() => match frame {
                    Some(Ok(line)) => dispatch_reply(&line, &mut waiting),
                    Some(Err(_)) | None => break "connection closed",
                },
                _ = &mut writer => break "write failed",
            }
        };
        drop(lines);
        writer.abort();
        connected.store(false, Ordering::Relaxed);
        tracing::debug!(path = %endpoint.path.display(), reason = ended, pending = waiting.len(), "disconnected");
        for (_, reply) in waiting.drain() {
            let _ = reply.send(Err(ClientError::Disconnected));
        }
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn dispatch_reply(line: &[u8], waiting: &mut Waiting) {
    let incoming: Incoming = match serde_json::from_slice(line) {
        Ok(incoming) => incoming,
        Err(error) => {
            tracing::warn!(%error, "unreadable reply");
            return;
        }
    };
    let Some(id) = incoming.id.as_ref().and_then(|id| id.get().parse::<u64>().ok()) else {
        if let Some(error) = incoming.error {
            tracing::warn!(%error, "error without id");
        }
        return;
    };
    if let Some(reply) = waiting.remove(&id) {
        let result = match (incoming.result, incoming.error) {
            (_, Some(error)) => Err(ClientError::Rpc(error)),
            (Some(result), None) => Ok(result),
            (None, None) => Err(ClientError::Protocol("reply without result or error".into())),
        };
        let _ = reply.send(result);
    }
}

/// One item of a subscription.
#[derive(Debug)]
pub enum Notice {
    /// A delivered item (for `events.subscribe`, an event).
    Item(Box<RawValue>),
    /// The server ended the subscription and said why.
    Closed(ErrorObject),
}

/// A subscription on its own connection.
pub struct Subscription {
    id: String,
    next_seq: Option<u64>,
    frames: FramedRead<OwnedReadHalf, LineCodec>,
    _write: OwnedWriteHalf,
}

#[derive(serde::Deserialize)]
struct NoticeParams {
    subscription: String,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

impl Subscription {
    async fn open<P: Serialize>(endpoint: &Endpoint, method: &str, params: &P) -> Result<Subscription, ClientError> {
        let (read, mut write) = open(endpoint).await?;
        let mut frames = FramedRead::with_capacity(read, LineCodec::new(MAX_REPLY), 64 * 1024);
        let line = request_line(1, method, params)?;
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        let result = read_reply(&mut frames).await??;
        #[derive(serde::Deserialize)]
        struct Subscribed {
            subscription: String,
            #[serde(default)]
            next_seq: Option<u64>,
        }
        let subscribed: Subscribed =
            serde_json::from_str(result.get()).map_err(|e| ClientError::Protocol(format!("subscribe result: {e}")))?;
        Ok(Subscription {
            id: subscribed.subscription,
            next_seq: subscribed.next_seq,
            frames,
            _write: write,
        })
    }

    /// The subscription id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The first seq the server said this subscription can deliver, when it said so.
    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// The next notification line exactly as the server wrote it; `None` when the connection ends.
    pub async fn next_line(&mut self) -> Option<bytes::BytesMut> {
        match self.frames.next().await {
            Some(Ok(line)) => Some(line),
            _ => None,
        }
    }

    /// The next item or the closing reason; `None` when the connection ends without one.
    pub async fn next(&mut self) -> Option<Notice> {
        loop {
            let line = self.next_line().await?;
            let Ok(incoming) = serde_json::from_slice::<Incoming>(&line) else {
                continue;
            };
            let Some(params) = incoming.params else { continue };
            let Ok(params) = serde_json::from_str::<NoticeParams>(params.get()) else {
                continue;
            };
            if params.subscription != self.id {
                continue;
            }
            if let Some(error) = params.error {
                return Some(Notice::Closed(error));
            }
            if let Some(result) = params.result {
                return Some(Notice::Item(result));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use aiventbus_proto::methods::{KeyParams, KnowledgeGet};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::RpcConfig;
    use crate::server::{Auth, Methods, ServeOptions, bind, serve};

    /// Many pipelined calls with large replies against a server that stops reading at a small
    /// in-flight bound: the client must keep reading replies while its writes wait, or both ends
    /// block on full socket buffers for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelining_past_the_servers_bound_does_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.sock");
        let listener = bind(&path).await.unwrap();
        let mut methods = Methods::new(Arc::new(()));
        methods.add::<KnowledgeGet, _, _>(|_, _, params: KeyParams| async move {
            Ok(aiventbus_proto::methods::Fact {
                key: params.key,
                value: json!("x".repeat(64 * 1024)),
                source: "system".into(),
                created_at: String::new(),
                updated_at: String::new(),
            })
        });
        let rpc = RpcConfig {
            max_in_flight: 8,
            ..RpcConfig::default()
        };
        let mut options = ServeOptions::new("big", Auth::PeerUid(vec![nix::unistd::getuid().as_raw()]), &rpc);
        options.outbound_queue = 4;
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(methods), options, shutdown.clone()));

        let client = Client::connect(Endpoint::public(&path)).await.unwrap();
        let calls: Vec<_> = (0..400)
            .map(|n| {
                let client = client.clone();
                tokio::spawn(async move {
                    // Large requests too: what the client writes must exceed the socket buffers.
                    let key = format!("k{n}-{}", "p".repeat(16 * 1024));
                    client.call::<KnowledgeGet>(&KeyParams { key }).await
                })
            })
            .collect();
        let all = async {
            for call in calls {
                let fact = call.await.unwrap().unwrap();
                assert_eq!(fact.value.as_str().unwrap().len(), 64 * 1024);
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("every pipelined call is answered");
        shutdown.cancel();
        let _ = server.await;
    }
}
