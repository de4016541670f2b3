//! One ATP connection after the upgrade. Three parts meet in a bounded queue of outgoing frames:
//! the reader (this module's [`serve`] loop: frames in, keepalive, shutdown), the commands it starts
//! (each answers with exactly one `reply`), and the event subscription (bus notifications become
//! `event` frames). One writer task drains the queue into the socket.
//!
//! Overflow: replies wait for room (the reader stops reading while [`MAX_IN_FLIGHT`] commands are
//! running, so a client that sends without reading slows itself down), and so do replayed events
//! (the store can wait for the client). Live events never wait — a live event that finds the queue
//! full cuts the connection off as a slow consumer: a `closing` frame with `ELIMIT` and `next_seq`
//! (the first event not written), then close code 1008. Nothing blocks another connection and
//! nothing grows without bound. The writer sends what is queued in batches, one flush each.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiventbus_proto::ErrorCode;
use aiventbus_proto::auth::Role;
use aiventbus_proto::methods::{Health, NoParams};
use aiventbus_rpc::RpcError;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::frame::{self, Command, Incoming, Pushed};
use crate::app::{App, Principal};

/// Commands running at once on one connection; the reader waits at this bound.
pub const MAX_IN_FLIGHT: usize = 64;
/// Distinct `cmd.id`s remembered per connection; past it the connection is closed (`ELIMIT`) and
/// the client reconnects. Ids are kept as 64-bit keyed hashes, so this bounds memory to a few MiB.
pub const MAX_IDS: usize = 1_000_000;
/// How long a connection being cut off (or closed) may take to write its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Frames written to the socket with one flush at most.
const WRITE_BATCH: usize = 64;
/// How long a subscription whose bus connection broke keeps trying to reopen it.
const RESUBSCRIBE_FOR: Duration = Duration::from_secs(20);

/// WebSocket close codes used here.
mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// Why the server ends a connection: the close code and reason, and the `closing` frame's error.
#[derive(Debug, Clone)]
struct Ending {
    code: u16,
    reason: &'static str,
    /// `(ATP code, message)` of the `closing` frame, when one is sent.
    closing: Option<(&'static str, String)>,
}

/// What goes out, in order.
enum Outbound {
    /// A reply, pong or closing frame.
    Frame(String),
    /// An event of the current subscription.
    Event { seq: u64, frame: String },
    /// A subscription took effect: events after this continue from `next_seq`.
    Subscribed { next_seq: Option<u64>, frame: String },
    /// A WebSocket ping.
    Ping,
    /// Ends the connection after everything queued before it.
    Close(Ending),
}

/// The queue every part writes to, and the switch that cuts the connection off.
struct Outbox {
    queue: mpsc::Sender<Outbound>,
    /// Cancelled when the connection must end now (slow consumer, dead peer, ended session).
    cut: CancellationToken,
    why: Mutex<Option<Ending>>,
    /// The subscription allowed to push events; bumped when one is replaced, under this lock, so
    /// no event of an older subscription follows a newer one's `subscribed` frame.
    generation: Mutex<u64>,
    capacity: usize,
}

impl Outbox {
    /// Queues a frame, waiting for room; false when the connection is ending.
    async fn send(&self, item: Outbound) -> bool {
        tokio::select! {
            biased;
            _ = self.cut.cancelled() => false,
            sent = self.queue.send(item) => sent.is_ok(),
        }
    }

