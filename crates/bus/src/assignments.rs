//! The assignments queue (docs/agents.md, "Assignments (bus)"): one unit of work per event and
//! agent, `pending → claimed (lease, heartbeat) → completed | failed`, or `cancelled`. Every
//! change is a write through the writer thread, answered after commit; an assignment that fails
//! for good publishes `system.agent_failure` in the same transaction. Claims long-poll on a
//! [`tokio::sync::Notify`] that every change making work claimable wakes, plus a timer for the
//! earliest retry time, never a polling loop. Expired leases are taken back by each claim and by a
//! sweep every second ([`sweep_every`]).
//! The SQL of the shared state changes is in `transitions.rs`.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, UNIX_EPOCH};

use aiventbus_proto::agents::{
    Assignment, AssignmentCreateParams, AssignmentCreateResult, AssignmentListParams, AssignmentStatus,
    CancelPendingParams, ClaimParams, Claimed, FailParams, Lane, LeaseParams, LeaseResult,
};
use aiventbus_proto::event::validate_prefixed_id;
use aiventbus_proto::methods::{LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT};
use rusqlite::types::Value as Sql;
use rusqlite::{OptionalExtension, params};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::knowledge::list_limit;
use crate::schema::{from_sql_int, sql_int};
use crate::store::{MAX_FIELD_BYTES, Store, StoreError, format_ts};

mod transitions;

pub(crate) use transitions::prune;
use transitions::{
    COLUMNS, assignment_from_row, claim_round, fail_for_good, held, lane_str, read_assignment, status_str,
};

/// Attempts allowed when the creator names none.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most attempts a creator may allow.
pub const MAX_ATTEMPTS: u32 = 20;
/// Shortest lease.
pub const MIN_LEASE_MS: u64 = 1_000;
/// Longest lease.
pub const MAX_LEASE_MS: u64 = 600_000;
/// The lease a heartbeat gives when neither it nor the claim named one (not reached: every claim
/// names its lease).
const DEFAULT_LEASE_MS: u64 = 30_000;
/// Longest long poll of one claim.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Most assignments one claim takes.
pub const MAX_CLAIM: u32 = 64;
/// Most agent ids one claim may name.
pub const MAX_AGENT_IDS: usize = 1024;
/// A released assignment is claimable again after this long, so a worker that releases because
/// its model server is down does not take the same work straight back.
pub const RELEASE_DELAY_MS: u64 = 1_000;
/// The first retry waits this long; each further one twice as long as the one before.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// No retry waits longer.
pub const BACKOFF_CAP_MS: u64 = 60_000;
/// How often expired leases are taken back when no claim does it first.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Longest error text kept; longer ones are cut at a character boundary.
pub const MAX_ERROR_BYTES: usize = 4096;
/// The error recorded on an assignment whose event expired before it ran.
pub const EVENT_EXPIRED: &str = "event expired";

fn id_field(field: &str, value: &str, prefix: &str) -> Result<(), StoreError> {
    validate_prefixed_id(value, prefix).map_err(|message| StoreError::Invalid(format!("{field}: {message}")))
}

fn worker_field(worker: &str) -> Result<(), StoreError> {
    if worker.is_empty() || worker.len() > 255 || worker.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "worker must be 1-255 bytes without control characters".into(),
        ));
    }
    Ok(())
}

fn lease_field(lease_ms: u64) -> Result<u64, StoreError> {
    if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(StoreError::Invalid(format!(
            "lease_ms must be between {MIN_LEASE_MS} and {MAX_LEASE_MS}, not {lease_ms}"
        )));
    }
    Ok(lease_ms)
}

/// `text` cut to at most [`MAX_ERROR_BYTES`] at a character boundary: a worker reporting a long
/// failure is not refused for it.
fn error_text(text: &str) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// How long a retry waits after `attempts` attempts: 1 s × 2^(attempts − 1) with ±20 % jitter
/// from `random` (uniform over `u32`), at most [`BACKOFF_CAP_MS`].
pub fn backoff_ms(attempts: u32, random: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    let base = (BACKOFF_BASE_MS << doublings).min(BACKOFF_CAP_MS);
    // Scale by a factor in [0.8, 1.2]: 0.8 + 0.4 × random / u32::MAX.
    let jitter = 0.8 + 0.4 * f64::from(random) / f64::from(u32::MAX);
    // The product is at most 1.2 × 60 000, well inside u64.
    ((base as f64 * jitter).round() as u64).min(BACKOFF_CAP_MS)
}

