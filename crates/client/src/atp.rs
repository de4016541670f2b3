//! The ATP transport (SPEC §12): the same calls and event streams as `api.sock`, over the
//! gateway's WebSocket at `/atp`, authenticated by an API key on the upgrade. Calls share one
//! connection (opened on first use, reopened after it drops); each event stream has its own, as on
//! the socket, because ATP carries one subscription per connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aiventbus_proto::atp::{AtpError, ClientFrame, Cmd, EventFrame, ServerFrame, Subscribe, rpc_code};
use aiventbus_proto::{ErrorCode, ErrorObject, Event};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Error, StreamItem};

/// How long opening a WebSocket may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// Calls waiting to be written on one connection; more wait in their callers.
const COMMAND_QUEUE: usize = 256;
/// Events read ahead of the consumer; past it, reading stops and the gateway, not this process,
/// decides what a slow consumer gets (it ends the subscription with a resume point).
const EVENT_BUFFER: usize = 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type ReplySender = oneshot::Sender<Result<Box<RawValue>, Error>>;

/// The WebSocket address for a gateway URL: `http` becomes `ws`, `https` becomes `wss`, and the
/// path ends in `/atp` (`http://127.0.0.1:8420` → `ws://127.0.0.1:8420/atp`).
pub fn websocket_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("the URL {url:?} has no scheme; use http://HOST:PORT or https://HOST:PORT"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(format!("the URL scheme {other:?} is not supported; use http or https")),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("the URL {url:?} names no host"));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "the URL {url:?} has a query or fragment; give only the gateway's address"
        ));
    }
    let path = path.trim_end_matches('/');
    let path = if path.ends_with("/atp") {
        path.to_owned()
    } else {
        format!("{path}/atp")
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

/// A gateway reached over ATP. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Remote {
    inner: Arc<RemoteInner>,
}

struct RemoteInner {
    url: String,
    token: String,
    calls: Mutex<Option<Connection>>,
}

/// One open WebSocket used for calls; the task behind it ends when every handle is dropped.
#[derive(Clone)]
struct Connection {
    commands: mpsc::Sender<Call>,
}

struct Call {
    method: String,
    params: Option<Box<RawValue>>,
    reply: ReplySender,
}

impl Remote {
    /// Opens the calls connection once, so a wrong URL or key fails here.
    pub(crate) async fn connect(url: &str, token: &str) -> Result<Remote, Error> {
        let url = websocket_url(url).map_err(Error::Protocol)?;
        let remote = Remote {
            inner: Arc::new(RemoteInner {
                url,
                token: token.to_owned(),
                calls: Mutex::new(None),
            }),
        };
        remote.connection().await?;
        Ok(remote)
    }

    /// The `ws://…/atp` address.
    pub(crate) fn url(&self) -> &str {
        &self.inner.url
    }

    async fn connection(&self) -> Result<Connection, Error> {
        let mut calls = self.inner.calls.lock().await;
        if let Some(connection) = calls.as_ref() {
            if !connection.commands.is_closed() {
                return Ok(connection.clone());
            }
        }
        let socket = open(&self.inner.url, &self.inner.token).await?;
        let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
        tokio::spawn(calls_task(socket, queue));
        let connection = Connection { commands };
        *calls = Some(connection.clone());
        Ok(connection)
    }

