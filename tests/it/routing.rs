//! Routing through the real daemon (SPEC §6, docs/agents.md): an agent and a rule made on api.sock
//! turn a matching event into an assignment in the right lane; an event no rule takes is reported
//! as `system.unmatched` in its trace; a router killed with SIGKILL routes what was published while
//! it was down exactly once; rules survive a daemon restart.

use std::collections::HashSet;
use std::time::Duration;

use aiventbus_client::{Client, StreamItem};
use aiventbus_proto::agents::{
    AgentKind, AgentSpec, AgentsCreate, Assignment, AssignmentListParams, AssignmentsList, Lane, RuleSpec, RulesCreate,
    RulesGet, RulesList,
};
use aiventbus_proto::methods::{IdParams, NoParams, PublishParams};
use aiventbus_proto::{Event, Priority};
use aiventbus_testkit::{Daemon, eventually, process_alive};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::support::{self, event, or_log, rpc_code};

const DEADLINE: Duration = Duration::from_secs(60);

/// A command agent that reads the event and answers with valid structured output.
async fn create_agent(daemon: &Daemon, client: &Client, name: &str) -> String {
    let spec = AgentSpec {
        name: Some(name.into()),
        kind: Some(AgentKind::Command),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            r#"cat >/dev/null; echo '{"type":"answer","summary":"ok"}'"#.into(),
        ]),
        ..AgentSpec::default()
    };
    let created = client.call::<AgentsCreate>(&spec).await;
    or_log(daemon, created.map_err(anyhow::Error::from)).id
}

async fn create_rule(daemon: &Daemon, client: &Client, spec: RuleSpec) -> String {
    let created = client.call::<RulesCreate>(&spec).await;
    or_log(daemon, created.map_err(anyhow::Error::from)).id
}

fn rule(name: &str, pattern: &str, agent_id: &str) -> RuleSpec {
    RuleSpec {
        name: Some(name.into()),
        topic_pattern: Some(pattern.into()),
        agent_id: Some(agent_id.into()),
        ..RuleSpec::default()
    }
}

async fn assignments_of(client: &Client, event_id: &str) -> Vec<Assignment> {
    client
        .call::<AssignmentsList>(&AssignmentListParams {
            event_id: Some(event_id.into()),
            ..AssignmentListParams::default()
        })
        .await
        .map(|result| result.assignments)
        .unwrap_or_default()
}

/// Waits (polling: assignments have no notification on api.sock) until `event_id` has an assignment.
async fn wait_for_assignment(daemon: &Daemon, client: &Client, event_id: &str) -> Assignment {
    let found = eventually(DEADLINE, &format!("an assignment for {event_id}"), || {
        let client = client.clone();
        let event_id = event_id.to_owned();
        async move { assignments_of(&client, &event_id).await.into_iter().next() }
    })
    .await;
    or_log(daemon, found)
}

/// Waits for a `system.unmatched` report about each of `event_ids` (reading from seq 1).
async fn wait_for_unmatched(daemon: &Daemon, client: &Client, event_ids: &[String]) -> Vec<Event> {
    let mut wanted: HashSet<&str> = event_ids.iter().map(String::as_str).collect();
    let mut stream = or_log(
        daemon,
        client
            .subscribe(vec!["system.unmatched".into()], Some(1))
            .await
            .map_err(anyhow::Error::from),
    );
    let mut reports = Vec::new();
    let collected = tokio::time::timeout(DEADLINE, async {
        while !wanted.is_empty() {
            match stream.next().await {
                Some(Ok(StreamItem::Event(report))) => {
                    if let Some(id) = report.payload["event_id"].as_str() {
                        wanted.remove(id);
                    }
                    reports.push(*report);
                }
                other => panic!("the subscription ended: {other:?}"),
            }
        }
    })
    .await;
    if collected.is_err() {
        panic!(
            "no system.unmatched for {wanted:?} within {DEADLINE:?}\n--- daemon output ---\n{}",
            daemon.init_output()
        );
    }
    reports
}

/// Kills the router with SIGKILL and returns once init runs a new one.
async fn kill_router(daemon: &Daemon) -> u32 {
    let old_pid = or_log(daemon, daemon.service_pid("router").await);
    kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL).expect("kill -9 the router");
    old_pid
}

