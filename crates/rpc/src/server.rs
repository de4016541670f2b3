//! The socket server every service runs: accepts connections on a Unix socket, reads line-framed
//! JSON-RPC (single messages and batches), authenticates the connection (a capability token via
//! `auth.hello`, or the peer's uid on the public socket), checks each method against the token's
//! scope, dispatches to a [`Handler`], and writes replies and subscription notifications through
//! one bounded outbound queue per connection. Every answered request is counted per method
//! ([`crate::metrics`]); `system.metrics` is answered here for every service.
//!
//! Ordering: a handler's synchronous part runs in arrival order on the connection's task, and only
//! the future it returns runs concurrently. Pipelined publishes therefore reach the bus's commit
//! queue in the order they were sent, while replies may come back in any order (matched by id).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aiventbus_proto::jsonrpc::{Request, encode_error, encode_result};
use aiventbus_proto::methods::{HelloParams, HelloResult};
use aiventbus_proto::{ErrorCode, ErrorObject, Method};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec::{FrameError, LineCodec};
use crate::config::RpcConfig;
use crate::error::{RpcError, parse_params};
use crate::token::{Claims, Verifier};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler answers.
pub enum Reply {
    /// A result value.
    Value(Box<RawValue>),
    /// A subscription: the result is sent first, then `task` is spawned to push notifications.
    Subscribed {
        /// Usually `{"subscription": id}`.
        result: Box<RawValue>,
        /// Pushes notifications through the peer until it ends or the connection closes.
        task: BoxFuture<()>,
    },
}

impl Reply {
    /// A reply from any serializable value.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Reply, RpcError> {
        serde_json::value::to_raw_value(value)
            .map(Reply::Value)
            .map_err(RpcError::internal)
    }
}

/// The future a handler returns.
pub type Pending = BoxFuture<Result<Reply, RpcError>>;

/// Dispatches calls for one service.
pub trait Handler: Send + Sync + 'static {
    /// Called in arrival order on the connection; the synchronous part of the work may be done
    /// here, the rest in the returned future.
    fn call(&self, peer: &Arc<Peer>, method: &str, params: Option<Box<RawValue>>) -> Pending;
}

/// How a socket authenticates its connections.
#[derive(Clone)]
pub enum Auth {
    /// Internal sockets: `auth.hello {token}` first; every method checked against the token's scope.
    Token(Verifier),
    /// The public local socket: the peer's uid (`SO_PEERCRED`) must be one of these.
    PeerUid(Vec<u32>),
}

/// Limits and identity of one socket server.
#[derive(Clone)]
pub struct ServeOptions {
    /// Short service name, for logs.
    pub service: String,
    /// Connection authentication.
    pub auth: Auth,
    /// Longest message line.
    pub max_message: usize,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Requests in flight per connection before reading pauses.
    pub max_in_flight: usize,
    /// Lines queued for writing per connection.
    pub outbound_queue: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
}

impl ServeOptions {
    /// Options from the `[rpc]` config section.
    pub fn new(service: &str, auth: Auth, rpc: &RpcConfig) -> ServeOptions {
        ServeOptions {
            service: service.to_owned(),
            auth,
            max_message: rpc.max_message as usize,
            max_connections: rpc.max_connections,
            max_in_flight: rpc.max_in_flight,
            outbound_queue: 4096,
            request_timeout: rpc.request_timeout,
        }
    }
}

/// The other end of a connection, as handlers see it.
pub struct Peer {
    /// Unique per process.
    pub connection_id: u64,
    /// `gateway`, `init`, … for token holders; `user:<name>` on the public socket.
    pub subject: String,
    /// The peer's uid when known.
    pub uid: Option<u32>,
    /// The verified token, on internal sockets.
    pub claims: Option<Claims>,
    /// The door the call came through: [`Peer::SOCKET`] for connections of this server; peers
    /// made by [`Peer::in_process`] name their own (`http`, `atp`).
    pub via: &'static str,
    outbound: mpsc::Sender<Bytes>,
    closed: CancellationToken,
    input_closed: CancellationToken,
}

/// The connection is gone.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("connection closed")]
pub struct Closed;

impl Peer {
    /// [`Peer::via`] of connections accepted by [`serve`].
    pub const SOCKET: &'static str = "socket";

