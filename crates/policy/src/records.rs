//! Action records in `policy.db`: inserting a decided proposal, every status change as a
//! compare-and-set on the current status (so two deciders, or a decider and the expiry timer,
//! cannot both win), and the listings. Plain functions over a connection; callers run them through
//! [`crate::db::Db::run`].

use aiventbus_proto::policy::{ActionRecord, ActionStatus, ActionsListParams, Decision};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Map, Value};

use crate::db::{StoreError, json_column, ms, to_json, unms};

/// Default page of `actions.pending|history`.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page of `actions.pending|history`.
pub const MAX_LIMIT: u32 = 1000;

const COLUMNS: &str = "id, action_type, params, status, agent_id, event_id, trace_id, run_id, assignment_id, \
     tainted, decision, rule, reason, created_ms, updated_ms, expires_ms, decided_by, decided_ms, decided_via, \
     denial_reason, result, exec_run_id";

/// A decided proposal about to be stored.
#[derive(Debug, Clone)]
pub struct NewAction {
    /// `act_…`.
    pub id: String,
    /// The action type.
    pub action_type: String,
    /// Flat params.
    pub params: Map<String, Value>,
    /// The params in canonical form (sorted keys): identical proposals compare equal.
    pub canonical: String,
    /// Where it starts: `denied`, `waiting_confirmation` or `approved`.
    pub status: ActionStatus,
    /// The proposing agent.
    pub agent_id: Option<String>,
    /// The triggering event.
    pub event_id: Option<String>,
    /// Its trace.
    pub trace_id: Option<String>,
    /// The agent run.
    pub run_id: Option<String>,
    /// The run's assignment.
    pub assignment_id: Option<String>,
    /// Descends from an untrusted topic.
    pub tainted: bool,
    /// Policy's decision.
    pub decision: Decision,
    /// The deciding rule.
    pub rule: String,
    /// Why.
    pub reason: String,
    /// For file actions: the canonical path policy checked (handed to exec for its re-check).
    pub resolved_path: Option<String>,
    /// When a waiting action expires.
    pub expires_ms: Option<u64>,
}

fn status_of(text: &str) -> Result<ActionStatus, StoreError> {
    ActionStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("action status {text:?}")))
}

fn decision_of(text: &str) -> Result<Decision, StoreError> {
    match text {
        "allow" => Ok(Decision::Allow),
        "confirm" => Ok(Decision::Confirm),
        "deny" => Ok(Decision::Deny),
        other => Err(StoreError::Corrupt(format!("decision {other:?}"))),
    }
}

struct RawRow {
    id: String,
    action_type: String,
    params: String,
    status: String,
    agent_id: Option<String>,
    event_id: Option<String>,
    trace_id: Option<String>,
    run_id: Option<String>,
    assignment_id: Option<String>,
    tainted: bool,
    decision: String,
    rule: String,
    reason: String,
    created_ms: i64,
    updated_ms: i64,
    expires_ms: Option<i64>,
    decided_by: Option<String>,
    decided_ms: Option<i64>,
    decided_via: Option<String>,
    denial_reason: Option<String>,
    result: Option<String>,
    exec_run_id: Option<String>,
}

fn raw(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        action_type: row.get(1)?,
        params: row.get(2)?,
        status: row.get(3)?,
        agent_id: row.get(4)?,
        event_id: row.get(5)?,
        trace_id: row.get(6)?,
        run_id: row.get(7)?,
        assignment_id: row.get(8)?,
        tainted: row.get(9)?,
        decision: row.get(10)?,
        rule: row.get(11)?,
        reason: row.get(12)?,
        created_ms: row.get(13)?,
        updated_ms: row.get(14)?,
        expires_ms: row.get(15)?,
        decided_by: row.get(16)?,
        decided_ms: row.get(17)?,
        decided_via: row.get(18)?,
        denial_reason: row.get(19)?,
        result: row.get(20)?,
        exec_run_id: row.get(21)?,
    })
}