    /// Queues an event of subscription `generation` without waiting: a full queue cuts the
    /// connection off. False when the subscription should stop.
    fn push_event(&self, generation: u64, seq: u64, frame: String) -> bool {
        let current = lock(&self.generation);
        if *current != generation {
            return false;
        }
        match self.queue.try_send(Outbound::Event { seq, frame }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.end(Ending {
                    code: close_code::POLICY,
                    reason: "slow consumer",
                    closing: Some((
                        "ELIMIT",
                        format!(
                            "slow consumer: {} frames were waiting to be read; resubscribe with since_seq = next_seq - 1",
                            self.capacity
                        ),
                    )),
                });
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    /// Queues an event of subscription `generation`, waiting for room: for replayed events, whose
    /// source (the store) can wait. False when the subscription should stop.
    async fn send_event(&self, generation: u64, seq: u64, frame: String) -> bool {
        let permit = tokio::select! {
            biased;
            _ = self.cut.cancelled() => return false,
            permit = self.queue.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            },
        };
        let current = lock(&self.generation);
        if *current != generation {
            return false;
        }
        permit.send(Outbound::Event { seq, frame });
        true
    }

    /// Cuts the connection off for `why` (the first reason given wins).
    fn end(&self, why: Ending) {
        let mut slot = lock(&self.why);
        if slot.is_none() {
            *slot = Some(why);
        }
        drop(slot);
        self.cut.cancel();
    }

    fn reason(&self) -> Option<Ending> {
        lock(&self.why).clone()
    }

    /// Starts a new subscription generation (ending the previous one's pushes).
    fn next_generation(&self) -> u64 {
        let mut generation = lock(&self.generation);
        *generation += 1;
        *generation
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single assignment or try_send; a poisoned lock holds
    // consistent data.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a finished command asks of the connection.
enum Flow {
    Continue,
    /// `auth.refresh` replaced the connection's credential.
    Credential(String),
    /// `auth.logout`: close after the reply.
    Close,
}

/// Serves one upgraded connection until either side ends it.
pub async fn serve(app: Arc<App>, socket: WebSocket, credential: String, principal: Principal) {
    let span = tracing::debug_span!("atp", user = %principal.user, role = principal.role.as_str());
    Connection::new(app, credential).run(socket).instrument(span).await;
}

struct Connection {
    app: Arc<App>,
    outbox: Arc<Outbox>,
    /// The credential of the upgrade (or the last `auth.refresh`): used by commands without a
    /// token of their own, by subscriptions and by the periodic re-check.
    credential: Arc<str>,
    ids: HashSet<u64>,
    id_hasher: RandomState,
    subscription: Option<CancellationToken>,
    commands: JoinSet<Flow>,
    receiver: Option<mpsc::Receiver<Outbound>>,
}

impl Connection {
    fn new(app: Arc<App>, credential: String) -> Connection {
        let capacity = app.config().atp_send_queue.max(1);
        let (queue, receiver) = mpsc::channel(capacity);
        Connection {
            outbox: Arc::new(Outbox {
                queue,
                cut: CancellationToken::new(),
                why: Mutex::new(None),
                generation: Mutex::new(0),
                capacity,
            }),
            app,
            credential: credential.into(),
            ids: HashSet::new(),
            id_hasher: RandomState::new(),
            subscription: None,
            commands: JoinSet::new(),
            receiver: Some(receiver),
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (sink, mut stream) = socket.split();
        let Some(receiver) = self.receiver.take() else { return };
        let writer = tokio::spawn(write(sink, receiver, self.outbox.clone()).in_current_span());
        let config = self.app.config().clone();
        let shutdown = self.app.shutdown().clone();
        let mut ping = tokio::time::interval_at(Instant::now() + config.atp_ping_interval, config.atp_ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let pong_deadline = tokio::time::sleep(config.atp_pong_timeout);
        tokio::pin!(pong_deadline);
        tracing::debug!("connected");

        let graceful = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Some(Ending {
                    code: close_code::GOING_AWAY,
                    reason: "server shutting down",
                    closing: Some(("EUNAVAIL", "the gateway is shutting down; reconnect and resubscribe with since_seq".into())),
                }),
                _ = self.outbox.cut.cancelled() => break None,
                _ = &mut pong_deadline => {
                    tracing::debug!("no pong in time; closing");
                    self.outbox.end(Ending {
                        code: close_code::POLICY,
                        reason: "keepalive timeout",
                        closing: Some(("ETIMEOUT", format!("no pong within {:?}", config.atp_pong_timeout))),
                    });
                    break None;
                }
                _ = ping.tick() => {
                    if let Err(failure) = self.app.authenticate(&self.credential).await {
                        self.outbox.end(Ending {
                            code: close_code::POLICY,
                            reason: "session ended",
                            closing: Some((failure.atp_code(), failure.message().to_owned())),
                        });
                        break None;
                    }
                    // A full queue means a slow reader, which the events already cut off.
                    let _ = self.outbox.queue.try_send(Outbound::Ping);
                }
                Some(done) = self.commands.join_next(), if !self.commands.is_empty() => match done {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Credential(token)) => self.credential = token.into(),
                    Ok(Flow::Close) => break Some(Ending { code: close_code::NORMAL, reason: "logged out", closing: None }),
                    Err(error) if error.is_panic() => tracing::error!(%error, "an ATP command panicked"),
                    Err(_) => {}
                },
                message = stream.next(), if self.commands.len() < MAX_IN_FLIGHT => match message {
                    None => break None,
                    Some(Err(error)) => {
                        let text = error.to_string();
                        if text.contains("Space limit exceeded") || text.contains("too long") {
                            self.outbox.end(Ending {
                                code: close_code::TOO_BIG,
                                reason: "frame too large",
                                closing: Some(("ELIMIT", format!("a frame may be at most {} bytes", super::max_frame(&config)))),
                            });
                        } else {
                            tracing::debug!(error = %text, "read failed");
                        }
                        break None;
                    }
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()),
                    Some(Ok(Message::Binary(_))) => self.answer(frame::reply_error(
                        &Value::Null,
                        "EPARSE",
                        "binary frames are not part of ATP; send JSON objects as text frames",
                    )),
                    Some(Ok(Message::Pong(_))) => {
                        pong_deadline.as_mut().reset(Instant::now() + config.atp_pong_timeout);
                    }
                    // Pings are answered by the WebSocket layer; a close is answered there too.
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Ok(Message::Close(_))) => break None,
                },
            }
        };

        if let Some(cancel) = self.subscription.take() {
            cancel.cancel();
        }
        self.outbox.next_generation();
        self.commands.abort_all();
        if let Some(ending) = graceful {
            // After what is queued; bounded, since a peer that stopped reading never makes room.
            let queued = tokio::time::timeout(CLOSE_GRACE, self.outbox.send(Outbound::Close(ending.clone()))).await;
            if !matches!(queued, Ok(true)) {
                self.outbox.end(ending);
            }
        } else {
            self.outbox.cut.cancel();
        }
        drop(stream);
        if tokio::time::timeout(CLOSE_GRACE * 2, writer).await.is_err() {
            tracing::warn!("the ATP writer did not stop in time");
        }
        tracing::debug!(reason = ?self.outbox.reason().map(|why| why.reason), "disconnected");
    }

