//! The life of an action (SPEC §8, §9): a proposal is looked up for taint, rate limited, decided
//! by the guard and recorded; a denial is reported, a confirmation waits (with a desktop
//! notification and an expiry), an allowed or approved action is marked `executing` and committed
//! before exec is called, at most once. When exec goes away mid-call the outcome is asked of exec
//! (`exec.outcome`) until it answers — never by sending the action again. Also the owner's
//! `exec.run` and the `policy.explain` dry run, which share the guard.

use std::sync::Arc;
use std::time::Duration;

use aiventbus_guard::Request;
use aiventbus_proto::ErrorCode;
use aiventbus_proto::exec::{
    ActionRef, ExecExecute, ExecNotify, ExecOutcome, ExecuteParams, NotifyParams, RunIdResult, RunParams,
};
use aiventbus_proto::methods::{Chain, IdParams};
use aiventbus_proto::policy::{
    ActionRecord, ActionStatus, DecideParams, Decision, DenyPendingParams, DenyPendingResult, ExplainParams,
    Explanation, ProposeParams, ProposeResult,
};
use aiventbus_rpc::{ClientError, RpcError};
use serde_json::{Map, Value, json};

use crate::canonical::canonical;
use crate::limiter::{Admission, Summary};
use crate::publisher::Links;
use crate::records::{self, Decided, HumanDecision, NewAction, Waiting};
use crate::state::{State, call, rpc_error};

/// How long a taint lookup waits for the bus before the run counts as tainted.
const CHAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `exec.outcome` or `exec.notify` call waits.
const SHORT_CALL: Duration = Duration::from_secs(5);
/// How long the owner's detached `exec.run` waits for exec to start the process.
const RUN_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Results larger than this (as JSON) are shortened in `action.executed`.
const EVENT_RESULT_BUDGET: usize = 8 * 1024;
/// The longest action summary in a desktop notification.
const SUMMARY_CHARS: usize = 160;

fn now() -> u64 {
    aiventbus_rpc::time::now_ms()
}

// ------------------------------------------------------------------ events

fn links(record: &ActionRecord) -> Links {
    Links {
        trace_id: record.trace_id.clone(),
        parent_event: record.event_id.clone(),
        correlation_id: Some(record.id.clone()),
    }
}

fn base_payload(record: &ActionRecord) -> Map<String, Value> {
    let mut payload = Map::new();
    payload.insert("action_id".into(), json!(record.id));
    payload.insert("action_type".into(), json!(record.action_type));
    payload.insert("agent_id".into(), json!(record.agent_id));
    payload.insert("event_id".into(), json!(record.event_id));
    payload.insert("run_id".into(), json!(record.run_id));
    payload.insert("assignment_id".into(), json!(record.assignment_id));
    payload
}

async fn report_denied_by_policy(state: &State, record: &ActionRecord) {
    let mut payload = base_payload(record);
    payload.insert("rule".into(), json!(record.rule));
    payload.insert("reason".into(), json!(record.reason));
    let topic = if record.rule == "unknown_action" {
        "system.unknown_action"
    } else {
        "system.action_denied"
    };
    state.events.publish(topic, Value::Object(payload), links(record)).await;
}

async fn report_pending(state: &State, record: &ActionRecord) {
    let mut payload = base_payload(record);
    payload.insert("params".into(), Value::Object(record.params.clone()));
    payload.insert("rule".into(), json!(record.rule));
    payload.insert("reason".into(), json!(record.reason));
    payload.insert("tainted".into(), json!(record.tainted));
    payload.insert("expires_at".into(), json!(record.expires_at));
    state
        .events
        .publish("action.pending", Value::Object(payload), links(record))
        .await;
}

async fn report_decided(state: &State, record: &ActionRecord) {
    let mut payload = base_payload(record);
    payload.insert("decided_by".into(), json!(record.decided_by));
    payload.insert("via".into(), json!(record.decided_via));
    let topic = match record.status {
        ActionStatus::Denied => {
            let reason = record
                .denial_reason
                .clone()
                .unwrap_or_else(|| format!("denied by {}", record.decided_by.as_deref().unwrap_or("a person")));
            payload.insert("reason".into(), json!(reason));
            "action.denied"
        }
        _ => "action.approved",
    };
    state.events.publish(topic, Value::Object(payload), links(record)).await;
}