fn record(raw: RawRow) -> Result<ActionRecord, StoreError> {
    let time = |value: i64| aiventbus_rpc::time::rfc3339_ms(unms(value));
    Ok(ActionRecord {
        params: json_column(&raw.params, "action params")?,
        status: status_of(&raw.status)?,
        decision: decision_of(&raw.decision)?,
        result: raw
            .result
            .as_deref()
            .map(|text| json_column(text, "action result"))
            .transpose()?,
        created_at: time(raw.created_ms),
        updated_at: time(raw.updated_ms),
        expires_at: raw.expires_ms.map(time),
        decided_at: raw.decided_ms.map(time),
        id: raw.id,
        action_type: raw.action_type,
        agent_id: raw.agent_id,
        event_id: raw.event_id,
        trace_id: raw.trace_id,
        run_id: raw.run_id,
        assignment_id: raw.assignment_id,
        tainted: raw.tainted,
        rule: raw.rule,
        reason: raw.reason,
        decided_by: raw.decided_by,
        decided_via: raw.decided_via,
        denial_reason: raw.denial_reason,
        exec_run_id: raw.exec_run_id,
    })
}

fn query(connection: &Connection, sql: &str, values: &[&dyn rusqlite::ToSql]) -> Result<Vec<ActionRecord>, StoreError> {
    let mut statement = connection.prepare_cached(sql)?;
    let rows = statement.query_map(values, raw)?;
    let mut records = Vec::new();
    for row in rows {
        records.push(record(row?)?);
    }
    Ok(records)
}

/// One action by id.
pub fn get(connection: &Connection, id: &str) -> Result<Option<ActionRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM actions WHERE id = ?1");
    Ok(query(connection, &sql, &[&id])?.into_iter().next())
}

/// One action by id, or -32002 naming it.
pub fn get_or_not_found(connection: &Connection, id: &str) -> Result<ActionRecord, StoreError> {
    get(connection, id)?.ok_or_else(|| StoreError::NotFound(format!("no action {id}")))
}

/// Stores a decided proposal as given. `decided_by` is `policy` for policy's own decisions
/// (allow and deny); a waiting action has no decider yet.
pub fn insert(connection: &Connection, action: &NewAction, now: u64) -> Result<ActionRecord, StoreError> {
    let decided = action.status != ActionStatus::WaitingConfirmation;
    connection.execute(
        "INSERT INTO actions (id, action_type, params, canonical, status, agent_id, event_id, trace_id, run_id,
            assignment_id, tainted, decision, rule, reason, resolved_path, created_ms, updated_ms, expires_ms,
            decided_by, decided_ms, decided_via)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16, ?17, ?18, ?19, ?18)",
        params![
            action.id,
            action.action_type,
            to_json(&action.params),
            action.canonical,
            action.status.as_str(),
            action.agent_id,
            action.event_id,
            action.trace_id,
            action.run_id,
            action.assignment_id,
            action.tainted,
            action.decision.as_str(),
            action.rule,
            action.reason,
            action.resolved_path,
            ms(now),
            action.expires_ms.map(ms),
            decided.then_some("policy"),
            decided.then_some(ms(now)),
        ],
    )?;
    get_or_not_found(connection, &action.id)
}

/// The waiting action an identical proposal (same agent, type and canonical params) collapses into.
pub fn find_identical_waiting(
    connection: &Connection,
    agent_id: &str,
    action_type: &str,
    canonical: &str,
) -> Result<Option<ActionRecord>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM actions WHERE agent_id = ?1 AND status = 'waiting_confirmation'
           AND action_type = ?2 AND canonical = ?3 ORDER BY created_ms, rowid LIMIT 1"
    );
    Ok(query(connection, &sql, &[&agent_id, &action_type, &canonical])?
        .into_iter()
        .next())
}

/// What became of a proposal that should wait for a human.
#[derive(Debug)]
pub enum Waiting {
    /// Stored as `waiting_confirmation`.
    Created(ActionRecord),
    /// An identical proposal already waits: that one is the answer, nothing new is stored.
    Existing(ActionRecord),
    /// The agent already has this many waiting; nothing stored.
    TooMany(u64),
}

