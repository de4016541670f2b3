//! `query.ask`: publishes `user.query` for the caller and answers with the final response of the
//! first agent run of that event. It fails at once (-32002) when no rule sends `user.query` to an
//! agent, and with -32007 when no answer arrives in time (naming the trace's actions that wait for
//! approval, if any).

use std::time::Duration;

use aiventbus_proto::agents::{QueryParams, QueryResult, RuleMatchParams, RulesMatch, RulesResult};
use aiventbus_proto::event::validate_prefixed_id;
use aiventbus_proto::methods::{Publish, PublishParams, PublishResult, Subscribe, SubscribeParams};
use aiventbus_proto::policy::{ActionsListParams, ActionsPending, ActionsResult};
use aiventbus_proto::{ErrorCode, Event, Method};
use aiventbus_rpc::{Notice, RpcError};

use crate::api::{Upstreams, upstream_error};

/// The topic a query is published on.
pub const QUERY_TOPIC: &str = "user.query";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Below the socket server's request deadline (`rpc.request_timeout`, 180 s by default).
const MAX_TIMEOUT: Duration = Duration::from_secs(170);
const MAX_TEXT: usize = 64 * 1024;
/// What ends a query's wait: an answer, or a failure that will not be retried.
const OUTCOMES: [&str; 3] = ["agent.completed", "system.agent_failure", "system.parse_failure"];

/// Runs one query for `source` (the connecting user).
pub async fn ask(upstreams: &Upstreams, source: String, params: QueryParams) -> Result<QueryResult, RpcError> {
    if params.text.trim().is_empty() {
        return Err(RpcError::invalid_params("text: must not be empty"));
    }
    if params.text.len() > MAX_TEXT {
        return Err(RpcError::invalid_params(format!("text: at most {MAX_TEXT} bytes")));
    }
    let timeout = match params.timeout_ms {
        None => DEFAULT_TIMEOUT,
        Some(0) => return Err(RpcError::invalid_params("timeout_ms: must be greater than 0")),
        Some(ms) => Duration::from_millis(ms).min(MAX_TIMEOUT),
    };
    let trace_id = match params.trace_id {
        Some(trace_id) => {
            validate_prefixed_id(&trace_id, "tr_").map_err(|e| RpcError::invalid_params(format!("trace_id: {e}")))?;
            trace_id
        }
        None => aiventbus_rpc::ids::prefixed("tr"),
    };
    let deadline = tokio::time::Instant::now() + timeout;

    let matched: RulesResult = upstreams
        .router
        .call::<RulesMatch>(&RuleMatchParams {
            topic: QUERY_TOPIC.into(),
            priority: None,
            source: Some(source.clone()),
            semantic_type: None,
        })
        .await
        .map_err(|error| upstream_error(&upstreams.router, error))?;
    if matched.rules.is_empty() {
        return Err(RpcError::not_found(
            "no agent takes user.query: create an agent and a rule whose topic_pattern matches user.query",
        ));
    }

    // Follow the outcomes from before the publish, so the answer cannot slip past.
    let mut from_seq = None;
    let mut subscription = follow(upstreams, from_seq).await?;
    from_seq = subscription.next_seq();
    let event_id = aiventbus_rpc::ids::prefixed("evt");
    let mut payload = serde_json::Map::new();
    payload.insert("text".into(), params.text.into());
    let published: PublishResult = upstreams
        .bus
        .call::<Publish>(&PublishParams {
            topic: QUERY_TOPIC.into(),
            payload: Some(payload.into()),
            id: Some(event_id.clone()),
            source: Some(source),
            trace_id: Some(trace_id.clone()),
            ..PublishParams::default()
        })
        .await
        .map_err(|error| upstream_error(&upstreams.bus, error))?;

    loop {
        let notice = match tokio::time::timeout_at(deadline, subscription.next()).await {
            Ok(notice) => notice,
            Err(_) => {
                let pending = pending_actions(upstreams, &published.trace_id).await;
                let message = if pending.is_empty() {
                    format!("no answer within {} ms", timeout.as_millis())
                } else {
                    format!(
                        "no answer within {} ms: the run waits for approval of {}",
                        timeout.as_millis(),
                        pending.join(", ")
                    )
                };
                return Err(RpcError::new(ErrorCode::Expired, message).with_data(serde_json::json!({
                    "event_id": published.id,
                    "trace_id": published.trace_id,
                    "pending_actions": pending,
                })));
            }
        };
        let event = match notice {
            Some(Notice::Item(raw)) => match serde_json::from_str::<Event>(raw.get()) {
                Ok(event) => event,
                Err(error) => return Err(RpcError::internal(format!("undecodable event: {error}"))),
            },
            Some(Notice::Closed(_)) | None => {
                // The bus restarted or cut the stream: pick up where it stopped.
                subscription = tokio::time::timeout_at(deadline, follow(upstreams, from_seq))
                    .await
                    .map_err(|_| RpcError::new(ErrorCode::Expired, "no answer in time"))??;
                continue;
            }
        };
        from_seq = Some(event.seq + 1);
        if event.trace_id != published.trace_id
            || event.payload.get("event_id").and_then(|v| v.as_str()) != Some(published.id.as_str())
        {
            continue;
        }
        if event.topic == "agent.completed" {
            let summary = event
                .payload
                .get("summary")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            let response = event
                .payload
                .get("output")
                .cloned()
                .unwrap_or_else(|| serde_json::Value::Object(event.payload.clone()));
            return Ok(QueryResult {
                event_id: published.id,
                trace_id: published.trace_id,
                summary,
                response,
            });
        }
        let error = event
            .payload
            .get("error")
            .and_then(|v| v.as_str())
            .unwrap_or("the agent run failed")
            .to_owned();
        return Err(
            RpcError::unavailable(format!("the agent could not answer: {error}")).with_data(
                serde_json::json!({"event_id": published.id, "trace_id": published.trace_id, "failure": event.id}),
            ),
        );
    }
}

/// Ids of the trace's actions waiting for a human (empty when policy does not answer quickly).
async fn pending_actions(upstreams: &Upstreams, trace_id: &str) -> Vec<String> {
    let params = ActionsListParams {
        trace_id: Some(trace_id.to_owned()),
        ..ActionsListParams::default()
    };
    let Ok(params) = serde_json::value::to_raw_value(&params) else {
        return Vec::new();
    };
    let answer = upstreams
        .policy
        .call_raw_with_timeout(ActionsPending::NAME, Some(params), Duration::from_secs(2))
        .await;
    answer
        .ok()
        .and_then(|raw| serde_json::from_str::<ActionsResult>(raw.get()).ok())
        .map(|result| result.actions.into_iter().map(|action| action.id).collect())
        .unwrap_or_default()
}

async fn follow(upstreams: &Upstreams, from_seq: Option<u64>) -> Result<aiventbus_rpc::Subscription, RpcError> {
    let params = SubscribeParams {
        patterns: OUTCOMES.iter().map(|s| (*s).to_owned()).collect(),
        from_seq,
    };
    upstreams
        .bus
        .subscribe(Subscribe::NAME, &params)
        .await
        .map_err(|error| upstream_error(&upstreams.bus, error))
}