/// A random `u32` for jitter; without an OS random source the retry is simply not jittered.
fn jitter_random() -> u32 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u32::from_le_bytes(bytes),
        Err(error) => {
            tracing::warn!(%error, "no randomness for retry jitter");
            u32::MAX / 2
        }
    }
}

fn rfc3339_ms(field: &str, text: &str) -> Result<u64, StoreError> {
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|error| StoreError::Internal(format!("stored {field} {text:?} is not a time: {error}")))?;
    Ok(time
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0))
}

/// A checked claim.
#[derive(Debug, Clone)]
struct ClaimRequest {
    worker: String,
    /// JSON array for `json_each`; every agent when absent.
    agent_ids: Option<String>,
    /// Distinct, in the caller's order of preference.
    lanes: Vec<Lane>,
    limit: u32,
    lease_ms: u64,
    wait: Option<Duration>,
}

impl ClaimRequest {
    fn from_params(params: ClaimParams) -> Result<ClaimRequest, StoreError> {
        worker_field(&params.worker)?;
        if params.limit == 0 || params.limit > MAX_CLAIM {
            return Err(StoreError::Invalid(format!(
                "limit must be between 1 and {MAX_CLAIM}, not {}",
                params.limit
            )));
        }
        let lease_ms = lease_field(params.lease_ms)?;
        let wait = match params.wait_ms {
            Some(wait_ms) if wait_ms > MAX_WAIT_MS => {
                return Err(StoreError::Invalid(format!(
                    "wait_ms must be at most {MAX_WAIT_MS}, not {wait_ms}"
                )));
            }
            Some(0) | None => None,
            Some(wait_ms) => Some(Duration::from_millis(wait_ms)),
        };
        let agent_ids = match params.agent_ids {
            Some(ids) if ids.is_empty() => {
                return Err(StoreError::Invalid(
                    "agent_ids: name at least one agent, or leave it out to claim for every agent".into(),
                ));
            }
            Some(ids) if ids.len() > MAX_AGENT_IDS => {
                return Err(StoreError::Invalid(format!(
                    "agent_ids: at most {MAX_AGENT_IDS}, not {}",
                    ids.len()
                )));
            }
            Some(ids) => {
                for (index, id) in ids.iter().enumerate() {
                    id_field(&format!("agent_ids[{index}]"), id, "agt_")?;
                }
                Some(serde_json::to_string(&ids).map_err(|error| StoreError::Internal(error.to_string()))?)
            }
            None => None,
        };
        let lanes = match params.lanes {
            Some(given) if given.is_empty() => {
                return Err(StoreError::Invalid(
                    "lanes: name at least one lane, or leave it out for interactive, critical, ambient".into(),
                ));
            }
            Some(given) => {
                let mut lanes = Vec::with_capacity(3);
                for lane in given {
                    if !lanes.contains(&lane) {
                        lanes.push(lane);
                    }
                }
                lanes
            }
            None => vec![Lane::Interactive, Lane::Critical, Lane::Ambient],
        };
        Ok(ClaimRequest {
            worker: params.worker,
            agent_ids,
            lanes,
            limit: params.limit,
            lease_ms,
            wait,
        })
    }

    /// The lanes as a JSON array for `json_each`.
    fn lanes_json(&self) -> String {
        let names: Vec<&str> = self.lanes.iter().map(|lane| lane_str(*lane)).collect();
        json!(names).to_string()
    }
}

/// What a lease sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Back to pending, attempts still counted.
    pub requeued: u64,
    /// Attempts used up: failed, with `system.agent_failure`.
    pub failed: u64,
    /// Pending work whose event expired: cancelled.
    pub cancelled: u64,
}

