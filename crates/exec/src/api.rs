//! `exec.sock`'s methods. `exec.execute` is where an action becomes real, so it trusts nothing it
//! can check itself: the connection must be policy's, and the action's own token (policy's exec
//! token attenuated to this action id and a short expiry) must verify with exec's key. Then the
//! execution is recorded and committed before anything happens; an id seen before is -32003.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aiventbus_proto::Method as _;
use aiventbus_proto::exec::{
    ActionRef, CancelResult, ExecCancel, ExecExecute, ExecGet, ExecNotify, ExecOutcome, ExecuteParams, ExecuteResult,
    NotifyParams, NotifyResult, Outcome, RunInfo, RunRef, ToolsList, ToolsResult,
};
use aiventbus_proto::methods::{Health, HealthResult, NoParams};
use aiventbus_rpc::config::ExecConfig;
use aiventbus_rpc::token::Verifier;
use aiventbus_rpc::{Methods, Peer, RpcError};
use serde_json::{Map, Value, json};
use tokio_util::task::TaskTracker;

use crate::actions::{self, Done};
use crate::bus::Bus;
use crate::http::Http;
use crate::mcp::Tools;
use crate::notify::{Notifier, Urgency};
use crate::process::Runs;
use crate::shell::BaseEnv;
use crate::store::{NewExecution, Store};

/// The only subject whose actions exec carries out.
pub const POLICY: &str = "policy";

/// Everything the methods share.
pub struct State {
    /// `exec.db`.
    pub store: Store,
    /// The bus.
    pub bus: Bus,
    /// Process runs.
    pub runs: Arc<Runs>,
    /// Verifies action tokens (exec's own key).
    pub verifier: Verifier,
    /// `[exec]`.
    pub config: ExecConfig,
    /// The execution-time checks (file roots, protected paths, addresses, deny rules).
    pub guard: Arc<aiventbus_guard::Settings>,
    /// HTTP.
    pub http: Http,
    /// Desktop notifications.
    pub notifier: Notifier,
    /// MCP servers.
    pub tools: Arc<Tools>,
    /// The environment agents' processes get.
    pub base_env: BaseEnv,
    /// `xdg-open`, when installed.
    pub xdg_open: Option<PathBuf>,
    /// Executions carried out on their own task, so a caller that goes away cannot cut one short.
    pub tracker: TaskTracker,
    /// Actions received since start.
    pub received: AtomicU64,
    /// Actions refused for their token since start.
    pub refused: AtomicU64,
}

/// Checks that this call may carry out this action; -32001 otherwise.
pub fn authorize(verifier: &Verifier, peer: &Peer, params: &ExecuteParams) -> Result<(), RpcError> {
    if peer.subject != POLICY {
        return Err(RpcError::unauthorized(format!(
            "exec.execute is policy's; this connection is {:?}",
            peer.subject
        )));
    }
    let claims = verifier
        .verify(&params.token, aiventbus_rpc::time::now_ms())
        .map_err(|error| RpcError::unauthorized(format!("token: {error}")))?;
    if claims.subject != POLICY {
        return Err(RpcError::unauthorized(format!(
            "token: held by {:?}, not policy",
            claims.subject
        )));
    }
    if !claims.allows(ExecExecute::NAME) {
        return Err(RpcError::unauthorized("token: does not allow exec.execute"));
    }
    match claims.binding("action") {
        Some(bound) if bound == params.action_id => Ok(()),
        Some(_) => Err(RpcError::unauthorized(format!(
            "token: bound to another action than {}",
            params.action_id
        ))),
        None => Err(RpcError::unauthorized(
            "token: not bound to an action (policy attenuates it with action=<id> per decision)",
        )),
    }
}

async fn execute(state: Arc<State>, peer: Arc<Peer>, params: ExecuteParams) -> Result<ExecuteResult, RpcError> {
    if let Err(error) = authorize(&state.verifier, &peer, &params) {
        state.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(action = %params.action_id, peer = %peer.subject, %error, "refused an action");
        return Err(error);
    }
    let first = state
        .store
        .begin(NewExecution {
            action_id: params.action_id.clone(),
            action_type: params.action_type.clone(),
            agent_id: params.agent_id.clone(),
            trace_id: params.trace_id.clone(),
            owner: params.owner,
        })
        .await
        .map_err(RpcError::internal)?;
    if !first {
        return Err(RpcError::conflict(format!(
            "{} was handed to exec before; an action runs at most once (see exec.outcome)",
            params.action_id
        )));
    }
    state.received.fetch_add(1, Ordering::Relaxed);
    tracing::info!(action = %params.action_id, action_type = %params.action_type, owner = params.owner, "executing");
    // On its own task: the outcome is recorded even when the caller goes away meanwhile.
    let task_state = Arc::clone(&state);
    state
        .tracker
        .spawn(async move { run_to_outcome(task_state, params).await })
        .await
        .map_err(RpcError::internal)
}

