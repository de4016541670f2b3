//! The router in-process against a fake bus and a fake llm on real sockets: rules over the wire,
//! routing decisions as assignments and reports on the bus, and following the bus through
//! restarts, cut-offs and failures without skipping or repeating an event.

mod fake;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aiventbus_proto::agents::{
    Lane, RuleMatchParams, RuleSpec, RuleUpdateParams, RulesCreate, RulesDelete, RulesGet, RulesList, RulesMatch,
    RulesUpdate,
};
use aiventbus_proto::methods::{Health, IdParams, NoParams, PublishParams};
use aiventbus_proto::{EventStatus, Priority};
use aiventbus_router::state::State;
use aiventbus_router::store::Store;
use aiventbus_router::{Options, Running};
use aiventbus_rpc::config::{RouterConfig, RpcConfig};
use aiventbus_rpc::{Auth, Client, ClientError, Endpoint};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fake::{DEADLINE, FakeBus, FakeLlm, Server, agent, own_uid};

struct Harness {
    dir: tempfile::TempDir,
    uid: u32,
    bus: FakeBus,
    bus_server: Option<Server>,
    llm: FakeLlm,
    llm_server: Option<Server>,
    config: RouterConfig,
    router: Option<(CancellationToken, Running)>,
    state: Option<Arc<State>>,
}

