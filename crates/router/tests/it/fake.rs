//! Stand-ins for the bus and llm on real sockets in a temp dir, speaking the real protocol through
//! the real server code: a bus with events, replayable subscriptions, caller-chosen idempotent ids
//! and an `assignments.create` that can be told to fail or to find an agent's queue full; an llm
//! that lists agents.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aiventbus_proto::agents::{
    Agent, AgentKind, AgentsGet, AgentsList, AgentsResult, AssignmentCreateParams, AssignmentCreateResult,
    AssignmentsCreate, Lane,
};
use aiventbus_proto::jsonrpc::{encode_close_notification, encode_notification};
use aiventbus_proto::methods::{
    EVENTS_NOTIFICATION, Health, HealthResult, IdParams, NoParams, Publish, PublishParams, PublishResult,
    SubscribeParams, SubscribeResult,
};
use aiventbus_proto::{ErrorCode, ErrorObject, Event, EventStatus, Method, Priority};
use aiventbus_rpc::config::RpcConfig;
use aiventbus_rpc::error::parse_params;
use aiventbus_rpc::server::{Reply, ServeOptions, bind, serve};
use aiventbus_rpc::{Auth, Methods, RpcError};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something to happen before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The uid owning `dir`: the test's own, allowed on the fake sockets.
pub fn own_uid(dir: &Path) -> u32 {
    std::fs::metadata(dir).expect("temp dir metadata").uid()
}

/// A server on a socket that can be stopped and started again.
pub struct Server {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start<S: Send + Sync + 'static>(path: &Path, uid: u32, methods: Methods<S>, name: &str) -> Server {
        let listener = bind(path).await.expect("bind fake socket");
        let stop = CancellationToken::new();
        let options = ServeOptions::new(name, Auth::PeerUid(vec![uid]), &RpcConfig::default());
        let task = tokio::spawn(serve(listener, Arc::new(methods), options, stop.clone()));
        Server { stop, task }
    }

    /// Stops it, closing every connection and subscription.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

// ------------------------------------------------------------------ bus

/// What the fake bus holds.
#[derive(Default)]
pub struct BusData {
    /// Every event, in seq order.
    pub events: Vec<Event>,
    /// Assignments by (event, agent).
    pub assignments: HashMap<(String, String), AssignmentCreateParams>,
    /// `assignments.create` calls per (event, agent), repeats included.
    pub create_calls: HashMap<(String, String), u32>,
    /// The next this many `assignments.create` calls fail with -32005.
    pub fail_creates: u32,
    /// Agents whose ambient queue is full.
    pub full_agents: HashSet<String>,
    /// Subscriptions are cut off (as a slow subscriber) after delivering this many events.
    pub cut_off_after: Option<usize>,
    /// Subscriptions opened, with their `from_seq`.
    pub subscriptions: Vec<Option<u64>>,
}

impl BusData {
    /// Events on `topic`.
    pub fn on(&self, topic: &str) -> Vec<&Event> {
        self.events.iter().filter(|event| event.topic == topic).collect()
    }
}

struct BusShared {
    data: Mutex<BusData>,
    live: broadcast::Sender<Event>,
}

/// The fake bus.
#[derive(Clone)]
pub struct FakeBus {
    shared: Arc<BusShared>,
    path: PathBuf,
    uid: u32,
}

impl FakeBus {
    /// A fake bus (not yet serving) at `path`.
    pub fn new(path: PathBuf, uid: u32) -> FakeBus {
        FakeBus {
            shared: Arc::new(BusShared {
                data: Mutex::new(BusData::default()),
                live: broadcast::channel(4096).0,
            }),
            path,
            uid,
        }
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the data.
    pub fn data(&self) -> MutexGuard<'_, BusData> {
        self.shared.data.lock().expect("fake lock")
    }

    /// Changes the data.
    pub fn change<T>(&self, change: impl FnOnce(&mut BusData) -> T) -> T {
        change(&mut self.data())
    }

    /// Publishes as a client would; returns the stored event.
    pub fn publish(&self, params: PublishParams) -> Event {
        self.publish_with_status(params, EventStatus::Published)
    }

    /// Publishes with a given status (`deduped`, `failed`).
    pub fn publish_with_status(&self, params: PublishParams, status: EventStatus) -> Event {
        let (event, fresh) = self.change(|data| store(data, params, status)).expect("fake publish");
        if fresh {
            let _ = self.shared.live.send(event.clone());
        }
        event
    }

