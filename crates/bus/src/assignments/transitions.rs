//! The assignments queue inside one transaction: the one mapping between an `assignments` row and
//! an [`Assignment`], and the state changes that more than one method makes — taking back expired
//! leases, a claim round, failing for good with `system.agent_failure`, the holder check — plus
//! retention of finished work.

use aiventbus_proto::agents::{Assignment, AssignmentStatus, Claimed, Lane};
use rusqlite::types::Value as Sql;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde_json::{Map, Value, json};

use super::{ClaimRequest, EVENT_EXPIRED, SweepReport};
use crate::schema::{from_sql_int, get_event, sql_int};
use crate::store::{StoreError, format_ts};
use crate::writer::{Emitter, Subject};

/// Most expired leases (and expired events) one sweep handles; the rest wait for the next one.
const EXPIRY_CHUNK: i64 = 1000;
/// Most finished assignments one retention pass deletes.
const PRUNE_CHUNK: i64 = 20_000;

/// The columns [`assignment_from_row`] reads, in order.
pub(super) const COLUMNS: &str = "id, event_id, trace_id, agent_id, rule_id, lane, status, attempts, max_attempts, \
    not_before_ms, lease_expires_ms, worker, model_override, token_budget_override, error, created_ms, updated_ms";

pub(super) fn lane_str(lane: Lane) -> &'static str {
    match lane {
        Lane::Interactive => "interactive",
        Lane::Critical => "critical",
        Lane::Ambient => "ambient",
    }
}

pub(super) fn parse_lane(text: &str) -> Option<Lane> {
    match text {
        "interactive" => Some(Lane::Interactive),
        "critical" => Some(Lane::Critical),
        "ambient" => Some(Lane::Ambient),
        _ => None,
    }
}

pub(super) fn status_str(status: AssignmentStatus) -> &'static str {
    match status {
        AssignmentStatus::Pending => "pending",
        AssignmentStatus::Claimed => "claimed",
        AssignmentStatus::Completed => "completed",
        AssignmentStatus::Failed => "failed",
        AssignmentStatus::WaitingConfirmation => "waiting_confirmation",
        AssignmentStatus::Cancelled => "cancelled",
    }
}

pub(super) fn parse_status(text: &str) -> Option<AssignmentStatus> {
    match text {
        "pending" => Some(AssignmentStatus::Pending),
        "claimed" => Some(AssignmentStatus::Claimed),
        "completed" => Some(AssignmentStatus::Completed),
        "failed" => Some(AssignmentStatus::Failed),
        "waiting_confirmation" => Some(AssignmentStatus::WaitingConfirmation),
        "cancelled" => Some(AssignmentStatus::Cancelled),
        _ => None,
    }
}

pub(super) fn bad_column(index: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, what.into())
}

pub(super) fn count_column(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    let value: i64 = row.get(index)?;
    u32::try_from(value).map_err(|_| bad_column(index, format!("{value} is not a count")))
}

/// Reads a row selected with [`COLUMNS`]. `not_before` shows only while pending and
/// `lease_expires_at` only while claimed: at other times they mean nothing.
pub(super) fn assignment_from_row(row: &Row<'_>) -> rusqlite::Result<Assignment> {
    let lane_text: String = row.get(5)?;
    let lane = parse_lane(&lane_text).ok_or_else(|| bad_column(5, format!("unknown lane {lane_text:?}")))?;
    let status_text: String = row.get(6)?;
    let status = parse_status(&status_text).ok_or_else(|| bad_column(6, format!("unknown status {status_text:?}")))?;
    let not_before: i64 = row.get(9)?;
    let lease_expires: Option<i64> = row.get(10)?;
    let token_budget: Option<i64> = row.get(13)?;
    Ok(Assignment {
        id: row.get(0)?,
        event_id: row.get(1)?,
        trace_id: row.get(2)?,
        agent_id: row.get(3)?,
        rule_id: row.get(4)?,
        lane,
        status,
        attempts: count_column(row, 7)?,
        max_attempts: count_column(row, 8)?,
        not_before: (status == AssignmentStatus::Pending).then(|| format_ts(from_sql_int(not_before))),
        lease_expires_at: lease_expires
            .filter(|_| status == AssignmentStatus::Claimed)
            .map(|ms| format_ts(from_sql_int(ms))),
        worker: row.get(11)?,
        model_override: row.get(12)?,
        token_budget_override: token_budget.and_then(|budget| u32::try_from(budget).ok()),
        error: row.get(14)?,
        created_at: format_ts(from_sql_int(row.get(15)?)),
        updated_at: format_ts(from_sql_int(row.get(16)?)),
    })
}

