//! Stand-ins for the bus and exec on real sockets in a temp dir, speaking the real protocol through
//! the real server code with token authentication: a bus that stores published events and answers
//! `events.chain`, and an exec that checks each action's attenuated token, records what it was
//! asked (and what policy's database said about the action at that moment), and answers as told.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aiventbus_proto::exec::{
    ActionRef, ExecExecute, ExecNotify, ExecOutcome, ExecuteParams, ExecuteResult, NotifyParams, NotifyResult, Outcome,
};
use aiventbus_proto::methods::{
    Chain, EventsResult, Health, HealthResult, IdParams, NoParams, Publish, PublishParams, PublishResult,
};
use aiventbus_proto::{Event, EventStatus, Priority};
use aiventbus_rpc::config::RpcConfig;
use aiventbus_rpc::server::{ServeOptions, bind, serve};
use aiventbus_rpc::token::{Key, Minter, Verifier};
use aiventbus_rpc::{Auth, Methods, RpcError};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something to happen before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A token far from expiry.
pub fn far_future() -> u64 {
    aiventbus_rpc::time::now_ms() + 3_600_000
}

/// The keys of one test daemon and tokens minted with them.
pub struct Keys {
    /// Verifies tokens for the bus.
    pub bus: Key,
    /// Verifies tokens for exec.
    pub exec: Key,
    /// Verifies tokens for policy.
    pub policy: Key,
}

impl Keys {
    /// Fresh random keys.
    pub fn new() -> Keys {
        Keys {
            bus: Key::generate().expect("key"),
            exec: Key::generate().expect("key"),
            policy: Key::generate().expect("key"),
        }
    }

    /// A token for `audience` held by `subject` allowing `scope`.
    pub fn token(&self, audience: &str, subject: &str, scope: &[&str]) -> String {
        let key = match audience {
            "bus" => &self.bus,
            "exec" => &self.exec,
            _ => &self.policy,
        };
        Minter::new(audience, key).mint(subject, scope, far_future())
    }
}

/// A server on a socket that can be stopped.
pub struct Server {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start<S: Send + Sync + 'static>(
        path: &Path,
        verifier: Verifier,
        methods: Methods<S>,
        name: &str,
    ) -> Server {
        let listener = bind(path).await.expect("bind fake socket");
        let stop = CancellationToken::new();
        let rpc = RpcConfig {
            request_timeout: Duration::from_secs(120),
            ..RpcConfig::default()
        };
        let options = ServeOptions::new(name, Auth::Token(verifier), &rpc);
        let task = tokio::spawn(serve(listener, Arc::new(methods), options, stop.clone()));
        Server { stop, task }
    }

    /// Stops it, closing every connection.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Waits until `check` holds on data guarded by `mutex`, woken by `changed`.