    /// One call, answered by exactly one `reply` frame.
    pub(crate) async fn call_raw(
        &self,
        method: &str,
        params: Option<Box<RawValue>>,
        timeout: Duration,
    ) -> Result<Box<RawValue>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let connection = match tokio::time::timeout_at(deadline, self.connection()).await {
            Ok(connection) => connection?,
            Err(_) => return Err(Error::Unavailable(format!("{} is not answering", self.inner.url))),
        };
        let (reply, answer) = oneshot::channel();
        let call = Call {
            method: method.to_owned(),
            params,
            reply,
        };
        match tokio::time::timeout_at(deadline, connection.commands.send(call)).await {
            Ok(Ok(())) => {}
            // Not written: the connection ended before it; the next call reconnects.
            Ok(Err(_)) => return Err(Error::Unavailable(format!("{}: connection closed", self.inner.url))),
            Err(_) => return Err(Error::Timeout),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Follows events on a connection of its own. Without `from_seq` the stream starts at the
    /// bus's head at the time of the call, so what is published after this returns is delivered.
    pub(crate) async fn subscribe(&self, patterns: Vec<String>, from_seq: Option<u64>) -> Result<RemoteStream, Error> {
        let start = match from_seq {
            Some(seq) => Some(seq.max(1)),
            None => self.head().await.map(|head| head + 1),
        };
        let mut socket = open(&self.inner.url, &self.inner.token).await?;
        let frame = ClientFrame::Subscribe(Subscribe {
            events: patterns,
            // ATP's since_seq is the last seq already seen; duplicates from a server that reads
            // it as inclusive are dropped in `RemoteStream::next`.
            since_seq: start.map(|seq| seq - 1),
        });
        send_frame(&mut socket, &frame).await?;
        let (events, received) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(events_task(socket, events));
        Ok(RemoteStream {
            received,
            start,
            last: None,
        })
    }

    /// The bus's last seq, from `system.status`.
    async fn head(&self) -> Option<u64> {
        let status = self
            .call_raw("system.status", None, Duration::from_secs(10))
            .await
            .ok()?;
        let status: Value = serde_json::from_str(status.get()).ok()?;
        status.get("bus")?.get("head")?.as_u64()
    }
}

async fn open(url: &str, token: &str) -> Result<Socket, Error> {
    let mut request = url
        .into_client_request()
        .map_err(|error| Error::Protocol(format!("{url}: {error}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Protocol("the token holds characters an HTTP header cannot carry".into()))?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
    match tokio::time::timeout(CONNECT_DEADLINE, connecting).await {
        Err(_) => Err(Error::Unavailable(format!(
            "{url}: no answer within {CONNECT_DEADLINE:?}"
        ))),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) => Err(refusal(url, response.status())),
        Ok(Err(error)) => Err(Error::Unavailable(format!("{url}: {error}"))),
    }
}

/// What an HTTP answer to the upgrade means.
fn refusal(url: &str, status: StatusCode) -> Error {
    let rpc = |code: ErrorCode, message: String| Error::Rpc(ErrorObject::new(code, message));
    match status {
        StatusCode::UNAUTHORIZED => rpc(
            ErrorCode::Unauthorized,
            format!("the gateway at {url} refused the token (HTTP 401): check --token / AIVENTBUS_TOKEN"),
        ),
        StatusCode::FORBIDDEN => rpc(
            ErrorCode::Unauthorized,
            format!("the gateway at {url} refused the connection (HTTP 403)"),
        ),
        StatusCode::TOO_MANY_REQUESTS => rpc(ErrorCode::Overloaded, format!("{url}: rate limited (HTTP 429)")),
        StatusCode::NOT_FOUND => rpc(
            ErrorCode::NotFound,
            format!("{url}: no ATP endpoint there (HTTP 404); is this an aiventbus gateway?"),
        ),
        other => Error::Protocol(format!("{url}: the upgrade was answered with HTTP {other}")),
    }
}

async fn send_frame(socket: &mut Socket, frame: &ClientFrame) -> Result<(), Error> {
    let text = serde_json::to_string(frame).map_err(|error| Error::Protocol(error.to_string()))?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|error| Error::Unavailable(error.to_string()))
}

/// Splits a public method name into ATP's `domain` and `op`.
pub fn domain_op(method: &str) -> Result<(&str, &str), Error> {
    method
        .split_once('.')
        .filter(|(domain, op)| !domain.is_empty() && !op.is_empty())
        .ok_or_else(|| Error::Protocol(format!("{method:?} is not a namespace.verb method name")))
}

/// The client error for an ATP error.
pub fn atp_error(error: &AtpError) -> ErrorObject {
    ErrorObject {
        code: rpc_code(&error.code),
        message: error.message.clone(),
        data: None,
    }
}

/// Writes calls, matches replies to them by id; ends when the connection does or when nobody
/// holds the connection any longer. Calls still waiting then fail with `Disconnected`.
async fn calls_task(mut socket: Socket, mut queue: mpsc::Receiver<Call>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let mut waiting: HashMap<String, ReplySender> = HashMap::new();
    loop {
        tokio::select! {
            call = queue.recv() => {
                let Some(call) = call else {
                    let _ = socket.close(None).await;
                    break;
                };
                if call.reply.is_closed() {
                    continue;
                }
                let (domain, op) = match domain_op(&call.method) {
                    Ok(parts) => parts,
                    Err(error) => {
                        let _ = call.reply.send(Err(error));
                        continue;
                    }
                };
                let body = match call.params.as_deref().map(|raw| serde_json::from_str::<Value>(raw.get())) {
                    None => Value::Object(serde_json::Map::new()),
                    Some(Ok(body)) => body,
                    Some(Err(error)) => {
                        let _ = call.reply.send(Err(Error::Protocol(error.to_string())));
                        continue;
                    }
                };
                let id = format!("c{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
                let frame = ClientFrame::Cmd(Cmd {
                    id: id.clone(),
                    token: None,
                    domain: domain.to_owned(),
                    op: op.to_owned(),
                    body,
                });
                if let Err(error) = send_frame(&mut socket, &frame).await {
                    let _ = call.reply.send(Err(error));
                    break;
                }
                waiting.insert(id, call.reply);
            }
            message = socket.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    // Pings are answered by the WebSocket layer itself.
                    Some(Ok(_)) => continue,
                };
                let Ok(ServerFrame::Reply(reply)) = serde_json::from_str::<ServerFrame>(text.as_str()) else {
                    continue;
                };
                let Some(sender) = reply.id.as_str().and_then(|id| waiting.remove(id)) else {
                    continue;
                };
                let _ = sender.send(reply_result(reply.ok, reply.body, reply.error));
            }
        }
    }
    queue.close();
    for (_, sender) in waiting.drain() {
        let _ = sender.send(Err(Error::Disconnected));
    }
}

/// A `reply` frame as a call's outcome.
pub fn reply_result(ok: bool, body: Option<Value>, error: Option<AtpError>) -> Result<Box<RawValue>, Error> {
    if ok {
        let body = body.unwrap_or(Value::Null);
        return serde_json::value::to_raw_value(&body).map_err(|error| Error::Protocol(error.to_string()));
    }
    match error {
        Some(error) => Err(Error::Rpc(atp_error(&error))),
        None => Err(Error::Protocol("a failed reply without an error".into())),
    }
}

/// What the events task hands the stream.
enum Pushed {
    Event(EventFrame),
    Closed(AtpError, Option<u64>),
}

async fn events_task(mut socket: Socket, events: mpsc::Sender<Pushed>) {
    loop {
        tokio::select! {
            _ = events.closed() => {
                let _ = socket.close(None).await;
                return;
            }
            message = socket.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                let pushed = match serde_json::from_str::<ServerFrame>(text.as_str()) {
                    Ok(ServerFrame::Event(frame)) => Pushed::Event(frame),
                    Ok(ServerFrame::Closing { error, next_seq }) => Pushed::Closed(error, next_seq),
                    // A failed reply here answers our subscribe frame: the subscription is refused.
                    Ok(ServerFrame::Reply(reply)) if !reply.ok => match reply.error {
                        Some(error) => Pushed::Closed(error, None),
                        None => continue,
                    },
                    _ => continue,
                };
                let closing = matches!(pushed, Pushed::Closed(..));
                if events.send(pushed).await.is_err() || closing {
                    return;
                }
            }
        }
    }
}