/// What one claim transaction found.
pub(super) struct ClaimRound {
    pub(super) claimed: Vec<Claimed>,
    /// Expired leases put back to pending (for any caller).
    pub(super) requeued: u64,
    /// When nothing was claimable: the earliest store-clock time something in the caller's
    /// filter becomes claimable (a retry time or a lease end).
    pub(super) next_due_ms: Option<u64>,
    pub(super) now_ms: u64,
}

/// An assignment being given up on.
pub(super) struct Doomed {
    pub(super) id: String,
    pub(super) event_id: String,
    pub(super) trace_id: String,
    pub(super) agent_id: String,
    pub(super) attempts: u32,
}

/// Marks `doomed` failed with `error` and publishes `system.agent_failure {assignment_id,
/// agent_id, event_id, error, attempts}` in its event's trace, in the same transaction.
pub(super) fn fail_for_good(
    tx: &Transaction<'_>,
    emitter: &mut Emitter<'_>,
    doomed: &Doomed,
    error: &str,
) -> Result<(), StoreError> {
    let now_ms = emitter.now_ms();
    tx.prepare_cached(
        "UPDATE assignments SET status = 'failed', error = ?2, lease_expires_ms = NULL, updated_ms = ?3 \
         WHERE id = ?1",
    )?
    .execute(params![doomed.id, error, sql_int(now_ms)])?;
    // The event may have been compacted away; the report still names it as its parent.
    let depth: Option<i64> = tx
        .prepare_cached("SELECT depth FROM events WHERE id = ?1")?
        .query_row([&doomed.event_id], |row| row.get(0))
        .optional()?;
    let mut payload = Map::new();
    payload.insert("assignment_id".into(), Value::from(doomed.id.clone()));
    payload.insert("agent_id".into(), Value::from(doomed.agent_id.clone()));
    payload.insert("event_id".into(), Value::from(doomed.event_id.clone()));
    payload.insert("error".into(), Value::from(error));
    payload.insert("attempts".into(), json!(doomed.attempts));
    let subject = Subject {
        id: &doomed.event_id,
        trace_id: &doomed.trace_id,
        depth: depth.map_or(0, |depth| u32::try_from(depth).unwrap_or(u32::MAX)),
    };
    tracing::info!(
        assignment_id = %doomed.id,
        agent_id = %doomed.agent_id,
        event_id = %doomed.event_id,
        attempts = doomed.attempts,
        error,
        "assignment failed for good"
    );
    emitter.report(tx, "system.agent_failure", payload, &subject)
}