impl Harness {
    /// A fake bus and llm (serving), the router not started.
    async fn new(agents: Vec<aiventbus_proto::agents::Agent>, config: RouterConfig) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let uid = own_uid(dir.path());
        let bus = FakeBus::new(dir.path().join("bus.sock"), uid);
        let llm = FakeLlm::new(dir.path().join("llm.sock"), uid, agents);
        let bus_server = Some(bus.serve().await);
        let llm_server = Some(llm.serve().await);
        Harness {
            dir,
            uid,
            bus,
            bus_server,
            llm,
            llm_server,
            config,
            router: None,
            state: None,
        }
    }

    /// Both fakes and a started router.
    async fn started(agents: Vec<aiventbus_proto::agents::Agent>, config: RouterConfig) -> Harness {
        let mut harness = Harness::new(agents, config).await;
        harness.start_router().await;
        harness
    }

    fn database(&self) -> PathBuf {
        self.dir.path().join("router.db")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("router.sock")
    }

    async fn start_router(&mut self) {
        let options = Options {
            database: self.database(),
            socket: self.socket(),
            auth: Auth::PeerUid(vec![self.uid]),
            rpc: RpcConfig::default(),
            router: self.config.clone(),
            bus: Endpoint::public(self.bus.path()),
            llm: Endpoint::public(self.llm.path()),
        };
        let stop = CancellationToken::new();
        let running = tokio::time::timeout(DEADLINE, aiventbus_router::start(options, stop.clone()))
            .await
            .expect("router start timed out")
            .expect("router start")
            .expect("not stopped");
        self.state = Some(Arc::clone(&running.state));
        self.router = Some((stop, running));
    }

    async fn stop_router(&mut self) {
        let (stop, running) = self.router.take().expect("router running");
        stop.cancel();
        tokio::time::timeout(DEADLINE, running.stopped())
            .await
            .expect("router stop timed out");
    }

    fn state(&self) -> &Arc<State> {
        self.state.as_ref().expect("router started once")
    }

    async fn client(&self) -> Client {
        Client::connect(Endpoint::public(self.socket()))
            .await
            .expect("router socket")
    }

    /// Waits until routing is complete up to `seq` (the router has no notification for that).
    async fn wait_routed(&self, seq: u64) {
        let state = Arc::clone(self.state());
        let reached = tokio::time::timeout(DEADLINE, async move {
            while state.counters.routed_seq.load(Ordering::Relaxed) < seq {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "routing did not reach seq {seq}: {:?}",
            self.state().health()
        );
    }

    /// Waits until `check` holds on the fake bus's data (polled: the fake has no notification).
    async fn eventually(&self, what: &str, check: impl Fn(&fake::BusData) -> bool) {
        let reached = tokio::time::timeout(DEADLINE, async {
            while !check(&self.bus.data()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "timed out waiting for {what}: {:?}",
            self.state().health()
        );
    }

    fn head(&self) -> u64 {
        self.bus.data().events.last().map_or(0, |event| event.seq)
    }
}

fn config(max_fan_out: u32) -> RouterConfig {
    RouterConfig {
        max_fan_out,
        ..RouterConfig::default()
    }
}

fn rule(name: &str, pattern: &str, agent_id: &str) -> RuleSpec {
    RuleSpec {
        name: Some(name.into()),
        topic_pattern: Some(pattern.into()),
        agent_id: Some(agent_id.into()),
        ..RuleSpec::default()
    }
}

fn publish(topic: &str) -> PublishParams {
    PublishParams {
        topic: topic.into(),
        payload: Some(json!({})),
        source: Some("user:alice".into()),
        ..PublishParams::default()
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (i32, String) {
    match result {
        Err(ClientError::Rpc(error)) => (error.code, error.message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

async fn create(client: &Client, spec: RuleSpec) -> String {
    client.call::<RulesCreate>(&spec).await.expect("rules.create").id
}

fn lane_of(bus: &FakeBus, event_id: &str, agent_id: &str) -> Option<Lane> {
    bus.data()
        .assignments
        .get(&(event_id.to_owned(), agent_id.to_owned()))
        .map(|params| params.lane)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_crud_over_the_socket() {
    let mut harness = Harness::started(vec![agent("agt_a", true), agent("agt_b", true)], config(3)).await;
    let client = harness.client().await;

    let late = create(
        &client,
        RuleSpec {
            priority_order: Some(200),
            ..rule("late", "fs.**", "agt_a")
        },
    )
    .await;
    assert!(late.starts_with("rule_"), "{late}");
    // By name is accepted for the agent; the canonical id is stored.
    let early = create(
        &client,
        RuleSpec {
            priority_order: Some(5),
            min_priority: Some(Priority::High),
            ..rule("early", "net.*", "name-agt_b")
        },
    )
    .await;
    let default_order = create(&client, rule("middle", "**", "agt_a")).await;

    let got = client.call::<RulesGet>(&IdParams { id: early.clone() }).await.unwrap();
    assert_eq!((got.name.as_str(), got.agent_id.as_str()), ("early", "agt_b"));
    assert_eq!(got.min_priority, Some(Priority::High));
    assert!(got.enabled);
    let by_name = client.call::<RulesGet>(&IdParams { id: "late".into() }).await.unwrap();
    assert_eq!(by_name.id, late);
    let listed: Vec<String> = client
        .call::<RulesList>(&NoParams {})
        .await
        .unwrap()
        .rules
        .into_iter()
        .map(|rule| rule.id)
        .collect();
    assert_eq!(listed, [early.clone(), default_order.clone(), late.clone()]);

    // Partial update: only what is given changes.
    let updated = client
        .call::<RulesUpdate>(&RuleUpdateParams {
            id: late.clone(),
            spec: RuleSpec {
                priority_order: Some(1),
                enabled: Some(false),
                ..RuleSpec::default()
            },
        })
        .await
        .unwrap();
    assert_eq!((updated.priority_order, updated.enabled), (1, false));
    assert_eq!(
        (updated.topic_pattern.as_str(), updated.agent_id.as_str()),
        ("fs.**", "agt_a")
    );
    assert_ne!(updated.updated_at, "", "updated_at set");
    let listed = client.call::<RulesList>(&NoParams {}).await.unwrap().rules;
    assert_eq!(listed[0].id, late, "a new priority_order reorders the list");

    // Refusals, each naming the field.
    let (code_, message) = code(client.call::<RulesCreate>(&rule("late", "x", "agt_a")).await);
    assert_eq!(code_, -32003, "duplicate name: {message}");
    let (code_, message) = code(client.call::<RulesCreate>(&rule("x", "a..b", "agt_a")).await);
    assert_eq!(code_, -32602);
    assert!(message.starts_with("topic_pattern:"), "{message}");
    let (code_, message) = code(client.call::<RulesCreate>(&rule("x", "a.*", "agt_nobody")).await);
    assert_eq!((code_, message.as_str()), (-32602, "agent_id: no agent agt_nobody"));
    let (code_, message) = code(
        client
            .call::<RulesCreate>(&RuleSpec {
                token_budget_override: Some(0),
                ..rule("x", "a.*", "agt_a")
            })
            .await,
    );
    assert_eq!(code_, -32602);
    assert!(message.starts_with("token_budget_override:"), "{message}");
    let (code_, message) = code(
        client
            .call::<RulesUpdate>(&RuleUpdateParams {
                id: early.clone(),
                spec: RuleSpec {
                    name: Some("middle".into()),
                    ..RuleSpec::default()
                },
            })
            .await,
    );
    assert_eq!(code_, -32003, "rename onto a taken name: {message}");
    let (code_, _) = code(
        client
            .call::<RulesUpdate>(&RuleUpdateParams {
                id: "rule_missing".into(),
                spec: RuleSpec::default(),
            })
            .await,
    );
    assert_eq!(code_, -32002);
    let (code_, message) = code(
        client
            .call::<RulesUpdate>(&RuleUpdateParams {
                id: early.clone(),
                spec: RuleSpec {
                    agent_id: Some("agt_gone".into()),
                    ..RuleSpec::default()
                },
            })
            .await,
    );
    assert_eq!((code_, message.as_str()), (-32602, "agent_id: no agent agt_gone"));

    // llm down: the agent cannot be checked.
    harness.llm_server.take().unwrap().stop().await;
    let (code_, message) = code(client.call::<RulesCreate>(&rule("y", "a.*", "agt_a")).await);
    assert_eq!(code_, -32005);
    assert!(message.contains("agent_id") && message.contains("llm"), "{message}");
    harness.llm_server = Some(harness.llm.serve().await);

    let deleted = client
        .call::<RulesDelete>(&IdParams { id: early.clone() })
        .await
        .unwrap();
    assert!(deleted.deleted);
    let again = client
        .call::<RulesDelete>(&IdParams { id: early.clone() })
        .await
        .unwrap();
    assert!(!again.deleted);
    let (code_, _) = code(client.call::<RulesGet>(&IdParams { id: early }).await);
    assert_eq!(code_, -32002);

    // Rules survive a restart of the router.
    harness.stop_router().await;
    harness.start_router().await;
    let client = harness.client().await;
    let listed: Vec<String> = client
        .call::<RulesList>(&NoParams {})
        .await
        .unwrap()
        .rules
        .into_iter()
        .map(|rule| rule.id)
        .collect();
    assert_eq!(listed, [late, default_order]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_match_applies_order_fan_out_reserved_namespaces_and_disabled_agents() {
    let agents = vec![
        agent("agt_a", true),
        agent("agt_b", true),
        agent("agt_c", true),
        agent("agt_d", true),
        agent("agt_off", true),
    ];
    let harness = Harness::started(agents, config(2)).await;
    let client = harness.client().await;
    let off = create(
        &client,
        RuleSpec {
            priority_order: Some(1),
            ..rule("off", "user.**", "agt_off")
        },
    )
    .await;
    let a = create(
        &client,
        RuleSpec {
            priority_order: Some(2),
            ..rule("a", "user.query", "agt_a")
        },
    )
    .await;
    let _a_again = create(
        &client,
        RuleSpec {
            priority_order: Some(3),
            ..rule("a_again", "user.*", "agt_a")
        },
    )
    .await;
    let b = create(
        &client,
        RuleSpec {
            priority_order: Some(4),
            source_pattern: Some("user:*".into()),
            ..rule("b", "**", "agt_b")
        },
    )
    .await;
    let _c = create(
        &client,
        RuleSpec {
            priority_order: Some(5),
            ..rule("c", "**", "agt_c")
        },
    )
    .await;
    let agents_rule = create(&client, rule("agents", "agent.completed", "agt_d")).await;
    // agt_off is disabled after its rule was made: the next list says so.
    harness.llm.set_agents(vec![
        agent("agt_a", true),
        agent("agt_b", true),
        agent("agt_c", true),
        agent("agt_d", true),
        agent("agt_off", false),
    ]);
    harness.state().agents.refresh_now().await;

    let matched = |topic: &str, source: Option<&str>| {
        let client = client.clone();
        let params = RuleMatchParams {
            topic: topic.into(),
            priority: None,
            source: source.map(str::to_owned),
            semantic_type: None,
        };
        async move {
            client
                .call::<RulesMatch>(&params)
                .await
                .expect("rules.match")
                .rules
                .into_iter()
                .map(|rule| rule.id)
                .collect::<Vec<_>>()
        }
    };
    // Disabled agt_off skipped, agt_a once, capped at 2.
    assert_eq!(matched("user.query", Some("user:alice")).await, [a.clone(), b.clone()]);
    // Without a source, b's source condition cannot hold.
    assert_eq!(matched("user.query", None).await.len(), 2);
    assert_eq!(matched("user.query", None).await[0], a);
    assert_eq!(matched("agent.completed", Some("agent:agt_x")).await, [agents_rule]);
    assert!(matched("agent.stream", None).await.is_empty());
    assert!(matched("system.unmatched", None).await.is_empty());
    assert!(matched("exec.finished", None).await.is_empty());
    let (code_, message) = code(
        client
            .call::<RulesMatch>(&RuleMatchParams {
                topic: "Bad Topic".into(),
                priority: None,
                source: None,
                semantic_type: None,
            })
            .await,
    );
    assert_eq!(code_, -32602);
    assert!(message.starts_with("topic:"), "{message}");
    assert!(!off.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_events_with_lanes_and_overrides_and_reports_unmatched() {
    let harness = Harness::started(vec![agent("agt_a", true), agent("agt_b", true)], config(3)).await;
    let client = harness.client().await;
    let everything = create(&client, rule("everything", "**", "agt_a")).await;
    let files = create(
        &client,
        RuleSpec {
            priority_order: Some(1),
            model_override: Some("llama3".into()),
            token_budget_override: Some(900),
            semantic_type_pattern: Some("file*".into()),
            ..rule("files", "fs.*", "agt_b")
        },
    )
    .await;
    // A rule with a condition no event meets: "nobody.*" events stay unmatched.
    create(
        &client,
        RuleSpec {
            min_priority: Some(Priority::Critical),
            ..rule("critical_only", "nobody.**", "agt_b")
        },
    )
    .await;
    create(
        &client,
        RuleSpec {
            enabled: Some(false),
            ..rule("disabled", "nobody.**", "agt_a")
        },
    )
    .await;
    client
        .call::<RulesUpdate>(&RuleUpdateParams {
            id: everything.clone(),
            spec: RuleSpec {
                topic_pattern: Some("*.*".into()),
                ..RuleSpec::default()
            },
        })
        .await
        .unwrap();

    let question = harness.bus.publish(publish("user.query"));
    let alert = harness.bus.publish(publish("security.login"));
    let urgent = harness.bus.publish(PublishParams {
        priority: Some(Priority::Critical),
        ..publish("disk.full")
    });
    let file = harness.bus.publish(PublishParams {
        semantic_type: Some("file.text".into()),
        ..publish("fs.created")
    });
    let stray = harness.bus.publish(publish("nobody.listens.here"));
    harness.wait_routed(stray.seq).await;

    let bus = &harness.bus;
    assert_eq!(lane_of(bus, &question.id, "agt_a"), Some(Lane::Interactive));
    assert_eq!(lane_of(bus, &alert.id, "agt_a"), Some(Lane::Critical));
    assert_eq!(lane_of(bus, &urgent.id, "agt_a"), Some(Lane::Critical));
    assert_eq!(lane_of(bus, &file.id, "agt_a"), Some(Lane::Ambient));
    let with_overrides = bus.data().assignments[&(file.id.clone(), "agt_b".to_owned())].clone();
    assert_eq!(with_overrides.rule_id.as_deref(), Some(files.as_str()));
    assert_eq!(with_overrides.model_override.as_deref(), Some("llama3"));
    assert_eq!(with_overrides.token_budget_override, Some(900));
    assert_eq!(with_overrides.max_queue, Some(1000));
    assert_eq!(lane_of(bus, &question.id, "agt_b"), None, "files rule needs fs.*");
    assert_eq!(bus.data().assignments.len(), 5);

    let data = bus.data();
    let unmatched = data.on("system.unmatched");
    assert_eq!(unmatched.len(), 1, "only the stray event is unmatched");
    let report = unmatched[0];
    assert_eq!(report.payload["event_id"], json!(stray.id));
    assert_eq!(report.payload["topic"], json!("nobody.listens.here"));
    assert_eq!(report.parent_event.as_deref(), Some(stray.id.as_str()));
    assert_eq!(report.trace_id, stray.trace_id);
    drop(data);
    let health = harness.state().health();
    assert_eq!(
        (health["routed"].as_u64(), health["unmatched"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(health["assignments"].as_u64(), Some(5));
    assert_eq!(health["rules"].as_u64(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_routes_system_stream_deduped_or_failed_events_nor_reports_reserved_ones() {
    let harness = Harness::started(vec![agent("agt_a", true)], config(3)).await;
    let client = harness.client().await;
    create(&client, rule("everything", "**", "agt_a")).await;
    let skipped = [
        harness.bus.publish(publish("system.service")),
        harness.bus.publish(publish("agent.stream")),
        harness.bus.publish(publish("agent.completed")),
        harness.bus.publish(publish("exec.output")),
        harness
            .bus
            .publish_with_status(publish("fs.created"), EventStatus::Deduped),
        harness
            .bus
            .publish_with_status(publish("fs.created"), EventStatus::Failed),
    ];
    let last = harness.bus.publish(publish("fs.created"));
    harness.wait_routed(last.seq).await;
    let data = harness.bus.data();
    for event in &skipped {
        assert!(
            !data.assignments.keys().any(|(id, _)| id == &event.id),
            "{} ({:?}) was routed",
            event.topic,
            event.status
        );
    }
    assert!(
        data.on("system.unmatched").is_empty(),
        "reserved or unroutable events reported"
    );
    assert_eq!(data.assignments.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_report_dropped_ambient_work() {
    let harness = Harness::started(vec![agent("agt_a", true)], config(3)).await;
    harness.bus.change(|data| data.full_agents.insert("agt_a".into()));
    let client = harness.client().await;
    create(&client, rule("everything", "**", "agt_a")).await;
    let ambient = harness.bus.publish(publish("fs.created"));
    let interactive = harness.bus.publish(publish("user.query"));
    harness.wait_routed(interactive.seq).await;
    assert_eq!(lane_of(&harness.bus, &interactive.id, "agt_a"), Some(Lane::Interactive));
    assert_eq!(lane_of(&harness.bus, &ambient.id, "agt_a"), None);
    let data = harness.bus.data();
    let dropped = data.on("system.assignment_dropped");
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        serde_json::Value::Object(dropped[0].payload.clone()),
        json!({"event_id": ambient.id, "agent_id": "agt_a", "lane": "ambient", "reason": "queue_full"})
    );
    assert_eq!(dropped[0].parent_event.as_deref(), Some(ambient.id.as_str()));
    assert_eq!(dropped[0].trace_id, ambient.trace_id);
    assert!(data.on("system.unmatched").is_empty(), "a dropped event was matched");
    drop(data);
    assert_eq!(harness.state().health()["dropped"].as_u64(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classifier_gets_unmatched_events() {
    let config = RouterConfig {
        classifier_agent: Some("agt_sorter".into()),
        ..RouterConfig::default()
    };
    let harness = Harness::started(vec![agent("agt_sorter", true), agent("agt_a", true)], config).await;
    let client = harness.client().await;
    create(&client, rule("files", "fs.*", "agt_a")).await;
    let matched = harness.bus.publish(publish("fs.created"));
    let question = harness.bus.publish(publish("user.something"));
    harness.wait_routed(question.seq).await;
    assert_eq!(
        lane_of(&harness.bus, &matched.id, "agt_sorter"),
        None,
        "matched events skip the classifier"
    );
    let classified = harness.bus.data().assignments[&(question.id.clone(), "agt_sorter".to_owned())].clone();
    assert_eq!((classified.lane, classified.rule_id), (Lane::Ambient, None));
    assert!(harness.bus.data().on("system.unmatched").is_empty());

    // A disabled classifier is no classifier.
    harness
        .llm
        .set_agents(vec![agent("agt_sorter", false), agent("agt_a", true)]);
    harness.state().agents.refresh_now().await;
    let stray = harness.bus.publish(publish("nobody.home"));
    harness.wait_routed(stray.seq).await;
    assert_eq!(lane_of(&harness.bus, &stray.id, "agt_sorter"), None);
    assert_eq!(harness.bus.data().on("system.unmatched").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_cursor_and_repeated_work_is_absorbed() {
    let mut harness = Harness::started(vec![agent("agt_a", true)], config(3)).await;
    let client = harness.client().await;
    create(&client, rule("work", "work.**", "agt_a")).await;
    let first: Vec<_> = (0..5).map(|_| harness.bus.publish(publish("work.item"))).collect();
    let stray = harness.bus.publish(publish("stray.one"));
    harness.wait_routed(stray.seq).await;
    harness.stop_router().await;
    let cursor = Store::open(&harness.database()).unwrap().cursor().unwrap().unwrap();
    assert_eq!(
        cursor,
        harness.state().counters.routed_seq.load(Ordering::Relaxed),
        "a clean stop writes the cursor"
    );
    assert!(cursor >= stray.seq);

    // Published while the router is down: routed after it comes back.
    let meanwhile: Vec<_> = (0..5).map(|_| harness.bus.publish(publish("work.later"))).collect();
    let stray_later = harness.bus.publish(publish("stray.two"));
    harness.start_router().await;
    harness.wait_routed(stray_later.seq).await;
    {
        let data = harness.bus.data();
        for event in first.iter().chain(&meanwhile) {
            let key = (event.id.clone(), "agt_a".to_owned());
            assert!(data.assignments.contains_key(&key), "{} not routed", event.seq);
            assert_eq!(data.create_calls[&key], 1, "{} routed twice", event.seq);
        }
        assert_eq!(data.on("system.unmatched").len(), 2);
        assert_eq!(
            data.subscriptions.last(),
            Some(&Some(cursor + 1)),
            "resumed after the cursor"
        );
    }

    // A crash after routing but before the cursor write repeats work: simulate it by moving the
    // cursor back. Assignments are idempotent and reports carry derived ids: nothing doubles.
    harness.stop_router().await;
    Store::open(&harness.database()).unwrap().set_cursor(0).unwrap();
    harness.start_router().await;
    harness.wait_routed(stray_later.seq).await;
    let data = harness.bus.data();
    assert_eq!(data.assignments.len(), 10);
    assert!(
        data.create_calls.values().all(|calls| *calls == 2),
        "replayed once each"
    );
    let mut unmatched: Vec<&str> = data
        .on("system.unmatched")
        .iter()
        .filter_map(|event| event.payload["event_id"].as_str())
        .collect();
    unmatched.sort_unstable();
    let mut expected = [stray.id.as_str(), stray_later.id.as_str()];
    expected.sort_unstable();
    assert_eq!(unmatched, expected, "the replayed reports were recognized as retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_offs_and_bus_restarts_lose_nothing() {
    let mut harness = Harness::new(vec![agent("agt_a", true)], config(3)).await;
    // Every subscription is cut off after 7 events, as a slow subscriber would be.
    harness.bus.change(|data| data.cut_off_after = Some(7));
    harness.start_router().await;
    let client = harness.client().await;
    create(&client, rule("work", "work.**", "agt_a")).await;
    let burst: Vec<_> = (0..40).map(|_| harness.bus.publish(publish("work.item"))).collect();
    harness.wait_routed(burst.last().unwrap().seq).await;
    assert!(harness.bus.data().subscriptions.len() >= 6, "cut off and resubscribed");
    harness.bus.change(|data| data.cut_off_after = None);

    // The bus goes away; events arrive in its store meanwhile (as after its restart).
    harness.bus_server.take().unwrap().stop().await;
    let during: Vec<_> = (0..10).map(|_| harness.bus.publish(publish("work.item"))).collect();
    harness.bus_server = Some(harness.bus.serve().await);
    harness.wait_routed(during.last().unwrap().seq).await;

    let data = harness.bus.data();
    for event in burst.iter().chain(&during) {
        let key = (event.id.clone(), "agt_a".to_owned());
        assert_eq!(
            data.create_calls.get(&key),
            Some(&1),
            "seq {} routed {:?} times",
            event.seq,
            data.create_calls.get(&key)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_calls_are_retried_and_the_cursor_waits_for_them() {
    let harness = Harness::started(vec![agent("agt_a", true)], config(3)).await;
    let client = harness.client().await;
    create(&client, rule("work", "work.**", "agt_a")).await;
    harness.bus.change(|data| data.fail_creates = 3);
    let events: Vec<_> = (0..5).map(|_| harness.bus.publish(publish("work.item"))).collect();
    harness.wait_routed(events.last().unwrap().seq).await;
    {
        let data = harness.bus.data();
        for event in &events {
            assert!(
                data.assignments.contains_key(&(event.id.clone(), "agt_a".to_owned())),
                "{} lost",
                event.seq
            );
        }
        // Events are routed concurrently, so which ones met the three failures varies: count them.
        let calls: Vec<u32> = events
            .iter()
            .map(|event| data.create_calls[&(event.id.clone(), "agt_a".to_owned())])
            .collect();
        assert!(
            calls.iter().sum::<u32>() as usize >= events.len() + 3 && calls.iter().any(|n| *n >= 2),
            "the failed calls were retried: {calls:?}"
        );
    }
    let health = harness.state().health();
    assert!(
        health["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("assignments.create")),
        "{health:?}"
    );
    let via_socket = client.call::<Health>(&NoParams {}).await.unwrap();
    assert_eq!(via_socket.service, "router");
    assert_eq!(
        via_socket.details["routed_seq"].as_u64(),
        Some(events.last().unwrap().seq)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_starts_at_the_bus_head() {
    let mut harness = Harness::new(vec![agent("agt_a", true)], config(3)).await;
    let old = harness.bus.publish(publish("old.history"));
    harness.start_router().await;
    assert_eq!(harness.state().counters.cursor.load(Ordering::Relaxed), old.seq);
    let new = harness.bus.publish(publish("new.event"));
    harness.wait_routed(new.seq).await;
    let data = harness.bus.data();
    let unmatched: Vec<&str> = data
        .on("system.unmatched")
        .iter()
        .map(|event| event.payload["topic"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        unmatched,
        ["new.event"],
        "history before the router existed is not routed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_bus_is_routed_from_its_start() {
    let mut harness = Harness::new(vec![agent("agt_a", true)], config(3)).await;
    Store::open(&harness.database()).unwrap().set_cursor(500).unwrap();
    let first = harness.bus.publish(publish("fresh.one"));
    let second = harness.bus.publish(publish("fresh.two"));
    harness.start_router().await;
    harness
        .eventually("both events reported", |data| data.on("system.unmatched").len() == 2)
        .await;
    assert!(harness.head() < 500);
    harness.wait_routed(harness.head()).await;
    assert_eq!(
        Store::open(&harness.database())
            .unwrap()
            .cursor()
            .unwrap()
            .map(|cursor| cursor < 500),
        Some(true),
        "the cursor restarted"
    );
    let data = harness.bus.data();
    let mut reported: Vec<&str> = data
        .on("system.unmatched")
        .iter()
        .filter_map(|event| event.payload["event_id"].as_str())
        .collect();
    // Events are routed concurrently (the cursor still advances in order): reports may interleave.
    reported.sort_unstable();
    let mut expected = [first.id.as_str(), second.id.as_str()];
    expected.sort_unstable();
    assert_eq!(reported, expected);
}