async fn report_expired(state: &State, record: &ActionRecord) {
    let mut payload = base_payload(record);
    let reason = format!(
        "nobody decided before it expired at {}",
        record.expires_at.as_deref().unwrap_or("its expiry")
    );
    payload.insert("reason".into(), json!(reason));
    state
        .events
        .publish("action.expired", Value::Object(payload), links(record))
        .await;
}

async fn report_executed(state: &State, record: &ActionRecord) {
    let mut payload = base_payload(record);
    let (result, truncated) = shorten(record.result.clone().unwrap_or(Value::Null), EVENT_RESULT_BUDGET);
    payload.insert("status".into(), json!(record.status));
    payload.insert("ok".into(), json!(record.status == ActionStatus::Succeeded));
    payload.insert("result".into(), result);
    if truncated {
        payload.insert("result_truncated".into(), json!(true));
    }
    if let Some(run) = &record.exec_run_id {
        payload.insert("exec_run_id".into(), json!(run));
    }
    state
        .events
        .publish("action.executed", Value::Object(payload), links(record))
        .await;
}

/// Fits `value` into about `budget` bytes of JSON: long strings are cut first; if that is not
/// enough, a prefix of the JSON text stands in for it. True when anything was cut.
fn shorten(value: Value, budget: usize) -> (Value, bool) {
    if value.to_string().len() <= budget {
        return (value, false);
    }
    fn cut_strings(value: &mut Value, limit: usize) {
        match value {
            Value::String(text) if text.len() > limit => {
                let mut end = limit;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push('…');
            }
            Value::Array(items) => items.iter_mut().for_each(|item| cut_strings(item, limit)),
            Value::Object(map) => map.values_mut().for_each(|item| cut_strings(item, limit)),
            _ => {}
        }
    }
    let mut cut = value;
    cut_strings(&mut cut, budget / 4);
    let text = cut.to_string();
    if text.len() <= budget {
        return (cut, true);
    }
    let mut end = budget;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (json!({"preview": &text[..end]}), true)
}