async fn wait_for_new_router(daemon: &Daemon, client: &Client, old_pid: u32) {
    let restarted = eventually(DEADLINE, "the router running again with a new pid", || {
        let client = client.clone();
        async move {
            let services = client.services().await.ok()?.services;
            let router = services.into_iter().find(|s| s.name == "router")?;
            (router.state == "running" && router.pid.is_some_and(|pid| pid != old_pid)).then_some(router)
        }
    })
    .await;
    or_log(daemon, restarted);
    assert!(!process_alive(old_pid), "the killed router {old_pid} is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_event_becomes_an_assignment_in_its_lane() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let agent = create_agent(&daemon, &client, "router-e2e").await;
    let rule_id = create_rule(&daemon, &client, rule("everything", "**", &agent)).await;

    let cases = [
        ("user.ask", Priority::Medium, Lane::Interactive),
        ("security.login", Priority::Low, Lane::Critical),
        ("disk.full", Priority::Critical, Lane::Critical),
        ("fs.created", Priority::Medium, Lane::Ambient),
    ];
    for (topic, priority, lane) in cases {
        let published = client
            .publish(&PublishParams {
                priority: Some(priority),
                ..event(topic, json!({"n": 1}))
            })
            .await
            .expect("publish");
        let assignment = wait_for_assignment(&daemon, &client, &published.id).await;
        assert_eq!(assignment.lane, lane, "{topic} at {priority:?}");
        assert_eq!(assignment.agent_id, agent);
        assert_eq!(assignment.rule_id.as_deref(), Some(rule_id.as_str()));
        assert_eq!(assignment.trace_id, published.trace_id);
    }
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmatched_event_is_reported_in_its_trace() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let published = client
        .publish(&event("nobody.listens", json!({})))
        .await
        .expect("publish");
    let reports = wait_for_unmatched(&daemon, &client, std::slice::from_ref(&published.id)).await;
    let report = reports
        .iter()
        .find(|report| report.payload["event_id"] == json!(published.id))
        .expect("report");
    assert_eq!(report.payload["topic"], "nobody.listens");
    assert_eq!(report.parent_event.as_deref(), Some(published.id.as_str()));
    assert_eq!(report.trace_id, published.trace_id);
    let trace = client.trace(&published.trace_id).await.expect("trace").events;
    let topics: Vec<&str> = trace.iter().map(|event| event.topic.as_str()).collect();
    assert_eq!(topics, ["nobody.listens", "system.unmatched"]);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_create_refuses_bad_fields_naming_them() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let bad = [
        (RuleSpec::default(), "name:"),
        (rule("x", "fs..created", "agt_x"), "topic_pattern:"),
        (rule("x", "system.**", "agt_x"), "topic_pattern:"),
        (
            RuleSpec {
                token_budget_override: Some(0),
                ..rule("x", "fs.*", "agt_x")
            },
            "token_budget_override:",
        ),
        (
            RuleSpec {
                source_pattern: Some("s".repeat(256)),
                ..rule("x", "fs.*", "agt_x")
            },
            "source_pattern:",
        ),
    ];
    for (spec, field) in bad {
        let (code, message) = rpc_code(client.call::<RulesCreate>(&spec).await);
        assert_eq!(code, -32602, "{message}");
        assert!(message.starts_with(field), "{field} not named in {message:?}");
    }
    let listed = client.call::<RulesList>(&NoParams {}).await.expect("rules.list");
    assert!(listed.rules.is_empty(), "{:?}", listed.rules);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_reports_what_was_published_meanwhile_once() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let before = client
        .publish(&event("stray.before", json!({})))
        .await
        .expect("publish");
    wait_for_unmatched(&daemon, &client, std::slice::from_ref(&before.id)).await;

    let old_pid = kill_router(&daemon).await;
    let mut published = vec![before];
    for n in 0..20 {
        published.push(
            client
                .publish(&event("stray.meanwhile", json!({ "n": n })))
                .await
                .expect("publish while the router is down"),
        );
    }
    wait_for_new_router(&daemon, &client, old_pid).await;
    let after = client.publish(&event("stray.after", json!({}))).await.expect("publish");
    published.push(after);
    let ids: Vec<String> = published.iter().map(|p| p.id.clone()).collect();
    wait_for_unmatched(&daemon, &client, &ids).await;
    for event in &published {
        let trace = client.trace(&event.trace_id).await.expect("trace").events;
        let reports = trace.iter().filter(|e| e.topic == "system.unmatched").count();
        assert_eq!(reports, 1, "event {} reported {reports} times", event.seq);
    }
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_routes_what_was_published_meanwhile_once() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let agent = create_agent(&daemon, &client, "router-restart").await;
    create_rule(&daemon, &client, rule("work", "work.**", &agent)).await;
    let before = client.publish(&event("work.before", json!({}))).await.expect("publish");
    wait_for_assignment(&daemon, &client, &before.id).await;

    let old_pid = kill_router(&daemon).await;
    let mut published = vec![before];
    for n in 0..20 {
        published.push(
            client
                .publish(&event("work.meanwhile", json!({ "n": n })))
                .await
                .expect("publish while the router is down"),
        );
    }
    wait_for_new_router(&daemon, &client, old_pid).await;
    for event in &published {
        wait_for_assignment(&daemon, &client, &event.id).await;
    }
    for event in &published {
        let assignments = assignments_of(&client, &event.id).await;
        assert_eq!(assignments.len(), 1, "event {}: {assignments:?}", event.seq);
        assert_eq!(assignments[0].agent_id, agent);
    }
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_survive_a_daemon_restart() {
    let mut daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let agent = create_agent(&daemon, &client, "router-durable").await;
    let rule_id = create_rule(
        &daemon,
        &client,
        RuleSpec {
            priority_order: Some(7),
            semantic_type_pattern: Some("report*".into()),
            ..rule("durable", "reports.**", &agent)
        },
    )
    .await;
    let before = client
        .call::<RulesGet>(&IdParams { id: rule_id.clone() })
        .await
        .expect("rules.get");
    drop(client);

    let code = tokio::task::block_in_place(|| daemon.stop(Duration::from_secs(30))).expect("stop");
    assert_eq!(code, Some(0), "{}", daemon.init_output());
    tokio::task::block_in_place(|| daemon.launch()).unwrap_or_else(|e| panic!("relaunch: {e:#}"));
    let client = daemon.client().await.expect("client");
    let after = client
        .call::<RulesGet>(&IdParams { id: rule_id.clone() })
        .await
        .expect("rules.get after restart");
    assert_eq!(after, before);
    let listed = client.call::<RulesList>(&NoParams {}).await.expect("rules.list").rules;
    assert_eq!(listed, vec![before]);

    // And it still routes.
    let published = client
        .publish(&PublishParams {
            semantic_type: Some("report.daily".into()),
            ..event("reports.daily", json!({}))
        })
        .await
        .expect("publish");
    let assignment = wait_for_assignment(&daemon, &client, &published.id).await;
    assert_eq!(assignment.rule_id.as_deref(), Some(rule_id.as_str()));
    support::shut_down(daemon).await;
}