/// Takes back claimed work whose lease has ended: back to pending (claimable at once, the
/// attempt stays counted), or failed with `system.agent_failure` when no attempt is left. Then
/// cancels pending work whose event expired. Each part does at most [`EXPIRY_CHUNK`] rows.
pub(super) fn sweep(tx: &Transaction<'_>, emitter: &mut Emitter<'_>) -> Result<SweepReport, StoreError> {
    let now_ms = emitter.now_ms();
    let expired: Vec<(Doomed, u32, Option<String>)> = {
        let mut statement = tx.prepare_cached(
            "SELECT id, event_id, trace_id, agent_id, attempts, max_attempts, worker FROM assignments \
             WHERE status = 'claimed' AND lease_expires_ms <= ?1 ORDER BY lease_expires_ms LIMIT ?2",
        )?;
        let rows = statement.query_map(params![sql_int(now_ms), EXPIRY_CHUNK], |row| {
            Ok((
                Doomed {
                    id: row.get(0)?,
                    event_id: row.get(1)?,
                    trace_id: row.get(2)?,
                    agent_id: row.get(3)?,
                    attempts: count_column(row, 4)?,
                },
                count_column(row, 5)?,
                row.get(6)?,
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut report = SweepReport::default();
    for (doomed, max_attempts, worker) in expired {
        let error = format!("lease held by {} expired", worker.as_deref().unwrap_or("?"));
        if doomed.attempts >= max_attempts {
            fail_for_good(tx, emitter, &doomed, &error)?;
            report.failed += 1;
        } else {
            tx.prepare_cached(
                "UPDATE assignments SET status = 'pending', worker = NULL, lease_expires_ms = NULL, \
                 not_before_ms = ?2, error = ?3, updated_ms = ?2 WHERE id = ?1",
            )?
            .execute(params![doomed.id, sql_int(now_ms), error])?;
            report.requeued += 1;
        }
    }
    // Pending work whose event expired is not run; cancelling it here also keeps it from filling
    // its agent's queue bound when nobody claims for that agent.
    report.cancelled = tx
        .prepare_cached(
            "UPDATE assignments SET status = 'cancelled', error = ?2, updated_ms = ?1 WHERE num IN \
             (SELECT num FROM assignments WHERE status = 'pending' AND expires_ms <= ?1 LIMIT ?3)",
        )?
        .execute(params![sql_int(now_ms), EVENT_EXPIRED, EXPIRY_CHUNK])? as u64;
    if report != SweepReport::default() {
        tracing::info!(
            requeued = report.requeued,
            failed = report.failed,
            cancelled = report.cancelled,
            "assignments swept"
        );
    }
    Ok(report)
}

/// One claim attempt, in one transaction: sweeps (see [`sweep`]), then claims pending work lane
/// by lane, oldest first, cancelling work whose event expired (past the sweep's chunk) or is no
/// longer stored on the way.
pub(super) fn claim_round(
    tx: &Transaction<'_>,
    emitter: &mut Emitter<'_>,
    request: &ClaimRequest,
) -> Result<ClaimRound, StoreError> {
    let now_ms = emitter.now_ms();
    let requeued = sweep(tx, emitter)?.requeued;
    let now = sql_int(now_ms);
    let agents_filter = if request.agent_ids.is_some() {
        " AND agent_id IN (SELECT value FROM json_each(?4))"
    } else {
        ""
    };
    let mut claimed = Vec::new();
    for lane in &request.lanes {
        loop {
            let wanted = i64::from(request.limit) - claimed.len() as i64;
            if wanted <= 0 {
                break;
            }
            let candidates: Vec<(i64, String, Option<i64>)> = {
                let mut statement = tx.prepare_cached(&format!(
                    "SELECT num, event_id, expires_ms FROM assignments \
                     WHERE status = 'pending' AND lane = ?1 AND not_before_ms <= ?2{agents_filter} \
                     ORDER BY num LIMIT ?3"
                ))?;
                let mut values = vec![
                    Sql::Text(lane_str(*lane).to_owned()),
                    Sql::Integer(now),
                    Sql::Integer(wanted),
                ];
                if let Some(agents) = &request.agent_ids {
                    values.push(Sql::Text(agents.clone()));
                }
                let rows = statement.query_map(rusqlite::params_from_iter(values), |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            if candidates.is_empty() {
                break;
            }
            let mut skipped = false;
            for (num, event_id, expires_ms) in candidates {
                let event = match expires_ms {
                    Some(expires_ms) if expires_ms <= now => None,
                    _ => get_event(tx, &event_id)?,
                };
                let Some(event) = event else {
                    let reason = if expires_ms.is_some_and(|expires_ms| expires_ms <= now) {
                        EVENT_EXPIRED
                    } else {
                        "event no longer stored"
                    };
                    tx.prepare_cached(
                        "UPDATE assignments SET status = 'cancelled', error = ?2, updated_ms = ?3 WHERE num = ?1",
                    )?
                    .execute(params![num, reason, now])?;
                    skipped = true;
                    continue;
                };
                let assignment = tx
                    .prepare_cached(&format!(
                        "UPDATE assignments SET status = 'claimed', worker = ?2, lease_ms = ?3, \
                         lease_expires_ms = ?4, attempts = attempts + 1, updated_ms = ?5 \
                         WHERE num = ?1 RETURNING {COLUMNS}"
                    ))?
                    .query_row(
                        params![
                            num,
                            request.worker,
                            sql_int(request.lease_ms),
                            sql_int(now_ms.saturating_add(request.lease_ms)),
                            now
                        ],
                        assignment_from_row,
                    )?;
                claimed.push(Claimed { assignment, event });
            }
            // A full page of claimable work means this lane is done for this round; only
            // cancelled candidates leave room to look again.
            if !skipped {
                break;
            }
        }
    }
    let next_due_ms = if claimed.is_empty() {
        next_due(tx, request)?
    } else {
        None
    };
    Ok(ClaimRound {
        claimed,
        requeued,
        next_due_ms,
        now_ms,
    })
}

/// The earliest store-clock time something in the request's filter becomes claimable: a retry
/// time of pending work or a lease end of claimed work.
pub(super) fn next_due(tx: &Transaction<'_>, request: &ClaimRequest) -> Result<Option<u64>, StoreError> {
    let agents_filter = if request.agent_ids.is_some() {
        " AND agent_id IN (SELECT value FROM json_each(?2))"
    } else {
        ""
    };
    let sql = format!(
        "SELECT MIN(due) FROM ( \
             SELECT MIN(not_before_ms) AS due FROM assignments WHERE status = 'pending' \
                 AND lane IN (SELECT value FROM json_each(?1)){agents_filter} \
             UNION ALL \
             SELECT MIN(lease_expires_ms) AS due FROM assignments WHERE status = 'claimed' \
                 AND lane IN (SELECT value FROM json_each(?1)){agents_filter})"
    );
    let mut values = vec![Sql::Text(request.lanes_json())];
    if let Some(agents) = &request.agent_ids {
        values.push(Sql::Text(agents.clone()));
    }
    let due: Option<i64> = tx
        .prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(values), |row| row.get(0))?;
    Ok(due.map(from_sql_int))
}

/// A claimed assignment's state, checked against the worker that says it holds it.
pub(super) struct Held {
    pub(super) max_attempts: u32,
    pub(super) lease_ms: Option<i64>,
    /// Its identity and attempts, as [`fail_for_good`] needs them if this attempt is the last.
    pub(super) doomed: Doomed,
}

/// The assignment `id` if `worker` holds it: -32002 when unknown, -32003 when it is not claimed
/// or another worker holds it.
pub(super) fn held(tx: &Transaction<'_>, id: &str, worker: &str) -> Result<Held, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT status, worker, attempts, max_attempts, lease_ms, event_id, trace_id, agent_id \
             FROM assignments WHERE id = ?1",
        )?
        .query_row([id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                count_column(row, 2)?,
                count_column(row, 3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, String>(7)?,
            ))
        })
        .optional()?;
    let Some((status, holder, attempts, max_attempts, lease_ms, event_id, trace_id, agent_id)) = row else {
        return Err(StoreError::NotFound(format!("no assignment {id}")));
    };
    if status != "claimed" {
        return Err(StoreError::Conflict(format!(
            "assignment {id} is {status}, not claimed"
        )));
    }
    if holder.as_deref() != Some(worker) {
        return Err(StoreError::Conflict(format!(
            "assignment {id} is not held by {worker} (held by {})",
            holder.as_deref().unwrap_or("nobody")
        )));
    }
    Ok(Held {
        max_attempts,
        lease_ms,
        doomed: Doomed {
            id: id.to_owned(),
            event_id,
            trace_id,
            agent_id,
            attempts,
        },
    })
}

pub(super) fn read_assignment(tx: &Transaction<'_>, id: &str) -> Result<Assignment, StoreError> {
    Ok(tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM assignments WHERE id = ?1"))?
        .query_row([id], assignment_from_row)?)
}

/// Deletes finished (completed, failed, cancelled) assignments last changed before `cutoff_ms`,
/// at most [`PRUNE_CHUNK`] per call; part of retention. Returns how many went.
pub(crate) fn prune(tx: &Transaction<'_>, cutoff_ms: u64) -> Result<usize, StoreError> {
    Ok(tx
        .prepare_cached(
            "DELETE FROM assignments WHERE num IN (SELECT num FROM assignments \
             WHERE status IN ('completed', 'failed', 'cancelled') AND updated_ms < ?1 LIMIT ?2)",
        )?
        .execute(params![sql_int(cutoff_ms), PRUNE_CHUNK])?)
}