async fn run_to_outcome(state: Arc<State>, params: ExecuteParams) -> ExecuteResult {
    match actions::carry_out(&state, &params).await {
        Done::Finished { ok, result, run_id } => {
            record(&state, &params.action_id, ok, &result).await;
            ExecuteResult { ok, result, run_id }
        }
        Done::Detached { run_id, done } => {
            let waiter = Arc::clone(&state);
            let action_id = params.action_id.clone();
            state.tracker.spawn(async move {
                let (ok, result) = match done.await {
                    Ok(outcome) => (outcome.exit_code == Some(0), outcome.to_result()),
                    Err(_) => (false, actions::failure("the run ended without an outcome")),
                };
                record(&waiter, &action_id, ok, &result).await;
            });
            ExecuteResult {
                ok: true,
                result: json!({ "run_id": run_id }),
                run_id: Some(run_id),
            }
        }
    }
}

async fn record(state: &State, action_id: &str, ok: bool, result: &Value) {
    if let Err(error) = state.store.finish(action_id, ok, result).await {
        tracing::error!(action = action_id, %error, "could not record an action's outcome");
    }
    tracing::info!(action = action_id, ok, "executed");
}

async fn outcome(state: Arc<State>, params: ActionRef) -> Result<Outcome, RpcError> {
    state
        .store
        .outcome(&params.action_id)
        .await
        .map_err(RpcError::internal)?
        .ok_or_else(|| RpcError::not_found(format!("exec never received action {}", params.action_id)))
}

async fn get(state: Arc<State>, params: RunRef) -> Result<RunInfo, RpcError> {
    state
        .store
        .get_run(&params.run_id)
        .await
        .map_err(RpcError::internal)?
        .ok_or_else(|| RpcError::not_found(format!("no run {}", params.run_id)))
}

async fn cancel(state: Arc<State>, params: RunRef) -> Result<CancelResult, RpcError> {
    if state.runs.cancel(&params.run_id) {
        return Ok(CancelResult { cancelled: true });
    }
    // Not running: known (already over) or unknown.
    get(state, params).await.map(|_| CancelResult { cancelled: false })
}

async fn notify(state: Arc<State>, params: NotifyParams) -> Result<NotifyResult, RpcError> {
    let urgency = match params.urgency.as_deref() {
        None => Urgency::Normal,
        Some(word) => Urgency::parse(word)
            .ok_or_else(|| RpcError::invalid_params(format!("urgency: {word:?} is not low, normal or critical")))?,
    };
    Ok(state.notifier.notify(&params.title, &params.message, urgency).await)
}

async fn health(state: Arc<State>) -> Result<HealthResult, RpcError> {
    let counts = state.store.counts().await.map_err(RpcError::internal)?;
    let (available, configured) = state.tools.counts();
    let mut details = Map::new();
    details.insert("running".into(), json!(state.runs.running()));
    details.insert("max_runs".into(), json!(state.config.max_runs));
    details.insert("received".into(), json!(state.received.load(Ordering::Relaxed)));
    details.insert("refused".into(), json!(state.refused.load(Ordering::Relaxed)));
    let executions: Map<String, Value> = counts
        .executions
        .into_iter()
        .map(|(status, count)| (status, json!(count)))
        .collect();
    details.insert("executions".into(), Value::Object(executions));
    details.insert("runs".into(), json!(counts.runs));
    details.insert(
        "mcp_servers".into(),
        json!({"available": available, "configured": configured}),
    );
    Ok(HealthResult {
        service: "exec".into(),
        status: "ok".into(),
        details,
    })
}

/// The method table.
pub fn methods(state: Arc<State>) -> Methods<State> {
    let mut table = Methods::new(state);
    table
        .add::<ExecExecute, _, _>(execute)
        .add::<ExecOutcome, _, _>(|state, _, params| outcome(state, params))
        .add::<ExecGet, _, _>(|state, _, params| get(state, params))
        .add::<ExecCancel, _, _>(|state, _, params| cancel(state, params))
        .add::<ExecNotify, _, _>(|state, _, params| notify(state, params))
        .add::<ToolsList, _, _>(|state, _, _: NoParams| async move { Ok::<ToolsResult, RpcError>(state.tools.list()) })
        .add::<Health, _, _>(|state, _, _: NoParams| health(state));
    table
}
