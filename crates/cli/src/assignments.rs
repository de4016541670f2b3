//! Assignment commands: `aibus assignments list|cancel`, over the bus's work queue (SPEC §6).

use std::io;

use aiventbus_proto::agents::{
    Assignment, AssignmentListParams, AssignmentStatus, AssignmentsCancelPending, AssignmentsList, AssignmentsResult,
    CancelPendingParams, Lane,
};
use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};

use crate::Context;
use crate::agents::resolve_agent_id;
use crate::output::{self, Table};

/// `aibus assignments …`.
#[derive(Debug, Subcommand)]
pub enum AssignmentsCommand {
    /// List assignments, newest first.
    List {
        /// Only this status.
        #[arg(long, value_enum, value_name = "S")]
        status: Option<StatusArg>,
        /// Only this agent: its id (`agt_…`) or its name.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        /// Only this event (`evt_…`).
        #[arg(long, value_name = "ID")]
        event: Option<String>,
        /// At most this many [default: 100].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=5000))]
        limit: Option<u32>,
    },
    /// Cancel pending assignments: every agent's, or one agent's.
    Cancel {
        /// Only this agent: its id (`agt_…`) or its name.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
    },
}

/// An assignment status on the command line (the wire spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Waiting for a worker.
    Pending,
    /// A worker holds its lease.
    Claimed,
    /// Done.
    Completed,
    /// Gave up.
    Failed,
    /// Suspended until a human decides.
    #[value(name = "waiting_confirmation", alias = "waiting-confirmation")]
    WaitingConfirmation,
    /// Cancelled before it ran.
    Cancelled,
}

impl From<StatusArg> for AssignmentStatus {
    fn from(status: StatusArg) -> AssignmentStatus {
        match status {
            StatusArg::Pending => AssignmentStatus::Pending,
            StatusArg::Claimed => AssignmentStatus::Claimed,
            StatusArg::Completed => AssignmentStatus::Completed,
            StatusArg::Failed => AssignmentStatus::Failed,
            StatusArg::WaitingConfirmation => AssignmentStatus::WaitingConfirmation,
            StatusArg::Cancelled => AssignmentStatus::Cancelled,
        }
    }
}

fn status_name(status: AssignmentStatus) -> &'static str {
    match status {
        AssignmentStatus::Pending => "pending",
        AssignmentStatus::Claimed => "claimed",
        AssignmentStatus::Completed => "completed",
        AssignmentStatus::Failed => "failed",
        AssignmentStatus::WaitingConfirmation => "waiting_confirmation",
        AssignmentStatus::Cancelled => "cancelled",
    }
}

fn lane_name(lane: Lane) -> &'static str {
    match lane {
        Lane::Interactive => "interactive",
        Lane::Critical => "critical",
        Lane::Ambient => "ambient",
    }
}

/// Runs one assignments command.
pub async fn run(context: &Context, command: AssignmentsCommand) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let mut out = io::stdout().lock();
    match command {
        AssignmentsCommand::List {
            status,
            agent,
            event,
            limit,
        } => {
            let agent_id = match agent {
                Some(agent) => Some(resolve_agent_id(&client, &agent).await?),
                None => None,
            };
            let params = AssignmentListParams {
                status: status.map(AssignmentStatus::from),
                agent_id,
                event_id: event,
                limit,
            };
            let result = client
                .call::<AssignmentsList>(&params)
                .await
                .context("assignments.list")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_text(&mut out, &assignments_table(&result))
        }
        AssignmentsCommand::Cancel { agent } => {
            let agent_id = match agent {
                Some(agent) => Some(resolve_agent_id(&client, &agent).await?),
                None => None,
            };
            let result = client
                .call::<AssignmentsCancelPending>(&CancelPendingParams {
                    agent_id: agent_id.clone(),
                })
                .await
                .context("assignments.cancel_pending")?;
            if context.json {
                return output::write_json(&mut out, &result);
            }
            output::write_line(&mut out, cancelled_line(result.cancelled, agent_id.as_deref()))
        }
    }
}

