//! Durability (SPEC §5, §14): every acknowledged event survives `kill -9` of the bus while
//! publishers keep going, init restarts the bus and says so, clients reconnect by themselves, and a
//! stopped daemon started again on the same dirs still has everything and carries on counting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aiventbus_client::Client;
use aiventbus_proto::EventStatus;
use aiventbus_proto::methods::{ListParams, PublishParams};
use aiventbus_testkit::{eventually, process_alive, wait_for_event};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::task::JoinSet;

use crate::support::{self, all_events, assert_store_gap_free, event, or_log};

const RESTART_DEADLINE: Duration = Duration::from_secs(60);

/// What the publishers saw.
#[derive(Default)]
struct Ledger {
    /// Acknowledged (id, seq).
    acked: Mutex<Vec<(String, u64)>>,
    acked_count: AtomicUsize,
    failed: AtomicUsize,
}

/// Starts `workers` tasks publishing one event after another until `stop` is set.
fn start_publishers(client: &Client, workers: usize, ledger: &Arc<Ledger>, stop: &Arc<AtomicBool>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let client = client.clone();
        let ledger = ledger.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client
                    .publish(&event("durable.x", json!({"worker": worker, "n": n})))
                    .await
                {
                    Ok(result) => {
                        ledger.acked.lock().expect("ledger").push((result.id, result.seq));
                        ledger.acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                    // A publish in flight when the bus died may fail; only acknowledged ones count.
                    Err(_) => {
                        ledger.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        });
    }
    tasks
}

async fn wait_for_acks(ledger: &Ledger, at_least: usize, what: &str) {
    eventually(RESTART_DEADLINE, what, || async {
        (ledger.acked_count.load(Ordering::Relaxed) >= at_least).then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#} (acked {})", ledger.acked_count.load(Ordering::Relaxed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_of_the_bus() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let publishers = start_publishers(&client, 6, &ledger, &stop);
    wait_for_acks(&ledger, 300, "publishes before the kill").await;

    let old_pid = or_log(&daemon, daemon.service_pid("bus").await);
    kill(Pid::from_raw(old_pid as i32), Signal::SIGKILL).expect("kill -9 the bus");
    let acked_at_kill = ledger.acked_count.load(Ordering::Relaxed);

    // init notices, restarts it, and reports it running with a new pid.
    let restarted = eventually(RESTART_DEADLINE, "the bus running again with a new pid", || {
        let client = client.clone();
        async move {
            let services = client.services().await.ok()?.services;
            let bus = services.into_iter().find(|s| s.name == "bus")?;
            (bus.state == "running" && bus.pid.is_some_and(|pid| pid != old_pid) && bus.restarts >= 1).then_some(bus)
        }
    })
    .await;
    let bus = or_log(&daemon, restarted);
    assert!(!process_alive(old_pid), "the killed bus {old_pid} is still there");
    assert!(process_alive(bus.pid.expect("pid")));

    // The same clients keep publishing without being recreated.
    wait_for_acks(&ledger, acked_at_kill + 300, "publishes after the restart").await;
    stop.store(true, Ordering::Relaxed);
    publishers.join_all().await;

    let acked = ledger.acked.lock().expect("ledger").clone();
    let stored: HashMap<String, u64> = all_events(&client).await.into_iter().map(|e| (e.id, e.seq)).collect();
    let mut lost = Vec::new();
    for (id, seq) in &acked {
        match stored.get(id) {
            Some(stored_seq) => assert_eq!(stored_seq, seq, "event {id} changed seq"),
            None => lost.push((id.clone(), *seq)),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // Spot-check through events.get as well.
    for (id, seq) in acked.iter().step_by(97) {
        assert_eq!(client.get(id).await.expect("events.get").seq, *seq);
    }
    let mut seqs: Vec<u64> = acked.iter().map(|(_, seq)| *seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), acked.len(), "two acknowledged events share a seq");
    assert_store_gap_free(&client).await;

    // init recorded the crash and the restart in the store.
    let is_bus = |e: &aiventbus_proto::Event, state: &str| e.payload["service"] == "bus" && e.payload["state"] == state;
    let exited = wait_for_event(&client, "system.service", Some(1), RESTART_DEADLINE, |e| {
        is_bus(e, "exited")
    })
    .await;
    let exited = or_log(&daemon, exited);
    assert_eq!(exited.payload["signal"], "SIGKILL", "{:?}", exited.payload);
    assert_eq!(exited.payload["pid"], json!(old_pid));
    let restart = wait_for_event(&client, "system.service", Some(1), RESTART_DEADLINE, |e| {
        is_bus(e, "restarted")
    })
    .await;
    let restart = or_log(&daemon, restart);
    assert_eq!(restart.payload["pid"], json!(bus.pid), "{:?}", restart.payload);
    let listed = client
        .list(&ListParams {
            topic: Some("system.service".into()),
            limit: Some(5000),
            ..Default::default()
        })
        .await
        .expect("events.list");
    assert!(
        listed.iter().any(|e| e.id == restart.id),
        "events.list misses the restart event"
    );
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_keeps_its_events_and_counts_on() {
    let mut daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let mut published = Vec::new();
    for n in 0..50 {
        published.push(
            client
                .publish(&event("restart.x", json!({"n": n})))
                .await
                .expect("publish"),
        );
    }
    let keyed = PublishParams {
        dedupe_key: Some("across-restart".into()),
        ..event("restart.dedupe", json!({}))
    };
    let original = client.publish(&keyed).await.expect("publish keyed");
    let before = all_events(&client).await;
    drop(client);

    let code = tokio::task::block_in_place(|| daemon.stop(Duration::from_secs(30))).expect("stop");
    assert_eq!(
        code,
        Some(0),
        "init did not exit 0 on SIGTERM:\n{}",
        daemon.init_output()
    );
    tokio::task::block_in_place(|| daemon.launch()).unwrap_or_else(|e| panic!("relaunch: {e:#}"));

    let client = daemon.client().await.expect("client after relaunch");
    for result in &published {
        let stored = client.get(&result.id).await.expect("event kept");
        assert_eq!(stored.seq, result.seq);
        assert_eq!(stored.topic, "restart.x");
    }
    let after = all_events(&client).await;
    assert!(after.len() >= before.len());
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "stored events changed across the restart"
    );

    let next = client
        .publish(&event("restart.y", json!({})))
        .await
        .expect("publish after relaunch");
    assert!(
        next.seq > before.last().expect("events").seq,
        "seq went back after the restart"
    );
    assert_store_gap_free(&client).await;

    // The dedupe window is measured from the original and survives the restart.
    let copy = client.publish(&keyed).await.expect("publish keyed again");
    assert_eq!(copy.status, EventStatus::Deduped);
    assert_eq!(client.get(&original.id).await.expect("original").dedupe_count, 2);
    support::shut_down(daemon).await;
}
