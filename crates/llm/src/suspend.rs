//! Runs suspended while a human decides on actions they proposed (SPEC §7, §8). A suspended run's
//! conversation is saved in `llm.db` (`suspended`), its assignment waits on the bus in
//! `waiting_confirmation` without a lease, and the [`Resumer`] returns it to `pending` once every
//! action it waits for is decided and final — learning of decisions from `action.*` events, and
//! from a sweep at start and every [`SWEEP_INTERVAL`] for anything missed while the events could
//! not be followed. The worker that claims it again continues the saved conversation with the
//! results (or the denials and their reasons).

use std::sync::Arc;
use std::time::Duration;

use aiventbus_proto::agents::AssignmentsResume;
use aiventbus_proto::methods::{IdParams, Subscribe, SubscribeParams};
use aiventbus_proto::policy::{ActionRecord, ActionStatus, ActionsGet};
use aiventbus_proto::{ErrorCode, Method};
use aiventbus_rpc::{Client, ClientError, Notice};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError};
use crate::providers::ChatMessage;

/// How often every suspended run is checked, in case a decision's event was missed.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Backoff cap while the bus cannot be subscribed to.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// Everything needed to continue a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspended {
    /// `run_…` (the resumed run keeps it).
    pub run_id: String,
    /// The assignment.
    pub assignment_id: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Model rounds so far.
    pub rounds: u32,
    /// Tokens so far.
    pub prompt_tokens: u64,
    /// Tokens so far.
    pub completion_tokens: u64,
    /// The actions of all rounds, as `agent.completed` lists them.
    pub records: Vec<Value>,
    /// Results of the suspending round's actions that did not wait.
    pub results: Vec<Value>,
    /// The actions waited for (`act_…`).
    pub waiting: Vec<String>,
}

/// The `suspended` table.
#[derive(Clone)]
pub struct Suspensions {
    db: Db,
}

impl Suspensions {
    /// Over an open database.
    pub fn new(db: Db) -> Suspensions {
        Suspensions { db }
    }

    /// Saves (or replaces) a run's suspension.
    pub async fn save(&self, state: &Suspended) -> Result<(), DbError> {
        let body = serde_json::to_string(state).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let ids = serde_json::to_string(&state.waiting).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let (assignment_id, run_id) = (state.assignment_id.clone(), state.run_id.clone());
        self.db
            .run(move |connection| {
                connection.execute(
                    "INSERT OR REPLACE INTO suspended (assignment_id, run_id, action_ids, state, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![assignment_id, run_id, ids, body, aiventbus_rpc::time::now_ms() as i64],
                )?;
                Ok(())
            })
            .await
    }

    /// The suspension of an assignment, if any.
    pub async fn get(&self, assignment_id: &str) -> Result<Option<Suspended>, DbError> {
        let id = assignment_id.to_owned();
        let body: Option<String> = self
            .db
            .run(move |connection| {
                Ok(connection
                    .query_row("SELECT state FROM suspended WHERE assignment_id = ?1", [id], |row| {
                        row.get(0)
                    })
                    .optional()?)
            })
            .await?;
        body.map(|body| serde_json::from_str(&body).map_err(|e| DbError::Corrupt(format!("suspended run: {e}"))))
            .transpose()
    }

    /// Forgets an assignment's suspension (its run went on).
    pub async fn remove(&self, assignment_id: &str) -> Result<(), DbError> {
        let id = assignment_id.to_owned();
        self.db
            .run(move |connection| {
                connection.execute("DELETE FROM suspended WHERE assignment_id = ?1", [id])?;
                Ok(())
            })
            .await
    }

    /// Every suspension: `(assignment_id, waited-for action ids)`.
    pub async fn all(&self) -> Result<Vec<(String, Vec<String>)>, DbError> {
        let rows: Vec<(String, String)> = self
            .db
            .run(|connection| {
                let mut statement =
                    connection.prepare_cached("SELECT assignment_id, action_ids FROM suspended ORDER BY created_ms")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, ids)| (id, serde_json::from_str(&ids).unwrap_or_default()))
            .collect())
    }
}