    /// Queues a reply without blocking the reader (as a command of its own, so it counts against
    /// [`MAX_IN_FLIGHT`]).
    fn answer(&mut self, reply: String) {
        let outbox = self.outbox.clone();
        self.commands.spawn(async move {
            outbox.send(Outbound::Frame(reply)).await;
            Flow::Continue
        });
    }

    fn on_text(&mut self, text: &str) {
        let incoming = match frame::parse(text) {
            Ok(incoming) => incoming,
            Err(error) => {
                tracing::debug!(message = %error.message, "malformed frame");
                self.answer(frame::reply_error(&error.id, "EPARSE", &error.message));
                return;
            }
        };
        match incoming {
            Incoming::Cmd(command) => self.on_command(command),
            Incoming::Subscribe { events, since_seq } => self.subscribe(events, since_seq),
            Incoming::Unsubscribe => {
                if let Some(cancel) = self.subscription.take() {
                    cancel.cancel();
                }
                self.outbox.next_generation();
            }
            Incoming::Ping { id } => self.answer(frame::pong(id.as_ref())),
        }
    }

    fn on_command(&mut self, command: Command) {
        let key = self.id_hasher.hash_one(command.id_text.as_bytes());
        if !self.ids.insert(key) {
            self.answer(frame::reply_error(
                &command.id,
                "EPARSE",
                &format!(
                    "cmd.id {} was already used on this connection; it was not executed",
                    command.id_text
                ),
            ));
            return;
        }
        if self.ids.len() > MAX_IDS {
            self.outbox.end(Ending {
                code: close_code::POLICY,
                reason: "too many commands",
                closing: Some((
                    "ELIMIT",
                    format!("at most {MAX_IDS} commands per connection; reconnect to continue"),
                )),
            });
            return;
        }
        let app = self.app.clone();
        let outbox = self.outbox.clone();
        let credential = self.credential.clone();
        self.commands
            .spawn(execute(app, outbox, credential, command).in_current_span());
    }

    fn subscribe(&mut self, events: Vec<String>, since_seq: Option<u64>) {
        if let Some(previous) = self.subscription.take() {
            previous.cancel();
        }
        let generation = self.outbox.next_generation();
        let cancel = CancellationToken::new();
        self.subscription = Some(cancel.clone());
        let patterns = if events.is_empty() {
            vec!["**".to_owned()]
        } else {
            events
        };
        let follow = Follow {
            app: self.app.clone(),
            outbox: self.outbox.clone(),
            credential: self.credential.clone(),
            patterns,
            // ATP's since_seq is the last seq seen; the bus's from_seq is the first to deliver.
            from_seq: since_seq.map(|seq| seq.saturating_add(1)),
            generation,
        };
        // Ends with the connection (cancelled in `run`) or when replaced.
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = follow.run() => {}
                }
            }
            .in_current_span(),
        );
    }
}

