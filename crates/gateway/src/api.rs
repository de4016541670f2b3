//! The public methods of `api.sock` and where each one goes. Events, topics, knowledge and memory
//! belong to the bus, services to init; `system.status` is assembled here from both;
//! `system.version` is answered here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aiventbus_proto::event::validate_source;
use aiventbus_proto::methods::{
    self, KnowledgeSetParams, MemoryAddParams, NoParams, ServiceInfo, ServicesResult, Status, StatusResult,
    SubscribeResult, UnsubscribeParams, UnsubscribeResult, Version, VersionResult,
};
use aiventbus_proto::{ErrorCode, Method, PROTOCOL_VERSION, agents};
use aiventbus_rpc::error::parse_params;
use aiventbus_rpc::server::{Peer, Pending, Reply};
use aiventbus_rpc::{Client, ClientError, Methods, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

/// Subscriptions one connection may hold at once.
const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 64;

/// The services the gateway forwards to.
pub struct Upstreams {
    /// The bus.
    pub bus: Client,
    /// Connections to the bus that carry publishes (a client's publishes always use the same one).
    pub publishers: Vec<Client>,
    /// init.
    pub init: Client,
    /// The llm service (agents).
    pub llm: Client,
    /// The router (rules).
    pub router: Client,
}

struct State {
    upstreams: Arc<Upstreams>,
    /// Open forwarded subscriptions by (connection, subscription id).
    subscriptions: Mutex<HashMap<(u64, String), CancellationToken>>,
}

/// The public method table.
pub fn methods(upstreams: Arc<Upstreams>) -> Methods<impl Send + Sync + 'static> {
    let state = Arc::new(State {
        upstreams,
        subscriptions: Mutex::new(HashMap::new()),
    });
    let mut table = Methods::new(state);
    for name in [
        methods::Get::NAME,
        methods::List::NAME,
        methods::Chain::NAME,
        methods::Trace::NAME,
        methods::TopicsList::NAME,
        methods::KnowledgeGet::NAME,
        methods::KnowledgeDelete::NAME,
        methods::KnowledgeList::NAME,
        methods::MemoryGet::NAME,
        methods::MemoryList::NAME,
        methods::MemorySearch::NAME,
        methods::MemoryUpdate::NAME,
        methods::MemoryDelete::NAME,
        agents::AssignmentsList::NAME,
        agents::AssignmentsCancelPending::NAME,
    ] {
        table.add_raw(name, move |state: Arc<State>, _peer, params| {
            Box::pin(async move { forward(&state.upstreams.bus, name, params).await })
        });
    }
    for name in [
        agents::AgentsCreate::NAME,
        agents::AgentsGet::NAME,
        agents::AgentsList::NAME,
        agents::AgentsUpdate::NAME,
        agents::AgentsDelete::NAME,
        agents::AgentsEnable::NAME,
        agents::AgentsDisable::NAME,
        agents::AgentsMemory::NAME,
    ] {
        table.add_raw(name, move |state: Arc<State>, _peer, params| {
            Box::pin(async move { forward(&state.upstreams.llm, name, params).await })
        });
    }
    for name in [
        agents::RulesCreate::NAME,
        agents::RulesGet::NAME,
        agents::RulesList::NAME,
        agents::RulesUpdate::NAME,
        agents::RulesDelete::NAME,
    ] {
        table.add_raw(name, move |state: Arc<State>, _peer, params| {
            Box::pin(async move { forward(&state.upstreams.router, name, params).await })
        });
    }
    table.add_raw(methods::Services::NAME, |state: Arc<State>, _peer, params| {
        Box::pin(async move { forward(&state.upstreams.init, methods::Services::NAME, params).await })
    });
    table.add_raw(methods::Publish::NAME, publish);
    table.add_raw(
        methods::KnowledgeSet::NAME,
        forward_with_source::<KnowledgeSetParams>(methods::KnowledgeSet::NAME, |params| &mut params.source),
    );
    table.add_raw(
        methods::MemoryAdd::NAME,
        forward_with_source::<MemoryAddParams>(methods::MemoryAdd::NAME, |params| &mut params.source),
    );
    table.add_raw(methods::Subscribe::NAME, subscribe);
    table.add::<methods::Unsubscribe, _, _>(
        |state: Arc<State>, peer: Arc<Peer>, params: UnsubscribeParams| async move {
            let token = lock(&state.subscriptions).remove(&(peer.connection_id, params.subscription));
            let unsubscribed = token.is_some();
            if let Some(token) = token {
                token.cancel();
            }
            Ok(UnsubscribeResult { unsubscribed })
        },
    );
    table.add::<agents::QueryAsk, _, _>(
        |state: Arc<State>, peer: Arc<Peer>, params: agents::QueryParams| async move {
            let source = client_source(&peer, None)?;
            crate::query::ask(&state.upstreams, source, params).await
        },
    );
    table.add::<Version, _, _>(|_, _, _: NoParams| async {
        Ok(VersionResult {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
        })
    });
    table.add::<Status, _, _>(|state: Arc<State>, _, _: NoParams| async move { Ok(status(&state.upstreams).await) });
    table
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts/removes).
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn forward(upstream: &Client, method: &str, params: Option<Box<RawValue>>) -> Result<Reply, RpcError> {
    upstream
        .call_raw(method, params)
        .await
        .map(Reply::Value)
        .map_err(|error| upstream_error(upstream, error))
}

