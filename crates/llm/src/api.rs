//! The llm's methods on `llm.sock`: `agents.*` (create, get by id or name, list, update, delete,
//! enable, disable, memory), `llm.status` and `system.health`. Store errors become wire codes in
//! one place, [`rpc_error`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aiventbus_proto::agents::{
    AgentMemoryParams, AgentUpdateParams, AgentsCreate, AgentsDelete, AgentsDisable, AgentsEnable, AgentsGet,
    AgentsList, AgentsMemory, AgentsResult, AgentsUpdate, AssignmentsCancelPending, CancelPendingParams, LlmStatus,
    LlmStatusResult,
};
use aiventbus_proto::methods::{
    DeleteResult, Health, HealthResult, IdParams, IdResult, MemoryList, MemoryListParams, MemorySearch,
    MemorySearchParams, NoParams,
};
use aiventbus_rpc::{ClientError, Methods, RpcError};
use serde_json::json;

use crate::actions::PolicyGate;
use crate::agents::{AgentError, memory_scope};
use crate::run::Shared;
use crate::worker::Worker;

/// Default and largest page of `agents.memory`.
const MEMORY_DEFAULT_LIMIT: u32 = 20;
const MEMORY_MAX_LIMIT: u32 = 100;

/// What the handlers share.
pub struct State {
    /// Agents, providers, bus.
    pub shared: Arc<Shared>,
    /// For its figures.
    pub worker: Arc<Worker>,
    /// For its counters.
    pub gate: Arc<PolicyGate>,
}

/// The one place agent errors become wire errors.
pub fn rpc_error(error: AgentError) -> RpcError {
    match error {
        AgentError::Invalid(message) => RpcError::invalid_params(message),
        AgentError::Conflict(message) => RpcError::conflict(message),
        AgentError::NotFound(message) => RpcError::not_found(message),
        AgentError::Db(error) => RpcError::internal(error),
    }
}

fn bus_error(error: ClientError) -> RpcError {
    match error {
        ClientError::Rpc(error) => RpcError::from(error),
        other => RpcError::unavailable(format!("the bus: {other}")),
    }
}

/// The method table of `llm.sock`.
pub fn methods(state: Arc<State>) -> Methods<State> {
    let mut table = Methods::new(state);
    table.add::<AgentsCreate, _, _>(|state, _, spec| async move {
        let agent = state.shared.agents.create(spec).await.map_err(rpc_error)?;
        tracing::info!(agent = %agent.id, name = %agent.name, "agent created");
        Ok(IdResult { id: agent.id })
    });
    table.add::<AgentsGet, _, _>(|state, _, params: IdParams| async move {
        state.shared.agents.find(&params.id).map_err(rpc_error)
    });
    table.add::<AgentsList, _, _>(|state, _, _: NoParams| async move {
        Ok(AgentsResult {
            agents: state.shared.agents.list(),
        })
    });
    table.add::<AgentsUpdate, _, _>(|state, _, params: AgentUpdateParams| async move {
        state
            .shared
            .agents
            .update(&params.id, params.spec)
            .await
            .map_err(rpc_error)
    });
    table.add::<AgentsDelete, _, _>(|state, _, params: IdParams| async move {
        let id = state.shared.agents.find(&params.id).ok().map(|agent| agent.id);
        let deleted = state.shared.agents.delete(&params.id).await.map_err(rpc_error)?;
        if let Some(agent_id) = id.filter(|_| deleted) {
            // Its queued work would otherwise wait forever for an agent that no longer exists.
            let cancel = CancelPendingParams {
                agent_id: Some(agent_id),
            };
            if let Err(error) = state.shared.bus.client.call::<AssignmentsCancelPending>(&cancel).await {
                tracing::warn!(%error, "could not cancel the deleted agent's pending work");
            }
        }
        Ok(DeleteResult { deleted })
    });
    table.add::<AgentsEnable, _, _>(|state, _, params: IdParams| async move {
        state
            .shared
            .agents
            .set_enabled(&params.id, true)
            .await
            .map_err(rpc_error)
    });
    table.add::<AgentsDisable, _, _>(|state, _, params: IdParams| async move {
        state
            .shared
            .agents
            .set_enabled(&params.id, false)
            .await
            .map_err(rpc_error)
    });
    table.add::<AgentsMemory, _, _>(|state, _, params: AgentMemoryParams| async move {
        let agent = state.shared.agents.find(&params.id).map_err(rpc_error)?;
        let limit = params.limit.unwrap_or(MEMORY_DEFAULT_LIMIT);
        if !(1..=MEMORY_MAX_LIMIT).contains(&limit) {
            return Err(RpcError::invalid_params(format!(
                "limit: must be from 1 to {MEMORY_MAX_LIMIT}"
            )));
        }
        let scope = memory_scope(&agent);
        let bus = &state.shared.bus.client;
        match params.query.filter(|query| !query.trim().is_empty()) {
            Some(query) => bus
                .call::<MemorySearch>(&MemorySearchParams {
                    query,
                    scope: Some(scope),
                    limit: Some(limit),
                })
                .await
                .map_err(bus_error),
            None => bus
                .call::<MemoryList>(&MemoryListParams {
                    scope: Some(scope),
                    limit: Some(limit),
                    ..MemoryListParams::default()
                })
                .await
                .map_err(bus_error),
        }
    });
    table.add::<LlmStatus, _, _>(|state, _, _: NoParams| async move {
        Ok(LlmStatusResult {
            providers: state
                .shared
                .providers
                .values()
                .map(|provider| provider.health.status())
                .collect(),
        })
    });
    table.add::<Health, _, _>(|state, _, _: NoParams| async move {
        let stats = &state.shared.stats;
        let details = json!({
            "worker": state.shared.worker,
            "agents": state.shared.agents.list().len(),
            "running": state.worker.running(),
            "runs_started": stats.started.load(Ordering::Relaxed),
            "runs_completed": stats.completed.load(Ordering::Relaxed),
            "runs_failed": stats.failed.load(Ordering::Relaxed),
            "runs_released": stats.released.load(Ordering::Relaxed),
            "runs_suspended": stats.suspended.load(Ordering::Relaxed),
            "runs_resumed": stats.resumed.load(Ordering::Relaxed),
            "actions_executed": state.gate.stats.executed.load(Ordering::Relaxed),
            "actions_denied": state.gate.stats.denied.load(Ordering::Relaxed),
            "actions_waiting": state.gate.stats.waiting.load(Ordering::Relaxed),
            "policy_unavailable": state.gate.stats.unavailable.load(Ordering::Relaxed),
            "providers_up": state.shared.providers.values().filter(|provider| provider.is_up()).count(),
        });
        Ok(HealthResult {
            service: "llm".into(),
            status: "ok".into(),
            details: details.as_object().cloned().unwrap_or_default(),
        })
    });
    table
}
