//! Unit tests of the assignments queue on a real SQLite file and a manual clock: no test sleeps
//! for a lease or a backoff. Past 800 lines because each behaviour of docs/agents.md gets its own
//! spelled-out test.

use super::*;
use crate::store::tests::{T0, TestStore, event, open_test};
use crate::store::{Clock, ListQuery};
use aiventbus_proto::{Event, TopicPattern};
use tokio::sync::oneshot;

const A: &str = "agt_a";
const B: &str = "agt_b";
/// Bounds every wait in these tests; none comes near it unless the feature is broken.
const DEADLINE: Duration = Duration::from_secs(20);

async fn publish(store: &Store, topic: &str) -> String {
    store.publish(event(topic, 0)).await.unwrap().id
}

fn create_params(event_id: &str, agent_id: &str, lane: Lane) -> AssignmentCreateParams {
    AssignmentCreateParams {
        event_id: event_id.to_owned(),
        agent_id: agent_id.to_owned(),
        rule_id: None,
        lane,
        max_attempts: None,
        model_override: None,
        token_budget_override: None,
        max_queue: None,
    }
}

/// Publishes an event and assigns it to `agent_id`; returns the assignment id.
async fn assign(store: &Store, agent_id: &str, lane: Lane) -> String {
    assign_with(store, agent_id, lane, |_| {}).await
}

async fn assign_with(
    store: &Store,
    agent_id: &str,
    lane: Lane,
    adjust: impl FnOnce(&mut AssignmentCreateParams),
) -> String {
    let event_id = publish(store, "work.item").await;
    let mut params = create_params(&event_id, agent_id, lane);
    adjust(&mut params);
    let result = store.create_assignment(params).await.unwrap();
    assert!(result.created && !result.dropped, "{result:?}");
    result.id
}

fn claim_params(worker: &str) -> ClaimParams {
    ClaimParams {
        worker: worker.to_owned(),
        agent_ids: None,
        lanes: None,
        limit: MAX_CLAIM,
        lease_ms: 5_000,
        wait_ms: None,
    }
}

async fn claim(store: &Store, params: ClaimParams) -> Vec<Claimed> {
    store.claim(params, std::future::pending()).await.unwrap()
}

async fn claim_ids(store: &Store, params: ClaimParams) -> Vec<String> {
    claim(store, params)
        .await
        .into_iter()
        .map(|c| c.assignment.id)
        .collect()
}

fn lease(id: &str, worker: &str) -> LeaseParams {
    LeaseParams {
        id: id.to_owned(),
        worker: worker.to_owned(),
        lease_ms: None,
    }
}

fn fail(id: &str, worker: &str, retry: bool, release: bool) -> FailParams {
    FailParams {
        id: id.to_owned(),
        worker: worker.to_owned(),
        error: "model said no".into(),
        retry,
        release,
    }
}

async fn get(store: &Store, id: &str) -> Assignment {
    let all = store.list_assignments(AssignmentListParams::default()).await.unwrap();
    all.into_iter().find(|a| a.id == id).unwrap()
}

fn ms(text: &str) -> u64 {
    rfc3339_ms("test", text).unwrap()
}

fn code<T: std::fmt::Debug>(result: Result<T, StoreError>) -> (i32, String) {
    let error = result.unwrap_err();
    (error.code().code(), error.to_string())
}