async fn wait_until<D, T>(mutex: &Mutex<D>, changed: &Notify, what: &str, check: impl Fn(&D) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = check(&mutex.lock().expect("fake lock")) {
            return found;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

// ------------------------------------------------------------------ bus

/// The fake bus.
#[derive(Clone)]
pub struct FakeBus {
    events: Arc<Mutex<Vec<Event>>>,
    changed: Arc<Notify>,
    path: PathBuf,
}

impl FakeBus {
    /// A fake bus (not yet serving) at `path`.
    pub fn new(path: PathBuf) -> FakeBus {
        FakeBus {
            events: Arc::new(Mutex::new(Vec::new())),
            changed: Arc::new(Notify::new()),
            path,
        }
    }

    /// Every stored event.
    pub fn events(&self) -> MutexGuard<'_, Vec<Event>> {
        self.events.lock().expect("fake lock")
    }

    /// Stored events on `topic`.
    pub fn on(&self, topic: &str) -> Vec<Event> {
        self.events()
            .iter()
            .filter(|event| event.topic == topic)
            .cloned()
            .collect()
    }

    /// Stores an event as a client's publish would; returns it.
    pub fn publish(&self, params: PublishParams) -> Event {
        let event = store(&mut self.events(), params).expect("fake publish");
        self.changed.notify_waiters();
        event
    }

    /// Waits for an event on `topic` whose payload satisfies `check`.
    pub async fn wait_for(&self, topic: &str, check: impl Fn(&Event) -> bool) -> Event {
        wait_until(&self.events, &self.changed, topic, |events| {
            events
                .iter()
                .find(|event| event.topic == topic && check(event))
                .cloned()
        })
        .await
    }

    /// Starts serving, accepting tokens verified by `key`.
    pub async fn serve(&self, key: &Key) -> Server {
        let mut methods = Methods::new(Arc::new(self.clone()));
        methods.add::<Publish, _, _>(|bus: Arc<FakeBus>, _, params: PublishParams| async move {
            let event = store(&mut bus.events(), params)?;
            bus.changed.notify_waiters();
            Ok(PublishResult {
                id: event.id,
                seq: event.seq,
                trace_id: event.trace_id,
                status: event.status,
            })
        });
        methods.add::<Chain, _, _>(|bus: Arc<FakeBus>, _, params: IdParams| async move {
            let events = bus.events();
            let mut chain = Vec::new();
            let mut next = Some(params.id.clone());
            while let Some(id) = next {
                let event = events
                    .iter()
                    .find(|event| event.id == id)
                    .ok_or_else(|| RpcError::not_found(format!("no event {id}")))?;
                next = event.parent_event.clone();
                chain.push(event.clone());
            }
            chain.reverse();
            Ok(EventsResult { events: chain })
        });
        methods.add::<Health, _, _>(|_, _, _: NoParams| async move {
            Ok(HealthResult {
                service: "bus".into(),
                status: "ok".into(),
                details: Default::default(),
            })
        });
        Server::start(&self.path, Verifier::new("bus", key), methods, "bus").await
    }
}

fn store(events: &mut Vec<Event>, params: PublishParams) -> Result<Event, RpcError> {
    if let Some(id) = &params.id
        && let Some(existing) = events.iter().find(|event| &event.id == id)
    {
        return Ok(existing.clone());
    }
    let parent = match &params.parent_event {
        Some(parent) => Some(
            events
                .iter()
                .find(|event| &event.id == parent)
                .cloned()
                .ok_or_else(|| RpcError::invalid_params("parent_event: no such event"))?,
        ),
        None => None,
    };
    let event = Event {
        id: params.id.unwrap_or_else(|| aiventbus_rpc::ids::prefixed("evt")),
        seq: events.len() as u64 + 1,
        ts: aiventbus_rpc::time::now_rfc3339(),
        topic: params.topic,
        payload: match params.payload {
            Some(Value::Object(map)) => map,
            _ => Default::default(),
        },
        source: params.source.unwrap_or_else(|| "system".into()),
        priority: params.priority.unwrap_or(Priority::Medium),
        semantic_type: None,
        dedupe_key: None,
        dedupe_count: 1,
        duplicate_of: None,
        trace_id: parent
            .as_ref()
            .map(|parent| parent.trace_id.clone())
            .or(params.trace_id)
            .unwrap_or_else(|| aiventbus_rpc::ids::prefixed("tr")),
        parent_event: params.parent_event,
        correlation_id: params.correlation_id,
        output_topic: None,
        context_refs: Vec::new(),
        memory_scope: None,
        expires_at: None,
        depth: parent.map_or(0, |parent| parent.depth + 1),
        status: EventStatus::Published,
    };
    events.push(event.clone());
    Ok(event)
}

// ------------------------------------------------------------------ exec

/// How the fake exec answers `exec.execute`.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answers at once with this result.
    Answer { ok: bool, result: Value },
    /// Never answers (until the caller goes away).
    Hang,
}

/// One `exec.execute` as the fake exec received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The params.
    pub params: ExecuteParams,
    /// The action's status in policy.db when the call arrived (read-only connection).
    pub status_in_db: Option<String>,
}

/// What the fake exec holds.
pub struct ExecData {
    /// Every accepted `exec.execute`, in order.
    pub executes: Vec<Received>,
    /// `exec.execute` calls refused for their token.
    pub refused: Vec<String>,
    /// Every `exec.notify`.
    pub notifications: Vec<NotifyParams>,
    /// How `exec.execute` answers.
    pub behavior: Behavior,
    /// What `exec.outcome` says per action (absent: what it executed, else -32002).
    pub outcomes: HashMap<String, Outcome>,
}

/// The fake exec.
#[derive(Clone)]
pub struct FakeExec {
    data: Arc<Mutex<ExecData>>,
    changed: Arc<Notify>,
    path: PathBuf,
    database: PathBuf,
}

impl FakeExec {
    /// A fake exec (not yet serving) at `path`, reading policy's database at `database`.
    pub fn new(path: PathBuf, database: PathBuf) -> FakeExec {
        FakeExec {
            data: Arc::new(Mutex::new(ExecData {
                executes: Vec::new(),
                refused: Vec::new(),
                notifications: Vec::new(),
                behavior: Behavior::Answer {
                    ok: true,
                    result: json!({"exit_code": 0, "stdout": "done\n", "stderr": ""}),
                },
                outcomes: HashMap::new(),
            })),
            changed: Arc::new(Notify::new()),
            path,
            database,
        }
    }