/// What a decided action tells the model.
pub fn result_of(record: &ActionRecord) -> Value {
    let mut result = json!({
        "action_type": record.action_type,
        "action_id": record.id,
        "status": record.status.as_str(),
    });
    match record.status {
        ActionStatus::Succeeded | ActionStatus::Failed => {
            result["ok"] = json!(record.status == ActionStatus::Succeeded);
            result["result"] = record.result.clone().unwrap_or(Value::Null);
        }
        ActionStatus::Interrupted => {
            result["ok"] = json!(false);
            result["result"] =
                json!({"error": {"message": "the executor stopped while this ran; it was not run again"}});
        }
        ActionStatus::Denied => {
            let by = record.decided_by.as_deref().unwrap_or("policy");
            let reason = record
                .denial_reason
                .clone()
                .unwrap_or_else(|| format!("denied by {by}: {}", record.reason));
            result["ok"] = json!(false);
            result["denied"] = json!({"by": by, "reason": reason});
        }
        ActionStatus::Expired => {
            result["ok"] = json!(false);
            result["denied"] = json!({"by": "policy", "reason": "nobody approved it before it expired"});
        }
        ActionStatus::WaitingConfirmation | ActionStatus::Approved | ActionStatus::Executing => {
            result["ok"] = json!(false);
        }
    }
    result
}

/// Returns suspended assignments to the queue once their actions are decided.
pub struct Resumer {
    suspensions: Suspensions,
    policy: Client,
    bus: Client,
}

impl Resumer {
    /// Over the suspension table and clients of policy and the bus.
    pub fn new(suspensions: Suspensions, policy: Client, bus: Client) -> Arc<Resumer> {
        Arc::new(Resumer {
            suspensions,
            policy,
            bus,
        })
    }

