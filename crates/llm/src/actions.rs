//! The hand-off of proposed actions. Everything goes through one [`ActionGate`]; until the policy
//! service exists, [`LocalGate`] carries out the harmless types itself — `emit_event` (a child of
//! the triggering event, source `agent:<id>`), `log`, `set_knowledge`, `get_knowledge` — and
//! records every other type as a proposal. The policy service will implement the same trait.

use std::sync::atomic::{AtomicU64, Ordering};

use aiventbus_proto::agents::{Agent, ProposedAction};
use aiventbus_proto::event::{is_reserved, validate_topic};
use aiventbus_proto::methods::{KeyParams, KnowledgeGet, KnowledgeSet, KnowledgeSetParams};
use aiventbus_proto::{ErrorCode, Event, EventStatus, Priority};
use aiventbus_rpc::ClientError;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::bus::Bus;

/// What the gate needs to know about the run proposing an action.
pub struct ActionContext<'a> {
    /// The agent.
    pub agent: &'a Agent,
    /// The event that triggered the run.
    pub event: &'a Event,
    /// The run.
    pub run_id: &'a str,
    /// The assignment.
    pub assignment_id: &'a str,
}

/// What became of an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Carried out now; the result goes back to the model.
    Executed {
        /// Whether it worked.
        ok: bool,
        /// Its result, or `{error: {code?, message}}`.
        result: Value,
    },
    /// Recorded as a proposal (in `agent.completed`) for the policy service and a human.
    Proposed,
}

/// Decides what happens to each proposed action of a known, allowed type.
pub trait ActionGate: Send + Sync {
    /// Handles one action.
    fn handle<'a>(&'a self, context: &'a ActionContext<'a>, action: &'a ProposedAction) -> BoxFuture<'a, Outcome>;
}

/// The gate used until the policy service exists.
pub struct LocalGate {
    bus: Bus,
    logged: AtomicU64,
}

impl LocalGate {
    /// Over the shared bus client.
    pub fn new(bus: Bus) -> LocalGate {
        LocalGate {
            bus,
            logged: AtomicU64::new(0),
        }
    }

    /// `log` actions carried out so far.
    pub fn logged(&self) -> u64 {
        self.logged.load(Ordering::Relaxed)
    }
}

impl ActionGate for LocalGate {
    fn handle<'a>(&'a self, context: &'a ActionContext<'a>, action: &'a ProposedAction) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let params = &action.params;
            let result = match action.action_type.as_str() {
                "emit_event" => self.emit_event(context, params).await,
                "log" => Ok(self.log(context, params)),
                "set_knowledge" => self.set_knowledge(context, params).await,
                "get_knowledge" => self.get_knowledge(params).await,
                _ => return Outcome::Proposed,
            };
            match result {
                Ok(result) => Outcome::Executed { ok: true, result },
                Err(error) => Outcome::Executed {
                    ok: false,
                    result: json!({ "error": error }),
                },
            }
        })
    }
}

/// An action's failure as the model sees it: `{code?, message}`.
fn failure(code: Option<i32>, message: impl Into<String>) -> Value {
    let mut error = json!({ "message": message.into() });
    if let Some(code) = code {
        error["code"] = json!(code);
    }
    error
}

fn client_failure(error: ClientError) -> Value {
    match error.rpc() {
        Some(rpc) => failure(Some(rpc.code), rpc.message.clone()),
        None => failure(None, error.to_string()),
    }
}

fn text<'p>(params: &'p Map<String, Value>, name: &str) -> Result<&'p str, Value> {
    params.get(name).and_then(Value::as_str).ok_or_else(|| {
        failure(
            Some(ErrorCode::InvalidParams.code()),
            format!("{name}: a string is required"),
        )
    })
}

impl LocalGate {
    async fn emit_event(&self, context: &ActionContext<'_>, params: &Map<String, Value>) -> Result<Value, Value> {
        let invalid = |message: String| failure(Some(ErrorCode::InvalidParams.code()), message);
        let topic = text(params, "topic")?;
        validate_topic(topic).map_err(|problem| invalid(format!("topic: {problem}")))?;
        // llm may publish there itself, so the reserved namespaces are refused here for agents.
        if is_reserved(topic) {
            return Err(invalid(format!(
                "topic: {topic:?} is in a reserved namespace (system, agent, exec, action, request) that only the daemon's services publish to"
            )));
        }
        let payload = match params.get("payload") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::Object(payload)) => Value::Object(payload.clone()),
            Some(_) => return Err(invalid("payload: must be a JSON object".into())),
        };
        let priority = match params.get("priority").and_then(Value::as_str) {
            Some(text) => Some(Priority::parse(text).ok_or_else(|| invalid(format!("priority: unknown {text:?}")))?),
            None => None,
        };
        let published = self
            .bus
            .client
            .call::<aiventbus_proto::methods::Publish>(&aiventbus_proto::methods::PublishParams {
                topic: topic.to_owned(),
                payload: Some(payload),
                priority,
                source: Some(format!("agent:{}", context.agent.id)),
                trace_id: Some(context.event.trace_id.clone()),
                parent_event: Some(context.event.id.clone()),
                correlation_id: Some(context.run_id.to_owned()),
                ..Default::default()
            })
            .await
            .map_err(client_failure)?;
        if published.status == EventStatus::Failed {
            return Err(failure(
                None,
                format!(
                    "event {} was refused by a chain limit (depth or trace budget)",
                    published.id
                ),
            ));
        }
        Ok(json!({"id": published.id, "seq": published.seq, "status": published.status.as_str()}))
    }

    fn log(&self, context: &ActionContext<'_>, params: &Map<String, Value>) -> Value {
        let message = match params.get("message") {
            Some(Value::String(message)) => message.clone(),
            Some(other) => other.to_string(),
            None => Value::Object(params.clone()).to_string(),
        };
        self.logged.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            agent = %context.agent.id,
            event = %context.event.id,
            run = %context.run_id,
            message = %crate::providers::truncate(&message, 2000),
            "agent log"
        );
        json!({"logged": true})
    }

    async fn set_knowledge(&self, context: &ActionContext<'_>, params: &Map<String, Value>) -> Result<Value, Value> {
        let key = text(params, "key")?;
        let value = params
            .get("value")
            .cloned()
            .ok_or_else(|| failure(Some(ErrorCode::InvalidParams.code()), "value: is required"))?;
        let fact = self
            .bus
            .client
            .call::<KnowledgeSet>(&KnowledgeSetParams {
                key: key.to_owned(),
                value,
                source: Some(format!("agent:{}", context.agent.id)),
            })
            .await
            .map_err(client_failure)?;
        Ok(json!({"key": fact.key, "updated_at": fact.updated_at}))
    }

    async fn get_knowledge(&self, params: &Map<String, Value>) -> Result<Value, Value> {
        let key = text(params, "key")?;
        match self
            .bus
            .client
            .call::<KnowledgeGet>(&KeyParams { key: key.to_owned() })
            .await
        {
            Ok(fact) => Ok(json!({"key": fact.key, "found": true, "value": fact.value})),
            Err(error) if error.rpc().is_some_and(|rpc| rpc.code == ErrorCode::NotFound.code()) => {
                Ok(json!({"key": key, "found": false}))
            }
            Err(error) => Err(client_failure(error)),
        }
    }
}