    /// A peer for calls dispatched in-process rather than read from a socket (the gateway's HTTP
    /// and WebSocket faces call the same method table as its socket). Lines sent to it are
    /// dropped: such callers cannot receive notifications, so subscribing methods must not be
    /// dispatched through it. `closed` ends whatever the call waits on.
    pub fn in_process(subject: String, via: &'static str, closed: CancellationToken) -> Arc<Peer> {
        // A channel whose receiver is gone: every send fails with `Closed` at once.
        let (outbound, _) = mpsc::channel(1);
        Arc::new(Peer {
            connection_id: CONNECTION_IDS.fetch_add(1, Ordering::Relaxed),
            subject,
            uid: None,
            claims: None,
            via,
            outbound,
            input_closed: closed.child_token(),
            closed,
        })
    }

    /// Queues a line (a notification) for writing, waiting for room.
    pub async fn send_line(&self, line: String) -> Result<(), Closed> {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        self.outbound.send(Bytes::from(bytes)).await.map_err(|_| Closed)
    }

    /// Cancelled when the connection ends; subscription tasks stop on it.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Cancelled as soon as the peer stops sending (it closed, crashed, or only shut down its
    /// sending side). Long polls stop on it, so a dead caller's poll cannot take work it will never
    /// see; subscriptions keep flowing to a half-closed reader until [`Peer::closed`].
    pub fn input_closed(&self) -> &CancellationToken {
        &self.input_closed
    }
}

// ------------------------------------------------------------------ method table

type Entry<S> = Box<dyn Fn(Arc<S>, Arc<Peer>, Option<Box<RawValue>>) -> Pending + Send + Sync>;

/// A method table over shared state `S`: handlers are registered by marker type, their params are
/// parsed (with -32602 messages naming the field) and their results serialized here.
pub struct Methods<S> {
    state: Arc<S>,
    table: HashMap<&'static str, Entry<S>>,
}

impl<S: Send + Sync + 'static> Methods<S> {
    /// An empty table.
    pub fn new(state: Arc<S>) -> Methods<S> {
        Methods {
            state,
            table: HashMap::new(),
        }
    }

    /// Registers `M`. The closure runs synchronously at dispatch; its future runs concurrently.
    pub fn add<M, F, Fut>(&mut self, handler: F) -> &mut Self
    where
        M: Method,
        F: Fn(Arc<S>, Arc<Peer>, M::Params) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M::Result, RpcError>> + Send + 'static,
    {
        self.table.insert(
            M::NAME,
            Box::new(
                move |state, peer, params| match parse_params::<M::Params>(params.as_deref()) {
                    Ok(params) => {
                        let fut = handler(state, peer, params);
                        Box::pin(async move { Reply::json(&fut.await?) })
                    }
                    Err(error) => Box::pin(std::future::ready(Err(error))),
                },
            ),
        );
        self
    }

    /// Registers a method that handles raw params and builds its own [`Reply`] (subscriptions,
    /// proxies).
    pub fn add_raw<F>(&mut self, name: &'static str, handler: F) -> &mut Self
    where
        F: Fn(Arc<S>, Arc<Peer>, Option<Box<RawValue>>) -> Pending + Send + Sync + 'static,
    {
        self.table.insert(name, Box::new(handler));
        self
    }

    /// Registered method names.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.table.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<S> {
        &self.state
    }
}

impl<S: Send + Sync + 'static> Handler for Methods<S> {
    fn call(&self, peer: &Arc<Peer>, method: &str, params: Option<Box<RawValue>>) -> Pending {
        match self.table.get(method) {
            Some(entry) => entry(self.state.clone(), peer.clone(), params),
            None => Box::pin(std::future::ready(Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("no method {method:?}"),
            )))),
        }
    }
}

// ------------------------------------------------------------------ listener

/// Binds a Unix socket with mode 0600. An existing socket file is replaced only when nothing
/// answers on it; a live one is an error (another instance owns it).
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