fn cancelled_line(cancelled: u64, agent_id: Option<&str>) -> String {
    let noun = if cancelled == 1 { "assignment" } else { "assignments" };
    match agent_id {
        Some(agent_id) => format!("cancelled {cancelled} pending {noun} of {}", output::one_line(agent_id)),
        None => format!("cancelled {cancelled} pending {noun}"),
    }
}

fn attempts(assignment: &Assignment) -> String {
    format!("{}/{}", assignment.attempts, assignment.max_attempts)
}

fn assignments_table(result: &AssignmentsResult) -> String {
    let mut table = Table::new(&["ID", "STATUS", "LANE", "AGENT", "EVENT", "ATTEMPTS", "UPDATED"]);
    for assignment in &result.assignments {
        table.row(vec![
            assignment.id.clone(),
            status_name(assignment.status).to_owned(),
            lane_name(assignment.lane).to_owned(),
            assignment.agent_id.clone(),
            assignment.event_id.clone(),
            attempts(assignment),
            assignment.updated_at.clone(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: AssignmentsCommand,
    }

    fn assignment(id: &str, status: AssignmentStatus, lane: Lane, attempts: u32) -> Assignment {
        Assignment {
            id: id.to_owned(),
            event_id: "evt_1".into(),
            trace_id: "tr_1".into(),
            agent_id: "agt_helper".into(),
            rule_id: None,
            lane,
            status,
            attempts,
            max_attempts: 3,
            not_before: None,
            lease_expires_at: None,
            worker: None,
            model_override: None,
            token_budget_override: None,
            error: None,
            created_at: "2026-01-02T03:04:05.678Z".into(),
            updated_at: "2026-01-02T03:04:06.000Z".into(),
        }
    }

    #[test]
    fn the_listing_has_the_listed_columns() {
        let result = AssignmentsResult {
            assignments: vec![
                assignment("asg_a", AssignmentStatus::WaitingConfirmation, Lane::Interactive, 1),
                assignment("asg_b", AssignmentStatus::Failed, Lane::Ambient, 3),
            ],
        };
        assert_eq!(
            assignments_table(&result),
            "ID     STATUS                LANE         AGENT       EVENT  ATTEMPTS  UPDATED\n\
             asg_a  waiting_confirmation  interactive  agt_helper  evt_1  1/3       2026-01-02T03:04:06.000Z\n\
             asg_b  failed                ambient      agt_helper  evt_1  3/3       2026-01-02T03:04:06.000Z\n"
        );
    }

    #[test]
    fn status_names_match_the_wire() {
        for status in StatusArg::value_variants() {
            let wire = serde_json::to_value(AssignmentStatus::from(*status)).expect("json");
            let name = status.to_possible_value().expect("visible");
            assert_eq!(wire, serde_json::Value::from(name.get_name()), "{status:?}");
            assert_eq!(status_name(AssignmentStatus::from(*status)), name.get_name());
        }
        let parsed = Harness::try_parse_from(["a", "list", "--status", "waiting-confirmation", "--limit", "5"])
            .expect("alias parses");
        assert!(matches!(
            parsed.command,
            AssignmentsCommand::List {
                status: Some(StatusArg::WaitingConfirmation),
                limit: Some(5),
                ..
            }
        ));
        for lane in [Lane::Interactive, Lane::Critical, Lane::Ambient] {
            assert_eq!(
                serde_json::to_value(lane).expect("json"),
                serde_json::Value::from(lane_name(lane))
            );
        }
    }

    #[test]
    fn cancel_reports_the_count() {
        assert_eq!(cancelled_line(0, None), "cancelled 0 pending assignments");
        assert_eq!(
            cancelled_line(1, Some("agt_1")),
            "cancelled 1 pending assignment of agt_1"
        );
    }
}
