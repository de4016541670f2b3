//! Events through the typed client on `api.sock` (SPEC §5, §16): the envelope the server fills,
//! validation, dedupe, chains and their limits, listing filters, topics and the status methods.

use std::collections::BTreeSet;

use aiventbus_client::Client;
use aiventbus_proto::methods::{ListParams, PublishParams};
use aiventbus_proto::{EventStatus, Priority};
use aiventbus_testkit::process_alive;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::support::{self, all_events, assert_store_gap_free, event, own_user_name, rpc_code};

/// Whether `ts` is RFC 3339 UTC with milliseconds: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_rfc3339_millis_utc(ts: &str) -> bool {
    let bytes = ts.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.into_iter().all(|i| bytes[i].is_ascii_digit());
    bytes.len() == 24
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19)
        && bytes[19] == b'.'
        && digits(20..23)
        && bytes[23] == b'Z'
}

async fn list(client: &Client, params: ListParams) -> Vec<aiventbus_proto::Event> {
    client.list(&params).await.expect("events.list")
}

fn topics_of(events: &[aiventbus_proto::Event]) -> Vec<&str> {
    events.iter().map(|e| e.topic.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_get_round_trip_fills_the_envelope() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");

    let payload = json!({"a": 1, "nested": {"list": [1, "two", null]}, "s": "héllo"});
    let published = client
        .publish(&event("demo.round_trip", payload.clone()))
        .await
        .expect("publish");
    assert!(published.id.starts_with("evt_"), "{published:?}");
    assert!(published.trace_id.starts_with("tr_"), "{published:?}");
    assert_eq!(published.status, EventStatus::Published);

    let stored = client.get(&published.id).await.expect("events.get");
    assert_eq!(stored.id, published.id);
    assert_eq!(stored.seq, published.seq);
    assert_eq!(stored.trace_id, published.trace_id);
    assert_eq!(stored.status, EventStatus::Published);
    assert_eq!(stored.topic, "demo.round_trip");
    assert_eq!(Value::Object(stored.payload.clone()), payload);
    assert!(
        is_rfc3339_millis_utc(&stored.ts),
        "ts {:?} is not RFC 3339 UTC with ms",
        stored.ts
    );
    assert_eq!(stored.depth, 0);
    assert_eq!(stored.priority, Priority::Medium);
    assert_eq!(stored.source, format!("user:{}", own_user_name()));
    assert_eq!(stored.parent_event, None);
    assert_eq!(stored.dedupe_count, 1);

    // Optional fields given by the client come back as given.
    let full = PublishParams {
        priority: Some(Priority::High),
        semantic_type: Some("note".into()),
        correlation_id: Some("corr-1".into()),
        output_topic: Some("demo.answers".into()),
        context_refs: Some(vec![published.id.clone()]),
        memory_scope: Some("global".into()),
        expires_at: Some("2099-01-31T12:00:00.000Z".into()),
        ..event("demo.full", json!({}))
    };
    let full_result = client.publish(&full).await.expect("publish with every field");
    let full_stored = client.get(&full_result.id).await.expect("events.get");
    assert_eq!(full_stored.priority, Priority::High);
    assert_eq!(full_stored.semantic_type.as_deref(), Some("note"));
    assert_eq!(full_stored.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(full_stored.output_topic.as_deref(), Some("demo.answers"));
    assert_eq!(full_stored.context_refs, vec![published.id.clone()]);
    assert_eq!(full_stored.memory_scope.as_deref(), Some("global"));
    assert!(
        full_stored
            .expires_at
            .as_deref()
            .is_some_and(|t| t.starts_with("2099-01-31T12:00:00"))
    );
    assert_ne!(
        full_stored.trace_id, published.trace_id,
        "a root gets a trace of its own"
    );

    // A missing event is -32002.
    let (code, _) = rpc_code(client.get("evt_01J00000000000000000000000").await);
    assert_eq!(code, -32002);

    // 100 publishes one after another: strictly increasing seqs, and the store is 1..=n.
    let mut seqs = Vec::new();
    for n in 0..100 {
        seqs.push(
            client
                .publish(&event("demo.sequence", json!({"n": n})))
                .await
                .expect("publish")
                .seq,
        );
    }
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "seqs not increasing: {seqs:?}");
    let head = assert_store_gap_free(&client).await;
    assert!(head >= 102);
    let first = list(
        &client,
        ListParams {
            limit: Some(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first[0].seq, 1, "the first event's seq is not 1");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_get_distinct_gap_free_seqs() {
    let daemon = support::start().await;
    let mut tasks = JoinSet::new();
    for worker in 0..4 {
        let client = daemon.client().await.expect("client");
        tasks.spawn(async move {
            let mut inner = JoinSet::new();
            for n in 0..100 {
                let client = client.clone();
                inner.spawn(async move {
                    client
                        .publish(&event("demo.concurrent", json!({"worker": worker, "n": n})))
                        .await
                        .expect("publish")
                        .seq
                });
            }
            inner.join_all().await
        });
    }
    let seqs: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), 400, "duplicate seqs handed out");
    let client = daemon.client().await.expect("client");
    assert_store_gap_free(&client).await;
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_publishes_are_refused_and_store_nothing() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");

    for topic in ["system.x", "agent.x", "exec.x", "action.x", "request.x", "system"] {
        let (code, message) = rpc_code(client.publish(&event(topic, json!({}))).await);
        assert_eq!(code, -32602, "reserved {topic}: {message}");
        assert!(
            message.contains("topic") || message.contains(topic),
            "{topic}: {message}"
        );
    }
    let long_topic = "a".repeat(256);
    for topic in ["A.b", "a..b", ".a", "a.", "a b", "", long_topic.as_str()] {
        let (code, message) = rpc_code(client.publish(&event(topic, json!({}))).await);
        assert_eq!(code, -32602, "bad topic {topic:?}: {message}");
        assert!(
            message.contains("topic"),
            "message for {topic:?} does not name topic: {message}"
        );
    }
    // 255 bytes is the limit, not over it.
    let longest = "a".repeat(255);
    client
        .publish(&event(&longest, json!({})))
        .await
        .expect("255-byte topic");

    for payload in [json!([1]), json!("text"), json!(3), json!(true)] {
        let (code, message) = rpc_code(client.publish(&event("demo.payload", payload.clone())).await);
        assert_eq!(code, -32602, "payload {payload}: {message}");
        assert!(message.contains("payload"), "{payload}: {message}");
    }

    // Payload size: 256 KiB by default; over it is -32006 (too large), just under is fine.
    let over = json!({"blob": "x".repeat(256 * 1024 + 1)});
    let (code, message) = rpc_code(client.publish(&event("demo.big", over)).await);
    assert_eq!(code, -32006, "an oversized payload: {message}");
    let under = json!({"blob": "x".repeat(256 * 1024 - 64)});
    client
        .publish(&event("demo.big", under))
        .await
        .expect("a payload just under 256 KiB");

    // Source: a client cannot pose as the daemon's services.
    let forged = PublishParams {
        source: Some("system".into()),
        ..event("demo.source", json!({}))
    };
    let (code, message) = rpc_code(client.publish(&forged).await);
    assert_eq!(code, -32602, "{message}");
    assert!(message.contains("source"), "{message}");

    // Only the two good publishes were stored.
    let stored = all_events(&client).await;
    let mine: Vec<&str> = stored
        .iter()
        .filter(|e| !e.topic.starts_with("system."))
        .map(|e| e.topic.as_str())
        .collect();
    assert_eq!(mine, vec![longest.as_str(), "demo.big"]);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_counts_copies_per_topic() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let keyed = |topic: &str| PublishParams {
        dedupe_key: Some("k1".into()),
        ..event(topic, json!({"x": 1}))
    };

    let original = client.publish(&keyed("demo.dedupe")).await.expect("publish");
    assert_eq!(original.status, EventStatus::Published);
    assert_eq!(client.get(&original.id).await.expect("get").dedupe_count, 1);

    let copy = client.publish(&keyed("demo.dedupe")).await.expect("publish copy");
    assert_eq!(copy.status, EventStatus::Deduped);
    assert_ne!(copy.id, original.id, "a copy is stored as an event of its own");
    assert!(copy.seq > original.seq);
    assert_eq!(client.get(&original.id).await.expect("get").dedupe_count, 2);
    let copy_stored = client.get(&copy.id).await.expect("get copy");
    assert_eq!(copy_stored.status, EventStatus::Deduped);
    assert_eq!(copy_stored.duplicate_of.as_deref(), Some(original.id.as_str()));

    let third = client.publish(&keyed("demo.dedupe")).await.expect("publish third");
    assert_eq!(third.status, EventStatus::Deduped);
    assert_eq!(client.get(&original.id).await.expect("get").dedupe_count, 3);

    // Same key, other topic: not a copy.
    let other = client.publish(&keyed("demo.dedupe_other")).await.expect("publish");
    assert_eq!(other.status, EventStatus::Published);
    assert_eq!(client.get(&original.id).await.expect("get").dedupe_count, 3);
    // Same topic, other key: not a copy.
    let other_key = PublishParams {
        dedupe_key: Some("k2".into()),
        ..event("demo.dedupe", json!({}))
    };
    assert_eq!(
        client.publish(&other_key).await.expect("publish").status,
        EventStatus::Published
    );
    // No key: never a copy.
    assert_eq!(
        client
            .publish(&event("demo.dedupe", json!({"x": 1})))
            .await
            .expect("publish")
            .status,
        EventStatus::Published
    );

    let deduped = list(
        &client,
        ListParams {
            status: Some(EventStatus::Deduped),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<&str> = deduped.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![copy.id.as_str(), third.id.as_str()]);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_inherit_the_trace_and_count_depth() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");

    let root = client.publish(&event("demo.root", json!({}))).await.expect("root");
    let child_params = PublishParams {
        parent_event: Some(root.id.clone()),
        ..event("demo.child", json!({}))
    };
    let child = client.publish(&child_params).await.expect("child");
    assert_eq!(child.trace_id, root.trace_id);
    let child_stored = client.get(&child.id).await.expect("get child");
    assert_eq!(child_stored.depth, 1);
    assert_eq!(child_stored.parent_event.as_deref(), Some(root.id.as_str()));

    let grandchild = client
        .publish(&PublishParams {
            parent_event: Some(child.id.clone()),
            ..event("demo.grandchild", json!({}))
        })
        .await
        .expect("grandchild");
    let chain = client.chain(&grandchild.id).await.expect("events.chain");
    let ids: Vec<&str> = chain.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![root.id.as_str(), child.id.as_str(), grandchild.id.as_str()],
        "root first"
    );
    let depths: Vec<u32> = chain.iter().map(|e| e.depth).collect();
    assert_eq!(depths, vec![0, 1, 2]);

    // The router adds its own reports (system.unmatched) to the trace as it routes; leave those out.
    let trace = client.trace(&root.trace_id).await.expect("events.trace").events;
    let own: Vec<_> = trace.into_iter().filter(|e| !e.topic.starts_with("system.")).collect();
    assert_eq!(topics_of(&own), vec!["demo.root", "demo.child", "demo.grandchild"]);

    // An unknown parent is invalid params, not a crash; nothing is stored.
    for parent in ["evt_01J00000000000000000000000", "not-an-id"] {
        let (code, message) = rpc_code(
            client
                .publish(&PublishParams {
                    parent_event: Some(parent.into()),
                    ..event("demo.orphan", json!({}))
                })
                .await,
        );
        assert_eq!(code, -32602, "{parent}: {message}");
        assert!(message.contains("parent_event"), "{parent}: {message}");
    }
    assert!(
        list(
            &client,
            ListParams {
                topic: Some("demo.orphan".into()),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );
    // The bus survived it.
    client
        .publish(&event("demo.after", json!({})))
        .await
        .expect("publish after");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_deeper_than_ten_is_refused() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let root = client
        .publish(&event("demo.deep", json!({"depth": 0})))
        .await
        .expect("root");
    let mut parent = root.id.clone();
    for depth in 1..=10u32 {
        let child = client
            .publish(&PublishParams {
                parent_event: Some(parent.clone()),
                ..event("demo.deep", json!({"depth": depth}))
            })
            .await
            .expect("child");
        assert_eq!(child.status, EventStatus::Published, "depth {depth}");
        assert_eq!(client.get(&child.id).await.expect("get").depth, depth);
        parent = child.id;
    }
    let too_deep = client
        .publish(&PublishParams {
            parent_event: Some(parent.clone()),
            ..event("demo.deep", json!({"depth": 11}))
        })
        .await
        .expect("the refused child is still answered");
    assert_eq!(too_deep.status, EventStatus::Failed);
    assert_eq!(too_deep.trace_id, root.trace_id);
    let stored = client.get(&too_deep.id).await.expect("the refused child is stored");
    assert_eq!(stored.status, EventStatus::Failed);
    assert_eq!(stored.depth, 11);

    let trace = client.trace(&root.trace_id).await.expect("events.trace").events;
    let limits: Vec<_> = trace.iter().filter(|e| e.topic == "system.chain_limit").collect();
    assert_eq!(limits.len(), 1, "trace: {:?}", topics_of(&trace));
    assert_eq!(limits[0].trace_id, root.trace_id);
    assert!(trace.iter().any(|e| e.id == too_deep.id));
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_gets_fifty_routable_events() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let root = client
        .publish(&event("demo.budget", json!({"n": 0})))
        .await
        .expect("root");
    for n in 1..50 {
        let child = client
            .publish(&PublishParams {
                parent_event: Some(root.id.clone()),
                ..event("demo.budget", json!({"n": n}))
            })
            .await
            .expect("child");
        assert_eq!(child.status, EventStatus::Published, "event {} of the trace", n + 1);
    }
    let fifty_first = client
        .publish(&PublishParams {
            parent_event: Some(root.id.clone()),
            ..event("demo.budget", json!({"n": 50}))
        })
        .await
        .expect("the 51st is answered");
    assert_eq!(fifty_first.status, EventStatus::Failed);
    assert_eq!(fifty_first.trace_id, root.trace_id);

    let trace = client.trace(&root.trace_id).await.expect("events.trace").events;
    assert_eq!(trace.iter().filter(|e| e.topic == "demo.budget").count(), 51);
    assert_eq!(
        trace.iter().filter(|e| e.topic == "system.chain_limit").count(),
        1,
        "trace: {:?}",
        topics_of(&trace)
    );
    // Another trace is not affected.
    let fresh = client.publish(&event("demo.budget", json!({}))).await.expect("publish");
    assert_eq!(fresh.status, EventStatus::Published);
    assert_ne!(fresh.trace_id, root.trace_id);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_limits() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    for topic in ["a", "a.x", "a.y", "a.x.y", "b.x", "ab.x"] {
        client.publish(&event(topic, json!({}))).await.expect("publish");
    }
    let dedupe = PublishParams {
        dedupe_key: Some("same".into()),
        ..event("a.x", json!({}))
    };
    client.publish(&dedupe).await.expect("publish");
    let copy = client.publish(&dedupe).await.expect("publish copy");

    let only = |params: ListParams| {
        let client = client.clone();
        async move {
            list(&client, params)
                .await
                .into_iter()
                .filter(|e| !e.topic.starts_with("system."))
                .map(|e| e.topic)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        only(ListParams {
            topic: Some("a.x".into()),
            ..Default::default()
        })
        .await,
        vec!["a.x", "a.x", "a.x"]
    );
    assert_eq!(
        only(ListParams {
            pattern: Some("a.*".into()),
            ..Default::default()
        })
        .await,
        vec!["a.x", "a.y", "a.x", "a.x"]
    );
    assert_eq!(
        only(ListParams {
            pattern: Some("a.**".into()),
            ..Default::default()
        })
        .await,
        vec!["a", "a.x", "a.y", "a.x.y", "a.x", "a.x"]
    );
    assert_eq!(
        only(ListParams {
            pattern: Some("*.x".into()),
            ..Default::default()
        })
        .await,
        vec!["a.x", "b.x", "ab.x", "a.x", "a.x"]
    );
    let deduped = list(
        &client,
        ListParams {
            status: Some(EventStatus::Deduped),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        deduped.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        vec![copy.id.as_str()]
    );

    // after_seq is exclusive.
    let all = all_events(&client).await;
    let pivot = all[2].seq;
    let after = list(
        &client,
        ListParams {
            after_seq: Some(pivot),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(after.first().map(|e| e.seq), Some(pivot + 1));
    assert!(after.iter().all(|e| e.seq > pivot));

    // limit: default 100, at most 5000; results in seq order.
    for n in 0..150 {
        client
            .publish(&event("c.many", json!({"n": n})))
            .await
            .expect("publish");
    }
    let default_page = list(&client, ListParams::default()).await;
    assert_eq!(default_page.len(), 100);
    assert!(default_page.windows(2).all(|w| w[1].seq > w[0].seq), "not in seq order");
    assert_eq!(default_page[0].seq, 1);
    let many = list(
        &client,
        ListParams {
            topic: Some("c.many".into()),
            limit: Some(5000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(many.len(), 150);
    let three = list(
        &client,
        ListParams {
            topic: Some("c.many".into()),
            limit: Some(3),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        three.iter().map(|e| e.payload["n"].clone()).collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)]
    );
    for limit in [5001, 0] {
        let (code, message) = rpc_code(
            client
                .list(&ListParams {
                    limit: Some(limit),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(code, -32602, "limit {limit}: {message}");
        assert!(message.contains("limit"), "{message}");
    }
    let (code, message) = rpc_code(
        client
            .list(&ListParams {
                pattern: Some("a..b".into()),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, -32602, "{message}");
    assert!(message.contains("pattern"), "{message}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_counted() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let mut last_one = 0;
    for _ in 0..3 {
        last_one = client.publish(&event("t.one", json!({}))).await.expect("publish").seq;
    }
    let mut last_two = 0;
    for _ in 0..2 {
        last_two = client.publish(&event("t.two", json!({}))).await.expect("publish").seq;
    }
    let topics = client.topics().await.expect("topics.list").topics;
    let find = |name: &str| {
        topics
            .iter()
            .find(|t| t.topic == name)
            .unwrap_or_else(|| panic!("{name} missing from {topics:?}"))
    };
    assert_eq!(find("t.one").count, 3);
    assert_eq!(find("t.one").last_seq, last_one);
    assert_eq!(find("t.two").count, 2);
    assert_eq!(find("t.two").last_seq, last_two);
    assert!(is_rfc3339_millis_utc(&find("t.two").last_ts));
    let names: Vec<&str> = topics.iter().map(|t| t.topic.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "topics are not alphabetical");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_services_list_running_services() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let services = client.services().await.expect("system.services").services;
    let status = client.status().await.expect("system.status");
    for (what, list) in [("system.services", &services), ("system.status", &status.services)] {
        for name in ["bus", "gateway"] {
            let service = list
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{what} lacks {name}: {list:?}"));
            assert_eq!(service.state, "running", "{what}: {service:?}");
            let pid = service.pid.unwrap_or_else(|| panic!("{what}: {name} has no pid"));
            assert!(process_alive(pid), "{what}: {name} pid {pid} is not alive");
            assert!(
                is_rfc3339_millis_utc(&service.since) || service.since.ends_with('Z'),
                "{service:?}"
            );
        }
    }
    assert_eq!(
        daemon.service_pid("bus").await.expect("bus pid"),
        services
            .iter()
            .find(|s| s.name == "bus")
            .and_then(|s| s.pid)
            .expect("pid")
    );
    assert!(status.bus.is_some(), "system.status has no bus figures: {status:?}");
    support::shut_down(daemon).await;
}
