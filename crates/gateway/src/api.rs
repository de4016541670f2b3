//! The public method table: `api.sock` serves it directly, and the HTTP and ATP faces call the
//! same table (through [`crate::app::App::call`]), so the three never drift apart. Events, topics,
//! knowledge and memory belong to the bus, services to init, agents to llm, rules to the router,
//! actions, sessions, requests and inbox to policy, process runs to exec; users, API keys, secrets
//! and the dashboard link to the gateway itself. `system.status` is assembled here;
//! `system.version` is answered here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aiventbus_proto::event::validate_source;
use aiventbus_proto::methods::{
    self, KnowledgeSetParams, MemoryAddParams, NoParams, ServiceInfo, ServicesResult, Status, StatusResult,
    SubscribeResult, UnsubscribeParams, UnsubscribeResult, Version, VersionResult,
};
use aiventbus_proto::{ErrorCode, Method, PROTOCOL_VERSION, agents, auth, exec, policy};
use aiventbus_rpc::error::parse_params;
use aiventbus_rpc::server::{Peer, Pending, Reply};
use aiventbus_rpc::{Client, ClientError, Methods, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthStore;
use crate::secrets::SecretStore;

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
    /// The policy service (actions, sessions, requests, inbox, the owner's commands).
    pub policy: Client,
    /// The exec service (process runs).
    pub exec: Client,
}

/// What the gateway keeps itself, for the methods it answers.
pub struct Local {
    /// Users, API keys, sessions.
    pub auth: Arc<AuthStore>,
    /// Encrypted secrets.
    pub secrets: Arc<SecretStore>,
    /// `http://127.0.0.1:8420`: where the dashboard's one-time link points.
    pub base_url: String,
}

/// The method table's shared state.
pub struct State {
    upstreams: Arc<Upstreams>,
    local: Local,
    /// Open forwarded subscriptions by (connection, subscription id).
    subscriptions: Mutex<HashMap<(u64, String), CancellationToken>>,
}

/// Forwarded to policy as they are (`inbox.poll`, `policy.explain` and the decisions have their
/// own handlers below).
const POLICY_METHODS: [&str; 11] = [
    policy::ActionsGet::NAME,
    policy::ActionsPending::NAME,
    policy::ActionsHistory::NAME,
    policy::SessionsRegister::NAME,
    policy::SessionsHeartbeat::NAME,
    policy::SessionsSetState::NAME,
    policy::SessionsList::NAME,
    policy::RequestsCreate::NAME,
    policy::RequestsGet::NAME,
    policy::RequestsList::NAME,
    policy::InboxAck::NAME,
];

/// Methods of the producers service, which does not run yet: the routes exist and answer -32005.
pub const PRODUCER_METHODS: [&str; 6] = [
    "producers.list",
    "producers.enable",
    "producers.disable",
    "cron.list",
    "cron.add",
    "cron.remove",
];

/// The door a call came through, as recorded in decisions: `api.sock`, `http` or `atp`.
pub fn door(peer: &Peer) -> &'static str {
    if peer.via == Peer::SOCKET { "api.sock" } else { peer.via }
}

