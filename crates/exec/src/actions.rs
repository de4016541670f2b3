//! Carrying out one decided action by type. Every outcome is `(ok, result)`; a failure's result is
//! `{error: {message}}` with a message that names the offending field or says what refused it.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aiventbus_proto::event::{is_reserved, validate_topic};
use aiventbus_proto::exec::ExecuteParams;
use aiventbus_proto::methods::{KeyParams, KnowledgeGet, KnowledgeSet, KnowledgeSetParams, PublishParams};
use aiventbus_proto::policy::Decision;
use aiventbus_proto::{ErrorCode, EventStatus, Priority};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::api::State;
use crate::bus::Thread;
use crate::notify::Urgency;
use crate::process::{RunOutcome, Started};
use crate::{files, shell};

/// How long `xdg-open` is waited for before it is left to itself.
const OPEN_WAIT: Duration = Duration::from_secs(3);

/// What carrying out an action gave.
pub enum Done {
    /// Finished now.
    Finished {
        /// It worked.
        ok: bool,
        /// What it produced.
        result: Value,
        /// The process run, for process actions.
        run_id: Option<String>,
    },
    /// A detached process run that started; its outcome arrives later.
    Detached {
        /// `run_…`.
        run_id: String,
        /// The run's end.
        done: oneshot::Receiver<RunOutcome>,
    },
}

/// A failure result.
pub fn failure(message: impl Into<String>) -> Value {
    json!({"error": {"message": message.into()}})
}

fn finished(outcome: Result<(bool, Value), String>) -> Done {
    match outcome {
        Ok((ok, result)) => Done::Finished {
            ok,
            result,
            run_id: None,
        },
        Err(message) => Done::Finished {
            ok: false,
            result: failure(message),
            run_id: None,
        },
    }
}

/// Carries out `params` (already authorized and recorded as executing).
pub async fn carry_out(state: &Arc<State>, params: &ExecuteParams) -> Done {
    let thread = Thread {
        correlation_id: params.action_id.clone(),
        trace_id: params.trace_id.clone(),
        parent_event: params.parent_event.clone(),
    };
    let action = &params.params;
    match params.action_type.as_str() {
        "shell_exec" => shell_exec(state, params, thread).await,
        "file_read" | "file_write" | "file_delete" => finished(file_action(state, &params.action_type, action).await),
        "http_request" => finished(state.http.request(action).await.map_err(|error| error.0)),
        "notify" | "alert" => finished(notify(state, &params.action_type, action).await),
        "open_app" => finished(open_app(state, action).await),
        "emit_event" => finished(emit_event(state, params, thread).await),
        "log" => finished(Ok(log(params))),
        "set_knowledge" => finished(set_knowledge(state, params).await),
        "get_knowledge" => finished(get_knowledge(state, action).await),
        "tool_call" => finished(state.tools.call(action, state.config.default_timeout).await),
        other => finished(Err(format!("action_type: unknown action type {other:?}"))),
    }
}

async fn shell_exec(state: &Arc<State>, params: &ExecuteParams, thread: Thread) -> Done {
    // The last line of defence: the built-in and configured deny rules hold here too, whoever
    // decided.
    // Only the command is weighed: the deny rules are about what runs, not where or how long.
    let command: Map<String, Value> = params
        .params
        .iter()
        .filter(|(name, _)| matches!(name.as_str(), "argv" | "command"))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let verdict = aiventbus_guard::decide(
        &state.guard,
        &aiventbus_guard::Request {
            action_type: "shell_exec",
            params: &command,
            agent: None,
            tainted: false,
            owner: true,
        },
    );
    if verdict.decision == Decision::Deny && verdict.rule.starts_with("deny.") {
        return finished(Err(format!(
            "refused at execution ({}): {}",
            verdict.rule, verdict.reason
        )));
    }
    let run_id = if params.action_id.starts_with("run_") {
        params.action_id.clone()
    } else {
        aiventbus_rpc::ids::prefixed("run")
    };
    let who = shell::Who {
        owner: params.owner,
        default_timeout: state.config.default_timeout,
        max_output: state.config.max_output,
        thread,
        base: &state.base_env,
    };
    let request = match shell::request(run_id.clone(), &params.params, who) {
        Ok(request) => request,
        Err(message) => return finished(Err(message)),
    };
    let started = match state.runs.start(request).await {
        Ok(started) => started,
        Err(error) => return finished(Err(error.to_string())),
    };
    if let Err(error) = state.store.set_run(&params.action_id, &run_id).await {
        tracing::error!(action = %params.action_id, %error, "could not tie an action to its run");
    }
    match started {
        Started::Failed(message) => Done::Finished {
            ok: false,
            result: failure(message),
            run_id: Some(run_id),
        },
        Started::Running { done, .. } if params.detach => Done::Detached { run_id, done },
        Started::Running { done, .. } => match done.await {
            Ok(outcome) => Done::Finished {
                ok: outcome.exit_code == Some(0),
                result: outcome.to_result(),
                run_id: Some(run_id),
            },
            Err(_) => Done::Finished {
                ok: false,
                result: failure("the run ended without an outcome (exec is stopping)"),
                run_id: Some(run_id),
            },
        },
    }
}