/// A few words on what an action does, for a notification.
fn summary(record: &ActionRecord) -> String {
    let text = |key: &str| record.params.get(key).and_then(Value::as_str).unwrap_or("?");
    let words = match record.action_type.as_str() {
        "shell_exec" => match record.params.get("argv").and_then(Value::as_array) {
            Some(argv) => format!(
                "run `{}`",
                argv.iter()
                    .map(|arg| arg.as_str().unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => format!("run `{}`", text("command")),
        },
        "file_read" => format!("read {}", text("path")),
        "file_write" => format!("write {}", text("path")),
        "file_delete" => format!("delete {}", text("path")),
        "http_request" => format!(
            "send {} {}",
            record.params.get("method").and_then(Value::as_str).unwrap_or("GET"),
            text("url")
        ),
        "open_app" => format!("open {}", text("target")),
        "tool_call" => format!("call {}.{}", text("tool"), text("method")),
        other => other.replace('_', " "),
    };
    if words.chars().count() > SUMMARY_CHARS {
        let mut short: String = words.chars().take(SUMMARY_CHARS).collect();
        short.push('…');
        short
    } else {
        words
    }
}

/// Asks exec for a desktop notification; fire-and-forget.
fn notify_desktop(state: &Arc<State>, record: &ActionRecord) {
    let params = NotifyParams {
        title: "aiventbus: approval needed".into(),
        message: format!(
            "{} wants to {}",
            record.agent_id.as_deref().unwrap_or("an agent"),
            summary(record)
        ),
        urgency: Some("normal".into()),
    };
    let state = Arc::clone(state);
    state.tasks.clone().spawn(async move {
        if let Err(error) = call::<ExecNotify>(&state.exec, &params, SHORT_CALL).await {
            tracing::debug!(%error, "desktop notification failed");
        }
    });
}

/// Reports a window's suppressed proposals once it ends (or at shutdown).
fn schedule_rate_report(state: &Arc<State>, summary: Summary) {
    let state = Arc::clone(state);
    state.tasks.clone().spawn(async move {
        let wait = Duration::from_millis(summary.window_end_ms.saturating_sub(now()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.shutdown.cancelled() => {}
        }
        let payload = json!({
            "agent_id": summary.agent_id,
            "action_type": summary.action_type,
            "suppressed": summary.suppressed(),
            "window_start": aiventbus_rpc::time::rfc3339_ms(summary.window_start_ms),
            "window_end": aiventbus_rpc::time::rfc3339_ms(summary.window_end_ms),
        });
        state
            .events
            .publish("system.action_rate_limited", payload, Links::default())
            .await;
    });
}

// ------------------------------------------------------------------ proposals

fn answer(record: &ActionRecord) -> ProposeResult {
    ProposeResult {
        action_id: record.id.clone(),
        status: record.status,
        decision: record.decision,
        rule: record.rule.clone(),
        reason: record.reason.clone(),
        result: record.result.clone(),
    }
}

/// Whether the run of `event_id` is tainted (the event or an ancestor is on an untrusted topic),
/// and the event's trace. Fails closed: when the bus cannot say, the run counts as tainted.
async fn lineage(state: &State, event_id: &str) -> (bool, Option<String>) {
    let params = IdParams {
        id: event_id.to_owned(),
    };
    match call::<Chain>(&state.bus, &params, CHAIN_TIMEOUT).await {
        Ok(chain) => {
            let tainted =
                aiventbus_guard::is_tainted(&state.guard, chain.events.iter().map(|event| event.topic.as_str()));
            let trace = chain
                .events
                .iter()
                .find(|event| event.id == event_id)
                .or(chain.events.last())
                .map(|event| event.trace_id.clone());
            (tainted, trace)
        }
        Err(error) => {
            tracing::warn!(event_id, %error, "cannot read the event's chain; treating the run as tainted");
            (true, None)
        }
    }
}

async fn store(state: &State, action: NewAction) -> Result<ActionRecord, RpcError> {
    state
        .db
        .run(move |connection| records::insert(connection, &action, now()))
        .await
        .map_err(rpc_error)
}

fn required(value: &str, field: &str) -> Result<(), RpcError> {
    if value.trim().is_empty() {
        return Err(RpcError::invalid_params(format!("{field}: must not be empty")));
    }
    Ok(())
}

/// `actions.propose`: decide, record, and carry out or hold the action. Answers after an allowed
/// action ran, at once for one that waits or is denied.
pub async fn propose(state: &Arc<State>, params: ProposeParams) -> Result<ProposeResult, RpcError> {
    required(&params.action_type, "action_type")?;
    required(&params.agent.id, "agent.id")?;
    required(&params.event_id, "event_id")?;
    let canonical_params = canonical(&Value::Object(params.params.clone()));
    let agent_id = params.agent.id.clone();

    let (agent, action_type, key) = (agent_id.clone(), params.action_type.clone(), canonical_params.clone());
    let identical = state
        .db
        .run(move |connection| records::find_identical_waiting(connection, &agent, &action_type, &key))
        .await
        .map_err(rpc_error)?;
    if let Some(existing) = identical {
        tracing::debug!(action_id = %existing.id, "identical proposal collapsed into the waiting one");
        return Ok(answer(&existing));
    }

    let mut action = NewAction {
        id: aiventbus_rpc::ids::prefixed("act"),
        action_type: params.action_type.clone(),
        params: params.params.clone(),
        canonical: canonical_params,
        status: ActionStatus::Denied,
        agent_id: Some(agent_id.clone()),
        event_id: Some(params.event_id.clone()),
        trace_id: None,
        run_id: Some(params.run_id.clone()),
        assignment_id: Some(params.assignment_id.clone()),
        tainted: false,
        decision: Decision::Deny,
        rule: String::new(),
        reason: String::new(),
        resolved_path: None,
        expires_ms: None,
    };

    if let Admission::Limited(first) = state.limiter.admit(&agent_id, &params.action_type, now()) {
        if let Some(summary) = first {
            schedule_rate_report(state, summary);
        }
        action.rule = "rate_limited".into();
        action.reason = format!(
            "agent {agent_id} proposed more than {} {} actions within {}s",
            state.settings.rate_limit,
            params.action_type,
            state.settings.rate_window.as_secs()
        );
        // Collapsed: one system.action_rate_limited per window, not an event per proposal.
        return Ok(answer(&store(state, action).await?));
    }

    let (tainted, trace_id) = lineage(state, &params.event_id).await;
    let verdict = aiventbus_guard::decide(
        &state.guard,
        &Request {
            action_type: &params.action_type,
            params: &params.params,
            agent: Some(&params.agent),
            tainted,
            owner: false,
        },
    );
    action.trace_id = trace_id;
    action.tainted = tainted;
    action.decision = verdict.decision;
    action.rule = verdict.rule;
    action.reason = verdict.reason;
    action.resolved_path = verdict
        .resolved_path
        .as_deref()
        .and_then(|path| path.to_str())
        .map(str::to_owned);

    match verdict.decision {
        Decision::Deny => {
            let record = store(state, action).await?;
            report_denied_by_policy(state, &record).await;
            Ok(answer(&record))
        }
        Decision::Confirm => {
            action.status = ActionStatus::WaitingConfirmation;
            action.expires_ms = Some(now() + state.settings.approval_ttl.as_millis() as u64);
            let max_pending = state.settings.max_pending_per_agent;
            let candidate = action.clone();
            let outcome = state
                .db
                .run(move |connection| records::insert_waiting(connection, &candidate, max_pending, now()))
                .await
                .map_err(rpc_error)?;
            match outcome {
                Waiting::Created(record) => {
                    state.expiry.notify_one();
                    report_pending(state, &record).await;
                    notify_desktop(state, &record);
                    Ok(answer(&record))
                }
                Waiting::Existing(record) => Ok(answer(&record)),
                Waiting::TooMany(waiting) => {
                    action.status = ActionStatus::Denied;
                    action.decision = Decision::Deny;
                    action.expires_ms = None;
                    action.rule = "too_many_pending".into();
                    action.reason = format!("agent {agent_id} already has {waiting} actions waiting for a decision");
                    let record = store(state, action).await?;
                    report_denied_by_policy(state, &record).await;
                    Ok(answer(&record))
                }
            }
        }
        Decision::Allow => {
            action.status = ActionStatus::Approved;
            let record = store(state, action).await?;
            let done = carry_out(state, record).await;
            Ok(answer(&done))
        }
    }
}

// ------------------------------------------------------------------ execution

/// Policy's exec token, narrowed to this one action and a short life.
async fn action_token(state: &State, action_id: &str) -> Result<String, String> {
    let text = tokio::fs::read_to_string(&state.exec_token).await.map_err(|error| {
        format!(
            "cannot read policy's exec token {}: {error}",
            state.exec_token.display()
        )
    })?;
    let bound = aiventbus_rpc::token::attenuate(text.trim(), &format!("action={action_id}"))
        .map_err(|error| format!("policy's exec token is unusable: {error}"))?;
    let expires = now() + state.settings.action_token_ttl.as_millis() as u64;
    aiventbus_rpc::token::attenuate(&bound, &format!("exp={expires}"))
        .map_err(|error| format!("policy's exec token is unusable: {error}"))
}

/// How long one `exec.execute` may take before policy asks `exec.outcome` instead.
fn exec_deadline(state: &State, params: &Map<String, Value>) -> Duration {
    let own = params
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
        .unwrap_or(state.settings.exec_timeout);
    own.max(state.settings.exec_timeout) + state.settings.exec_margin
}

/// The final status, result and process run of an action exec was handed.
type Final = (ActionStatus, Value, Option<String>);

/// Asks exec what became of an action until it says something final. `None` when the service
/// stops first (the action stays `executing`; the next start asks again).
async fn ask_outcome(state: &State, action_id: &str) -> Option<Final> {
    let params = ActionRef {
        action_id: action_id.to_owned(),
    };
    let mut backoff = state.settings.outcome_backoff;
    loop {
        match call::<ExecOutcome>(&state.exec, &params, SHORT_CALL).await {
            Ok(outcome) => match outcome.status.as_str() {
                "executing" => tracing::debug!(action_id, "exec is still carrying it out"),
                word => {
                    let status = match word {
                        "succeeded" => ActionStatus::Succeeded,
                        "interrupted" => ActionStatus::Interrupted,
                        _ => ActionStatus::Failed,
                    };
                    let result = outcome.result.unwrap_or(Value::Null);
                    return Some((status, result, outcome.run_id));
                }
            },
            Err(ClientError::Rpc(error)) if error.kind() == Some(ErrorCode::NotFound) => {
                let result = json!({"error": {"message": "exec never received this action; it was not sent again"}});
                return Some((ActionStatus::Interrupted, result, None));
            }
            Err(error) => tracing::debug!(action_id, %error, "exec.outcome failed; asking again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = state.shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(state.settings.outcome_backoff_max);
    }
}

/// Records a final status (from `from`) and reports it; the record as it is afterwards.
async fn settle(state: &State, id: &str, from: ActionStatus, outcome: Final) -> Option<ActionRecord> {
    let (status, result, run_id) = outcome;
    let owned = id.to_owned();
    let finished = state
        .db
        .run(move |connection| records::finish(connection, &owned, from, status, &result, run_id.as_deref(), now()))
        .await;
    match finished {
        Ok(Some(record)) => {
            report_executed(state, &record).await;
            Some(record)
        }
        Ok(None) => current(state, id).await,
        Err(error) => {
            tracing::error!(action_id = id, %error, "cannot record an action's outcome");
            None
        }
    }
}

async fn current(state: &State, id: &str) -> Option<ActionRecord> {
    let owned = id.to_owned();
    match state.db.run(move |connection| records::get(connection, &owned)).await {
        Ok(record) => record,
        Err(error) => {
            tracing::error!(action_id = id, %error, "cannot read an action");
            None
        }
    }
}

/// Carries out an `approved` action: `executing` is committed, then exec is called once. The
/// record as it ends up (still `executing` only when the service stopped meanwhile).
pub async fn carry_out(state: &Arc<State>, record: ActionRecord) -> ActionRecord {
    let id = record.id.clone();
    let token = match action_token(state, &id).await {
        Ok(token) => token,
        Err(message) => {
            tracing::error!(action_id = %id, %message, "cannot hand an action to exec");
            let outcome = (ActionStatus::Failed, json!({"error": {"message": message}}), None);
            return settle(state, &id, ActionStatus::Approved, outcome)
                .await
                .unwrap_or(record);
        }
    };
    let owned = id.clone();
    let marked = state
        .db
        .run(move |connection| records::mark_executing(connection, &owned, now()))
        .await;
    let resolved_path = match marked {
        Ok(Some(path)) => path,
        Ok(None) => return current(state, &id).await.unwrap_or(record),
        Err(error) => {
            tracing::error!(action_id = %id, %error, "cannot mark an action executing; not running it");
            return record;
        }
    };
    let mut params = record.params.clone();
    if let Some(path) = resolved_path {
        params.insert("resolved_path".into(), Value::String(path));
    }
    let request = ExecuteParams {
        action_id: id.clone(),
        token,
        action_type: record.action_type.clone(),
        params,
        trace_id: record.trace_id.clone(),
        parent_event: record.event_id.clone(),
        agent_id: record.agent_id.clone(),
        owner: false,
        detach: false,
    };
    let deadline = exec_deadline(state, &record.params);
    let answered = tokio::select! {
        answered = call::<ExecExecute>(&state.exec, &request, deadline) => answered,
        _ = state.shutdown.cancelled() => return current(state, &id).await.unwrap_or(record),
    };
    let outcome = match answered {
        Ok(done) => {
            let status = if done.ok {
                ActionStatus::Succeeded
            } else {
                ActionStatus::Failed
            };
            Some((status, done.result, done.run_id))
        }
        // exec refused the call itself: nothing ran.
        Err(ClientError::Rpc(error))
            if matches!(
                error.kind(),
                Some(ErrorCode::Unauthorized | ErrorCode::InvalidParams | ErrorCode::MethodNotFound)
            ) =>
        {
            tracing::warn!(action_id = %id, %error, "exec refused an action");
            let result = json!({"error": {"code": error.code, "message": error.message}});
            Some((ActionStatus::Failed, result, None))
        }
        // Anything else leaves it open whether exec has it: ask, never send it again.
        Err(error) => {
            tracing::info!(action_id = %id, %error, "no answer from exec; asking for the outcome");
            ask_outcome(state, &id).await
        }
    };
    match outcome {
        Some(outcome) => settle(state, &id, ActionStatus::Executing, outcome)
            .await
            .unwrap_or(record),
        None => current(state, &id).await.unwrap_or(record),
    }
}

/// Resolves an action found `executing` at startup through `exec.outcome`.
async fn resolve_executing(state: &Arc<State>, record: ActionRecord) {
    if let Some(outcome) = ask_outcome(state, &record.id).await {
        settle(state, &record.id, ActionStatus::Executing, outcome).await;
    }
}

/// At startup: actions left `executing` are resolved through exec; actions `approved` but never
/// handed to exec are run now. (Waiting ones past expiry are the expiry timer's.)
pub fn recover(state: &Arc<State>) {
    let state = Arc::clone(state);
    state.tasks.clone().spawn(async move {
        let found = state
            .db
            .run(|connection| {
                Ok((
                    records::in_status(connection, ActionStatus::Executing)?,
                    records::in_status(connection, ActionStatus::Approved)?,
                ))
            })
            .await;
        let (executing, approved) = match found {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "cannot read unfinished actions");
                return;
            }
        };
        if !executing.is_empty() || !approved.is_empty() {
            tracing::info!(
                executing = executing.len(),
                approved = approved.len(),
                "resuming actions left from before the restart"
            );
        }
        for record in executing {
            let task_state = Arc::clone(&state);
            state
                .tasks
                .spawn(async move { resolve_executing(&task_state, record).await });
        }
        for record in approved {
            let task_state = Arc::clone(&state);
            state.tasks.spawn(async move {
                carry_out(&task_state, record).await;
            });
        }
    });
}

// ------------------------------------------------------------------ human decisions

fn human(params: &DecideParams, to: ActionStatus, subject: &str) -> HumanDecision {
    HumanDecision {
        to,
        decided_by: params.decided_by.clone().unwrap_or_else(|| subject.to_owned()),
        via: params.via.clone().unwrap_or_else(|| "api.sock".to_owned()),
        reason: if to == ActionStatus::Denied {
            params.reason.clone()
        } else {
            None
        },
    }
}

async fn decide(state: &Arc<State>, id: String, decision: HumanDecision) -> Result<ActionRecord, RpcError> {
    required(&id, "id")?;
    let decided = state
        .db
        .run(move |connection| records::decide(connection, &id, &decision, now()))
        .await
        .map_err(rpc_error)?;
    match decided {
        Decided::Done(record) => {
            report_decided(state, &record).await;
            Ok(record)
        }
        Decided::Expired(record) => {
            report_expired(state, &record).await;
            Err(RpcError::conflict(format!(
                "action {} is expired, not waiting_confirmation",
                record.id
            )))
        }
    }
}

/// `actions.approve`: answers the `approved` record at once; exec runs it in the background.
pub async fn approve(state: &Arc<State>, params: DecideParams, subject: &str) -> Result<ActionRecord, RpcError> {
    let decision = human(&params, ActionStatus::Approved, subject);
    let record = decide(state, params.id, decision).await?;
    let task_state = Arc::clone(state);
    let running = record.clone();
    state.tasks.spawn(async move {
        carry_out(&task_state, running).await;
    });
    Ok(record)
}

/// `actions.deny`.
pub async fn deny(state: &Arc<State>, params: DecideParams, subject: &str) -> Result<ActionRecord, RpcError> {
    let decision = human(&params, ActionStatus::Denied, subject);
    decide(state, params.id, decision).await
}

/// `actions.deny_pending`.
pub async fn deny_pending(
    state: &Arc<State>,
    params: DenyPendingParams,
    subject: &str,
) -> Result<DenyPendingResult, RpcError> {
    let decision = HumanDecision {
        to: ActionStatus::Denied,
        decided_by: params.decided_by.unwrap_or_else(|| subject.to_owned()),
        via: params.via.unwrap_or_else(|| "api.sock".to_owned()),
        reason: params.reason,
    };
    let agent_id = params.agent_id;
    let denied = state
        .db
        .run(move |connection| records::deny_pending(connection, agent_id.as_deref(), &decision, now()))
        .await
        .map_err(rpc_error)?;
    let mut ids = Vec::with_capacity(denied.len());
    for record in &denied {
        if record.status == ActionStatus::Expired {
            report_expired(state, record).await;
        } else {
            report_decided(state, record).await;
            ids.push(record.id.clone());
        }
    }
    Ok(DenyPendingResult {
        denied: ids.len() as u64,
        ids,
    })
}

/// Expires waiting actions when their time comes: one task sleeping until the earliest expiry,
/// woken early when a new waiting action is stored.
pub async fn expiry_timer(state: Arc<State>) {
    loop {
        let swept = state
            .db
            .run(|connection| {
                let expired = records::expire_due(connection, now())?;
                Ok((expired, records::next_expiry(connection)?))
            })
            .await;
        let next = match swept {
            Ok((expired, next)) => {
                for record in &expired {
                    tracing::info!(action_id = %record.id, "action expired");
                    report_expired(&state, record).await;
                }
                next
            }
            Err(error) => {
                tracing::error!(%error, "cannot expire waiting actions; trying again shortly");
                Some(now() + 1000)
            }
        };
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now()))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.expiry.notified() => {}
            _ = sleep => {}
        }
    }
}