    /// The final records of `ids`, or `None` while any is still undecided (or unknown yet).
    pub async fn decided(&self, ids: &[String]) -> Result<Option<Vec<ActionRecord>>, ClientError> {
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            let record = self.policy.call::<ActionsGet>(&IdParams { id: id.clone() }).await?;
            if !record.status.is_final() {
                return Ok(None);
            }
            records.push(record);
        }
        Ok(Some(records))
    }

    /// Resumes `assignment_id` if everything it waits for is decided.
    pub async fn check(&self, assignment_id: &str) {
        let state = match self.suspensions.get(assignment_id).await {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(assignment = assignment_id, %error, "cannot read a suspended run");
                return;
            }
        };
        match self.decided(&state.waiting).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(assignment = assignment_id, %error, "cannot ask policy about waiting actions yet");
                return;
            }
        }
        let params = IdParams {
            id: assignment_id.to_owned(),
        };
        match self.bus.call::<AssignmentsResume>(&params).await {
            Ok(_) => tracing::info!(assignment = assignment_id, "decided; the run resumes"),
            Err(error) if error.rpc().is_some_and(|e| e.code == ErrorCode::Conflict.code()) => {
                // Not suspended (yet, or any more): the worker checks again right after suspending,
                // and a cancelled assignment has nothing to resume.
                tracing::debug!(assignment = assignment_id, %error, "not resumed");
            }
            Err(error) if error.rpc().is_some_and(|e| e.code == ErrorCode::NotFound.code()) => {
                let _ = self.suspensions.remove(assignment_id).await;
            }
            Err(error) => tracing::warn!(assignment = assignment_id, %error, "could not resume"),
        }
    }

    /// Checks every suspended run.
    pub async fn sweep(&self) {
        match self.suspensions.all().await {
            Ok(all) => {
                for (assignment_id, _) in all {
                    self.check(&assignment_id).await;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list suspended runs"),
        }
    }

    /// Follows `action.executed|denied|expired` and sweeps at start and every [`SWEEP_INTERVAL`].
    pub async fn run(self: Arc<Resumer>, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        let params = SubscribeParams {
            patterns: vec![
                "action.executed".into(),
                "action.denied".into(),
                "action.expired".into(),
            ],
            from_seq: None,
        };
        loop {
            let mut subscription = tokio::select! {
                _ = shutdown.cancelled() => return,
                opened = self.bus.subscribe(Subscribe::NAME, &params) => match opened {
                    Ok(subscription) => {
                        backoff = Duration::from_millis(100);
                        // Decisions made while not subscribed are found by this sweep.
                        self.sweep().await;
                        subscription
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot follow action events yet");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
                        continue;
                    }
                },
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sweep.tick() => self.sweep().await,
                    notice = subscription.next() => match notice {
                        Some(Notice::Item(event)) => self.on_event(event.get()).await,
                        Some(Notice::Closed(error)) => {
                            tracing::debug!(message = %error.message, "action events subscription ended");
                            break;
                        }
                        None => break,
                    },
                }
            }
        }
    }

    async fn on_event(&self, event: &str) {
        #[derive(Deserialize)]
        struct Decision {
            payload: DecisionPayload,
        }
        #[derive(Deserialize)]
        struct DecisionPayload {
            #[serde(default)]
            assignment_id: Option<String>,
        }
        if let Ok(Decision {
            payload: DecisionPayload {
                assignment_id: Some(assignment_id),
            },
        }) = serde_json::from_str::<Decision>(event)
        {
            self.check(&assignment_id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(assignment_id: &str) -> Suspended {
        Suspended {
            run_id: "run_1".into(),
            assignment_id: assignment_id.into(),
            messages: vec![ChatMessage::new("assistant", "{}")],
            rounds: 2,
            prompt_tokens: 10,
            completion_tokens: 5,
            records: vec![json!({"action_type": "shell_exec"})],
            results: vec![],
            waiting: vec!["act_1".into(), "act_2".into()],
        }
    }

    #[tokio::test]
    async fn suspensions_round_trip_and_are_removed() {
        let suspensions = Suspensions::new(Db::in_memory().unwrap());
        assert_eq!(suspensions.get("asg_1").await.unwrap(), None);
        suspensions.save(&state("asg_1")).await.unwrap();
        suspensions.save(&state("asg_2")).await.unwrap();
        assert_eq!(suspensions.get("asg_1").await.unwrap(), Some(state("asg_1")));
        let all = suspensions.all().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].1, vec!["act_1".to_owned(), "act_2".to_owned()]);
        suspensions.remove("asg_1").await.unwrap();
        assert_eq!(suspensions.get("asg_1").await.unwrap(), None);
        assert_eq!(suspensions.all().await.unwrap().len(), 1);
    }

    fn record(status: ActionStatus) -> ActionRecord {
        ActionRecord {
            id: "act_1".into(),
            action_type: "shell_exec".into(),
            params: Default::default(),
            status,
            agent_id: Some("agt_1".into()),
            event_id: None,
            trace_id: None,
            run_id: None,
            assignment_id: None,
            tainted: false,
            decision: aiventbus_proto::policy::Decision::Confirm,
            rule: "trust.default.shell_exec".into(),
            reason: "shell_exec needs confirmation".into(),
            created_at: String::new(),
            updated_at: String::new(),
            expires_at: None,
            decided_by: Some("user:alice".into()),
            decided_at: None,
            decided_via: None,
            denial_reason: Some("not on a Friday".into()),
            result: Some(json!({"exit_code": 0, "stdout": "hi\n"})),
            exec_run_id: None,
        }
    }

    #[test]
    fn decided_actions_tell_the_model_what_happened() {
        let ran = result_of(&record(ActionStatus::Succeeded));
        assert_eq!(ran["ok"], true);
        assert_eq!(ran["result"]["stdout"], "hi\n");
        let denied = result_of(&record(ActionStatus::Denied));
        assert_eq!(denied["ok"], false);
        assert_eq!(denied["denied"]["reason"], "not on a Friday");
        assert_eq!(denied["denied"]["by"], "user:alice");
        assert_eq!(result_of(&record(ActionStatus::Expired))["denied"]["by"], "policy");
        assert_eq!(result_of(&record(ActionStatus::Interrupted))["ok"], false);
    }
}
