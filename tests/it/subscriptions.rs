//! Subscriptions on `api.sock` (SPEC §3, §5): live delivery in seq order, replay that turns live
//! without a gap or a duplicate, pattern filtering, unsubscribe, and a slow subscriber that is cut
//! off with a reason and resumes from where it stopped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aiventbus_client::{Client, EventStream, StreamItem};
use aiventbus_proto::Event;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::support::{self, Raw, event};

const COLLECT_DEADLINE: Duration = Duration::from_secs(60);

/// Reads events until `done` says stop (the event that made it stop included).
async fn collect_until(stream: &mut EventStream, done: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut events = Vec::new();
    let result = tokio::time::timeout(COLLECT_DEADLINE, async {
        loop {
            match stream.next().await {
                Some(Ok(StreamItem::Event(event))) => {
                    let stop = done(&event);
                    events.push(*event);
                    if stop {
                        return;
                    }
                }
                Some(Ok(StreamItem::Ended(error))) => panic!("subscription ended: {error}"),
                Some(Err(error)) => panic!("subscription failed: {error}"),
                None => panic!("subscription connection closed"),
            }
        }
    })
    .await;
    if result.is_err() {
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        panic!("stream did not reach its end within {COLLECT_DEADLINE:?}; got seqs {seqs:?}");
    }
    events
}

fn assert_consecutive(seqs: &[u64], what: &str) {
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: gap or duplicate between {} and {}",
            pair[0],
            pair[1]
        );
    }
}