async fn file_action(
    state: &Arc<State>,
    action_type: &str,
    params: &Map<String, Value>,
) -> Result<(bool, Value), String> {
    let guard = Arc::clone(&state.guard);
    let max_read = state.config.max_file_read;
    let action_type = action_type.to_owned();
    let params = params.clone();
    let result = tokio::task::spawn_blocking(move || match action_type.as_str() {
        "file_read" => files::locate(&guard, &params, true).and_then(|path| files::read(&path, max_read)),
        "file_write" => {
            let content = files::content(&params)?;
            files::locate(&guard, &params, false).and_then(|path| files::write(&path, &content))
        }
        _ => files::locate(&guard, &params, true).and_then(|path| files::delete(&path)),
    })
    .await
    .map_err(|error| format!("the file task failed: {error}"))?;
    result.map(|value| (true, value)).map_err(|error| error.0)
}

fn text<'p>(params: &'p Map<String, Value>, name: &str) -> Result<&'p str, String> {
    match params.get(name) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(format!("{name}: must be a string")),
        None => Err(format!("{name}: required")),
    }
}

async fn notify(state: &Arc<State>, action_type: &str, params: &Map<String, Value>) -> Result<(bool, Value), String> {
    let message = text(params, "message")?;
    let (title, urgency) = if action_type == "alert" {
        let title = match params.get("title") {
            None | Some(Value::Null) => "aiventbus alert",
            Some(_) => text(params, "title")?,
        };
        (title, Urgency::Critical)
    } else {
        let urgency = match params.get("urgency") {
            None | Some(Value::Null) => Urgency::Normal,
            Some(Value::String(word)) => {
                Urgency::parse(word).ok_or_else(|| format!("urgency: {word:?} is not low, normal or critical"))?
            }
            Some(_) => return Err("urgency: must be a string".into()),
        };
        (text(params, "title")?, urgency)
    };
    let result = state.notifier.notify(title, message, urgency).await;
    Ok((true, json!({"delivered": result.delivered, "via": result.via})))
}

async fn open_app(state: &Arc<State>, params: &Map<String, Value>) -> Result<(bool, Value), String> {
    let target = ["target", "path", "url"]
        .iter()
        .find_map(|name| params.get(*name).map(|value| (*name, value)));
    let target = match target {
        Some((_, Value::String(target))) if !target.is_empty() => target,
        Some((name, _)) => return Err(format!("{name}: must be a non-empty string")),
        None => return Err("target: required (a file, directory or URL to open)".into()),
    };
    let Some(program) = &state.xdg_open else {
        return Err("xdg-open is not installed, so nothing can be opened on this machine".into());
    };
    open_with(program, target).await
}

async fn open_with(program: &Path, target: &str) -> Result<(bool, Value), String> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = crate::notify::spawn_helper(&mut command)
        .await
        .map_err(|error| format!("cannot start {}: {error}", program.display()))?;
    let stderr = child.stderr.take();
    match tokio::time::timeout(OPEN_WAIT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok((true, json!({"opened": target, "exit_code": 0}))),
        Ok(Ok(status)) => {
            let mut message = String::new();
            if let Some(mut stderr) = stderr {
                use tokio::io::AsyncReadExt as _;
                let mut bytes = Vec::new();
                let _ = (&mut stderr).take(2048).read_to_end(&mut bytes).await;
                message = String::from_utf8_lossy(&bytes).trim().to_owned();
            }
            Err(format!("xdg-open {target:?} failed ({status}): {message}"))
        }
        Ok(Err(error)) => Err(format!("xdg-open {target:?}: {error}")),
        // Still running: the opened program is the user's now. A waiter reaps it when it ends.
        Err(_) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            Ok((true, json!({"opened": target, "exit_code": null})))
        }
    }
}