// ------------------------------------------------------------------ the owner's commands, dry runs

/// `exec.run`: the owner's own command. Deny rules apply (-32001 naming the rule), nothing is
/// confirmed; exec starts it and answers `{run_id}` at once.
pub async fn exec_run(state: &Arc<State>, params: RunParams) -> Result<RunIdResult, RpcError> {
    if params.argv.first().is_none_or(|program| program.is_empty()) {
        return Err(RpcError::invalid_params("argv: must name a program"));
    }
    let mut flat = Map::new();
    flat.insert("argv".into(), json!(params.argv));
    let verdict = aiventbus_guard::decide(
        &state.guard,
        &Request {
            action_type: "shell_exec",
            params: &flat,
            agent: None,
            tainted: false,
            owner: true,
        },
    );
    if verdict.decision == Decision::Deny {
        let payload = json!({
            "action_type": "shell_exec",
            "argv": params.argv,
            "rule": verdict.rule,
            "reason": verdict.reason,
            "requested_by": params.requested_by,
        });
        state
            .events
            .publish("system.action_denied", payload, Links::default())
            .await;
        return Err(
            RpcError::unauthorized(format!("refused by policy ({}): {}", verdict.rule, verdict.reason))
                .with_data(json!({"rule": verdict.rule, "reason": verdict.reason})),
        );
    }
    let run_id = aiventbus_rpc::ids::prefixed("run");
    let token = action_token(state, &run_id).await.map_err(RpcError::internal)?;
    let mut exec_params = flat;
    if let Some(cwd) = params.cwd {
        exec_params.insert("cwd".into(), json!(cwd));
    }
    if let Some(env) = params.env {
        exec_params.insert("env".into(), json!(env));
    }
    if let Some(stdin) = params.stdin {
        exec_params.insert("stdin".into(), json!(stdin));
    }
    if let Some(timeout_ms) = params.timeout_ms {
        exec_params.insert("timeout_ms".into(), json!(timeout_ms));
    }
    let request = ExecuteParams {
        action_id: run_id.clone(),
        token,
        action_type: "shell_exec".into(),
        params: exec_params,
        trace_id: None,
        parent_event: None,
        agent_id: None,
        owner: true,
        detach: true,
    };
    match call::<ExecExecute>(&state.exec, &request, RUN_START_TIMEOUT).await {
        Ok(started) if started.ok => Ok(RunIdResult {
            run_id: started.run_id.unwrap_or(run_id),
        }),
        Ok(failed) => {
            let message = failed
                .result
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("the command could not be started");
            Err(RpcError::invalid_params(format!("argv: {message}")))
        }
        Err(ClientError::Rpc(error)) => Err(RpcError(error)),
        Err(error) => Err(RpcError::unavailable(format!("exec: {error} (run {run_id})"))),
    }
}

