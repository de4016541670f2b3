//! The hand-off of proposed actions. Every action of a known, allowed type goes to the policy
//! service (`actions.propose`), which decides, records, and has exec carry out what it allows. The
//! answer is one of: carried out (its result goes back to the model), denied (the reason goes back),
//! or waiting for a human (the run is suspended until the decision).

use std::sync::atomic::{AtomicU64, Ordering};

use aiventbus_proto::agents::{Agent, ProposedAction};
use aiventbus_proto::policy::{ActionStatus, ActionsPropose, AgentPolicy, ProposeParams};
use aiventbus_proto::{Event, Method};
use aiventbus_rpc::Client;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

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
        /// The policy record (`act_…`), when policy answered.
        action_id: Option<String>,
        /// Whether it worked.
        ok: bool,
        /// Its result, or `{error: {code?, message}}`.
        result: Value,
    },
    /// Refused; the reason goes back to the model.
    Denied {
        /// The policy record.
        action_id: String,
        /// The rule that refused it.
        rule: String,
        /// Why.
        reason: String,
    },
    /// Waits for a human; the run is suspended until every such action is decided.
    Waiting {
        /// The policy record.
        action_id: String,
    },
}

/// Decides what happens to each proposed action of a known, allowed type.
pub trait ActionGate: Send + Sync {
    /// Handles one action.
    fn handle<'a>(&'a self, context: &'a ActionContext<'a>, action: &'a ProposedAction) -> BoxFuture<'a, Outcome>;
}

/// The agent's settings policy weighs.
pub fn agent_policy(agent: &Agent) -> AgentPolicy {
    AgentPolicy {
        id: agent.id.clone(),
        reactive: agent.reactive,
        allowed_actions: agent.allowed_actions.clone(),
        trust: agent.trust.clone(),
    }
}

/// Counters for `system.health`.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Actions carried out.
    pub executed: AtomicU64,
    /// Actions refused.
    pub denied: AtomicU64,
    /// Actions that went to a human.
    pub waiting: AtomicU64,
    /// Proposals policy could not be asked about.
    pub unavailable: AtomicU64,
}

/// The gate: the policy service over its own client.
pub struct PolicyGate {
    policy: Client,
    /// Counters.
    pub stats: GateStats,
}

impl PolicyGate {
    /// Over a client of `policy.sock`.
    pub fn new(policy: Client) -> PolicyGate {
        PolicyGate {
            policy,
            stats: GateStats::default(),
        }
    }

    /// The policy client (resuming suspended runs reads action records through it).
    pub fn client(&self) -> &Client {
        &self.policy
    }
}

impl ActionGate for PolicyGate {
    fn handle<'a>(&'a self, context: &'a ActionContext<'a>, action: &'a ProposedAction) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let params = ProposeParams {
                action_type: action.action_type.clone(),
                params: action.params.clone(),
                agent: agent_policy(context.agent),
                event_id: context.event.id.clone(),
                run_id: context.run_id.to_owned(),
                assignment_id: context.assignment_id.to_owned(),
            };
            let answer = match self.policy.call::<ActionsPropose>(&params).await {
                Ok(answer) => answer,
                Err(error) => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(run = context.run_id, action_type = %action.action_type, %error, "policy did not answer");
                    let message = match error.rpc() {
                        Some(rpc) => format!("{} failed: {}", ActionsPropose::NAME, rpc.message),
                        None => format!("the policy service is unavailable ({error}); the action was not carried out"),
                    };
                    return Outcome::Executed {
                        action_id: None,
                        ok: false,
                        result: json!({"error": {"message": message}}),
                    };
                }
            };
            let outcome = outcome_of(
                answer.action_id,
                answer.status,
                answer.rule,
                answer.reason,
                answer.result,
            );
            let counter = match &outcome {
                Outcome::Executed { .. } => &self.stats.executed,
                Outcome::Denied { .. } => &self.stats.denied,
                Outcome::Waiting { .. } => &self.stats.waiting,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            outcome
        })
    }
}

/// The outcome an action record in `status` stands for.
pub fn outcome_of(
    action_id: String,
    status: ActionStatus,
    rule: String,
    reason: String,
    result: Option<Value>,
) -> Outcome {
    match status {
        ActionStatus::Succeeded | ActionStatus::Failed => Outcome::Executed {
            action_id: Some(action_id),
            ok: status == ActionStatus::Succeeded,
            result: result.unwrap_or(Value::Null),
        },
        ActionStatus::Interrupted => Outcome::Executed {
            action_id: Some(action_id),
            ok: false,
            result: json!({"error": {"message": "the executor stopped while this ran; it was not run again"}}),
        },
        ActionStatus::Denied | ActionStatus::Expired => Outcome::Denied {
            action_id,
            rule,
            reason,
        },
        ActionStatus::WaitingConfirmation | ActionStatus::Approved | ActionStatus::Executing => {
            Outcome::Waiting { action_id }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let id = || "act_1".to_owned();
        let rule = || "deny.sudo".to_owned();
        let reason = || "sudo raises privileges".to_owned();
        assert_eq!(
            outcome_of(
                id(),
                ActionStatus::Succeeded,
                rule(),
                reason(),
                Some(json!({"exit_code": 0}))
            ),
            Outcome::Executed {
                action_id: Some(id()),
                ok: true,
                result: json!({"exit_code": 0})
            }
        );
        assert!(matches!(
            outcome_of(id(), ActionStatus::Failed, rule(), reason(), None),
            Outcome::Executed { ok: false, .. }
        ));
        assert!(matches!(
            outcome_of(id(), ActionStatus::Interrupted, rule(), reason(), None),
            Outcome::Executed { ok: false, .. }
        ));
        assert_eq!(
            outcome_of(id(), ActionStatus::Denied, rule(), reason(), None),
            Outcome::Denied {
                action_id: id(),
                rule: rule(),
                reason: reason()
            }
        );
        assert!(matches!(
            outcome_of(id(), ActionStatus::Expired, rule(), reason(), None),
            Outcome::Denied { .. }
        ));
        for waiting in [
            ActionStatus::WaitingConfirmation,
            ActionStatus::Approved,
            ActionStatus::Executing,
        ] {
            assert_eq!(
                outcome_of(id(), waiting, rule(), reason(), None),
                Outcome::Waiting { action_id: id() }
            );
        }
    }
}
