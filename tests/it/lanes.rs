//! Leases and lanes end to end (SPEC §6; docs/agents.md, "Assignments (bus)" and "Lanes and
//! fairness"): the real daemon with the testkit's scripted model server. An llm killed mid-run
//! loses its lease and the run completes once, on the next attempt; interactive work runs in the
//! reserved slot while ambient work holds the general one; and under a steady interactive stream
//! ambient work still runs — one general claim in four — without queueing interactive work behind it.

use std::collections::HashSet;
use std::time::Duration;

use aiventbus_client::{Client, EventStream, StreamItem};
use aiventbus_proto::Event;
use aiventbus_proto::agents::{
    AgentKind, AgentSpec, AgentsCreate, AssignmentListParams, AssignmentStatus, AssignmentsList, RuleSpec, RulesCreate,
};
use aiventbus_proto::methods::PublishResult;
use aiventbus_testkit::model::{ModelServer, Reply};
use aiventbus_testkit::{Daemon, eventually, process_alive, wait_for_event};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::support::{self, all_events, event, or_log};

/// How long a run, a restart or a drained backlog may take (debug builds on a busy machine).
const DEADLINE: Duration = Duration::from_secs(60);

/// `[llm]` with one general slot and one reserved for interactive and critical work.
const ONE_SLOT_EACH: &str = "[llm]\nmax_concurrent = 1\ninteractive_slots = 1\n";

/// Provider sections pointing both providers at `server`.
fn providers(server: &ModelServer) -> String {
    format!(
        "[providers.ollama]\nbase_url = \"{}\"\n[providers.openai]\nbase_url = \"{}\"\n",
        server.ollama_url(),
        server.openai_url()
    )
}

async fn start(server: &ModelServer, llm: &str) -> (Daemon, Client) {
    let daemon = support::start_with_config(&format!("{}{llm}", providers(server))).await;
    let client = daemon.client().await.expect("client");
    (daemon, client)
}

/// Creates an Ollama agent that may run `max_concurrent` assignments at once and a rule per topic
/// pattern sending it that work; returns the agent id.
async fn agent_for(client: &Client, name: &str, max_concurrent: u32, patterns: &[&str]) -> String {
    let spec = AgentSpec {
        name: Some(name.into()),
        kind: Some(AgentKind::Llm),
        provider: Some("ollama".into()),
        model: Some("test-model".into()),
        system_prompt: Some("You handle whatever comes.".into()),
        max_concurrent: Some(max_concurrent),
        ..AgentSpec::default()
    };
    let id = client.call::<AgentsCreate>(&spec).await.expect("agents.create").id;
    for pattern in patterns {
        client
            .call::<RulesCreate>(&RuleSpec {
                name: Some(format!("{name}-{pattern}")),
                topic_pattern: Some((*pattern).into()),
                agent_id: Some(id.clone()),
                ..RuleSpec::default()
            })
            .await
            .expect("rules.create");
    }
    id
}

async fn publish(client: &Client, topic: &str, n: usize) -> PublishResult {
    client
        .publish(&event(topic, json!({ "text": format!("{topic} number {n}") })))
        .await
        .unwrap_or_else(|error| panic!("publishing {topic} {n}: {error}"))
}

fn ids(published: &[PublishResult]) -> HashSet<String> {
    published.iter().map(|p| p.id.clone()).collect()
}

/// The event a run report (`agent.started`, `agent.completed`) is about.
fn run_event_id(report: &Event) -> &str {
    report.payload["event_id"].as_str().unwrap_or_default()
}

/// Waits (subscribing from `from_seq`) until every event in `wanted` has its `agent.completed`.
async fn completions(daemon: &Daemon, client: &Client, from_seq: u64, wanted: &HashSet<String>) {
    let mut stream = client
        .subscribe(vec!["agent.completed".into()], Some(from_seq))
        .await
        .expect("events.subscribe");
    let mut missing = wanted.clone();
    while !missing.is_empty() {
        let what = format!("agent.completed of {missing:?}");
        let report = next_event(daemon, &mut stream, &what).await;
        missing.remove(run_event_id(&report));
    }
}

/// The next event of a subscription; fails after [`DEADLINE`] saying what it waited for.
async fn next_event(daemon: &Daemon, stream: &mut EventStream, what: &str) -> Event {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(Ok(StreamItem::Event(event)))) => *event,
        other => panic!(
            "waiting for {what}: {other:?}\n--- daemon output ---\n{}",
            daemon.init_output()
        ),
    }
}