/// Stores a waiting action unless an identical one already waits or the agent has `max_pending`
/// waiting, in one transaction (so racing proposals cannot both pass the checks).
pub fn insert_waiting(
    connection: &mut Connection,
    action: &NewAction,
    max_pending: u32,
    now: u64,
) -> Result<Waiting, StoreError> {
    let tx = connection.transaction()?;
    let agent = action.agent_id.as_deref().unwrap_or_default();
    if let Some(existing) = find_identical_waiting(&tx, agent, &action.action_type, &action.canonical)? {
        return Ok(Waiting::Existing(existing));
    }
    let waiting: i64 = tx.query_row(
        "SELECT COUNT(*) FROM actions WHERE agent_id = ?1 AND status = 'waiting_confirmation'",
        [agent],
        |row| row.get(0),
    )?;
    let waiting = unms(waiting);
    if waiting >= u64::from(max_pending) {
        return Ok(Waiting::TooMany(waiting));
    }
    let record = insert(&tx, action, now)?;
    tx.commit()?;
    Ok(Waiting::Created(record))
}

/// `approved → executing`, committed before exec is called. `None` when the action is not
/// `approved` (another task already runs it); else the canonical path to hand to exec.
pub fn mark_executing(connection: &Connection, id: &str, now: u64) -> Result<Option<Option<String>>, StoreError> {
    let changed = connection.execute(
        "UPDATE actions SET status = 'executing', updated_ms = ?2 WHERE id = ?1 AND status = 'approved'",
        params![id, ms(now)],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    let path: Option<String> =
        connection.query_row("SELECT resolved_path FROM actions WHERE id = ?1", [id], |row| {
            row.get(0)
        })?;
    Ok(Some(path))
}

/// Records the final status of an action that was `from` (`executing`, or `approved` when it
/// failed before reaching exec). `None` when it was no longer in that status.
pub fn finish(
    connection: &Connection,
    id: &str,
    from: ActionStatus,
    status: ActionStatus,
    result: &Value,
    exec_run_id: Option<&str>,
    now: u64,
) -> Result<Option<ActionRecord>, StoreError> {
    let changed = connection.execute(
        "UPDATE actions SET status = ?3, result = ?4, exec_run_id = COALESCE(?5, exec_run_id), updated_ms = ?6
         WHERE id = ?1 AND status = ?2",
        params![
            id,
            from.as_str(),
            status.as_str(),
            to_json(result),
            exec_run_id,
            ms(now)
        ],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    get(connection, id)
}

/// A human's decision on a waiting action.
#[derive(Debug, Clone)]
pub struct HumanDecision {
    /// `approved` or `denied`.
    pub to: ActionStatus,
    /// Who.
    pub decided_by: String,
    /// Through which door.
    pub via: String,
    /// Why (a denial).
    pub reason: Option<String>,
}

/// What a compare-and-set decision found.
#[derive(Debug)]
pub enum Decided {
    /// It was waiting and now carries the decision.
    Done(ActionRecord),
    /// It was waiting but past its expiry: now `expired` (the caller reports that, then refuses).
    Expired(ActionRecord),
}

/// Approves or denies a waiting action atomically: `UPDATE … WHERE id = ? AND status =
/// 'waiting_confirmation'`. An unknown id is -32002; one that is not waiting is -32003 naming its
/// status.
pub fn decide(connection: &Connection, id: &str, decision: &HumanDecision, now: u64) -> Result<Decided, StoreError> {
    let expired = connection.execute(
        "UPDATE actions SET status = 'expired', updated_ms = ?2
         WHERE id = ?1 AND status = 'waiting_confirmation' AND expires_ms IS NOT NULL AND expires_ms <= ?2",
        params![id, ms(now)],
    )?;
    if expired > 0 {
        return Ok(Decided::Expired(get_or_not_found(connection, id)?));
    }
    let changed = connection.execute(
        "UPDATE actions SET status = ?2, decided_by = ?3, decided_via = ?4, decided_ms = ?5, denial_reason = ?6,
            updated_ms = ?5
         WHERE id = ?1 AND status = 'waiting_confirmation'",
        params![
            id,
            decision.to.as_str(),
            decision.decided_by,
            decision.via,
            ms(now),
            decision.reason
        ],
    )?;
    let current = get_or_not_found(connection, id)?;
    if changed == 0 {
        return Err(StoreError::Conflict(format!(
            "action {id} is {}, not waiting_confirmation",
            current.status.as_str()
        )));
    }
    Ok(Decided::Done(current))
}

/// Denies every waiting action (of one agent when given); returns them.
pub fn deny_pending(
    connection: &mut Connection,
    agent_id: Option<&str>,
    decision: &HumanDecision,
    now: u64,
) -> Result<Vec<ActionRecord>, StoreError> {
    let tx = connection.transaction()?;
    let ids: Vec<String> = {
        let mut statement = tx.prepare(
            "SELECT id FROM actions WHERE status = 'waiting_confirmation' AND (?1 IS NULL OR agent_id = ?1)
             ORDER BY created_ms, rowid",
        )?;
        let rows = statement.query_map([agent_id], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut denied = Vec::with_capacity(ids.len());
    for id in &ids {
        match decide(&tx, id, decision, now)? {
            Decided::Done(record) | Decided::Expired(record) => denied.push(record),
        }
    }
    tx.commit()?;
    Ok(denied)
}

/// Marks every waiting action whose expiry has passed `expired`; returns them.
pub fn expire_due(connection: &mut Connection, now: u64) -> Result<Vec<ActionRecord>, StoreError> {
    let tx = connection.transaction()?;
    let sql = format!(
        "SELECT {COLUMNS} FROM actions WHERE status = 'waiting_confirmation' AND expires_ms <= ?1 ORDER BY expires_ms, rowid"
    );
    let due = query(&tx, &sql, &[&ms(now)])?;
    let mut expired = Vec::with_capacity(due.len());
    for action in due {
        let changed = tx.execute(
            "UPDATE actions SET status = 'expired', updated_ms = ?2 WHERE id = ?1 AND status = 'waiting_confirmation'",
            params![action.id, ms(now)],
        )?;
        if changed > 0 {
            expired.push(get_or_not_found(&tx, &action.id)?);
        }
    }
    tx.commit()?;
    Ok(expired)
}

/// The earliest expiry among waiting actions.
pub fn next_expiry(connection: &Connection) -> Result<Option<u64>, StoreError> {
    let next: Option<i64> = connection.query_row(
        "SELECT MIN(expires_ms) FROM actions WHERE status = 'waiting_confirmation'",
        [],
        |row| row.get(0),
    )?;
    Ok(next.map(unms))
}

/// Actions in `status`, oldest first (startup recovery).
pub fn in_status(connection: &Connection, status: ActionStatus) -> Result<Vec<ActionRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM actions WHERE status = ?1 ORDER BY created_ms, rowid");
    query(connection, &sql, &[&status.as_str()])
}

/// `actions.pending` (waiting only, oldest first) or `actions.history` (any status unless
/// filtered, newest first).
pub fn list(
    connection: &Connection,
    filter: &ActionsListParams,
    pending: bool,
) -> Result<Vec<ActionRecord>, StoreError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let status = if pending {
        Some(ActionStatus::WaitingConfirmation.as_str())
    } else {
        filter.status.map(ActionStatus::as_str)
    };
    let order = if pending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM actions
         WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR agent_id = ?2) AND (?3 IS NULL OR trace_id = ?3)
         ORDER BY created_ms {order}, rowid {order} LIMIT ?4"
    );
    query(
        connection,
        &sql,
        &[&status, &filter.agent_id, &filter.trace_id, &i64::from(limit)],
    )
}