/// Splits `{action_type, …params}` (params may also be nested under `params`) into its parts.
fn split_action(action: &Map<String, Value>) -> Result<(String, Map<String, Value>), RpcError> {
    let action_type = match action.get("action_type") {
        Some(Value::String(kind)) if !kind.trim().is_empty() => kind.clone(),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "action.action_type: expected a non-empty string",
            ));
        }
        None => return Err(RpcError::invalid_params("action.action_type: required")),
    };
    let mut params: Map<String, Value> = action
        .iter()
        .filter(|(key, _)| key.as_str() != "action_type" && key.as_str() != "params")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    match action.get("params") {
        None | Some(Value::Null) => {}
        Some(Value::Object(nested)) => params.extend(nested.iter().map(|(key, value)| (key.clone(), value.clone()))),
        Some(_) => return Err(RpcError::invalid_params("action.params: expected an object")),
    }
    Ok((action_type, params))
}

/// `policy.explain`: what policy would decide, and by which rule; records and publishes nothing.
pub fn explain(state: &State, params: &ExplainParams) -> Result<Explanation, RpcError> {
    let (action_type, flat) = split_action(&params.action)?;
    let tainted = params
        .topic
        .as_deref()
        .is_some_and(|topic| aiventbus_guard::is_tainted(&state.guard, [topic]));
    let verdict = aiventbus_guard::decide(
        &state.guard,
        &Request {
            action_type: &action_type,
            params: &flat,
            agent: params.agent.as_ref(),
            tainted,
            owner: false,
        },
    );
    Ok(Explanation {
        decision: verdict.decision,
        rule: verdict.rule,
        reason: verdict.reason,
        tainted,
        commands: verdict.commands,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_shortened_for_events() {
        let small = json!({"exit_code": 0, "stdout": "hi"});
        assert_eq!(shorten(small.clone(), 8192), (small, false));
        let big = json!({"exit_code": 0, "stdout": "é".repeat(10_000)});
        let (cut, truncated) = shorten(big, 8192);
        assert!(truncated);
        assert!(cut.to_string().len() <= 8192, "{}", cut.to_string().len());
        assert_eq!(cut["exit_code"], 0, "small fields survive");
        let wide = Value::Array((0..2000).map(|n| json!(n)).collect());
        let (cut, truncated) = shorten(wide, 1024);
        assert!(truncated && cut["preview"].as_str().unwrap().len() <= 1024);
    }

    #[test]
    fn explain_accepts_flat_and_nested_params() {
        let flat = json!({"action_type": "shell_exec", "argv": ["ls"]});
        let (kind, params) = split_action(flat.as_object().unwrap()).unwrap();
        assert_eq!((kind.as_str(), &params["argv"]), ("shell_exec", &json!(["ls"])));
        let nested = json!({"action_type": "file_read", "params": {"path": "/tmp/x"}});
        let (_, params) = split_action(nested.as_object().unwrap()).unwrap();
        assert_eq!(params["path"], "/tmp/x");
        let missing = split_action(json!({"argv": []}).as_object().unwrap()).unwrap_err();
        assert!(missing.0.message.contains("action.action_type"));
        let bad = split_action(json!({"action_type": "log", "params": 3}).as_object().unwrap()).unwrap_err();
        assert!(bad.0.message.contains("action.params"));
    }
}