async fn emit_event(state: &Arc<State>, params: &ExecuteParams, thread: Thread) -> Result<(bool, Value), String> {
    let action = &params.params;
    let Some(agent_id) = &params.agent_id else {
        return Err("agent_id: emit_event publishes as the proposing agent, and none was given".into());
    };
    let topic = text(action, "topic")?;
    validate_topic(topic).map_err(|problem| format!("topic: {problem}"))?;
    if is_reserved(topic) {
        return Err(format!(
            "topic: {topic:?} is in a reserved namespace (system, agent, exec, action, request) that only the daemon's services publish to"
        ));
    }
    let payload = match action.get("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(payload)) => Value::Object(payload.clone()),
        Some(_) => return Err("payload: must be a JSON object".into()),
    };
    let priority = match action.get("priority") {
        None | Some(Value::Null) => None,
        Some(Value::String(word)) => Some(Priority::parse(word).ok_or_else(|| format!("priority: unknown {word:?}"))?),
        Some(_) => return Err("priority: must be a string".into()),
    };
    let published = state
        .bus
        .publish_params(PublishParams {
            topic: topic.to_owned(),
            payload: Some(payload),
            priority,
            source: Some(format!("agent:{agent_id}")),
            trace_id: thread.trace_id,
            parent_event: thread.parent_event,
            correlation_id: Some(thread.correlation_id),
            ..Default::default()
        })
        .await
        .map_err(|error| match error.rpc() {
            Some(rpc) => format!("the bus refused the event: {}", rpc.message),
            None => format!("the bus is not reachable: {error}"),
        })?;
    if published.status == EventStatus::Failed {
        return Err(format!(
            "event {} was refused by a chain limit (depth or trace budget)",
            published.id
        ));
    }
    Ok((
        true,
        json!({"id": published.id, "seq": published.seq, "status": published.status.as_str()}),
    ))
}

fn log(params: &ExecuteParams) -> (bool, Value) {
    let message = match params.params.get("message") {
        Some(Value::String(message)) => message.clone(),
        Some(other) => other.to_string(),
        None => Value::Object(params.params.clone()).to_string(),
    };
    let shown: String = message.chars().take(2000).collect();
    tracing::info!(
        action = %params.action_id,
        agent = params.agent_id.as_deref().unwrap_or("-"),
        message = %shown,
        "agent log"
    );
    (true, json!({"logged": true}))
}

async fn set_knowledge(state: &Arc<State>, params: &ExecuteParams) -> Result<(bool, Value), String> {
    let action = &params.params;
    let key = text(action, "key")?;
    let value = action.get("value").cloned().ok_or("value: required")?;
    let source = match &params.agent_id {
        Some(agent) => format!("agent:{agent}"),
        None => "system".into(),
    };
    let fact = state
        .bus
        .client
        .call::<KnowledgeSet>(&KnowledgeSetParams {
            key: key.to_owned(),
            value,
            source: Some(source),
        })
        .await
        .map_err(|error| match error.rpc() {
            Some(rpc) => format!("knowledge.set: {}", rpc.message),
            None => format!("the bus is not reachable: {error}"),
        })?;
    Ok((true, json!({"key": fact.key, "updated_at": fact.updated_at})))
}

async fn get_knowledge(state: &Arc<State>, action: &Map<String, Value>) -> Result<(bool, Value), String> {
    let key = text(action, "key")?;
    match state
        .bus
        .client
        .call::<KnowledgeGet>(&KeyParams { key: key.to_owned() })
        .await
    {
        Ok(fact) => Ok((true, json!({"key": fact.key, "found": true, "value": fact.value}))),
        Err(error) if error.rpc().is_some_and(|rpc| rpc.code == ErrorCode::NotFound.code()) => {
            Ok((true, json!({"key": key, "found": false})))
        }
        Err(error) => Err(match error.rpc() {
            Some(rpc) => format!("knowledge.get: {}", rpc.message),
            None => format!("the bus is not reachable: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_reports_a_failing_opener() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("xdg-open");
        std::fs::write(&program, "#!/bin/sh\necho \"no handler for $1\" >&2\nexit 4\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = open_with(&program, "mailto:x").await.unwrap_err();
        assert!(error.contains("no handler for mailto:x"), "{error}");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        let (ok, result) = open_with(&program, "/tmp").await.unwrap();
        assert!(ok);
        assert_eq!(result["opened"], "/tmp");
    }
}