/// How many actions are in `status`.
pub fn count(connection: &Connection, status: ActionStatus) -> Result<u64, StoreError> {
    let n: i64 = connection.query_row(
        "SELECT COUNT(*) FROM actions WHERE status = ?1",
        [status.as_str()],
        |row| row.get(0),
    )?;
    Ok(unms(n))
}

/// Removes final actions last changed before `before_ms`; returns how many.
pub fn prune(connection: &Connection, before_ms: u64) -> Result<usize, StoreError> {
    Ok(connection.execute(
        "DELETE FROM actions WHERE updated_ms < ?1
           AND status IN ('succeeded', 'failed', 'interrupted', 'denied', 'expired')",
        [ms(before_ms)],
    )?)
}

/// Whether `id` exists at all (used to tell -32002 from -32003).
pub fn exists(connection: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(connection
        .query_row("SELECT 1 FROM actions WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use serde_json::json;

    fn action(id: &str, status: ActionStatus) -> NewAction {
        NewAction {
            id: id.into(),
            action_type: "shell_exec".into(),
            params: json!({"argv": ["ls"]}).as_object().cloned().unwrap(),
            canonical: r#"{"argv":["ls"]}"#.into(),
            status,
            agent_id: Some("agt_a".into()),
            event_id: Some("evt_1".into()),
            trace_id: Some("tr_1".into()),
            run_id: Some("run_1".into()),
            assignment_id: Some("asg_1".into()),
            tainted: false,
            decision: Decision::Confirm,
            rule: "trust.default.shell_exec".into(),
            reason: "asks".into(),
            resolved_path: None,
            expires_ms: Some(10_000),
        }
    }

    fn human(to: ActionStatus) -> HumanDecision {
        HumanDecision {
            to,
            decided_by: "user:alice".into(),
            via: "api.sock".into(),
            reason: Some("no".into()),
        }
    }

    #[tokio::test]
    async fn decisions_are_compare_and_set() {
        let db = Db::in_memory().unwrap();
        db.run(|connection| {
            let created = insert_waiting(connection, &action("act_1", ActionStatus::WaitingConfirmation), 5, 1)?;
            assert!(matches!(created, Waiting::Created(_)));
            let again = insert_waiting(connection, &action("act_2", ActionStatus::WaitingConfirmation), 5, 2)?;
            assert!(matches!(again, Waiting::Existing(ref record) if record.id == "act_1"));
            let Decided::Done(approved) = decide(connection, "act_1", &human(ActionStatus::Approved), 3)? else {
                panic!("not expired yet");
            };
            assert_eq!(approved.status, ActionStatus::Approved);
            assert_eq!(approved.decided_by.as_deref(), Some("user:alice"));
            let second = decide(connection, "act_1", &human(ActionStatus::Denied), 4).unwrap_err();
            assert!(
                matches!(second, StoreError::Conflict(ref m) if m.contains("approved")),
                "{second}"
            );
            let unknown = decide(connection, "act_x", &human(ActionStatus::Denied), 4).unwrap_err();
            assert!(matches!(unknown, StoreError::NotFound(_)));
            assert!(mark_executing(connection, "act_1", 5)?.is_some());
            assert!(mark_executing(connection, "act_1", 6)?.is_none(), "runs once");
            Ok(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn pending_cap_and_expiry() {
        let db = Db::in_memory().unwrap();
        db.run(|connection| {
            let mut first = action("act_1", ActionStatus::WaitingConfirmation);
            first.canonical = "a".into();
            let mut second = action("act_2", ActionStatus::WaitingConfirmation);
            second.canonical = "b".into();
            assert!(matches!(insert_waiting(connection, &first, 1, 1)?, Waiting::Created(_)));
            assert!(matches!(
                insert_waiting(connection, &second, 1, 1)?,
                Waiting::TooMany(1)
            ));
            assert_eq!(next_expiry(connection)?, Some(10_000));
            assert!(expire_due(connection, 9_999)?.is_empty());
            let expired = expire_due(connection, 10_000)?;
            assert_eq!(expired.len(), 1);
            assert_eq!(expired[0].status, ActionStatus::Expired);
            assert_eq!(next_expiry(connection)?, None);
            Ok(())
        })
        .await
        .unwrap();
    }
}