/// Every `agent.started` in the store, in seq order.
async fn started_runs(client: &Client) -> Vec<Event> {
    all_events(client)
        .await
        .into_iter()
        .filter(|e| e.topic == "agent.started")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_llm_mid_run_the_lease_expires_and_the_run_completes_once() {
    let server = ModelServer::start().await.unwrap();
    // The first call never answers: the run is in flight when the llm dies.
    server.push(Reply::Hang);
    server.push(Reply::Json(
        json!({"type": "answer", "summary": "Answered after the crash."}),
    ));
    let (daemon, client) = start(&server, "[llm]\nlease = \"2s\"\nheartbeat = \"500ms\"\n").await;
    agent_for(&client, "survivor", 1, &["user.**"]).await;

    let published = publish(&client, "user.query", 0).await;
    or_log(&daemon, server.wait_for_chat_requests(1, DEADLINE).await);
    let old_pid = or_log(&daemon, daemon.service_pid("llm").await);
    kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL).expect("kill -9 the llm");
    let restarted = eventually(DEADLINE, "the llm running again with a new pid", || {
        let client = client.clone();
        async move {
            let services = client.services().await.ok()?.services;
            let llm = services.into_iter().find(|s| s.name == "llm")?;
            (llm.state == "running" && llm.pid.is_some_and(|pid| pid != old_pid) && llm.restarts >= 1).then_some(llm)
        }
    })
    .await;
    or_log(&daemon, restarted);
    assert!(!process_alive(old_pid), "the killed llm {old_pid} is still there");

    // The dead worker's lease runs out, the bus takes the work back, the new llm runs it.
    let trace_id = published.trace_id.clone();
    let completed = wait_for_event(&client, "agent.completed", Some(published.seq), DEADLINE, move |e| {
        e.trace_id == trace_id
    })
    .await;
    let completed = or_log(&daemon, completed);
    assert_eq!(completed.payload["event_id"], published.id.as_str());
    assert_eq!(completed.payload["summary"], "Answered after the crash.");

    // The assignment is marked completed just after agent.completed.
    let list = AssignmentListParams {
        event_id: Some(published.id.clone()),
        ..AssignmentListParams::default()
    };
    let done = eventually(DEADLINE, "the assignment to complete", || async {
        let assignments = client.call::<AssignmentsList>(&list).await.ok()?.assignments;
        assert_eq!(assignments.len(), 1, "{assignments:?}");
        assignments
            .into_iter()
            .find(|a| a.status == AssignmentStatus::Completed)
    })
    .await;
    let done = or_log(&daemon, done);
    let trace = client.trace(&published.trace_id).await.expect("events.trace").events;
    let topics: Vec<&str> = trace.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        done.attempts,
        2,
        "one attempt died with the llm, the next completed: {done:?}\ntrace: {topics:?}\n--- daemon output ---\n{}",
        daemon.init_output()
    );

    // Two runs started, one completed, nothing failed for good; the model got exactly two calls.
    let count = |topic: &str| trace.iter().filter(|e| e.topic == topic).count();
    assert_eq!(count("agent.started"), 2, "{topics:?}");
    assert_eq!(count("agent.completed"), 1, "{topics:?}");
    assert_eq!(count("system.agent_failure"), 0, "{topics:?}");
    assert_eq!(server.chat_requests().len(), 2);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_interactive_work_is_not_queued_behind_ambient_work() {
    let mut server = ModelServer::start().await.unwrap();
    // The first call — the oldest ambient job, which only the general pool may take — never
    // answers, so it holds the general pool's one slot for as long as the test wants.
    server.push(Reply::Hang);
    let (daemon, client) = start(&server, ONE_SLOT_EACH).await;
    let agent = agent_for(&client, "laned", 4, &["user.**", "bg.**"]).await;

    let mut ambient = Vec::new();
    for n in 0..10 {
        ambient.push(publish(&client, "bg.job", n).await);
    }
    or_log(&daemon, server.wait_for_chat_requests(1, DEADLINE).await);
    let mut interactive = Vec::new();
    for n in 0..3 {
        interactive.push(publish(&client, "user.query", n).await);
    }
    // All three are answered while ambient work holds the general slot and nine more wait.
    completions(&daemon, &client, ambient[0].seq, &ids(&interactive)).await;

    // What ran: the hung ambient job, then the three queries and nothing else. (Among themselves
    // the queries run in the order their assignments were created, which the router, routing
    // several events at once, does not promise to be their publish order.)
    let started: Vec<String> = started_runs(&client)
        .await
        .iter()
        .map(|e| run_event_id(e).to_owned())
        .collect();
    assert_eq!(started.len(), 4, "agent.started event ids: {started:?}");
    assert_eq!(started[0], ambient[0].id, "{started:?}");
    let after: HashSet<String> = started[1..].iter().cloned().collect();
    assert_eq!(after, ids(&interactive), "agent.started event ids: {started:?}");
    assert_eq!(server.chat_requests().len(), 4);
    let pending = client
        .call::<AssignmentsList>(&AssignmentListParams {
            agent_id: Some(agent.clone()),
            status: Some(AssignmentStatus::Pending),
            ..AssignmentListParams::default()
        })
        .await
        .expect("assignments.list")
        .assignments;
    let pending: HashSet<String> = pending.into_iter().map(|a| a.event_id).collect();
    assert_eq!(pending, ids(&ambient[1..]), "the rest of the ambient backlog waits");

    // The hung call ends (the server drops its connections and comes back): the ambient backlog
    // drains, the hung job included.
    server.stop().await;
    server.restart().await.unwrap();
    completions(&daemon, &client, ambient[0].seq, &ids(&ambient)).await;
    support::shut_down(daemon).await;
}

