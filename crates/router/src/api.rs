//! The router's methods on `router.sock`: rules CRUD (agents are checked with llm), `rules.match`
//! for `query.ask`'s fail-fast check, and `system.health`. Store errors become wire errors in one
//! place.

use std::sync::Arc;
use std::time::Duration;

use aiventbus_proto::agents::{
    Agent, AgentsGet, RuleMatchParams, RuleSpec, RuleUpdateParams, RulesCreate, RulesDelete, RulesGet, RulesList,
    RulesMatch, RulesResult, RulesUpdate,
};
use aiventbus_proto::event::validate_topic;
use aiventbus_proto::methods::{DeleteResult, Health, HealthResult, IdParams, IdResult, NoParams};
use aiventbus_proto::{ErrorCode, Method, Priority};
use aiventbus_rpc::{Client, ClientError, Methods, RpcError};

use crate::matcher::{self, Facts};
use crate::rules::{self, Invalid};
use crate::state::State;
use crate::store::{Store, StoreError};

/// How long a rule change waits for llm to describe its agent.
const AGENT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share: the router's state and a client of llm (to check agents).
pub struct Api {
    /// Shared with the follower.
    pub state: Arc<State>,
    /// llm, which owns agents.
    pub llm: Client,
}

/// The one place store errors become wire errors.
pub fn rpc_error(error: StoreError) -> RpcError {
    match error.code() {
        ErrorCode::Internal => RpcError::internal(error),
        code => RpcError::new(code, error.to_string()),
    }
}

fn invalid(error: Invalid) -> RpcError {
    RpcError::invalid_params(error.0)
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    state: &Arc<State>,
    work: impl FnOnce(&State) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RpcError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(RpcError::internal)?
        .map_err(rpc_error)
}

/// The agent llm knows as `agent_id`: -32602 when it has none, -32005 when llm cannot answer.
async fn lookup_agent(api: &Api, agent_id: &str) -> Result<Agent, RpcError> {
    let params = serde_json::value::to_raw_value(&IdParams {
        id: agent_id.to_owned(),
    })
    .map_err(RpcError::internal)?;
    let unavailable = |why: String| {
        RpcError::unavailable(format!(
            "agent_id: cannot check agent {agent_id}: the llm service is unavailable ({why})"
        ))
    };
    let raw = match api
        .llm
        .call_raw_with_timeout(AgentsGet::NAME, Some(params), AGENT_LOOKUP_TIMEOUT)
        .await
    {
        Ok(raw) => raw,
        Err(ClientError::Rpc(error)) if error.kind() == Some(ErrorCode::NotFound) => {
            return Err(RpcError::invalid_params(format!("agent_id: no agent {agent_id}")));
        }
        Err(ClientError::Rpc(error)) => return Err(unavailable(error.message)),
        Err(error) => return Err(unavailable(error.to_string())),
    };
    let agent: Agent = serde_json::from_str(raw.get())
        .map_err(|error| unavailable(format!("unreadable agents.get answer: {error}")))?;
    api.state.agents.note(&agent);
    Ok(agent)
}

fn not_found(id: &str) -> RpcError {
    RpcError::not_found(format!("no rule {id}"))
}

async fn create(api: Arc<Api>, spec: RuleSpec) -> Result<IdResult, RpcError> {
    rules::check_spec(&spec, true).map_err(invalid)?;
    let agent_id = spec.agent_id.clone().unwrap_or_default();
    let agent = lookup_agent(&api, &agent_id).await?;
    let id = aiventbus_rpc::ids::prefixed("rule");
    let rule = rules::new_rule(spec, id.clone(), agent.id, &aiventbus_rpc::time::now_rfc3339()).map_err(invalid)?;
    blocking(&api.state, move |state| state.change(|store| store.insert_rule(&rule))).await?;
    tracing::info!(rule = %id, "rule created");
    Ok(IdResult { id })
}

async fn update(api: Arc<Api>, params: RuleUpdateParams) -> Result<aiventbus_proto::agents::Rule, RpcError> {
    rules::check_spec(&params.spec, false).map_err(invalid)?;
    let agent_id = match &params.spec.agent_id {
        Some(agent_id) => Some(lookup_agent(&api, agent_id).await?.id),
        None => None,
    };
    let now = aiventbus_rpc::time::now_rfc3339();
    let id = params.id;
    let spec = params.spec;
    blocking(&api.state, move |state| {
        state.change(|store| {
            let Some(rule) = store.rule(&id)? else {
                return Ok(Err(not_found(&id)));
            };
            let rule = match rules::updated_rule(rule, spec, agent_id, &now) {
                Ok(rule) => rule,
                Err(error) => return Ok(Err(invalid(error))),
            };
            if !store.update_rule(&rule)? {
                return Ok(Err(not_found(&id)));
            }
            Ok(Ok(rule))
        })
    })
    .await?
}

fn delete(store: &Store, id: &str) -> Result<bool, StoreError> {
    match store.rule(id)? {
        Some(rule) => store.delete_rule(&rule.id),
        None => Ok(false),
    }
}

async fn match_rules(state: Arc<State>, params: RuleMatchParams) -> Result<RulesResult, RpcError> {
    validate_topic(&params.topic).map_err(|message| RpcError::invalid_params(format!("topic: {message}")))?;
    let facts = Facts {
        topic: &params.topic,
        priority: params.priority.unwrap_or(Priority::Medium),
        source: params.source.as_deref(),
        semantic_type: params.semantic_type.as_deref(),
    };
    if !matcher::routable_topic(facts.topic) {
        return Ok(RulesResult::default());
    }
    let rules = state
        .plan(&facts)
        .await
        .into_iter()
        .map(|compiled| compiled.rule)
        .collect();
    Ok(RulesResult { rules })
}

/// The method table of `router.sock`.
pub fn methods(api: Arc<Api>) -> Methods<Api> {
    let mut table = Methods::new(api);
    table.add::<RulesCreate, _, _>(|api, _, spec: RuleSpec| create(api, spec));
    table.add::<RulesGet, _, _>(|api, _, params: IdParams| async move {
        let id = params.id;
        let lookup = id.clone();
        blocking(&api.state, move |state| state.store.rule(&lookup))
            .await?
            .ok_or_else(|| not_found(&id))
    });
    table.add::<RulesList, _, _>(|api, _, _: NoParams| async move {
        let rules = api.state.rules().iter().map(|compiled| compiled.rule.clone()).collect();
        Ok(RulesResult { rules })
    });
    table.add::<RulesUpdate, _, _>(|api, _, params: RuleUpdateParams| update(api, params));
    table.add::<RulesDelete, _, _>(|api, _, params: IdParams| async move {
        let id = params.id;
        let deleted = blocking(&api.state, move |state| state.change(|store| delete(store, &id))).await?;
        Ok(DeleteResult { deleted })
    });
    table.add::<RulesMatch, _, _>(|api, _, params: RuleMatchParams| match_rules(Arc::clone(&api.state), params));
    table.add::<Health, _, _>(|api, _, _: NoParams| async move {
        Ok(HealthResult {
            service: "router".into(),
            status: "ok".into(),
            details: api.state.health(),
        })
    });
    table
}
