//! The assignments queue through the real daemon (docs/agents.md): the router's token creates work
//! on `bus.sock`, the llm's token long-polls a claim and fails it for good, which puts
//! `system.agent_failure` in the event's trace for subscribers; `assignments.list` and
//! `assignments.cancel_pending` work through `api.sock`, which offers nothing else of the queue.

use aiventbus_proto::agents::{
    AssignmentListParams, AssignmentStatus, AssignmentsCancelPending, AssignmentsClaim, AssignmentsList,
    CancelPendingParams, ClaimParams,
};
use aiventbus_testkit::{Daemon, wait_for_event};
use serde_json::{Value, json};

use crate::support::{self, Raw, rpc_code};

/// An agent no rule or llm agent knows, so the daemon's own services leave its work alone.
const AGENT: &str = "agt_e2e_assignments";

/// A raw `bus.sock` connection authenticated with the token `service` presents to the bus.
async fn bus_as(daemon: &Daemon, service: &str) -> Raw {
    let path = daemon.paths.creds_dir(service).join("token.bus");
    let token = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut conn = Raw::connect(&daemon.paths.socket("bus")).await;
    let hello = conn.call(1, "auth.hello", json!({"token": token.trim()})).await;
    assert_eq!(hello["result"]["subject"], service, "{hello}");
    conn
}

fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_are_created_claimed_failed_and_listed() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let work = client
        .publish(&support::event("work.assign", json!({"n": 1})))
        .await
        .expect("publish");
    let mut router = bus_as(&daemon, "router").await;
    let mut llm = bus_as(&daemon, "llm").await;

    // A long poll for the agent's work, sent before there is any; a write answered after it
    // makes it likely the poll is waiting when the work arrives.
    let claim =
        json!({"worker": "e2e-worker", "agent_ids": [AGENT], "limit": 1, "lease_ms": 30_000, "wait_ms": 60_000});
    llm.send(&json!({"jsonrpc": "2.0", "id": 10, "method": "assignments.claim", "params": claim}).to_string())
        .await;
    let unknown = llm
        .call(
            11,
            "assignments.heartbeat",
            json!({"id": "asg_unknown", "worker": "e2e-worker"}),
        )
        .await;
    assert_eq!(error_code(&unknown), -32002, "{unknown}");

    let create = json!({"event_id": work.id, "agent_id": AGENT, "lane": "interactive"});
    let created = router.call(2, "assignments.create", create.clone()).await;
    assert_eq!(created["result"]["created"], true, "{created}");
    let id = created["result"]["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("asg_"), "{created}");

    let claimed = llm.recv_json().await;
    assert_eq!(claimed["id"], 10, "{claimed}");
    let claimed = &claimed["result"]["claimed"];
    assert_eq!(claimed.as_array().map(Vec::len), Some(1), "{claimed}");
    assert_eq!(claimed[0]["assignment"]["id"], id.as_str());
    assert_eq!(claimed[0]["assignment"]["status"], "claimed");
    assert_eq!(claimed[0]["assignment"]["attempts"], 1);
    assert_eq!(claimed[0]["assignment"]["trace_id"], work.trace_id.as_str());
    assert_eq!(claimed[0]["event"]["id"], work.id.as_str());

    // Idempotent per event and agent; the event must exist; the router may not claim.
    let again = router.call(3, "assignments.create", create).await;
    assert_eq!(
        (again["result"]["id"].as_str(), &again["result"]["created"]),
        (Some(id.as_str()), &json!(false))
    );
    let orphan = router
        .call(
            4,
            "assignments.create",
            json!({"event_id": "evt_missing", "agent_id": AGENT, "lane": "ambient"}),
        )
        .await;
    assert_eq!(error_code(&orphan), -32602, "{orphan}");
    assert!(
        orphan["error"]["message"].as_str().unwrap_or("").contains("event_id"),
        "{orphan}"
    );
    let refused = router
        .call(
            5,
            "assignments.claim",
            json!({"worker": "router", "limit": 1, "lease_ms": 30_000}),
        )
        .await;
    assert_eq!(error_code(&refused), -32001, "{refused}");

    // Only the holder ends it; failing without retry publishes system.agent_failure.
    let wrong = llm
        .call(12, "assignments.complete", json!({"id": id, "worker": "someone-else"}))
        .await;
    assert_eq!(error_code(&wrong), -32003, "{wrong}");
    let failed = llm
        .call(
            13,
            "assignments.fail",
            json!({"id": id, "worker": "e2e-worker", "error": "e2e failure", "retry": false}),
        )
        .await;
    assert_eq!(failed["result"]["status"], "failed", "{failed}");
    let report = wait_for_event(
        &client,
        "system.agent_failure",
        Some(work.seq),
        support::REPLY_DEADLINE,
        |event| event.payload["assignment_id"] == id.as_str(),
    )
    .await
    .expect("system.agent_failure reaches subscribers");
    assert_eq!(report.trace_id, work.trace_id);
    assert_eq!(report.parent_event.as_deref(), Some(work.id.as_str()));
    assert_eq!(report.source, "system");
    assert_eq!(report.payload["agent_id"], AGENT);
    assert_eq!(report.payload["error"], "e2e failure");
    assert_eq!(report.payload["attempts"], 1);
    let trace = client.trace(&work.trace_id).await.expect("events.trace").events;
    assert!(trace.iter().any(|event| event.id == report.id), "{trace:?}");

    // api.sock lists and cancels, newest first, and offers nothing else of the queue.
    let waiting = client
        .publish(&support::event("work.assign", json!({"n": 2})))
        .await
        .expect("publish");
    let queued = router
        .call(
            6,
            "assignments.create",
            json!({"event_id": waiting.id, "agent_id": AGENT, "lane": "ambient"}),
        )
        .await;
    let queued_id = queued["result"]["id"].as_str().expect("id").to_owned();
    let mine = AssignmentListParams {
        agent_id: Some(AGENT.into()),
        ..AssignmentListParams::default()
    };
    let listed = client.call::<AssignmentsList>(&mine).await.expect("assignments.list");
    let listed: Vec<(&str, AssignmentStatus)> = listed
        .assignments
        .iter()
        .map(|assignment| (assignment.id.as_str(), assignment.status))
        .collect();
    assert_eq!(
        listed,
        vec![
            (queued_id.as_str(), AssignmentStatus::Pending),
            (id.as_str(), AssignmentStatus::Failed)
        ]
    );
    let cancelled = client
        .call::<AssignmentsCancelPending>(&CancelPendingParams {
            agent_id: Some(AGENT.into()),
        })
        .await
        .expect("assignments.cancel_pending");
    assert_eq!(cancelled.cancelled, 1);
    let cancelled_list = client
        .call::<AssignmentsList>(&AssignmentListParams {
            status: Some(AssignmentStatus::Cancelled),
            ..mine
        })
        .await
        .expect("assignments.list");
    assert_eq!(cancelled_list.assignments.len(), 1);
    assert_eq!(cancelled_list.assignments[0].id, queued_id);
    let claim = ClaimParams {
        worker: "outsider".into(),
        agent_ids: None,
        lanes: None,
        limit: 1,
        lease_ms: 30_000,
        wait_ms: None,
    };
    let (code, _) = rpc_code(client.call::<AssignmentsClaim>(&claim).await);
    assert_eq!(code, -32601, "api.sock must not offer assignments.claim");

    support::shut_down(daemon).await;
}