/// Ambient jobs queued before the interactive stream (more than the stream can use up).
const AMBIENT_BACKLOG: usize = 16;
/// Interactive queries kept published and not yet completed during the stream: more than the two
/// slots, so that every claim finds interactive work pending even while the test refills.
const IN_FLIGHT: usize = 5;
/// Interactive queries in the whole stream.
const STREAM: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_ambient_work_progresses_under_a_steady_interactive_stream() {
    let server = ModelServer::start().await.unwrap();
    // Every run takes a moment, so work queues up behind the two slots.
    server.set_default(Reply::delayed(Duration::from_millis(200), Reply::default_answer()));
    let (daemon, client) = start(&server, ONE_SLOT_EACH).await;
    agent_for(&client, "fair", 4, &["user.**", "bg.**"]).await;

    let mut ambient = Vec::new();
    for n in 0..AMBIENT_BACKLOG {
        ambient.push(publish(&client, "bg.job", n).await);
    }
    let backlog_end = ambient.last().expect("a backlog").seq;
    let ambient = ids(&ambient);

    // The stream: IN_FLIGHT queries at first, then a new one each time one completes, until
    // STREAM were published. The window runs from the first query's publish to the last one's.
    let mut completed_stream = client
        .subscribe(vec!["agent.completed".into()], Some(backlog_end + 1))
        .await
        .expect("events.subscribe");
    let mut interactive = HashSet::new();
    let mut window = (u64::MAX, 0);
    for n in 0..STREAM {
        if n >= IN_FLIGHT {
            // Wait for one of ours to complete before publishing the next.
            loop {
                let report = next_event(&daemon, &mut completed_stream, "a query of the stream to complete").await;
                if interactive.contains(run_event_id(&report)) {
                    break;
                }
            }
        }
        let published = publish(&client, "user.query", n).await;
        window = (window.0.min(published.seq), published.seq);
        interactive.insert(published.id);
    }
    drop(completed_stream);
    completions(&daemon, &client, window.0, &interactive).await;

    // The runs that started inside the window, in seq order.
    let (start, end) = window;
    let events = all_events(&client).await;
    let in_window = |e: &&Event| e.seq > start && e.seq < end;
    let started: Vec<&Event> = events
        .iter()
        .filter(|e| e.topic == "agent.started")
        .filter(in_window)
        .collect();
    let lanes: String = started
        .iter()
        .map(|e| match run_event_id(e) {
            id if ambient.contains(id) => 'A',
            id if interactive.contains(id) => 'I',
            _ => '?',
        })
        .collect();
    let ambient_starts: Vec<usize> = lanes.match_indices('A').map(|(at, _)| at).collect();

    // The first ambient run of the window may have been claimed before the stream began; every
    // later one came from a general claim made while interactive work was pending, which only the
    // claim asking for ambient first (one in four) lets through. So ambient work still runs — the
    // general pool makes well over eight claims during the stream — ...
    assert!(
        ambient_starts.len() >= 3,
        "fewer than two ambient runs were claimed during the interactive stream (runs by lane, \
         A = ambient, I = interactive: {lanes})"
    );
    let claimed_in_window: HashSet<&str> = ambient_starts[1..]
        .iter()
        .map(|&at| run_event_id(started[at]))
        .collect();
    let finished = events
        .iter()
        .filter(|e| e.topic == "agent.completed")
        .filter(in_window)
        .any(|e| claimed_in_window.contains(run_event_id(e)));
    assert!(
        finished,
        "no ambient run claimed during the stream completed before it ended ({lanes})"
    );
    // ...but never ahead of interactive work: between two ambient runs claimed during the stream
    // the general pool made three interactive-first claims, each of which took a query.
    for pair in ambient_starts[1..].windows(2) {
        let between = lanes[pair[0]..pair[1]].matches('I').count();
        assert!(
            between >= 3,
            "only {between} interactive runs between two ambient ones at {pair:?} ({lanes})"
        );
    }
    support::shut_down(daemon).await;
}