    /// Starts serving.
    pub async fn serve(&self) -> Server {
        let mut methods = Methods::new(Arc::new(self.clone()));
        methods.add::<Publish, _, _>(|bus: Arc<FakeBus>, _, params: PublishParams| async move {
            let (event, fresh) = bus
                .change(|data| store(data, params, EventStatus::Published))
                .map_err(RpcError::from)?;
            if fresh {
                let _ = bus.shared.live.send(event.clone());
            }
            Ok(PublishResult {
                id: event.id,
                seq: event.seq,
                trace_id: event.trace_id,
                status: event.status,
            })
        });
        methods.add::<AssignmentsCreate, _, _>(|bus: Arc<FakeBus>, _, params: AssignmentCreateParams| async move {
            bus.change(|data| create_assignment(data, params))
        });
        methods.add::<Health, _, _>(|bus: Arc<FakeBus>, _, _: NoParams| async move {
            let head = bus.data().events.last().map_or(0, |event| event.seq);
            let mut details = serde_json::Map::new();
            details.insert("head".into(), head.into());
            Ok(HealthResult {
                service: "bus".into(),
                status: "ok".into(),
                details,
            })
        });
        methods.add_raw(
            aiventbus_proto::methods::Subscribe::NAME,
            |bus: Arc<FakeBus>, peer, params| {
                let parsed: Result<SubscribeParams, RpcError> = parse_params(params.as_deref());
                Box::pin(async move {
                    let params = parsed?;
                    // Snapshot and live receiver under one lock: no gap, no duplicate at the switch.
                    let (replay, mut live, next_seq, cut_off_after) = {
                        let mut data = bus.data();
                        data.subscriptions.push(params.from_seq);
                        let head = data.events.last().map_or(0, |event| event.seq);
                        let from = params.from_seq.map_or(head + 1, |seq| seq.max(1));
                        let replay: Vec<Event> = data.events.iter().filter(|e| e.seq >= from).cloned().collect();
                        (replay, bus.shared.live.subscribe(), from, data.cut_off_after)
                    };
                    let id = aiventbus_rpc::ids::prefixed("sub");
                    let result = serde_json::value::to_raw_value(&SubscribeResult {
                        subscription: id.clone(),
                        next_seq: Some(next_seq),
                    })
                    .map_err(RpcError::internal)?;
                    let task = Box::pin(async move {
                        let mut next = next_seq;
                        let mut delivered = 0usize;
                        let mut replay = replay.into_iter();
                        loop {
                            if cut_off_after.is_some_and(|limit| delivered >= limit) {
                                let error = ErrorObject::new(ErrorCode::Overloaded, "subscriber too slow")
                                    .with_data(serde_json::json!({"next_seq": next}));
                                let _ = peer
                                    .send_line(encode_close_notification(EVENTS_NOTIFICATION, &id, &error))
                                    .await;
                                return;
                            }
                            let event = match replay.next() {
                                Some(event) => event,
                                None => tokio::select! {
                                    _ = peer.closed().cancelled() => return,
                                    received = live.recv() => match received {
                                        Ok(event) if event.seq >= next => event,
                                        Ok(_) => continue,
                                        Err(_) => return,
                                    },
                                },
                            };
                            next = event.seq + 1;
                            delivered += 1;
                            let json = serde_json::to_string(&event).expect("event json");
                            if peer
                                .send_line(encode_notification(EVENTS_NOTIFICATION, &id, &json))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    Ok(Reply::Subscribed { result, task })
                })
            },
        );
        Server::start(&self.path, self.uid, methods, "bus").await
    }
}

fn store(data: &mut BusData, params: PublishParams, status: EventStatus) -> Result<(Event, bool), ErrorObject> {
    if let Some(id) = &params.id
        && let Some(existing) = data.events.iter().find(|event| &event.id == id)
    {
        if existing.topic != params.topic {
            return Err(ErrorObject::new(ErrorCode::Conflict, "id used for another topic"));
        }
        return Ok((existing.clone(), false));
    }
    let seq = data.events.last().map_or(0, |event| event.seq) + 1;
    let parent = match &params.parent_event {
        Some(parent) => Some(
            data.events
                .iter()
                .find(|event| &event.id == parent)
                .cloned()
                .ok_or_else(|| ErrorObject::new(ErrorCode::InvalidParams, "parent_event: unknown"))?,
        ),
        None => None,
    };
    let payload = match params.payload {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let event = Event {
        id: params.id.unwrap_or_else(|| aiventbus_rpc::ids::prefixed("evt")),
        seq,
        ts: aiventbus_rpc::time::now_rfc3339(),
        topic: params.topic,
        payload,
        source: params.source.unwrap_or_else(|| "system".into()),
        priority: params.priority.unwrap_or(Priority::Medium),
        semantic_type: params.semantic_type,
        dedupe_key: params.dedupe_key,
        dedupe_count: 1,
        duplicate_of: None,
        trace_id: parent
            .as_ref()
            .map(|parent| parent.trace_id.clone())
            .or(params.trace_id)
            .unwrap_or_else(|| aiventbus_rpc::ids::prefixed("tr")),
        parent_event: params.parent_event,
        correlation_id: None,
        output_topic: None,
        context_refs: Vec::new(),
        memory_scope: None,
        expires_at: None,
        depth: parent.map_or(0, |parent| parent.depth + 1),
        status,
    };
    data.events.push(event.clone());
    Ok((event, true))
}

fn create_assignment(data: &mut BusData, params: AssignmentCreateParams) -> Result<AssignmentCreateResult, RpcError> {
    let key = (params.event_id.clone(), params.agent_id.clone());
    *data.create_calls.entry(key.clone()).or_default() += 1;
    if data.fail_creates > 0 {
        data.fail_creates -= 1;
        return Err(RpcError::unavailable("fake bus: assignments are down"));
    }
    if !data.events.iter().any(|event| event.id == params.event_id) {
        return Err(RpcError::invalid_params("event_id: no such event"));
    }
    if data.assignments.contains_key(&key) {
        return Ok(AssignmentCreateResult {
            id: format!("asg_{}", key.0),
            created: false,
            dropped: false,
        });
    }
    if params.lane == Lane::Ambient && data.full_agents.contains(&params.agent_id) {
        return Ok(AssignmentCreateResult {
            id: String::new(),
            created: false,
            dropped: true,
        });
    }
    data.assignments.insert(key.clone(), params);
    Ok(AssignmentCreateResult {
        id: format!("asg_{}", key.0),
        created: true,
        dropped: false,
    })
}

// ------------------------------------------------------------------ llm

/// The fake llm: a list of agents.
#[derive(Clone)]
pub struct FakeLlm {
    agents: Arc<Mutex<Vec<Agent>>>,
    path: PathBuf,
    uid: u32,
}

/// An agent with the given id and state.
pub fn agent(id: &str, enabled: bool) -> Agent {
    Agent {
        id: id.into(),
        name: format!("name-{id}"),
        description: String::new(),
        kind: AgentKind::Command,
        provider: None,
        model: None,
        system_prompt: None,
        temperature: 0.2,
        command: Some(vec!["true".into()]),
        enabled,
        reactive: true,
        allowed_actions: None,
        trust: Default::default(),
        max_concurrent: 1,
        memory_scope: None,
        output_topic: None,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

impl FakeLlm {
    /// A fake llm (not yet serving) at `path` with these agents.
    pub fn new(path: PathBuf, uid: u32, agents: Vec<Agent>) -> FakeLlm {
        FakeLlm {
            agents: Arc::new(Mutex::new(agents)),
            path,
            uid,
        }
    }

    /// The socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the agents.
    pub fn set_agents(&self, agents: Vec<Agent>) {
        *self.agents.lock().expect("fake lock") = agents;
    }

    /// Starts serving.
    pub async fn serve(&self) -> Server {
        let mut methods = Methods::new(Arc::new(self.clone()));
        methods.add::<AgentsList, _, _>(|llm: Arc<FakeLlm>, _, _: NoParams| async move {
            Ok(AgentsResult {
                agents: llm.agents.lock().expect("fake lock").clone(),
            })
        });
        methods.add::<AgentsGet, _, _>(|llm: Arc<FakeLlm>, _, params: IdParams| async move {
            llm.agents
                .lock()
                .expect("fake lock")
                .iter()
                .find(|agent| agent.id == params.id || agent.name == params.id)
                .cloned()
                .ok_or_else(|| RpcError::not_found(format!("no agent {}", params.id)))
        });
        Server::start(&self.path, self.uid, methods, "llm").await
    }
}