/// Serves `listener` until `shutdown` is cancelled, then drains open connections (in-flight requests
/// finish, within the request deadline) and returns.
pub async fn serve(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let options = Arc::new(options);
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(service = %options.service, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("connection", service = %options.service, connection = id);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracker.spawn(refuse(
                stream,
                ErrorObject::new(ErrorCode::Overloaded, "too many connections"),
            ));
            continue;
        };
        let connection = Connection::new(id, handler.clone(), options.clone(), shutdown.child_token());
        tracker.spawn(
            async move {
                crate::metrics::global().connection_opened();
                connection.run(stream).await;
                crate::metrics::global().connection_closed();
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
}

async fn refuse(mut stream: UnixStream, error: ErrorObject) {
    let mut line = encode_error(None, &error);
    line.push('\n');
    let _ = stream.write_all(line.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ------------------------------------------------------------------ connection

enum Dispatched {
    Now(Result<Reply, RpcError>),
    Later(Pending),
}

struct Connection {
    id: u64,
    handler: Arc<dyn Handler>,
    options: Arc<ServeOptions>,
    closed: CancellationToken,
    input_closed: CancellationToken,
    peer: Option<Arc<Peer>>,
    outbound: Option<mpsc::Sender<Bytes>>,
    in_flight: Arc<Semaphore>,
    /// Subscription tasks started on this connection.
    subscriptions: TaskTracker,
}

impl Connection {
    fn new(id: u64, handler: Arc<dyn Handler>, options: Arc<ServeOptions>, closed: CancellationToken) -> Connection {
        let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
        let input_closed = closed.child_token();
        Connection {
            id,
            handler,
            options,
            closed,
            input_closed,
            peer: None,
            outbound: None,
            in_flight,
            subscriptions: TaskTracker::new(),
        }
    }

    async fn run(mut self, stream: UnixStream) {
        let uid = stream.peer_cred().ok().map(|cred| cred.uid());
        let (read, write) = stream.into_split();
        let (outbound, queue) = mpsc::channel::<Bytes>(self.options.outbound_queue);
        let mut writer = tokio::spawn(write_loop(write, queue));
        self.outbound = Some(outbound.clone());

        if let Auth::PeerUid(allowed) = &self.options.auth {
            match uid {
                Some(uid) if allowed.contains(&uid) => {
                    self.peer = Some(Arc::new(Peer {
                        connection_id: self.id,
                        subject: format!("user:{}", user_name(uid)),
                        uid: Some(uid),
                        claims: None,
                        via: Peer::SOCKET,
                        outbound: outbound.clone(),
                        closed: self.closed.clone(),
                        input_closed: self.input_closed.clone(),
                    }));
                }
                _ => {
                    tracing::info!(?uid, "refused a connection from another user");
                    let error = ErrorObject::new(ErrorCode::Unauthorized, "this socket belongs to another user");
                    let _ = outbound.send(line_bytes(encode_error(None, &error))).await;
                    drop(outbound);
                    let _ = writer.await;
                    return;
                }
            }
        }

        let mut frames = FramedRead::with_capacity(read, LineCodec::new(self.options.max_message), 64 * 1024);
        let mut half_closed = false;
        loop {
            let frame = tokio::select! {
                _ = self.closed.cancelled() => break,
                frame = frames.next() => frame,
            };
            match frame {
                None => {
                    half_closed = true;
                    break;
                }
                Some(Err(FrameError::TooLong(limit))) => {
                    tracing::debug!(limit, "message too large; closing");
                    let error = ErrorObject::new(
                        ErrorCode::TooLarge,
                        format!("message exceeds the limit of {limit} bytes; closing the connection"),
                    );
                    let _ = outbound.send(line_bytes(encode_error(None, &error))).await;
                    break;
                }
                Some(Err(FrameError::Io(error))) => {
                    tracing::debug!(%error, "read failed");
                    break;
                }
                Some(Ok(line)) => {
                    let permit = tokio::select! {
                        _ = self.closed.cancelled() => break,
                        permit = self.in_flight.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break,
                        },
                    };
                    self.handle_line(line, permit, &outbound);
                }
            }
        }
        self.input_closed.cancel();
        // Let requests already read finish and answer, then end subscriptions and the writer.
        let all = self.options.max_in_flight as u32;
        let _ = tokio::time::timeout(self.options.request_timeout, self.in_flight.acquire_many(all)).await;
        // A client that only closed its sending side (`echo subscribe | socat …`) still reads:
        // keep its subscriptions flowing until they end, it goes away, or the service stops.
        self.subscriptions.close();
        let mut writer_done = false;
        if half_closed && !self.subscriptions.is_empty() {
            tokio::select! {
                _ = self.subscriptions.wait() => {}
                _ = &mut writer => writer_done = true,
                _ = self.closed.cancelled() => {}
            }
        }
        self.closed.cancel();
        drop(outbound);
        self.peer = None;
        self.outbound = None;
        if !writer_done && tokio::time::timeout(Duration::from_secs(2), writer).await.is_err() {
            tracing::debug!("writer did not finish; dropping the connection");
        }
    }

    fn handle_line(&mut self, line: BytesMut, permit: OwnedSemaphorePermit, outbound: &mpsc::Sender<Bytes>) {
        let Some(first) = line.iter().find(|b| !b.is_ascii_whitespace()) else {
            return;
        };
        if *first == b'[' {
            self.handle_batch(&line, permit, outbound);
            return;
        }
        let (id, method, dispatched) = match self.parse_and_dispatch(&line) {
            Ok(parts) => parts,
            Err((id, error)) => {
                send_now(outbound, encode_error(id.as_deref(), &error), permit);
                return;
            }
        };
        let outbound = outbound.clone();
        let timeout = self.options.request_timeout;
        let subscriptions = self.subscriptions.clone();
        tokio::spawn(async move {
            let result = settle(dispatched, timeout).await;
            record(&method, &result);
            if let Some(id) = id {
                let (line, task) = encode_reply(&id, result);
                if outbound.send(line_bytes(line)).await.is_ok()
                    && let Some(task) = task
                {
                    subscriptions.spawn(task);
                }
            }
            drop(permit);
        });
    }

    fn handle_batch(&mut self, line: &[u8], permit: OwnedSemaphorePermit, outbound: &mpsc::Sender<Bytes>) {
        let items: Vec<Box<RawValue>> = match serde_json::from_slice(line) {
            Ok(items) => items,
            Err(error) => {
                let error = if error.is_data() {
                    ErrorObject::new(ErrorCode::InvalidRequest, "a batch must be an array of requests")
                } else {
                    ErrorObject::new(ErrorCode::Parse, format!("parse error: {error}"))
                };
                send_now(outbound, encode_error(None, &error), permit);
                return;
            }
        };
        if items.is_empty() {
            let error = ErrorObject::new(ErrorCode::InvalidRequest, "empty batch");
            send_now(outbound, encode_error(None, &error), permit);
            return;
        }
        let timeout = self.options.request_timeout;
        let mut parts = Vec::with_capacity(items.len());
        for item in &items {
            match self.parse_and_dispatch(item.get().as_bytes()) {
                Ok((id, method, dispatched)) => {
                    let handle = tokio::spawn(async move {
                        let result = settle(dispatched, timeout).await;
                        record(&method, &result);
                        result
                    });
                    parts.push((id, Ok(handle)));
                }
                Err((id, error)) => parts.push((Some(id.unwrap_or_else(null_id)), Err(error))),
            }
        }
        let outbound = outbound.clone();
        let subscriptions = self.subscriptions.clone();
        tokio::spawn(async move {
            let mut lines = Vec::new();
            let mut tasks = Vec::new();
            for (id, part) in parts {
                let result = match part {
                    Ok(handle) => handle.await.unwrap_or_else(|e| Err(RpcError::internal(e))),
                    Err(error) => Err(RpcError(error)),
                };
                if let Some(id) = id {
                    let (line, task) = encode_reply(&id, result);
                    lines.push(line);
                    tasks.extend(task);
                }
            }
            if !lines.is_empty() {
                let body = format!("[{}]", lines.join(","));
                if outbound.send(line_bytes(body)).await.is_ok() {
                    for task in tasks {
                        subscriptions.spawn(task);
                    }
                }
            }
            drop(permit);
        });
    }

    /// Parses one request and starts it. `Err` carries the id to answer with (if any) and the error.
    #[allow(clippy::type_complexity)]
    fn parse_and_dispatch(
        &mut self,
        bytes: &[u8],
    ) -> Result<(Option<Box<RawValue>>, String, Dispatched), (Option<Box<RawValue>>, ErrorObject)> {
        let request: Request = match serde_json::from_slice(bytes) {
            Ok(request) => request,
            Err(error) if error.is_syntax() || error.is_eof() => {
                return Err((
                    None,
                    ErrorObject::new(ErrorCode::Parse, format!("parse error: {error}")),
                ));
            }
            Err(error) => {
                let id = extract_id(bytes);
                return Err((
                    id,
                    ErrorObject::new(ErrorCode::InvalidRequest, format!("invalid request: {error}")),
                ));
            }
        };
        if let Err(message) = request.validate() {
            let id = request.id.filter(|id| valid_id(id));
            return Err((
                id,
                ErrorObject::new(ErrorCode::InvalidRequest, format!("invalid request: {message}")),
            ));
        }
        tracing::trace!(method = %request.method, "request");
        let dispatched = self.dispatch(&request.method, request.params);
        Ok((request.id, request.method, dispatched))
    }

    fn dispatch(&mut self, method: &str, params: Option<Box<RawValue>>) -> Dispatched {
        if method == aiventbus_proto::methods::Hello::NAME {
            return Dispatched::Now(self.hello(params.as_deref()));
        }
        let Some(peer) = &self.peer else {
            return Dispatched::Now(Err(RpcError::unauthorized(
                "not authenticated: the first call on this socket must be auth.hello with a capability token",
            )));
        };
        if let Some(claims) = &peer.claims {
            if !claims.is_live(crate::time::now_ms()) {
                return Dispatched::Now(Err(RpcError::unauthorized("token expired")));
            }
            if !claims.allows(method) {
                return Dispatched::Now(Err(RpcError::unauthorized(format!(
                    "method {method:?} is outside this token's scope"
                ))));
            }
        }
        if method == crate::metrics::SystemMetrics::NAME {
            return Dispatched::Now(Reply::json(&crate::metrics::MetricsResult {
                service: self.options.service.clone(),
                text: crate::metrics::global().render(&self.options.service),
            }));
        }
        Dispatched::Later(self.handler.call(peer, method, params))
    }

    fn hello(&mut self, params: Option<&RawValue>) -> Result<Reply, RpcError> {
        let params: HelloParams = parse_params(params)?;
        let Auth::Token(verifier) = &self.options.auth else {
            // The public socket authenticates by uid; a hello there just reports who you are.
            let peer = self
                .peer
                .as_ref()
                .ok_or_else(|| RpcError::unauthorized("not authenticated"))?;
            return Reply::json(&HelloResult {
                subject: peer.subject.clone(),
                audience: self.options.service.clone(),
                scope: vec!["*".into()],
                expires_at_ms: u64::MAX,
            });
        };
        let claims = verifier.verify(&params.token, crate::time::now_ms()).map_err(|error| {
            tracing::info!(%error, "refused a token");
            RpcError::unauthorized(error.to_string())
        })?;
        let result = HelloResult {
            subject: claims.subject.clone(),
            audience: claims.audience.clone(),
            scope: claims.scope_entries(),
            expires_at_ms: claims.expires_at_ms,
        };
        let outbound = match &self.outbound {
            Some(outbound) => outbound.clone(),
            None => return Err(RpcError::internal("hello before the connection was set up")),
        };
        self.peer = Some(Arc::new(Peer {
            connection_id: self.id,
            subject: claims.subject.clone(),
            uid: None,
            claims: Some(claims),
            via: Peer::SOCKET,
            outbound,
            closed: self.closed.clone(),
            input_closed: self.input_closed.clone(),
        }));
        Reply::json(&result)
    }
}

fn null_id() -> Box<RawValue> {
    // "null" is valid JSON.
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable_raw())
}

fn unreachable_raw() -> Box<RawValue> {
    serde_json::value::to_raw_value(&serde_json::Value::Null).unwrap_or_default()
}

fn valid_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9' | b'n'))
}

fn extract_id(bytes: &[u8]) -> Option<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Box<RawValue>>,
    }
    serde_json::from_slice::<IdOnly>(bytes)
        .ok()
        .and_then(|v| v.id)
        .filter(|id| valid_id(id))
}