/// A subscription over ATP.
pub(crate) struct RemoteStream {
    received: mpsc::Receiver<Pushed>,
    start: Option<u64>,
    last: Option<u64>,
}

impl RemoteStream {
    /// The first seq this stream delivers, when known.
    pub(crate) fn start(&self) -> Option<u64> {
        self.start
    }

    pub(crate) async fn next(&mut self) -> Option<Result<StreamItem, Error>> {
        loop {
            match self.received.recv().await? {
                Pushed::Event(frame) => {
                    let before_start = self.start.is_some_and(|start| frame.seq < start);
                    let seen = self.last.is_some_and(|last| frame.seq <= last);
                    if before_start || seen {
                        continue;
                    }
                    self.last = Some(frame.seq);
                    return Some(
                        serde_json::from_value::<Event>(frame.body)
                            .map(|event| StreamItem::Event(Box::new(event)))
                            .map_err(|error| Error::Protocol(format!("event: {error}"))),
                    );
                }
                Pushed::Closed(error, next_seq) => {
                    let mut object = atp_error(&error);
                    let next_seq = next_seq.or(self.last.map(|last| last + 1)).or(self.start);
                    object.data = next_seq.map(|seq| serde_json::json!({ "next_seq": seq }));
                    return Some(Ok(StreamItem::Ended(object)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_become_atp_addresses() {
        for (given, expected) in [
            ("http://127.0.0.1:8420", "ws://127.0.0.1:8420/atp"),
            ("http://127.0.0.1:8420/", "ws://127.0.0.1:8420/atp"),
            ("https://bus.example:443", "wss://bus.example:443/atp"),
            ("HTTPS://bus.example", "wss://bus.example/atp"),
            ("ws://[::1]:9000/atp", "ws://[::1]:9000/atp"),
            ("wss://h/prefix/", "wss://h/prefix/atp"),
            (" http://h:1/atp/ ", "ws://h:1/atp"),
        ] {
            assert_eq!(websocket_url(given).as_deref(), Ok(expected), "{given}");
        }
        for bad in ["127.0.0.1:8420", "ftp://h", "http://", "http://h/?token=x"] {
            let error = websocket_url(bad).expect_err(bad);
            assert!(error.contains("URL"), "{bad}: {error}");
        }
    }

    #[test]
    fn methods_split_into_domain_and_op() {
        assert_eq!(domain_op("events.publish").ok(), Some(("events", "publish")));
        assert_eq!(domain_op("agents.memory").ok(), Some(("agents", "memory")));
        assert!(domain_op("nodot").is_err());
        assert!(domain_op(".x").is_err());
    }

    #[test]
    fn replies_become_results_and_json_rpc_errors() {
        let ok = reply_result(true, Some(serde_json::json!({"seq": 3})), None).expect("ok");
        assert_eq!(ok.get(), r#"{"seq":3}"#);
        for (code, rpc) in [
            ("ENOTFOUND", -32002),
            ("ECONFLICT", -32003),
            ("EPERM", -32001),
            ("EAUTH", -32001),
            ("EPARSE", -32602),
            ("EUNAVAIL", -32005),
            ("ETIMEOUT", -32007),
            ("ELIMIT", -32004),
            ("EWHATEVER", -32603),
        ] {
            let error = AtpError {
                code: code.into(),
                message: format!("because {code}"),
            };
            match reply_result(false, None, Some(error)) {
                Err(Error::Rpc(object)) => {
                    assert_eq!(object.code, rpc, "{code}");
                    assert_eq!(object.message, format!("because {code}"));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert!(matches!(reply_result(false, None, None), Err(Error::Protocol(_))));
    }

    #[test]
    fn upgrade_refusals_say_what_to_do() {
        match refusal("ws://h/atp", StatusCode::UNAUTHORIZED) {
            Error::Rpc(object) => {
                assert_eq!(object.code, -32001);
                assert!(object.message.contains("--token"), "{}", object.message);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal("ws://h/atp", StatusCode::BAD_GATEWAY),
            Error::Protocol(_)
        ));
    }

    fn frame(seq: u64) -> Pushed {
        let event = serde_json::json!({
            "id": format!("evt_{seq}"), "seq": seq, "ts": "2026-01-02T03:04:05.678Z", "topic": "demo.x",
            "payload": {}, "source": "user:a", "priority": "medium", "trace_id": "tr_1", "depth": 0,
            "status": "published", "dedupe_count": 1
        });
        Pushed::Event(EventFrame {
            seq,
            event: "demo.x".into(),
            ts: "2026-01-02T03:04:05.678Z".into(),
            body: event,
        })
    }

    #[tokio::test]
    async fn streams_drop_what_came_before_the_start_and_repeats() {
        let (events, received) = mpsc::channel(16);
        let mut stream = RemoteStream {
            received,
            start: Some(5),
            last: None,
        };
        for seq in [4, 5, 5, 6, 3, 7] {
            events.send(frame(seq)).await.expect("send");
        }
        events
            .send(Pushed::Closed(
                AtpError {
                    code: "ELIMIT".into(),
                    message: "slow consumer".into(),
                },
                None,
            ))
            .await
            .expect("send");
        drop(events);
        let mut seqs = Vec::new();
        let ended = loop {
            match stream.next().await {
                Some(Ok(StreamItem::Event(event))) => seqs.push(event.seq),
                Some(Ok(StreamItem::Ended(error))) => break error,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(seqs, vec![5, 6, 7]);
        assert_eq!(ended.code, -32004);
        assert_eq!(ended.data, Some(serde_json::json!({"next_seq": 8})));
        assert!(stream.next().await.is_none());
    }

    /// A scripted ATP gateway: checks the bearer token on the upgrade, answers `events.get` for
    /// `evt_1` and not-found otherwise, reports `bus.head` = 10, and on `subscribe` pushes events
    /// from `since_seq` (inclusive, so the client must drop the one it has seen) up to 12.
    // The handshake callback's error type is tungstenite's HTTP response.
    #[allow(clippy::result_large_err)]
    async fn fake_gateway() -> (String, tokio::task::JoinHandle<()>) {
        use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                        let bearer = request.headers().get(header::AUTHORIZATION);
                        if request.uri().path() == "/atp" && bearer.is_some_and(|value| value == "Bearer aib_good") {
                            return Ok(response);
                        }
                        let mut refused = ErrorResponse::new(None);
                        *refused.status_mut() = StatusCode::UNAUTHORIZED;
                        Err(refused)
                    };
                    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
                        return;
                    };
                    while let Some(Ok(Message::Text(text))) = socket.next().await {
                        let frames: Vec<Value> = match serde_json::from_str::<ClientFrame>(text.as_str()) {
                            Ok(ClientFrame::Cmd(cmd)) => {
                                let method = format!("{}.{}", cmd.domain, cmd.op);
                                let reply = match (method.as_str(), cmd.body["id"].as_str()) {
                                    ("system.status", _) => {
                                        serde_json::json!({"type": "reply", "id": cmd.id, "ok": true,
                                        "body": {"bus": {"head": 10}}})
                                    }
                                    ("events.get", Some("evt_1")) => serde_json::json!({"type": "reply", "id": cmd.id,
                                        "ok": true, "body": event_json(1)}),
                                    _ => serde_json::json!({"type": "reply", "id": cmd.id, "ok": false,
                                        "error": {"code": "ENOTFOUND", "message": format!("no {method}")}}),
                                };
                                vec![reply]
                            }
                            Ok(ClientFrame::Subscribe(subscribe)) => {
                                assert_eq!(subscribe.events, vec!["demo.**".to_owned()]);
                                let from = subscribe.since_seq.unwrap_or(0);
                                (from..=12)
                                    .map(|seq| {
                                        serde_json::json!({"type": "event", "seq": seq, "event": "demo.x",
                                        "ts": "2026-01-02T03:04:05.678Z", "body": event_json(seq)})
                                    })
                                    .chain(std::iter::once(serde_json::json!({"type": "closing",
                                        "error": {"code": "ELIMIT", "message": "slow consumer"}, "next_seq": 13})))
                                    .collect()
                            }
                            _ => vec![serde_json::json!({"type": "reply", "id": null, "ok": false,
                                "error": {"code": "EPARSE", "message": "bad frame"}})],
                        };
                        for frame in frames {
                            if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, task)
    }

    fn event_json(seq: u64) -> Value {
        serde_json::json!({
            "id": format!("evt_{seq}"), "seq": seq, "ts": "2026-01-02T03:04:05.678Z", "topic": "demo.x",
            "payload": {}, "source": "user:a", "priority": "medium", "trace_id": "tr_1", "depth": 0,
            "status": "published", "dedupe_count": 1
        })
    }

    #[tokio::test]
    async fn calls_and_streams_go_over_the_websocket() {
        let (url, server) = fake_gateway().await;
        let client = crate::Client::connect_remote(&url, "aib_good").await.expect("connect");
        assert!(client.is_remote());
        assert!(client.target().ends_with("/atp"), "{}", client.target());
        assert_eq!(client.get("evt_1").await.expect("events.get").seq, 1);
        match client.get("evt_2").await {
            Err(Error::Rpc(error)) => assert_eq!((error.code, error.message.as_str()), (-32002, "no events.get")),
            other => panic!("{other:?}"),
        }
        // Several calls in flight on the one connection get their own replies.
        let (a, b) = tokio::join!(client.get("evt_1"), client.get("evt_1"));
        assert_eq!((a.expect("a").id, b.expect("b").id), ("evt_1".into(), "evt_1".into()));

        // Live: starts after the head the gateway reports (10), though the server replays 10 too.
        let mut live = client.subscribe(vec!["demo.**".into()], None).await.expect("subscribe");
        assert_eq!(live.next_seq(), Some(11));
        let mut seqs = Vec::new();
        let ended = loop {
            match live.next().await {
                Some(Ok(StreamItem::Event(event))) => seqs.push(event.seq),
                Some(Ok(StreamItem::Ended(error))) => break error,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(seqs, vec![11, 12]);
        assert_eq!(ended.data, Some(serde_json::json!({"next_seq": 13})));

        let mut replay = client
            .subscribe(vec!["demo.**".into()], Some(12))
            .await
            .expect("subscribe");
        match replay.next().await {
            Some(Ok(StreamItem::Event(event))) => assert_eq!(event.seq, 12),
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_token_and_a_missing_gateway_are_told_apart() {
        let (url, server) = fake_gateway().await;
        match crate::Client::connect_remote(&url, "aib_wrong").await {
            Err(Error::Rpc(error)) => assert_eq!(error.code, -32001, "{}", error.message),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a wrong token connected"),
        }
        server.abort();
        let _ = server.await;
        // Nothing listens on the port any more: unavailable, which the CLI reports as not running.
        match crate::Client::connect_remote(&url, "aib_good").await {
            Err(Error::Unavailable(_)) => {}
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }
}