impl Store {
    /// Creates the assignment of an event to an agent, or returns the one that exists
    /// (`created: false`). The event must exist; its trace and expiry are copied. With
    /// `max_queue`, new ambient work for an agent that already has that many pending ambient
    /// assignments is dropped (`dropped: true`, nothing stored).
    pub async fn create_assignment(
        &self,
        params: AssignmentCreateParams,
    ) -> Result<AssignmentCreateResult, StoreError> {
        id_field("event_id", &params.event_id, "evt_")?;
        id_field("agent_id", &params.agent_id, "agt_")?;
        if let Some(rule_id) = &params.rule_id {
            id_field("rule_id", rule_id, "rule_")?;
        }
        let max_attempts = params.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 || max_attempts > MAX_ATTEMPTS {
            return Err(StoreError::Invalid(format!(
                "max_attempts must be between 1 and {MAX_ATTEMPTS}, not {max_attempts}"
            )));
        }
        if params.max_queue == Some(0) {
            return Err(StoreError::Invalid(
                "max_queue must be at least 1, or left out for no bound".into(),
            ));
        }
        if let Some(model) = &params.model_override {
            if model.is_empty() || model.len() > MAX_FIELD_BYTES {
                return Err(StoreError::Invalid(format!(
                    "model_override must be 1-{MAX_FIELD_BYTES} bytes"
                )));
            }
        }
        let result = self
            .write(move |tx, now_ms| {
                let existing: Option<String> = tx
                    .prepare_cached("SELECT id FROM assignments WHERE event_id = ?1 AND agent_id = ?2")?
                    .query_row([&params.event_id, &params.agent_id], |row| row.get(0))
                    .optional()?;
                if let Some(id) = existing {
                    return Ok(AssignmentCreateResult {
                        id,
                        created: false,
                        dropped: false,
                    });
                }
                let event: Option<(String, Option<String>)> = tx
                    .prepare_cached("SELECT trace_id, expires_at FROM events WHERE id = ?1")?
                    .query_row([&params.event_id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let Some((trace_id, expires_at)) = event else {
                    return Err(StoreError::Invalid(format!(
                        "event_id {} does not exist",
                        params.event_id
                    )));
                };
                if let (Lane::Ambient, Some(max_queue)) = (params.lane, params.max_queue) {
                    let queued: i64 = tx
                        .prepare_cached(
                            "SELECT COUNT(*) FROM assignments \
                             WHERE agent_id = ?1 AND status = 'pending' AND lane = 'ambient'",
                        )?
                        .query_row([&params.agent_id], |row| row.get(0))?;
                    if queued >= i64::from(max_queue) {
                        tracing::info!(
                            event_id = %params.event_id,
                            agent_id = %params.agent_id,
                            queued,
                            "ambient assignment dropped: the agent's queue is full"
                        );
                        return Ok(AssignmentCreateResult {
                            id: String::new(),
                            created: false,
                            dropped: true,
                        });
                    }
                }
                let expires_ms = match &expires_at {
                    Some(text) => Some(sql_int(rfc3339_ms("expires_at", text)?)),
                    None => None,
                };
                let id = aiventbus_rpc::ids::prefixed("asg");
                let now = sql_int(now_ms);
                tx.prepare_cached(
                    "INSERT INTO assignments (id, event_id, trace_id, agent_id, rule_id, lane, status, \
                     attempts, max_attempts, not_before_ms, model_override, token_budget_override, \
                     expires_ms, created_ms, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?9, ?10, ?11, ?8, ?8)",
                )?
                .execute(params![
                    id,
                    params.event_id,
                    trace_id,
                    params.agent_id,
                    params.rule_id,
                    lane_str(params.lane),
                    max_attempts,
                    now,
                    params.model_override,
                    params.token_budget_override,
                    expires_ms,
                ])?;
                Ok(AssignmentCreateResult {
                    id,
                    created: true,
                    dropped: false,
                })
            })
            .await?;
        if result.created {
            self.work().notify_waiters();
        }
        Ok(result)
    }

    /// Claims up to `limit` assignments for `worker` with a lease, in the caller's lane order and
    /// oldest first within a lane; each claim counts an attempt. With `wait_ms` and nothing
    /// claimable, waits for work (a new, released or retried assignment, a lease taken back, a
    /// retry time reached) until the wait ends or `stop` completes, then answers, possibly empty.
    pub async fn claim(&self, params: ClaimParams, stop: impl Future<Output = ()>) -> Result<Vec<Claimed>, StoreError> {
        let request = ClaimRequest::from_params(params)?;
        let deadline = request.wait.map(|wait| tokio::time::Instant::now() + wait);
        let mut stop = pin!(stop);
        loop {
            // Registered before looking, so a change committed after the look still wakes us.
            let mut notified = pin!(self.work().notified());
            notified.as_mut().enable();
            let round_request = request.clone();
            let round = self
                .write_reporting(move |tx, emitter| claim_round(tx, emitter, &round_request))
                .await?;
            if round.requeued > 0 {
                self.work().notify_waiters();
            }
            if !round.claimed.is_empty() {
                tracing::debug!(worker = %request.worker, claimed = round.claimed.len(), "assignments claimed");
                return Ok(round.claimed);
            }
            let Some(deadline) = deadline else {
                return Ok(Vec::new());
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wake_at = match round.next_due_ms {
                Some(due_ms) => deadline.min(now + Duration::from_millis(due_ms.saturating_sub(round.now_ms).max(1))),
                None => deadline,
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = &mut stop => return Ok(Vec::new()),
            }
        }
    }

    /// Extends the lease of a claimed assignment held by `worker`, by `lease_ms` or by the
    /// length of its claim's lease. A lease that has run out but was not yet taken back is
    /// extended too.
    pub async fn heartbeat_assignment(&self, params: LeaseParams) -> Result<LeaseResult, StoreError> {
        worker_field(&params.worker)?;
        let lease_ms = params.lease_ms.map(lease_field).transpose()?;
        self.write(move |tx, now_ms| {
            let held = held(tx, &params.id, &params.worker)?;
            let lease_ms = lease_ms.or(held.lease_ms.map(from_sql_int)).unwrap_or(DEFAULT_LEASE_MS);
            let expires_ms = now_ms.saturating_add(lease_ms);
            tx.prepare_cached(
                "UPDATE assignments SET lease_ms = ?2, lease_expires_ms = ?3, updated_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![
                params.id,
                sql_int(lease_ms),
                sql_int(expires_ms),
                sql_int(now_ms)
            ])?;
            Ok(LeaseResult {
                lease_expires_at: format_ts(expires_ms),
            })
        })
        .await
    }

    /// Marks a claimed assignment held by `worker` completed.
    pub async fn complete_assignment(&self, params: LeaseParams) -> Result<Assignment, StoreError> {
        worker_field(&params.worker)?;
        self.write(move |tx, now_ms| {
            held(tx, &params.id, &params.worker)?;
            tx.prepare_cached(
                "UPDATE assignments SET status = 'completed', lease_expires_ms = NULL, updated_ms = ?2 WHERE id = ?1",
            )?
            .execute(params![params.id, sql_int(now_ms)])?;
            read_assignment(tx, &params.id)
        })
        .await
    }

    /// Suspends a claimed assignment held by `worker` until a human decides: `waiting_confirmation`,
    /// no lease.
    pub async fn suspend_assignment(&self, params: LeaseParams) -> Result<Assignment, StoreError> {
        worker_field(&params.worker)?;
        self.write(move |tx, now_ms| {
            held(tx, &params.id, &params.worker)?;
            tx.prepare_cached(
                "UPDATE assignments SET status = 'waiting_confirmation', lease_expires_ms = NULL, updated_ms = ?2 \
                 WHERE id = ?1",
            )?
            .execute(params![params.id, sql_int(now_ms)])?;
            read_assignment(tx, &params.id)
        })
        .await
    }

    /// Returns a suspended assignment to `pending`, runnable now; the attempt it used is given
    /// back, since the resumed run continues that attempt. Resuming one that is not suspended is a
    /// conflict.
    pub async fn resume_assignment(&self, id: String) -> Result<Assignment, StoreError> {
        id_field("id", &id, "asg_")?;
        let assignment = self
            .write(move |tx, now_ms| {
                let status: Option<String> = tx
                    .prepare_cached("SELECT status FROM assignments WHERE id = ?1")?
                    .query_row([&id], |row| row.get(0))
                    .optional()?;
                match status.as_deref() {
                    None => return Err(StoreError::NotFound(format!("no assignment {id}"))),
                    Some("waiting_confirmation") => {}
                    Some(other) => {
                        return Err(StoreError::Conflict(format!(
                            "assignment {id} is {other}, not waiting_confirmation"
                        )));
                    }
                }
                tx.prepare_cached(
                    "UPDATE assignments SET status = 'pending', worker = NULL, lease_expires_ms = NULL, \
                     attempts = MAX(attempts - 1, 0), not_before_ms = ?2, updated_ms = ?2 WHERE id = ?1",
                )?
                .execute(params![id, sql_int(now_ms)])?;
                read_assignment(tx, &id)
            })
            .await?;
        self.work().notify_waiters();
        Ok(assignment)
    }

    /// Ends a claimed attempt that went wrong. `release`: back to pending after
    /// [`RELEASE_DELAY_MS`] and the attempt does not count. Else, with `retry` and attempts
    /// left: back to pending after [`backoff_ms`]. Else failed, with `system.agent_failure` in
    /// the event's trace, committed together.
    pub async fn fail_assignment(&self, params: FailParams) -> Result<Assignment, StoreError> {
        worker_field(&params.worker)?;
        let error = error_text(&params.error);
        let random = jitter_random();
        let assignment = self
            .write_reporting(move |tx, emitter| {
                let now_ms = emitter.now_ms();
                let held = held(tx, &params.id, &params.worker)?;
                let attempts = held.doomed.attempts;
                let retry_at = if params.release {
                    Some((now_ms.saturating_add(RELEASE_DELAY_MS), attempts.saturating_sub(1)))
                } else if params.retry && attempts < held.max_attempts {
                    Some((now_ms.saturating_add(backoff_ms(attempts, random)), attempts))
                } else {
                    None
                };
                match retry_at {
                    Some((not_before_ms, attempts)) => {
                        tx.prepare_cached(
                            "UPDATE assignments SET status = 'pending', worker = NULL, lease_expires_ms = NULL, \
                             attempts = ?2, not_before_ms = ?3, error = ?4, updated_ms = ?5 WHERE id = ?1",
                        )?
                        .execute(params![
                            params.id,
                            attempts,
                            sql_int(not_before_ms),
                            error,
                            sql_int(now_ms)
                        ])?;
                    }
                    None => fail_for_good(tx, emitter, &held.doomed, &error)?,
                }
                read_assignment(tx, &params.id)
            })
            .await?;
        if assignment.status == AssignmentStatus::Pending {
            // Waiting claims learn the new retry time.
            self.work().notify_waiters();
        }
        Ok(assignment)
    }

    /// Assignments matching every given filter, newest first.
    pub async fn list_assignments(&self, params: AssignmentListParams) -> Result<Vec<Assignment>, StoreError> {
        let limit = list_limit(params.limit, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT)?;
        self.readers()
            .run(move |conn| {
                let mut sql = format!("SELECT {COLUMNS} FROM assignments WHERE 1 = 1");
                let mut values = Vec::new();
                if let Some(status) = params.status {
                    values.push(Sql::Text(status_str(status).to_owned()));
                    sql.push_str(&format!(" AND status = ?{}", values.len()));
                }
                if let Some(agent_id) = params.agent_id {
                    values.push(Sql::Text(agent_id));
                    sql.push_str(&format!(" AND agent_id = ?{}", values.len()));
                }
                if let Some(event_id) = params.event_id {
                    values.push(Sql::Text(event_id));
                    sql.push_str(&format!(" AND event_id = ?{}", values.len()));
                }
                values.push(Sql::Integer(i64::from(limit)));
                sql.push_str(&format!(" ORDER BY num DESC LIMIT ?{}", values.len()));
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map(rusqlite::params_from_iter(values), assignment_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Cancels pending assignments (of one agent, or all); claimed work runs on. Returns how many.
    pub async fn cancel_pending_assignments(&self, params: CancelPendingParams) -> Result<u64, StoreError> {
        self.write(move |tx, now_ms| {
            let cancelled = tx
                .prepare_cached(
                    "UPDATE assignments SET status = 'cancelled', error = 'cancelled by assignments.cancel_pending', \
                     updated_ms = ?1 WHERE status = 'pending' AND (?2 IS NULL OR agent_id = ?2)",
                )?
                .execute(params![sql_int(now_ms), params.agent_id])?;
            Ok(cancelled as u64)
        })
        .await
    }

    /// Sweeps now (it also runs every [`SWEEP_EVERY`] and at the start of each claim): takes back
    /// expired leases and cancels pending work whose event expired; wakes waiting claims when
    /// work became claimable.
    pub async fn sweep_leases(&self) -> Result<SweepReport, StoreError> {
        let report = self.write_reporting(transitions::sweep).await?;
        if report.requeued > 0 {
            self.work().notify_waiters();
        }
        Ok(report)
    }
}

/// Sweeps expired leases every [`SWEEP_EVERY`] (the first at once, which picks up work left from
/// before a restart) until `shutdown`.
pub async fn sweep_every(store: Store, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match store.sweep_leases().await {
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(error) => tracing::warn!(%error, "lease sweep failed; trying again at the next tick"),
        }
    }
}

#[cfg(test)]
mod tests;