async fn settle(dispatched: Dispatched, timeout: Duration) -> Result<Reply, RpcError> {
    match dispatched {
        Dispatched::Now(result) => result,
        Dispatched::Later(pending) => match tokio::time::timeout(timeout, pending).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::new(ErrorCode::Expired, "request timed out")),
        },
    }
}

/// Counts an answered request in the process's metrics.
fn record(method: &str, result: &Result<Reply, RpcError>) {
    crate::metrics::global().record(method, result.as_ref().err().map(RpcError::code));
}

fn encode_reply(id: &RawValue, result: Result<Reply, RpcError>) -> (String, Option<BoxFuture<()>>) {
    match result {
        Ok(Reply::Value(value)) => (encode_result(id, &value), None),
        Ok(Reply::Subscribed { result, task }) => (encode_result(id, &result), Some(task)),
        Err(RpcError(error)) => (encode_error(Some(id), &error), None),
    }
}

fn send_now(outbound: &mpsc::Sender<Bytes>, line: String, permit: OwnedSemaphorePermit) {
    let outbound = outbound.clone();
    tokio::spawn(async move {
        let _ = outbound.send(line_bytes(line)).await;
        drop(permit);
    });
}

fn line_bytes(line: String) -> Bytes {
    let mut bytes = line.into_bytes();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Writes queued lines to a socket, coalescing whatever is ready into one write. Shared by the
/// server's connections and the client.
pub(crate) async fn write_loop(write: OwnedWriteHalf, mut queue: mpsc::Receiver<Bytes>) {
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    while let Some(first) = queue.recv().await {
        if writer.write_all(&first).await.is_err() {
            return;
        }
        // Let the replies of requests finishing right now join this write.
        tokio::task::yield_now().await;
        // Coalesce whatever else is ready into the same write.
        while let Ok(next) = queue.try_recv() {
            if writer.write_all(&next).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| uid.to_string())
}