/// Publishes `total` events on `topic` through `clients`, each with up to `window` calls in
/// flight; returns every acknowledged seq.
async fn publish_many(clients: &[Client], topic: &str, total: usize, window: usize) -> Vec<u64> {
    let per_client = total.div_ceil(clients.len());
    let mut tasks = JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        let client = client.clone();
        let topic = topic.to_owned();
        let start = index * per_client;
        let end = ((index + 1) * per_client).min(total);
        tasks.spawn(async move {
            let mut seqs = Vec::with_capacity(end.saturating_sub(start));
            let mut n = start;
            while n < end {
                let mut inflight = JoinSet::new();
                for m in n..(n + window).min(end) {
                    let client = client.clone();
                    let params = event(&topic, json!({"n": m}));
                    inflight.spawn(async move { client.publish(&params).await.expect("publish").seq });
                }
                seqs.extend(inflight.join_all().await);
                n += window;
            }
            seqs
        });
    }
    tasks.join_all().await.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscription_gets_later_events_in_order() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let before = client.publish(&event("live.before", json!({}))).await.expect("publish");
    let mut stream = client.subscribe(vec!["live.**".into()], None).await.expect("subscribe");
    let mut published = Vec::new();
    for n in 0..50 {
        published.push(
            client
                .publish(&event("live.x", json!({"n": n})))
                .await
                .expect("publish")
                .seq,
        );
    }
    let last = *published.last().expect("published");
    let received = collect_until(&mut stream, |e| e.seq >= last).await;
    let seqs: Vec<u64> = received.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, published, "live delivery differs from what was published");
    assert!(
        received.iter().all(|e| e.seq > before.seq),
        "a live subscription replayed old events"
    );
    assert_eq!(received[3].payload["n"], 3);
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_turns_live_without_gap_or_duplicate() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let clients = [client.clone(), daemon.client().await.expect("client")];
    publish_many(&clients, "replay.before", 1500, 64).await;

    // A publisher keeps going while the subscription replays and switches to live.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let client = daemon.client().await.expect("client");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 500 {
                last = client
                    .publish(&event("replay.during", json!({"n": n})))
                    .await
                    .expect("publish")
                    .seq;
                n += 1;
                if n >= 3000 {
                    break;
                }
            }
            last
        })
    };
    let mut stream = client.subscribe(vec!["**".into()], Some(1)).await.expect("subscribe");
    // Read until the replay has clearly reached live delivery, then stop the publisher.
    let mut received = collect_until(&mut stream, |e| e.topic == "replay.during" && e.payload["n"] == 200).await;
    stop.store(true, Ordering::Relaxed);
    let last = publisher.await.expect("publisher");
    received.extend(collect_until(&mut stream, |e| e.seq >= last).await);

    let seqs: Vec<u64> = received.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.first(), Some(&1), "replay from 1 did not start at 1");
    assert_consecutive(&seqs, "replay then live");
    assert_eq!(*seqs.last().expect("seqs"), last);

    // from_seq 0 means the same as 1.
    let mut zero = client.subscribe(vec!["**".into()], Some(0)).await.expect("subscribe");
    let first = collect_until(&mut zero, |_| true).await;
    assert_eq!(first[0].seq, 1);
    // from_seq in the middle starts exactly there.
    let mut middle = client.subscribe(vec!["**".into()], Some(700)).await.expect("subscribe");
    let some = collect_until(&mut middle, |e| e.seq >= 710).await;
    assert_eq!(
        some.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (700..=710).collect::<Vec<_>>()
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_filter_by_segment() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let mut one = client
        .subscribe(vec!["fs.*".into()], None)
        .await
        .expect("subscribe fs.*");
    let mut any = client
        .subscribe(vec!["fs.**".into()], None)
        .await
        .expect("subscribe fs.**");
    let mut two = client
        .subscribe(vec!["x.*".into(), "*.y".into()], None)
        .await
        .expect("subscribe two patterns");
    for topic in [
        "fs.a", "fs.a.b", "fsx.a", "fs", "x.y", "q.y", "x.q.y", "fs.end", "x.end", "end.y",
    ] {
        client.publish(&event(topic, json!({}))).await.expect("publish");
    }
    let topics = |events: Vec<Event>| events.into_iter().map(|e| e.topic).collect::<Vec<_>>();
    assert_eq!(
        topics(collect_until(&mut one, |e| e.topic == "fs.end").await),
        vec!["fs.a", "fs.end"]
    );
    assert_eq!(
        topics(collect_until(&mut any, |e| e.topic == "fs.end").await),
        vec!["fs.a", "fs.a.b", "fs", "fs.end"]
    );
    assert_eq!(
        topics(collect_until(&mut two, |e| e.topic == "end.y").await),
        vec!["x.y", "q.y", "x.end", "end.y"]
    );

    // A bad pattern is refused at subscribe time.
    let error = client
        .subscribe(vec!["fs..a".into()], None)
        .await
        .err()
        .expect("a bad pattern is refused");
    assert_eq!(error.rpc().map(|e| e.code), Some(-32602), "{error}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_notifications() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let mut conn = Raw::connect(&daemon.paths.api_socket()).await;
    let reply = conn
        .call(1, "events.subscribe", json!({"patterns": ["unsub.**"]}))
        .await;
    let subscription = reply["result"]["subscription"]
        .as_str()
        .unwrap_or_else(|| panic!("no subscription id: {reply}"))
        .to_owned();

    let first = client.publish(&event("unsub.a", json!({}))).await.expect("publish");
    let notification = conn.recv_json().await;
    assert_eq!(notification["method"], "events.event", "{notification}");
    assert!(
        notification.get("id").is_none(),
        "a notification carries no id: {notification}"
    );
    assert_eq!(notification["params"]["subscription"], json!(subscription));
    assert_eq!(notification["params"]["result"]["seq"], json!(first.seq));
    assert_eq!(notification["params"]["result"]["topic"], "unsub.a");

    let reply = conn
        .call(2, "events.unsubscribe", json!({"subscription": subscription}))
        .await;
    assert_eq!(reply["result"], json!({"unsubscribed": true}), "{reply}");
    for n in 0..20 {
        client
            .publish(&event("unsub.b", json!({"n": n})))
            .await
            .expect("publish");
    }
    // The very next line on the connection is the reply to this request: nothing in between.
    conn.send(r#"{"jsonrpc":"2.0","id":3,"method":"system.version"}"#).await;
    let line = conn.recv().await;
    let next: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(next["id"], 3, "a notification arrived after unsubscribe: {line}");

    let again = conn
        .call(4, "events.unsubscribe", json!({"subscription": subscription}))
        .await;
    assert_eq!(again["result"], json!({"unsubscribed": false}), "{again}");
    let unknown = conn
        .call(5, "events.unsubscribe", json!({"subscription": "nope"}))
        .await;
    assert_eq!(unknown["result"], json!({"unsubscribed": false}), "{unknown}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_and_resumes_without_loss() {
    let first_run = slow_subscriber("[bus]\nsubscriber_buffer = 16\n", 30_000).await;
    assert!(first_run >= 1);
}

/// With the default buffers the cut-off comes from back-pressure through the gateway: a reader
/// that stops reading fills its socket, the gateway's queue for it, the gateway's bus connection
/// and finally its bus buffer. Nothing on the way may grow without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_cut_off_through_the_gateway() {
    let first_run = slow_subscriber("", 60_000).await;
    assert!(
        first_run > 4096,
        "cut off after {first_run} events, before the default buffer of 4096 filled"
    );
}

/// Subscribes to `**` on a raw connection without reading, publishes `total` events, then reads:
/// a contiguous run, a closing notification that says where to resume, and a resumed subscription
/// that completes the sequence. Returns how many events came before the cut-off.
async fn slow_subscriber(config: &str, total: usize) -> usize {
    let daemon = support::start_with_config(config).await;
    let mut slow = Raw::connect(&daemon.paths.api_socket()).await;
    // Read only the subscribe reply; the notifications pile up unread.
    let reply = slow.call(1, "events.subscribe", json!({"patterns": ["**"]})).await;
    let subscription = reply["result"]["subscription"]
        .as_str()
        .unwrap_or_else(|| panic!("no subscription id: {reply}"))
        .to_owned();

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(daemon.client().await.expect("client"));
    }
    let published = publish_many(&clients, "slow.x", total, 256).await;
    let first_published = *published.iter().min().expect("published");
    let last_published = *published.iter().max().expect("published");
    assert_eq!(
        published.iter().copied().collect::<BTreeSet<u64>>().len(),
        published.len(),
        "duplicate seqs acknowledged"
    );

    // Now read: a contiguous run from the first seq, then one notification with an error.
    let mut first_run = Vec::new();
    let closing = loop {
        let line = match slow.next_line_within(COLLECT_DEADLINE).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "connection closed after {} events without a closing notification",
                first_run.len()
            ),
            Err(error) => panic!(
                "{error:#}: no closing notification after {} events (last seq {:?})",
                first_run.len(),
                first_run.last()
            ),
        };
        let notification: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(notification["method"], "events.event", "{line}");
        assert_eq!(notification["params"]["subscription"], json!(subscription), "{line}");
        if let Some(error) = notification["params"].get("error") {
            assert!(
                notification["params"].get("result").is_none(),
                "both result and error: {line}"
            );
            break error.clone();
        }
        let seq = notification["params"]["result"]["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("notification without result.seq: {line}"));
        first_run.push(seq);
    };
    assert!(!first_run.is_empty(), "cut off before anything was delivered");
    assert!(
        (first_run.len() as u64) < last_published - first_published + 1,
        "the subscriber was never cut off although it read nothing during {} publishes",
        published.len()
    );
    // Live delivery starts with the first event committed after subscribing: ours, unless the
    // daemon itself published something in between (a `**` subscription gets that too).
    assert!(
        first_run[0] <= first_published,
        "delivery started after the first published seq"
    );
    assert_consecutive(&first_run, "before the cut-off");
    let resume = first_run.last().expect("first run") + 1;
    assert!(closing["code"].is_i64(), "closing error has no code: {closing}");
    let message = closing["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {closing}"));
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect();
    assert!(
        numbers.contains(&resume),
        "the closing message does not say to resume at {resume}: {message:?}"
    );

    // Resume where it stopped and read to the end.
    let mut resumed = clients[0]
        .subscribe(vec!["**".into()], Some(resume))
        .await
        .expect("resubscribe");
    let rest: Vec<u64> = collect_until(&mut resumed, |e| e.seq >= last_published)
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(rest.first(), Some(&resume));
    assert_consecutive(&rest, "after resuming");
    let mut all = first_run.clone();
    all.extend(&rest);
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "an event was delivered twice");
    assert_eq!(
        distinct,
        (first_run[0]..=last_published).collect::<BTreeSet<u64>>(),
        "events missing overall"
    );
    support::shut_down(daemon).await;
    first_run.len()
}