/// Runs one command and queues its one reply.
async fn execute(app: Arc<App>, outbox: Arc<Outbox>, credential: Arc<str>, command: Command) -> Flow {
    let token = command.token.as_deref().unwrap_or(&credential);
    let principal = match app.authenticate(token).await {
        Ok(principal) => principal.via("atp"),
        Err(failure) => {
            let reply = frame::reply_error(&command.id, failure.atp_code(), failure.message());
            outbox.send(Outbound::Frame(reply)).await;
            return Flow::Continue;
        }
    };
    let method = command.method();
    let own_credential = command.token.as_deref().is_none_or(|token| token == &*credential);
    let (result, flow) = match method.as_str() {
        "auth.whoami" => (json_body(&whoami(&principal)), Flow::Continue),
        "auth.refresh" => match app.refresh(&principal).await {
            Ok(login) => {
                let flow = if own_credential {
                    Flow::Credential(login.token.clone())
                } else {
                    Flow::Continue
                };
                (json_body(&login), flow)
            }
            Err(error) => (Err(error), Flow::Continue),
        },
        "auth.logout" => match app.logout(&principal).await {
            Ok(()) => (json_body(&serde_json::json!({"logged_out": true})), Flow::Close),
            Err(error) => (Err(error), Flow::Continue),
        },
        "auth.login" => (
            Err(RpcError::new(
                ErrorCode::MethodNotFound,
                "log in with POST /atp/auth/login, then connect with the token",
            )),
            Flow::Continue,
        ),
        _ => (app.call(&principal, &method, command.body).await, Flow::Continue),
    };
    let reply = match result {
        Ok(body) => frame::reply_ok(&command.id, &body),
        Err(error) => {
            let atp = frame::atp_error(&error.0);
            tracing::debug!(%method, code = %atp.code, message = %atp.message, "command failed");
            frame::reply_error(&command.id, &atp.code, &atp.message)
        }
    };
    if !outbox.send(Outbound::Frame(reply)).await {
        return Flow::Continue;
    }
    flow
}

fn whoami(principal: &Principal) -> Value {
    serde_json::json!({
        "user": principal.user,
        "role": principal.role.as_str(),
        "session_id": principal.session_id,
        "via": principal.via,
    })
}

fn json_body<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(value).map_err(RpcError::internal)
}

/// One subscription: the bus's events for `patterns`, as `event` frames, resumed from the next
/// undelivered seq when the bus connection breaks.
struct Follow {
    app: Arc<App>,
    outbox: Arc<Outbox>,
    credential: Arc<str>,
    patterns: Vec<String>,
    from_seq: Option<u64>,
    generation: u64,
}