async fn failures(test: &TestStore, trace_id: &str) -> Vec<Event> {
    let trace = test.store.trace(trace_id).await.unwrap();
    trace
        .into_iter()
        .filter(|e| e.topic == "system.agent_failure")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_copies_the_event() {
    let test = open_test(|_| {});
    let store = &test.store;
    let mut expiring = event("user.query", 0);
    expiring.expires_at = Some(format_ts(T0 + 60_000));
    let published = store.publish(expiring).await.unwrap();
    let params = AssignmentCreateParams {
        rule_id: Some("rule_1".into()),
        model_override: Some("llama3".into()),
        token_budget_override: Some(2048),
        ..create_params(&published.id, A, Lane::Interactive)
    };
    let first = store.create_assignment(params.clone()).await.unwrap();
    assert!(first.created && !first.dropped);
    assert!(first.id.starts_with("asg_"), "{}", first.id);
    let again = store.create_assignment(params).await.unwrap();
    assert_eq!(
        (again.id.as_str(), again.created, again.dropped),
        (first.id.as_str(), false, false)
    );
    // Another agent gets its own assignment of the same event.
    let other = store
        .create_assignment(create_params(&published.id, B, Lane::Interactive))
        .await
        .unwrap();
    assert!(other.created && other.id != first.id);

    let stored = get(store, &first.id).await;
    assert_eq!(stored.event_id, published.id);
    assert_eq!(stored.trace_id, published.trace_id);
    assert_eq!(
        (stored.agent_id.as_str(), stored.rule_id.as_deref()),
        (A, Some("rule_1"))
    );
    assert_eq!(stored.status, AssignmentStatus::Pending);
    assert_eq!((stored.attempts, stored.max_attempts), (0, DEFAULT_MAX_ATTEMPTS));
    assert_eq!(stored.model_override.as_deref(), Some("llama3"));
    assert_eq!(stored.token_budget_override, Some(2048));
    assert_eq!(stored.not_before, Some(format_ts(T0)));
    assert_eq!((stored.lease_expires_at, stored.worker), (None, None));
    assert_eq!(stored.created_at, format_ts(T0));
    let expires_ms: i64 = rusqlite::Connection::open(&store.config().path)
        .unwrap()
        .query_row("SELECT expires_ms FROM assignments WHERE id = ?1", [&first.id], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(expires_ms, sql_int(T0 + 60_000));
    assert_eq!(
        store
            .list_assignments(AssignmentListParams::default())
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_checks_its_params() {
    let test = open_test(|_| {});
    let store = &test.store;
    let event_id = publish(store, "work.item").await;
    let (code_, message) = code(
        store
            .create_assignment(create_params("evt_missing", A, Lane::Ambient))
            .await,
    );
    assert_eq!(code_, -32602);
    assert!(message.contains("event_id evt_missing"), "{message}");
    let cases: [(AssignmentCreateParams, &str); 5] = [
        (create_params("x_1", A, Lane::Ambient), "event_id"),
        (create_params(&event_id, "bob", Lane::Ambient), "agent_id"),
        (
            AssignmentCreateParams {
                max_attempts: Some(0),
                ..create_params(&event_id, A, Lane::Ambient)
            },
            "max_attempts",
        ),
        (
            AssignmentCreateParams {
                max_attempts: Some(MAX_ATTEMPTS + 1),
                ..create_params(&event_id, A, Lane::Ambient)
            },
            "max_attempts",
        ),
        (
            AssignmentCreateParams {
                max_queue: Some(0),
                ..create_params(&event_id, A, Lane::Ambient)
            },
            "max_queue",
        ),
    ];
    for (params, field) in cases {
        let (code_, message) = code(store.create_assignment(params).await);
        assert_eq!(code_, -32602, "{message}");
        assert!(message.contains(field), "{message} should name {field}");
    }
    assert!(
        store
            .list_assignments(AssignmentListParams::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_new_ambient_work_only() {
    let test = open_test(|_| {});
    let store = &test.store;
    let bounded = |params: &mut AssignmentCreateParams| params.max_queue = Some(2);
    let kept = assign_with(store, A, Lane::Ambient, bounded).await;
    assign_with(store, A, Lane::Ambient, bounded).await;

    let event_id = publish(store, "work.item").await;
    let dropped = store
        .create_assignment(AssignmentCreateParams {
            max_queue: Some(2),
            ..create_params(&event_id, A, Lane::Ambient)
        })
        .await
        .unwrap();
    assert_eq!(
        (dropped.id.as_str(), dropped.created, dropped.dropped),
        ("", false, true)
    );
    let mine = AssignmentListParams {
        agent_id: Some(A.into()),
        ..AssignmentListParams::default()
    };
    assert_eq!(
        store.list_assignments(mine.clone()).await.unwrap().len(),
        2,
        "nothing stored"
    );

    // Interactive and critical work is never dropped; other agents have their own queue.
    assign_with(store, A, Lane::Interactive, bounded).await;
    assign_with(store, A, Lane::Critical, bounded).await;
    assign_with(store, B, Lane::Ambient, bounded).await;
    // An assignment that exists is returned even when the queue is full.
    let existing = get(store, &kept).await;
    let again = store
        .create_assignment(AssignmentCreateParams {
            max_queue: Some(2),
            ..create_params(&existing.event_id, A, Lane::Ambient)
        })
        .await
        .unwrap();
    assert_eq!((again.id, again.created, again.dropped), (kept.clone(), false, false));

    // Claimed work no longer counts as queued.
    let claimed = claim_ids(
        store,
        ClaimParams {
            lanes: Some(vec![Lane::Ambient]),
            agent_ids: Some(vec![A.into()]),
            limit: 1,
            ..claim_params("w1")
        },
    )
    .await;
    assert_eq!(claimed, vec![kept]);
    assign_with(store, A, Lane::Ambient, bounded).await;
    assert_eq!(store.list_assignments(mine).await.unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_follow_the_lane_order_then_age() {
    let test = open_test(|_| {});
    let store = &test.store;
    let ambient1 = assign(store, A, Lane::Ambient).await;
    let interactive1 = assign(store, A, Lane::Interactive).await;
    let critical1 = assign(store, B, Lane::Critical).await;
    let ambient2 = assign(store, B, Lane::Ambient).await;
    let interactive2 = assign(store, B, Lane::Interactive).await;

    let first = claim(
        store,
        ClaimParams {
            limit: 3,
            ..claim_params("w1")
        },
    )
    .await;
    let ids: Vec<&str> = first.iter().map(|c| c.assignment.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![interactive1.as_str(), interactive2.as_str(), critical1.as_str()]
    );
    for claimed in &first {
        let assignment = &claimed.assignment;
        assert_eq!(assignment.status, AssignmentStatus::Claimed);
        assert_eq!((assignment.attempts, assignment.worker.as_deref()), (1, Some("w1")));
        assert_eq!(assignment.lease_expires_at, Some(format_ts(T0 + 5_000)));
        assert_eq!(assignment.not_before, None);
        assert_eq!(claimed.event.id, assignment.event_id);
        assert_eq!(claimed.event.trace_id, assignment.trace_id);
    }
    let rest = claim_ids(store, claim_params("w2")).await;
    assert_eq!(rest, vec![ambient1, ambient2]);
    assert!(claim_ids(store, claim_params("w3")).await.is_empty());

    // The caller's order of lanes wins, and lanes left out are not claimed.
    let interactive = assign(store, A, Lane::Interactive).await;
    let ambient = assign(store, A, Lane::Ambient).await;
    let critical = assign(store, A, Lane::Critical).await;
    let ambient_first = ClaimParams {
        lanes: Some(vec![Lane::Ambient, Lane::Interactive, Lane::Ambient]),
        ..claim_params("w4")
    };
    assert_eq!(claim_ids(store, ambient_first).await, vec![ambient, interactive]);
    assert_eq!(claim_ids(store, claim_params("w5")).await, vec![critical]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_only_take_the_named_agents_work() {
    let test = open_test(|_| {});
    let store = &test.store;
    let for_a = assign(store, A, Lane::Ambient).await;
    let for_b = assign(store, B, Lane::Interactive).await;
    let only_a = ClaimParams {
        agent_ids: Some(vec![A.into(), "agt_c".into()]),
        ..claim_params("w1")
    };
    assert_eq!(claim_ids(store, only_a.clone()).await, vec![for_a]);
    assert!(claim_ids(store, only_a).await.is_empty());
    assert_eq!(claim_ids(store, claim_params("w2")).await, vec![for_b]);

    for (params, field) in [
        (
            ClaimParams {
                agent_ids: Some(Vec::new()),
                ..claim_params("w")
            },
            "agent_ids",
        ),
        (
            ClaimParams {
                agent_ids: Some(vec!["nope".into()]),
                ..claim_params("w")
            },
            "agent_ids[0]",
        ),
        (
            ClaimParams {
                lanes: Some(Vec::new()),
                ..claim_params("w")
            },
            "lanes",
        ),
        (
            ClaimParams {
                limit: 0,
                ..claim_params("w")
            },
            "limit",
        ),
        (
            ClaimParams {
                limit: 65,
                ..claim_params("w")
            },
            "limit",
        ),
        (
            ClaimParams {
                lease_ms: 999,
                ..claim_params("w")
            },
            "lease_ms",
        ),
        (
            ClaimParams {
                lease_ms: 600_001,
                ..claim_params("w")
            },
            "lease_ms",
        ),
        (
            ClaimParams {
                wait_ms: Some(60_001),
                ..claim_params("w")
            },
            "wait_ms",
        ),
        (claim_params(""), "worker"),
    ] {
        let (code_, message) = code(store.claim(params, std::future::pending()).await);
        assert_eq!(code_, -32602, "{message}");
        assert!(message.contains(field), "{message} should name {field}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_back_and_counts_the_attempt() {
    let test = open_test(|_| {});
    let store = &test.store;
    let id = assign(store, A, Lane::Ambient).await;
    assert_eq!(claim_ids(store, claim_params("w1")).await, vec![id.clone()]);
    test.clock.advance(4_999);
    assert!(
        claim_ids(store, claim_params("w2")).await.is_empty(),
        "the lease still holds"
    );
    test.clock.advance(1);
    let taken = claim(store, claim_params("w2")).await;
    assert_eq!(taken.len(), 1);
    let assignment = &taken[0].assignment;
    assert_eq!((assignment.id.as_str(), assignment.attempts), (id.as_str(), 2));
    assert_eq!(assignment.worker.as_deref(), Some("w2"));
    assert_eq!(assignment.error.as_deref(), Some("lease held by w1 expired"));
    // The first worker no longer holds it.
    let (code_, message) = code(store.complete_assignment(lease(&id, "w1")).await);
    assert_eq!(code_, -32003);
    assert!(message.contains("not held by w1"), "{message}");
    assert_eq!(
        store.complete_assignment(lease(&id, "w2")).await.unwrap().status,
        AssignmentStatus::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_extend_the_lease_of_the_holder_only() {
    let test = open_test(|_| {});
    let store = &test.store;
    let id = assign(store, A, Lane::Ambient).await;
    let (code_, message) = code(store.heartbeat_assignment(lease(&id, "w1")).await);
    assert_eq!(code_, -32003, "not claimed yet: {message}");
    assert!(message.contains("pending, not claimed"), "{message}");
    claim(store, claim_params("w1")).await;

    let (code_, message) = code(store.heartbeat_assignment(lease(&id, "w2")).await);
    assert_eq!(code_, -32003);
    assert!(message.contains("not held by w2"), "{message}");
    let (code_, _) = code(store.heartbeat_assignment(lease("asg_unknown", "w1")).await);
    assert_eq!(code_, -32002);

    // Without lease_ms the claim's lease length is used again.
    test.clock.advance(4_000);
    let extended = store.heartbeat_assignment(lease(&id, "w1")).await.unwrap();
    assert_eq!(extended.lease_expires_at, format_ts(T0 + 9_000));
    test.clock.advance(4_000);
    assert!(
        claim_ids(store, claim_params("w2")).await.is_empty(),
        "the heartbeat kept the lease"
    );
    let longer = LeaseParams {
        lease_ms: Some(60_000),
        ..lease(&id, "w1")
    };
    let extended = store.heartbeat_assignment(longer).await.unwrap();
    assert_eq!(extended.lease_expires_at, format_ts(T0 + 68_000));
    test.clock.advance(59_999);
    assert!(claim_ids(store, claim_params("w2")).await.is_empty());
    test.clock.advance(1);
    assert_eq!(claim_ids(store, claim_params("w2")).await, vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_twice_is_a_conflict() {
    let test = open_test(|_| {});
    let store = &test.store;
    let id = assign(store, A, Lane::Interactive).await;
    claim(store, claim_params("w1")).await;
    test.clock.advance(10);
    let done = store.complete_assignment(lease(&id, "w1")).await.unwrap();
    assert_eq!(done.status, AssignmentStatus::Completed);
    assert_eq!((done.lease_expires_at, done.not_before), (None, None));
    assert_eq!(done.updated_at, format_ts(T0 + 10));
    let (code_, message) = code(store.complete_assignment(lease(&id, "w1")).await);
    assert_eq!(code_, -32003);
    assert!(message.contains("completed, not claimed"), "{message}");
    let (code_, _) = code(store.fail_assignment(fail(&id, "w1", true, false)).await);
    assert_eq!(code_, -32003);
    let (code_, _) = code(store.complete_assignment(lease("asg_nope", "w1")).await);
    assert_eq!(code_, -32002);
    test.clock.advance(100_000);
    assert!(
        claim_ids(store, claim_params("w2")).await.is_empty(),
        "completed work is not claimed"
    );
}

#[test]
fn backoff_doubles_with_jitter_and_a_cap() {
    assert_eq!(backoff_ms(1, 0), 800);
    assert_eq!(backoff_ms(1, u32::MAX), 1_200);
    assert_eq!(backoff_ms(1, u32::MAX / 2), 1_000);
    assert_eq!(backoff_ms(2, u32::MAX / 2), 2_000);
    assert_eq!(backoff_ms(3, 0), 3_200);
    assert_eq!(backoff_ms(6, u32::MAX / 2), 32_000);
    assert_eq!(backoff_ms(7, 0), 48_000);
    assert_eq!(backoff_ms(7, u32::MAX), BACKOFF_CAP_MS);
    assert_eq!(backoff_ms(20, u32::MAX), BACKOFF_CAP_MS);
    assert_eq!(backoff_ms(u32::MAX, 0), 48_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waits_for_its_backoff() {
    let test = open_test(|_| {});
    let store = &test.store;
    let id = assign(store, A, Lane::Ambient).await;
    claim(store, claim_params("w1")).await;
    let failed = store.fail_assignment(fail(&id, "w1", true, false)).await.unwrap();
    assert_eq!(failed.status, AssignmentStatus::Pending);
    assert_eq!((failed.attempts, failed.worker.as_deref()), (1, None));
    assert_eq!(failed.error.as_deref(), Some("model said no"));
    let not_before = ms(failed.not_before.as_deref().unwrap());
    assert!(
        (T0 + 800..=T0 + 1_200).contains(&not_before),
        "1 s ± 20 %: {}",
        not_before - T0
    );
    assert!(claim_ids(store, claim_params("w1")).await.is_empty());
    test.clock.set(not_before - 1);
    assert!(claim_ids(store, claim_params("w1")).await.is_empty());
    test.clock.set(not_before);
    let again = claim(store, claim_params("w1")).await;
    assert_eq!(again[0].assignment.attempts, 2);
    // The second retry waits about twice as long.
    let failed = store.fail_assignment(fail(&id, "w1", true, false)).await.unwrap();
    let wait = ms(failed.not_before.as_deref().unwrap()) - not_before;
    assert!((1_600..=2_400).contains(&wait), "2 s ± 20 %: {wait}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_fail_with_a_report_in_the_trace() {
    let test = open_test(|_| {});
    let store = &test.store;
    let mut reports = store.subscribe(vec![TopicPattern::parse("system.**").unwrap()], None, 16);
    let id = assign_with(store, A, Lane::Interactive, |params| params.max_attempts = Some(2)).await;
    let assignment = get(store, &id).await;
    let event = store.get(&assignment.event_id).await.unwrap().unwrap();
    claim(store, claim_params("w1")).await;
    let retried = store.fail_assignment(fail(&id, "w1", true, false)).await.unwrap();
    assert_eq!(retried.status, AssignmentStatus::Pending);
    assert!(failures(&test, &event.trace_id).await.is_empty());
    test.clock.advance(BACKOFF_CAP_MS);
    claim(store, claim_params("w1")).await;
    let failed = store.fail_assignment(fail(&id, "w1", true, false)).await.unwrap();
    assert_eq!((failed.status, failed.attempts), (AssignmentStatus::Failed, 2));
    assert_eq!(failed.error.as_deref(), Some("model said no"));

    let reported = failures(&test, &event.trace_id).await;
    assert_eq!(reported.len(), 1);
    let report = &reported[0];
    assert_eq!(report.source, "system");
    assert_eq!(report.parent_event.as_deref(), Some(event.id.as_str()));
    assert_eq!(report.depth, event.depth + 1);
    assert_eq!(
        serde_json::Value::Object(report.payload.clone()),
        json!({
            "assignment_id": id,
            "agent_id": A,
            "event_id": event.id,
            "error": "model said no",
            "attempts": 2,
        })
    );
    // It reaches subscribers like any event, and the head moved before the answer.
    let delivered = tokio::time::timeout(DEADLINE, reports.next()).await.unwrap().unwrap();
    assert_eq!(delivered.event, *report);
    assert_eq!(store.head(), report.seq);
    let (code_, _) = code(store.fail_assignment(fail(&id, "w1", true, false)).await);
    assert_eq!(code_, -32003, "failed work cannot fail again");

    // retry: false gives up at once, attempts left or not.
    let now_or_never = assign(store, B, Lane::Ambient).await;
    claim(store, claim_params("w2")).await;
    let given_up = store
        .fail_assignment(fail(&now_or_never, "w2", false, false))
        .await
        .unwrap();
    assert_eq!((given_up.status, given_up.attempts), (AssignmentStatus::Failed, 1));
    let trace_id = given_up.trace_id.clone();
    assert_eq!(failures(&test, &trace_id).await[0].payload["attempts"], 1);
    // Seqs stay gap-free around reports.
    let all = store.list(ListQuery::default()).await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_does_not_count_as_an_attempt() {
    let test = open_test(|_| {});
    let store = &test.store;
    let id = assign_with(store, A, Lane::Ambient, |params| params.max_attempts = Some(1)).await;
    for _ in 0..3 {
        let claimed = claim(store, claim_params("w1")).await;
        assert_eq!(claimed[0].assignment.attempts, 1);
        let released = store.fail_assignment(fail(&id, "w1", true, true)).await.unwrap();
        assert_eq!((released.status, released.attempts), (AssignmentStatus::Pending, 0));
        let now = test.clock.now_ms();
        assert_eq!(released.not_before, Some(format_ts(now + RELEASE_DELAY_MS)));
        assert!(claim_ids(store, claim_params("w1")).await.is_empty(), "not at once");
        test.clock.advance(RELEASE_DELAY_MS);
    }
    claim(store, claim_params("w1")).await;
    let failed = store.fail_assignment(fail(&id, "w1", true, false)).await.unwrap();
    assert_eq!((failed.status, failed.attempts), (AssignmentStatus::Failed, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_whose_event_expired_is_cancelled_not_run() {
    let test = open_test(|_| {});
    let store = &test.store;
    let mut expiring = event("work.item", 0);
    expiring.expires_at = Some(format_ts(T0 + 10_000));
    let expiring = store.publish(expiring).await.unwrap();
    let doomed = store
        .create_assignment(create_params(&expiring.id, A, Lane::Interactive))
        .await
        .unwrap()
        .id;
    let fresh = assign(store, A, Lane::Interactive).await;
    test.clock.advance(10_000);
    // The expired one is skipped and the next one claimed in the same call.
    let claimed = claim(
        store,
        ClaimParams {
            limit: 1,
            ..claim_params("w1")
        },
    )
    .await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].assignment.id, fresh);
    let cancelled = get(store, &doomed).await;
    assert_eq!(cancelled.status, AssignmentStatus::Cancelled);
    assert_eq!(cancelled.error.as_deref(), Some(EVENT_EXPIRED));
    assert_eq!(cancelled.attempts, 0);
    assert!(claim_ids(store, claim_params("w2")).await.is_empty());

    // The sweep cancels it too, without a claim, so it stops counting against the queue bound.
    let mut expiring = event("work.item", 1);
    expiring.expires_at = Some(format_ts(T0 + 20_000));
    let expiring = store.publish(expiring).await.unwrap();
    let bounded = |event_id: &str| AssignmentCreateParams {
        max_queue: Some(1),
        ..create_params(event_id, B, Lane::Ambient)
    };
    let unclaimed = store.create_assignment(bounded(&expiring.id)).await.unwrap().id;
    let next = publish(store, "work.item").await;
    assert!(store.create_assignment(bounded(&next)).await.unwrap().dropped);
    test.clock.advance(10_000);
    let swept = store.sweep_leases().await.unwrap();
    assert_eq!(swept.cancelled, 1, "{swept:?}");
    let cancelled = get(store, &unclaimed).await;
    assert_eq!(
        (cancelled.status, cancelled.error.as_deref()),
        (AssignmentStatus::Cancelled, Some(EVENT_EXPIRED))
    );
    assert!(store.create_assignment(bounded(&next)).await.unwrap().created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_takes_back_expired_leases() {
    let test = open_test(|_| {});
    let store = &test.store;
    let exhausted = assign_with(store, A, Lane::Ambient, |params| params.max_attempts = Some(1)).await;
    let retried = assign(store, B, Lane::Ambient).await;
    claim(store, claim_params("w1")).await;
    assert_eq!(store.sweep_leases().await.unwrap(), SweepReport::default());
    test.clock.advance(5_000);
    let swept = store.sweep_leases().await.unwrap();
    assert_eq!(
        swept,
        SweepReport {
            requeued: 1,
            failed: 1,
            cancelled: 0
        }
    );

    let failed = get(store, &exhausted).await;
    assert_eq!((failed.status, failed.attempts), (AssignmentStatus::Failed, 1));
    assert_eq!(failed.error.as_deref(), Some("lease held by w1 expired"));
    let reported = failures(&test, &failed.trace_id).await;
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].payload["error"], "lease held by w1 expired");
    assert_eq!(reported[0].payload["assignment_id"], exhausted.as_str());

    let pending = get(store, &retried).await;
    assert_eq!((pending.status, pending.attempts), (AssignmentStatus::Pending, 1));
    assert_eq!((pending.worker, pending.lease_expires_at), (None, None));
    assert_eq!(claim(store, claim_params("w2")).await[0].assignment.attempts, 2);
}

/// A `stop` future that says when the claim first waits, then never completes.
fn waiting_probe() -> (oneshot::Receiver<()>, impl Future<Output = ()>) {
    let (waiting, probe) = oneshot::channel();
    let stop = async move {
        let _ = waiting.send(());
        std::future::pending::<()>().await;
    };
    (probe, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_on_create() {
    let test = open_test(|_| {});
    let store = test.store.clone();
    let (waiting, stop) = waiting_probe();
    let params = ClaimParams {
        wait_ms: Some(MAX_WAIT_MS),
        ..claim_params("w1")
    };
    let poll = tokio::spawn(async move { store.claim(params, stop).await });
    tokio::time::timeout(DEADLINE, waiting).await.unwrap().unwrap();
    // Work for someone else does not end the wait; work that matches does.
    let id = assign(&test.store, A, Lane::Ambient).await;
    let claimed = tokio::time::timeout(DEADLINE, poll)
        .await
        .expect("the waiting claim was not woken by the create")
        .unwrap()
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].assignment.id, id);
    assert_eq!(claimed[0].assignment.worker.as_deref(), Some("w1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_ignores_other_agents_and_stops_on_request() {
    let test = open_test(|_| {});
    let store = test.store.clone();
    let (stop_sender, stop_receiver) = oneshot::channel::<()>();
    let (waiting_sender, waiting) = oneshot::channel();
    let stop = async move {
        let _ = waiting_sender.send(());
        let _ = stop_receiver.await;
    };
    let params = ClaimParams {
        agent_ids: Some(vec![A.into()]),
        wait_ms: Some(MAX_WAIT_MS),
        ..claim_params("w1")
    };
    let poll = tokio::spawn(async move { store.claim(params, stop).await });
    tokio::time::timeout(DEADLINE, waiting).await.unwrap().unwrap();
    let other = assign(&test.store, B, Lane::Interactive).await;
    stop_sender.send(()).unwrap();
    let claimed = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap().unwrap();
    assert!(claimed.is_empty(), "{claimed:?}");
    assert_eq!(get(&test.store, &other).await.status, AssignmentStatus::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_picks_up_work_when_its_retry_time_comes() {
    let test = open_test(|_| {});
    let id = assign(&test.store, A, Lane::Ambient).await;
    claim(&test.store, claim_params("w1")).await;
    let failed = test.store.fail_assignment(fail(&id, "w1", true, false)).await.unwrap();
    let not_before = ms(failed.not_before.as_deref().unwrap());
    let store = test.store.clone();
    let (waiting, stop) = waiting_probe();
    let params = ClaimParams {
        wait_ms: Some(MAX_WAIT_MS),
        ..claim_params("w2")
    };
    let poll = tokio::spawn(async move { store.claim(params, stop).await });
    tokio::time::timeout(DEADLINE, waiting).await.unwrap().unwrap();
    // Nothing notifies: the claim's own timer for the retry time finds it.
    test.clock.set(not_before);
    let claimed = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].assignment.id.as_str(), claimed[0].assignment.attempts),
        (id.as_str(), 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pending_leaves_claimed_work_alone() {
    let test = open_test(|_| {});
    let store = &test.store;
    let claimed = assign(store, A, Lane::Interactive).await;
    claim(store, claim_params("w1")).await;
    let pending_a = assign(store, A, Lane::Ambient).await;
    let pending_b = assign(store, B, Lane::Ambient).await;
    let only_a = CancelPendingParams {
        agent_id: Some(A.into()),
    };
    assert_eq!(store.cancel_pending_assignments(only_a.clone()).await.unwrap(), 1);
    assert_eq!(store.cancel_pending_assignments(only_a).await.unwrap(), 0);
    assert_eq!(get(store, &pending_b).await.status, AssignmentStatus::Pending);
    assert_eq!(
        store
            .cancel_pending_assignments(CancelPendingParams::default())
            .await
            .unwrap(),
        1
    );
    for id in [&pending_a, &pending_b] {
        let cancelled = get(store, id).await;
        assert_eq!(cancelled.status, AssignmentStatus::Cancelled);
        assert!(cancelled.error.unwrap().contains("cancel_pending"));
    }
    assert_eq!(get(store, &claimed).await.status, AssignmentStatus::Claimed);
    assert!(claim_ids(store, claim_params("w2")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_and_put_the_newest_first() {
    let test = open_test(|_| {});
    let store = &test.store;
    let first = assign(store, A, Lane::Ambient).await;
    let second = assign(store, B, Lane::Ambient).await;
    let third = assign(store, A, Lane::Interactive).await;
    claim(
        store,
        ClaimParams {
            limit: 1,
            ..claim_params("w1")
        },
    )
    .await;
    let ids = |assignments: Vec<Assignment>| assignments.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let list = |params: AssignmentListParams| async move { ids(store.list_assignments(params).await.unwrap()) };
    assert_eq!(
        list(AssignmentListParams::default()).await,
        vec![third.clone(), second.clone(), first.clone()]
    );
    let by_agent = AssignmentListParams {
        agent_id: Some(A.into()),
        ..AssignmentListParams::default()
    };
    assert_eq!(list(by_agent).await, vec![third.clone(), first.clone()]);
    let by_status = AssignmentListParams {
        status: Some(AssignmentStatus::Pending),
        ..AssignmentListParams::default()
    };
    assert_eq!(list(by_status).await, vec![second.clone(), first.clone()]);
    let event_id = get(store, &second).await.event_id;
    let by_event = AssignmentListParams {
        event_id: Some(event_id),
        ..AssignmentListParams::default()
    };
    assert_eq!(list(by_event).await, vec![second]);
    let limited = AssignmentListParams {
        limit: Some(1),
        ..AssignmentListParams::default()
    };
    assert_eq!(list(limited).await, vec![third]);
    let too_many = AssignmentListParams {
        limit: Some(LIST_MAX_LIMIT + 1),
        ..AssignmentListParams::default()
    };
    assert_eq!(code(store.list_assignments(too_many).await).0, -32602);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_survives_a_restart_and_expired_leases_are_claimable() {
    let test = open_test(|_| {});
    let pending = assign(&test.store, A, Lane::Ambient).await;
    let leased = assign(&test.store, A, Lane::Interactive).await;
    let claimed = claim(
        &test.store,
        ClaimParams {
            limit: 1,
            lease_ms: 30_000,
            ..claim_params("w1")
        },
    )
    .await;
    assert_eq!(claimed[0].assignment.id, leased);
    let done = assign(&test.store, B, Lane::Ambient).await;
    claim(
        &test.store,
        ClaimParams {
            agent_ids: Some(vec![B.into()]),
            ..claim_params("w1")
        },
    )
    .await;
    test.store.complete_assignment(lease(&done, "w1")).await.unwrap();
    let before = test
        .store
        .list_assignments(AssignmentListParams::default())
        .await
        .unwrap();

    // The bus is down while the lease runs out.
    let test = test.reopen(|_| {}).await;
    assert_eq!(
        test.store
            .list_assignments(AssignmentListParams::default())
            .await
            .unwrap(),
        before
    );
    test.clock.advance(30_000);
    let picked = claim(&test.store, claim_params("w2")).await;
    let picked: Vec<(&str, u32)> = picked
        .iter()
        .map(|c| (c.assignment.id.as_str(), c.assignment.attempts))
        .collect();
    assert_eq!(picked, vec![(leased.as_str(), 2), (pending.as_str(), 1)]);
    assert_eq!(get(&test.store, &done).await.status, AssignmentStatus::Completed);
    // Idempotency holds across the restart too.
    let again = test
        .store
        .create_assignment(create_params(&before[0].event_id, B, Lane::Ambient))
        .await
        .unwrap();
    assert_eq!((again.id, again.created), (done, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_finished_work_only() {
    let test = open_test(|config| config.retention_ms = 1_000);
    let store = &test.store;
    let finished = assign(store, A, Lane::Interactive).await;
    claim(store, claim_params("w1")).await;
    store.complete_assignment(lease(&finished, "w1")).await.unwrap();
    let waiting = assign(store, A, Lane::Ambient).await;
    test.clock.advance(1_000);
    store.compact().await.unwrap();
    assert_eq!(
        store
            .list_assignments(AssignmentListParams::default())
            .await
            .unwrap()
            .len(),
        2
    );
    test.clock.advance(1);
    store.compact().await.unwrap();
    let left: Vec<String> = store
        .list_assignments(AssignmentListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(left, vec![waiting]);
}

#[test]
fn long_errors_are_cut_at_a_character_boundary() {
    let long = "é".repeat(MAX_ERROR_BYTES);
    let cut = error_text(&long);
    assert!(cut.len() <= MAX_ERROR_BYTES && cut.len() >= MAX_ERROR_BYTES - 1);
    assert!(long.starts_with(&cut));
    assert_eq!(error_text("short"), "short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_work_keeps_no_lease_and_resumes_without_using_an_attempt() {
    let test = open_test(|_| {});
    let store = &test.store;
    let id = assign_with(store, A, Lane::Ambient, |params| params.max_attempts = Some(1)).await;
    claim(store, claim_params("w1")).await;
    assert!(
        store.suspend_assignment(lease(&id, "w2")).await.is_err(),
        "only the holder suspends"
    );
    let suspended = store.suspend_assignment(lease(&id, "w1")).await.unwrap();
    assert_eq!(suspended.status, AssignmentStatus::WaitingConfirmation);
    assert_eq!(suspended.lease_expires_at, None);

    // Neither the lease sweep nor a claim touches it while a human decides.
    test.clock.advance(60_000);
    assert_eq!(store.sweep_leases().await.unwrap(), SweepReport::default());
    assert!(claim_ids(store, claim_params("w2")).await.is_empty());
    assert!(matches!(
        store.complete_assignment(lease(&id, "w1")).await,
        Err(StoreError::Conflict(_))
    ));

    let resumed = store.resume_assignment(id.clone()).await.unwrap();
    assert_eq!((resumed.status, resumed.attempts), (AssignmentStatus::Pending, 0));
    assert!(matches!(
        store.resume_assignment(id.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.resume_assignment("asg_01J00000000000000000000000".into()).await,
        Err(StoreError::NotFound(_))
    ));
    let again = claim(store, claim_params("w2")).await;
    assert_eq!(
        (again[0].assignment.id.as_str(), again[0].assignment.attempts),
        (id.as_str(), 1)
    );
}