/// The public method table.
pub fn methods(upstreams: Arc<Upstreams>, local: Local) -> Methods<State> {
    let state = Arc::new(State {
        upstreams,
        local,
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
    for name in POLICY_METHODS {
        table.add_raw(name, move |state: Arc<State>, _peer, params| {
            Box::pin(async move { forward(&state.upstreams.policy, name, params).await })
        });
    }
    table.add_raw(policy::InboxPoll::NAME, inbox_poll);
    table.add::<policy::PolicyExplain, _, _>(|state: Arc<State>, _peer, params| explain(state, params));
    table.add_raw(
        policy::ActionsApprove::NAME,
        forward_decided::<policy::DecideParams>(policy::ActionsApprove::NAME, |params, by, via| {
            params.decided_by = Some(by);
            params.via = Some(via.to_owned());
        }),
    );
    table.add_raw(
        policy::ActionsDeny::NAME,
        forward_decided::<policy::DecideParams>(policy::ActionsDeny::NAME, |params, by, via| {
            params.decided_by = Some(by);
            params.via = Some(via.to_owned());
        }),
    );
    table.add_raw(
        policy::ActionsDenyPending::NAME,
        forward_decided::<policy::DenyPendingParams>(policy::ActionsDenyPending::NAME, |params, by, via| {
            params.decided_by = Some(by);
            params.via = Some(via.to_owned());
        }),
    );
    table.add_raw(
        policy::RequestsRespond::NAME,
        forward_decided::<policy::RespondParams>(policy::RequestsRespond::NAME, |params, by, _| {
            params.decided_by = Some(by);
        }),
    );
    table.add_raw(
        policy::RequestsDismiss::NAME,
        forward_decided::<policy::DismissParams>(policy::RequestsDismiss::NAME, |params, by, _| {
            params.decided_by = Some(by);
        }),
    );
    table.add_raw(
        exec::ExecRun::NAME,
        forward_decided::<exec::RunParams>(exec::ExecRun::NAME, |params, by, _| {
            params.requested_by = Some(by);
        }),
    );
    for name in [exec::ExecGet::NAME, exec::ExecCancel::NAME] {
        table.add_raw(name, move |state: Arc<State>, _peer, params| {
            Box::pin(async move { forward(&state.upstreams.exec, name, params).await })
        });
    }
    for name in PRODUCER_METHODS {
        table.add_raw(name, |_, _, _| {
            Box::pin(std::future::ready(Err(RpcError::unavailable(
                "the producers service is not running",
            ))))
        });
    }
    add_local(&mut table);
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

/// A handler forwarding `method` with the caller filled in by `fill` (`user:<name>` and the door),
/// replacing whatever the client sent there. Approvals, denials and answers record who decided.
fn forward_decided<P>(
    method: &'static str,
    fill: fn(&mut P, String, &'static str),
) -> impl Fn(Arc<State>, Arc<Peer>, Option<Box<RawValue>>) -> Pending + Send + Sync + 'static
where
    P: DeserializeOwned + Serialize + 'static,
{
    move |state, peer, params| {
        let prepared = parse_params::<P>(params.as_deref()).and_then(|mut params| {
            fill(&mut params, peer.subject.clone(), door(&peer));
            serde_json::value::to_raw_value(&params).map_err(RpcError::internal)
        });
        Box::pin(async move { forward(&state.upstreams.policy, method, Some(prepared?)).await })
    }
}

/// `inbox.poll` waits up to its `timeout_ms` (≤ 120 s) on policy: the call gets that long plus a
/// margin instead of the client's default deadline.
fn inbox_poll(state: Arc<State>, _peer: Arc<Peer>, params: Option<Box<RawValue>>) -> Pending {
    let parsed = parse_params::<policy::PollParams>(params.as_deref());
    Box::pin(async move {
        let poll = parsed?;
        let wait = std::time::Duration::from_millis(poll.timeout_ms.min(120_000)) + std::time::Duration::from_secs(10);
        let policy = &state.upstreams.policy;
        policy
            .call_raw_with_timeout(policy::InboxPoll::NAME, params, wait)
            .await
            .map(Reply::Value)
            .map_err(|error| upstream_error(policy, error))
    })
}

/// `policy.explain`: with an `agent_id`, the agent's settings come from llm so policy weighs the
/// same `reactive`, `allowed_actions` and `trust` it would for a real run.
async fn explain(state: Arc<State>, mut params: policy::ExplainParams) -> Result<policy::Explanation, RpcError> {
    if let Some(agent_id) = params.agent_id.clone() {
        let llm = &state.upstreams.llm;
        let agent = llm
            .call::<agents::AgentsGet>(&methods::IdParams { id: agent_id })
            .await
            .map_err(|error| upstream_error(llm, error))?;
        params.agent = Some(policy::AgentPolicy {
            id: agent.id,
            reactive: agent.reactive,
            allowed_actions: agent.allowed_actions,
            trust: agent.trust,
        });
    } else if params.agent.is_some() {
        return Err(RpcError::invalid_params(
            "agent: filled in from agent_id; name the agent by agent_id",
        ));
    }
    let policy = &state.upstreams.policy;
    policy
        .call::<policy::PolicyExplain>(&params)
        .await
        .map_err(|error| upstream_error(policy, error))
}

/// The methods the gateway answers from its own store.
fn add_local(table: &mut Methods<State>) {
    table.add::<auth::KeysCreate, _, _>(|state: Arc<State>, _peer, params: auth::KeyCreateParams| async move {
        Ok(state.local.auth.create_key(&params.user, params.role, params.label)?)
    });
    table.add::<auth::KeysList, _, _>(|state: Arc<State>, _peer, params: auth::KeysListParams| async move {
        Ok(auth::KeysResult {
            keys: state.local.auth.keys(params.user.as_deref()),
        })
    });
    table.add::<auth::KeysRevoke, _, _>(|state: Arc<State>, _peer, params: auth::KeyRef| async move {
        Ok(auth::RevokedResult {
            revoked: state.local.auth.revoke_key(&params.key_id)?,
        })
    });
    table.add::<auth::UsersList, _, _>(|state: Arc<State>, _peer, _: NoParams| async move {
        Ok(auth::UsersResult {
            users: state.local.auth.users(),
        })
    });
    table.add::<auth::UsersSetRole, _, _>(|state: Arc<State>, _peer, params: auth::SetRoleParams| async move {
        Ok(state.local.auth.set_role(&params.user, params.role)?)
    });
    table.add::<auth::UsersDelete, _, _>(|state: Arc<State>, _peer, params: auth::UserRef| async move {
        Ok(methods::DeleteResult {
            deleted: state.local.auth.delete_user(&params.user)?,
        })
    });
    table.add::<auth::UsersSetPassword, _, _>(|state: Arc<State>, _peer, params: auth::SetPasswordParams| async move {
        // argon2id takes tens of milliseconds: off the runtime's threads.
        let auth = state.local.auth.clone();
        tokio::task::spawn_blocking(move || auth.set_password(&params.user, &params.password))
            .await
            .map_err(RpcError::internal)?
            .map_err(RpcError::from)
    });
    table.add::<auth::SecretsSet, _, _>(|state: Arc<State>, _peer, params: auth::SecretSetParams| async move {
        Ok(state.local.secrets.set(&params.name, &params.value)?)
    });
    table.add::<auth::SecretsList, _, _>(|state: Arc<State>, _peer, _: NoParams| async move {
        Ok(auth::SecretsResult {
            secrets: state.local.secrets.list()?,
        })
    });
    table.add::<auth::SecretsDelete, _, _>(|state: Arc<State>, _peer, params: auth::SecretRef| async move {
        Ok(methods::DeleteResult {
            deleted: state.local.secrets.delete(&params.name)?,
        })
    });
    table.add::<auth::DashboardLink, _, _>(|state: Arc<State>, peer: Arc<Peer>, _: NoParams| async move {
        let user = peer.subject.strip_prefix("user:").unwrap_or(&peer.subject).to_owned();
        let (code, expires_at_ms) = state.local.auth.mint_code(&user)?;
        Ok(auth::DashboardLinkResult {
            url: format!("{}/login?code={code}", state.local.base_url),
            expires_at: aiventbus_rpc::time::rfc3339_ms(expires_at_ms),
        })
    });
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