impl Follow {
    async fn run(self) {
        let principal = match self.app.authenticate(&self.credential).await {
            Ok(principal) => principal.via("atp"),
            Err(failure) => {
                let reply = frame::reply_error(&Value::Null, failure.atp_code(), failure.message());
                self.outbox.send(Outbound::Frame(reply)).await;
                return;
            }
        };
        // Viewers see that a process wrote output (run, stream, chunk number), not what it wrote.
        let redact = principal.role == Role::Viewer;
        let mut next_seq = self.from_seq;
        let mut opened_once = false;
        let mut lost_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            // Stored events up to the head are a replay: the store can wait for the client, so they
            // wait for room in the queue; only live events cut a client off that lets it fill.
            let replay_until = match next_seq {
                Some(_) => self.head().await,
                None => None,
            };
            let mut subscription = match self.app.subscribe(&principal, self.patterns.clone(), next_seq).await {
                Ok(subscription) => subscription,
                Err(error) if !opened_once => {
                    let atp = frame::atp_error(&error.0);
                    let reply = frame::reply_error(&Value::Null, &atp.code, &atp.message);
                    self.outbox.send(Outbound::Frame(reply)).await;
                    return;
                }
                Err(error) => {
                    let since = *lost_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RESUBSCRIBE_FOR {
                        tracing::warn!(%error, "the bus stayed unreachable; ending the subscription");
                        let closing = frame::closing(
                            "EUNAVAIL",
                            "the event bus is unavailable; resubscribe later with since_seq = next_seq - 1",
                            next_seq,
                        );
                        self.outbox.send(Outbound::Frame(closing)).await;
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            next_seq = next_seq.or(subscription.next_seq());
            if !opened_once {
                opened_once = true;
                let frame = frame::subscribed(&self.patterns, next_seq);
                if !self.outbox.send(Outbound::Subscribed { next_seq, frame }).await {
                    return;
                }
            }
            lost_since = None;
            backoff = Duration::from_millis(100);
            while let Some(line) = subscription.next_line().await {
                match frame::pushed(&line, |topic| redact && topic == "exec.output") {
                    Some(Pushed::Event { seq, frame, .. }) => {
                        if next_seq.is_some_and(|next| seq < next) {
                            continue;
                        }
                        let queued = if replay_until.is_some_and(|head| seq <= head) {
                            self.outbox.send_event(self.generation, seq, frame).await
                        } else {
                            self.outbox.push_event(self.generation, seq, frame)
                        };
                        if !queued {
                            return;
                        }
                        next_seq = Some(seq + 1);
                    }
                    // The bus is stopping: reopen once it is back, from where delivery stopped.
                    Some(Pushed::Ended(error)) if error.code == ErrorCode::Unavailable.code() => break,
                    Some(Pushed::Ended(error)) => {
                        let atp = frame::atp_error(&error);
                        let resume = error
                            .data
                            .as_ref()
                            .and_then(|data| data.get("next_seq"))
                            .and_then(Value::as_u64)
                            .or(next_seq);
                        self.outbox
                            .send(Outbound::Frame(frame::closing(&atp.code, &atp.message, resume)))
                            .await;
                        return;
                    }
                    None => {}
                }
            }
            tracing::debug!(?next_seq, "the bus subscription ended; reopening");
        }
    }

    /// The bus's newest seq (`None` when the bus does not say).
    async fn head(&self) -> Option<u64> {
        let health = self.app.bus().call::<Health>(&NoParams {}).await.ok()?;
        health.details.get("head").and_then(Value::as_u64)
    }
}

/// Drains the queue into the socket. When the connection is cut off it tries, for a bounded time,
/// to say why (`closing`, then a close frame) and then drops the socket.
async fn write(mut sink: SplitSink<WebSocket, Message>, mut queue: mpsc::Receiver<Outbound>, outbox: Arc<Outbox>) {
    // The first seq the client has not been written: where a cut-off subscriber resumes.
    let mut next_seq: Option<u64> = None;
    'connection: loop {
        let first = tokio::select! {
            biased;
            _ = outbox.cut.cancelled() => break,
            item = queue.recv() => item,
        };
        let Some(mut item) = first else { break };
        // What is already queued goes out in one write: one flush (one syscall) per batch rather
        // than per frame, which is what keeps a busy subscription cheap.
        let mut batched = 0;
        loop {
            let message = match item {
                Outbound::Frame(frame) => Message::Text(Utf8Bytes::from(frame)),
                Outbound::Event { seq, frame } => {
                    next_seq = Some(seq + 1);
                    Message::Text(Utf8Bytes::from(frame))
                }
                Outbound::Subscribed { next_seq: first, frame } => {
                    next_seq = first;
                    Message::Text(Utf8Bytes::from(frame))
                }
                Outbound::Ping => Message::Ping(bytes::Bytes::new()),
                Outbound::Close(ending) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, say_goodbye(&mut sink, &ending, next_seq)).await;
                    return;
                }
            };
            let fed = tokio::select! {
                biased;
                _ = outbox.cut.cancelled() => break 'connection,
                fed = sink.feed(message) => fed,
            };
            if fed.is_err() {
                outbox.cut.cancel();
                return;
            }
            batched += 1;
            if batched == WRITE_BATCH {
                break;
            }
            match queue.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        let flushed = tokio::select! {
            biased;
            _ = outbox.cut.cancelled() => break,
            flushed = sink.flush() => flushed,
        };
        if flushed.is_err() {
            outbox.cut.cancel();
            return;
        }
    }
    match outbox.reason() {
        Some(ending) => {
            tracing::debug!(reason = ending.reason, ?next_seq, "cutting the connection off");
            let _ = tokio::time::timeout(CLOSE_GRACE, say_goodbye(&mut sink, &ending, next_seq)).await;
        }
        None => {
            let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
        }
    }
}

async fn say_goodbye(
    sink: &mut SplitSink<WebSocket, Message>,
    ending: &Ending,
    next_seq: Option<u64>,
) -> Result<(), axum::Error> {
    if let Some((code, message)) = &ending.closing {
        let closing = frame::closing(code, message, next_seq);
        sink.send(Message::Text(Utf8Bytes::from(closing))).await?;
    }
    sink.send(Message::Close(Some(CloseFrame {
        code: ending.code,
        reason: Utf8Bytes::from(ending.reason),
    })))
    .await?;
    sink.close().await
}