pub(crate) fn upstream_error(upstream: &Client, error: ClientError) -> RpcError {
    let service = upstream
        .endpoint()
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match error {
        ClientError::Rpc(error) => RpcError(error),
        ClientError::Timeout => RpcError::new(ErrorCode::Expired, format!("{service} did not answer in time")),
        other => RpcError::unavailable(format!("{service} is unavailable: {other}")),
    }
}

/// The source a client's event, fact or memory is recorded with: the connecting user
/// (`user:<name>`) unless the client names a `user:` or `producer:` source itself; the other kinds
/// belong to the daemon's services.
fn client_source(peer: &Peer, given: Option<String>) -> Result<String, RpcError> {
    let Some(source) = given else {
        return Ok(peer.subject.clone());
    };
    validate_source(&source).map_err(|e| RpcError::invalid_params(format!("source: {e}")))?;
    if !(source.starts_with("user:") || source.starts_with("producer:")) {
        return Err(RpcError::invalid_params(format!(
            "source: {source:?} is reserved for the daemon's services; use user:<name> or producer:<name>"
        )));
    }
    Ok(source)
}

/// A handler forwarding `method` to the bus with its params' `source` (reached through `source`)
/// filled in per [`client_source`].
fn forward_with_source<P>(
    method: &'static str,
    source: fn(&mut P) -> &mut Option<String>,
) -> impl Fn(Arc<State>, Arc<Peer>, Option<Box<RawValue>>) -> Pending + Send + Sync + 'static
where
    P: DeserializeOwned + Serialize + 'static,
{
    move |state, peer, params| {
        let prepared = parse_params::<P>(params.as_deref()).and_then(|mut params| {
            let given = source(&mut params).take();
            *source(&mut params) = Some(client_source(&peer, given)?);
            serde_json::value::to_raw_value(&params).map_err(RpcError::internal)
        });
        Box::pin(async move { forward(&state.upstreams.bus, method, Some(prepared?)).await })
    }
}

/// Publishes for a local client: the source follows [`client_source`], and an id is chosen here
/// so a publish interrupted by a bus restart can be retried without creating a second event.
///
/// This is the hot path, so only the top level of the params is read here (the payload stays raw
/// text); the bus validates every field and its errors pass through. A client's publishes always
/// take the same bus connection, so pipelined publishes from one connection keep their order.
fn publish(state: Arc<State>, peer: Arc<Peer>, params: Option<Box<RawValue>>) -> Pending {
    let prepared = prepare_publish(&peer, params.as_deref());
    Box::pin(async move {
        let params = prepared?;
        let publishers = &state.upstreams.publishers;
        let bus = &publishers[(peer.connection_id as usize) % publishers.len()];
        match bus.call_raw(methods::Publish::NAME, Some(params.clone())).await {
            // The same id makes the retry idempotent: the bus answers with the stored event.
            Err(ClientError::Disconnected) => bus
                .call_raw(methods::Publish::NAME, Some(params))
                .await
                .map(Reply::Value)
                .map_err(|error| upstream_error(bus, error)),
            other => other.map(Reply::Value).map_err(|error| upstream_error(bus, error)),
        }
    })
}