    /// Reads the data.
    pub fn data(&self) -> MutexGuard<'_, ExecData> {
        self.data.lock().expect("fake lock")
    }

    /// `exec.execute` calls for `action_id`.
    pub fn executes_of(&self, action_id: &str) -> Vec<Received> {
        self.data()
            .executes
            .iter()
            .filter(|received| received.params.action_id == action_id)
            .cloned()
            .collect()
    }

    /// Waits until `exec.execute` for `action_id` arrived.
    pub async fn wait_execute(&self, action_id: &str) -> Received {
        wait_until(&self.data, &self.changed, "exec.execute", |data| {
            data.executes
                .iter()
                .find(|received| received.params.action_id == action_id)
                .cloned()
        })
        .await
    }

    /// Waits until an `exec.notify` arrived.
    pub async fn wait_notification(&self) -> NotifyParams {
        wait_until(&self.data, &self.changed, "exec.notify", |data| {
            data.notifications.first().cloned()
        })
        .await
    }

    fn status_in_db(&self, action_id: &str) -> Option<String> {
        let connection =
            rusqlite::Connection::open_with_flags(&self.database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        connection
            .query_row("SELECT status FROM actions WHERE id = ?1", [action_id], |row| {
                row.get(0)
            })
            .ok()
    }

    /// Starts serving, accepting tokens verified by `key`.
    pub async fn serve(&self, key: &Key) -> Server {
        let verifier = Verifier::new("exec", key);
        let mut methods = Methods::new(Arc::new((self.clone(), verifier.clone())));
        methods.add::<ExecExecute, _, _>(
            |state: Arc<(FakeExec, Verifier)>, peer, params: ExecuteParams| async move {
                let (exec, verifier) = &*state;
                let now = aiventbus_rpc::time::now_ms();
                let bound = verifier.verify(&params.token, now).is_ok_and(|claims| {
                    claims.subject == "policy"
                        && claims.allows("exec.execute")
                        && claims.binding("action") == Some(params.action_id.as_str())
                        && claims.expires_at_ms <= now + 121_000
                });
                if !bound {
                    exec.data().refused.push(params.action_id.clone());
                    exec.changed.notify_waiters();
                    return Err(RpcError::unauthorized("token not bound to this action"));
                }
                let status_in_db = exec.status_in_db(&params.action_id);
                let behavior = {
                    let mut data = exec.data();
                    data.executes.push(Received {
                        params: params.clone(),
                        status_in_db,
                    });
                    data.behavior.clone()
                };
                exec.changed.notify_waiters();
                match behavior {
                    Behavior::Answer { ok, result } => {
                        let run_id = (params.action_type == "shell_exec").then(|| {
                            if params.action_id.starts_with("run_") {
                                params.action_id.clone()
                            } else {
                                aiventbus_rpc::ids::prefixed("run")
                            }
                        });
                        exec.data().outcomes.entry(params.action_id.clone()).or_insert(Outcome {
                            action_id: params.action_id.clone(),
                            status: if ok { "succeeded" } else { "failed" }.into(),
                            result: Some(result.clone()),
                            run_id: run_id.clone(),
                        });
                        Ok(ExecuteResult { ok, result, run_id })
                    }
                    Behavior::Hang => {
                        peer.input_closed().cancelled().await;
                        Err(RpcError::unavailable("caller went away"))
                    }
                }
            },
        );
        methods.add::<ExecOutcome, _, _>(|state: Arc<(FakeExec, Verifier)>, _, params: ActionRef| async move {
            state
                .0
                .data()
                .outcomes
                .get(&params.action_id)
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("never received {}", params.action_id)))
        });
        methods.add::<ExecNotify, _, _>(|state: Arc<(FakeExec, Verifier)>, _, params: NotifyParams| async move {
            state.0.data().notifications.push(params);
            state.0.changed.notify_waiters();
            Ok(NotifyResult {
                delivered: true,
                via: "none".into(),
            })
        });
        methods.add::<Health, _, _>(|_, _, _: NoParams| async move {
            Ok(HealthResult {
                service: "exec".into(),
                status: "ok".into(),
                details: Default::default(),
            })
        });
        Server::start(&self.path, verifier, methods, "exec").await
    }
}

/// An exec that crashes: it accepts `auth.hello`, then reads one request, records its method and
/// params, and drops the connection without answering; every later connection the same.
pub struct CrashingExec {
    /// `(method, params)` of every request it swallowed.
    pub swallowed: Arc<Mutex<Vec<(String, Value)>>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
    path: PathBuf,
}

impl CrashingExec {
    /// Listens at `path`.
    pub async fn start(path: &Path) -> CrashingExec {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind crashing exec");
        let swallowed = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (record, wake) = (Arc::clone(&swallowed), Arc::clone(&changed));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let request: Value = serde_json::from_str(&line).unwrap_or_default();
                    let method = request["method"].as_str().unwrap_or_default().to_owned();
                    if method == "auth.hello" {
                        let reply = json!({"jsonrpc": "2.0", "id": request["id"], "result": {
                            "subject": "policy", "audience": "exec", "scope": ["*"], "expires_at_ms": far_future()}});
                        let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                        continue;
                    }
                    record.lock().expect("lock").push((method, request["params"].clone()));
                    wake.notify_waiters();
                    break;
                }
            }
        });
        CrashingExec {
            swallowed,
            changed,
            task,
            path: path.to_owned(),
        }
    }

    /// Waits until a request with `method` was swallowed.
    pub async fn wait_swallowed(&self, method: &str) -> Value {
        wait_until(&self.swallowed, &self.changed, method, |swallowed| {
            swallowed
                .iter()
                .find(|(name, _)| name == method)
                .map(|(_, params)| params.clone())
        })
        .await
    }

    /// Stops listening and removes the socket.
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