fn prepare_publish(peer: &Peer, params: Option<&RawValue>) -> Result<Box<RawValue>, RpcError> {
    let text = params.map(RawValue::get).unwrap_or("{}").trim();
    if !text.starts_with('{') {
        return Err(RpcError::invalid_params("params must be an object of named fields"));
    }
    let mut fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(text).map_err(|e| RpcError::invalid_params(format!("invalid params: {e}")))?;
    let given = match fields.remove("source") {
        None => None,
        Some(raw) => serde_json::from_str::<Option<String>>(raw.get())
            .map_err(|_| RpcError::invalid_params("invalid params: source: expected a string"))?,
    };
    let source = client_source(peer, given)?;
    fields.insert(
        "source".into(),
        serde_json::value::to_raw_value(&source).map_err(RpcError::internal)?,
    );
    if fields.get("id").is_none_or(|id| id.get() == "null") {
        let id = aiventbus_rpc::ids::prefixed("evt");
        fields.insert(
            "id".into(),
            serde_json::value::to_raw_value(&id).map_err(RpcError::internal)?,
        );
    }
    serde_json::value::to_raw_value(&fields).map_err(RpcError::internal)
}

/// Opens a dedicated bus subscription and relays its notifications verbatim; a slow client slows
/// that one bus connection only, until the bus cuts it off with a reason, which is relayed too.
fn subscribe(state: Arc<State>, peer: Arc<Peer>, params: Option<Box<RawValue>>) -> Pending {
    let parsed = parse_params::<methods::SubscribeParams>(params.as_deref());
    Box::pin(async move {
        let params = parsed?;
        let open = lock(&state.subscriptions)
            .keys()
            .filter(|(connection, _)| *connection == peer.connection_id)
            .count();
        if open >= MAX_SUBSCRIPTIONS_PER_CONNECTION {
            return Err(RpcError::new(
                ErrorCode::Overloaded,
                format!("at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection"),
            ));
        }
        let bus = &state.upstreams.bus;
        let mut upstream = bus
            .subscribe(methods::Subscribe::NAME, &params)
            .await
            .map_err(|error| upstream_error(bus, error))?;
        let id = upstream.id().to_owned();
        let cancel = peer.closed().child_token();
        lock(&state.subscriptions).insert((peer.connection_id, id.clone()), cancel.clone());
        let result = Reply::json(&SubscribeResult {
            subscription: id.clone(),
            next_seq: upstream.next_seq(),
        })?;
        let Reply::Value(result) = result else {
            return Err(RpcError::internal("subscription result"));
        };
        let task = Box::pin(async move {
            loop {
                let line = tokio::select! {
                    _ = cancel.cancelled() => break,
                    line = upstream.next_line() => line,
                };
                let Some(line) = line else {
                    let error = aiventbus_proto::ErrorObject::new(
                        ErrorCode::Unavailable,
                        "the bus connection was lost; subscribe again with from_seq = the last seq you saw + 1",
                    );
                    let notice =
                        aiventbus_proto::jsonrpc::encode_close_notification(methods::EVENTS_NOTIFICATION, &id, &error);
                    let _ = peer.send_line(notice).await;
                    break;
                };
                let text = String::from_utf8_lossy(&line).into_owned();
                if peer.send_line(text).await.is_err() {
                    break;
                }
            }
            lock(&state.subscriptions).remove(&(peer.connection_id, id));
        });
        Ok(Reply::Subscribed { result, task })
    })
}

async fn status(upstreams: &Upstreams) -> StatusResult {
    let no_params = || serde_json::value::to_raw_value(&NoParams {}).ok();
    // A service that is down must not hold up the report about it.
    let deadline = std::time::Duration::from_secs(2);
    let (services, bus, llm) = tokio::join!(
        upstreams
            .init
            .call_raw_with_timeout(methods::Services::NAME, no_params(), deadline),
        upstreams
            .bus
            .call_raw_with_timeout(methods::Health::NAME, no_params(), deadline),
        upstreams
            .llm
            .call_raw_with_timeout(agents::LlmStatus::NAME, no_params(), deadline),
    );
    let providers = llm
        .ok()
        .and_then(|raw| serde_json::from_str::<methods::LlmStatus>(raw.get()).ok())
        .map(|status| status.providers)
        .unwrap_or_default();
    let services = services
        .ok()
        .and_then(|raw| serde_json::from_str::<ServicesResult>(raw.get()).ok())
        .map(|result| result.services)
        .unwrap_or_else(|| {
            vec![ServiceInfo {
                name: "init".into(),
                state: "unreachable".into(),
                pid: None,
                restarts: 0,
                since: aiventbus_rpc::time::now_rfc3339(),
            }]
        });
    let bus = bus
        .ok()
        .and_then(|raw| serde_json::from_str::<methods::HealthResult>(raw.get()).ok())
        .map(|health| health.details);
    StatusResult {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        services,
        bus,
        llm: methods::LlmStatus { providers },
    }
}
