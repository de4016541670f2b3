//! The publish phase: durable publish throughput end to end (client → `api.sock` → gateway →
//! `bus.sock` → group commit → reply), then the same events written straight into SQLite and
//! through the in-process `Store`, so the report shows what the sockets and hops cost. CPU time
//! per process and thread is read from `/proc` around each run to show where the time went.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aiventbus_benches::Snapshot;
use aiventbus_bus::store::{NewEvent, Store, StoreConfig, SyncMode};
use aiventbus_client::Client;
use aiventbus_proto::methods::PublishParams;
use aiventbus_testkit::Daemon;
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::report::{Baseline, EndToEnd, PublishRun, Rate, UsageReport, sync_name};
use crate::{Plan, lifecycle, progress};

/// Topic of the measured events.
const TOPIC: &str = "bench.load";
/// Topic of the one event per connection sent before the clock starts.
const WARMUP_TOPIC: &str = "bench.warmup";
/// Source the gateway stamps on a local user's publish; the baselines use it too.
const SOURCE: &str = "user:bench";
/// Rows per transaction in the raw SQLite baseline.
const RAW_BATCH: usize = 1000;
/// How long the last in-flight publishes may take once issuing has stopped.
const DRAIN: Duration = Duration::from_secs(60);

/// The payload of event `n`, about 100 bytes of JSON.
fn payload(n: u64, connection: usize) -> Value {
    json!({
        "n": n,
        "conn": connection,
        "kind": "load",
        "text": "the quick brown fox jumps over the lazy dog, 0123456789",
    })
}

/// Serialized size of a typical payload.
pub fn payload_bytes() -> usize {
    serde_json::to_string(&payload(100_000, 3)).map_or(0, |text| text.len())
}

fn params(topic: &str, n: u64, connection: usize) -> PublishParams {
    PublishParams {
        topic: topic.to_owned(),
        payload: Some(payload(n, connection)),
        ..PublishParams::default()
    }
}

/// Events connection `index` of `connections` sends, and the number of its first event.
fn share(events: u64, connections: usize, index: usize) -> (u64, u64) {
    let connections = connections as u64;
    let index = index as u64;
    let base = events / connections;
    let extra = events % connections;
    let count = base + u64::from(index < extra);
    let first = index * base + index.min(extra);
    (first, count)
}

/// Outcomes counted across tasks.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    cut_short: AtomicBool,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn failed(&self, error: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(error)
            .or_default() += 1;
    }

    fn errors(&self) -> Vec<(String, u64)> {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(error, count)| (error.clone(), *count))
            .collect()
    }
}

/// Issues `count` operations numbered from `first`, at most `in_flight` at once, until `deadline`;
/// then waits (up to [`DRAIN`]) for those in flight. `start` runs in issue order on this task —
/// so what it does synchronously keeps the order, like a connection's dispatch — and the future
/// it returns runs on its own task.
async fn drive<F, Fut>(first: u64, count: u64, in_flight: usize, deadline: Instant, tally: Arc<Tally>, start: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(in_flight));
    for n in first..first + count {
        if Instant::now() >= deadline {
            tally.cut_short.store(true, Ordering::Relaxed);
            break;
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let work = start(n);
        let tally = Arc::clone(&tally);
        tokio::spawn(async move {
            match work.await {
                Ok(()) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => tally.failed(error),
            }
            drop(permit);
        });
    }
    // `in_flight` was checked to fit in u32 when the plan was made.
    let all = u32::try_from(in_flight).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, permits.acquire_many(all)).await.is_err() {
        tally.failed(format!("still in flight {} s after issuing stopped", DRAIN.as_secs()));
    }
}

/// One publish run at `sync`: end to end on `daemon` (dropped afterwards, so it does not compete
/// for CPU), then the baselines.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    daemon: Daemon,
    sync: SyncMode,
) -> anyhow::Result<PublishRun> {
    progress(format!(
        "publish e2e: {} events, sync = {}",
        plan.events,
        sync_name(sync)
    ));
    let (e2e, rss_after) = runtime.block_on(async {
        let pids = lifecycle::pids(&daemon).await?;
        let e2e = end_to_end(&daemon, plan, &pids).await?;
        anyhow::Ok((e2e, lifecycle::rss(&pids)))
    })?;
    progress(format!("  {:.0} events/s", e2e.rate.per_second));
    drop(daemon);

    let (raw_sqlite, store) = if plan.baselines {
        progress(format!("raw SQLite baseline, sync = {}", sync_name(sync)));
        let raw = raw_sqlite(plan, sync)?;
        progress(format!("  {:.0} events/s", raw.rate.per_second));
        progress(format!("in-process store baseline, sync = {}", sync_name(sync)));
        let store = runtime.block_on(store_only(plan, sync))?;
        progress(format!("  {:.0} events/s", store.rate.per_second));
        (Some(raw), Some(store))
    } else {
        (None, None)
    };
    let ratio = |baseline: &Option<Baseline>| {
        baseline
            .as_ref()
            .filter(|b| b.rate.per_second > 0.0)
            .map(|b| e2e.rate.per_second / b.rate.per_second)
    };
    Ok(PublishRun {
        sync: sync_name(sync),
        e2e_over_raw: ratio(&raw_sqlite),
        e2e_over_store: ratio(&store),
        e2e,
        raw_sqlite,
        store,
        rss_after,
    })
}

/// The bus's commit and write counters, from `system.status`.
async fn bus_counters(client: &Client) -> Option<(u64, u64)> {
    let status = client.status().await.ok()?;
    let bus = status.bus?;
    let read = |key: &str| bus.get(key).and_then(Value::as_u64);
    Some((read("commits")?, read("written")?))
}

async fn end_to_end(daemon: &Daemon, plan: &Plan, pids: &lifecycle::Pids) -> anyhow::Result<EndToEnd> {
    let socket = daemon.paths.api_socket();
    let mut clients = Vec::with_capacity(plan.connections);
    for index in 0..plan.connections {
        let client = Client::connect(&socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        // One publish per connection before the clock starts, so every connection is open.
        client
            .publish(&params(WARMUP_TOPIC, 0, index))
            .await
            .context("warm-up publish")?;
        clients.push(client);
    }
    let counters_before = bus_counters(&clients[0]).await;
    let processes = pids.labelled();
    let cpu_before = Snapshot::take(&processes);

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + plan.max_run;
    let mut connections = JoinSet::new();
    for (index, client) in clients.iter().enumerate() {
        let (first, count) = share(plan.events, plan.connections, index);
        let client = client.clone();
        connections.spawn(drive(
            first,
            count,
            plan.in_flight,
            deadline,
            Arc::clone(&tally),
            move |n| {
                let client = client.clone();
                async move {
                    client
                        .publish(&params(TOPIC, n, index))
                        .await
                        .map(|_| ())
                        .map_err(|error| error.to_string())
                }
            },
        ));
    }
    while let Some(joined) = connections.join_next().await {
        joined.context("a publishing connection task failed")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = Snapshot::take(&processes);
    let counters_after = bus_counters(&clients[0]).await;

    let ok = tally.ok.load(Ordering::Relaxed);
    let (commits, written) = match (counters_before, counters_after) {
        (Some((commits_before, written_before)), Some((commits_after, written_after))) => (
            Some(commits_after.saturating_sub(commits_before)),
            Some(written_after.saturating_sub(written_before)),
        ),
        _ => (None, None),
    };
    Ok(EndToEnd {
        rate: Rate::new(ok, seconds),
        errors: tally.errors(),
        cut_short: tally.cut_short.load(Ordering::Relaxed),
        commits,
        written,
        usage: UsageReport::new(cpu_after.since(&cpu_before), ok),
    })
}

/// The same events through `Store::submit` in this process: what the bus's handler does after
/// parsing (validation, then the commit queue), with the gateway's source and id, and the same
/// number of publishes in flight.
async fn store_only(plan: &Plan, sync: SyncMode) -> anyhow::Result<Baseline> {
    let dir = tempfile::Builder::new().prefix("aiventbus-load-store-").tempdir()?;
    let config = StoreConfig {
        path: dir.path().join("bus.db"),
        sync,
        ..StoreConfig::default()
    };
    let store = tokio::task::spawn_blocking(move || Store::open(config))
        .await
        .context("opening the store")?
        .context("opening the store")?;
    let max_payload = store.config().max_payload_bytes;
    let gateway_params = move |topic: &str, n: u64, connection: usize| PublishParams {
        source: Some(SOURCE.to_owned()),
        id: Some(aiventbus_rpc::ids::prefixed("evt")),
        ..params(topic, n, connection)
    };
    let warmup = NewEvent::from_params(gateway_params(WARMUP_TOPIC, 0, 0), "system", max_payload)?;
    store.publish(warmup).await.context("warm-up publish")?;

    let processes = [("load", std::process::id())];
    let cpu_before = Snapshot::take(&processes);
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + plan.max_run;
    let mut producers = JoinSet::new();
    for index in 0..plan.connections {
        let (first, count) = share(plan.events, plan.connections, index);
        let store = store.clone();
        producers.spawn(drive(
            first,
            count,
            plan.in_flight,
            deadline,
            Arc::clone(&tally),
            move |n| {
                let queued = NewEvent::from_params(gateway_params(TOPIC, n, index), "system", max_payload)
                    .and_then(|event| store.submit(event));
                async move {
                    let answer = queued.map_err(|error| error.to_string())?;
                    match answer.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(error)) => Err(error.to_string()),
                        Err(_) => Err("the store dropped the publish".to_owned()),
                    }
                }
            },
        ));
    }
    while let Some(joined) = producers.join_next().await {
        joined.context("a producer task failed")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = Snapshot::take(&processes);
    let ok = tally.ok.load(Ordering::Relaxed);
    store.close().await;
    // Dropping the last handle joins the store's threads, which have finished after `close`.
    tokio::task::spawn_blocking(move || drop(store)).await?;
    drop(dir);
    Ok(Baseline {
        rate: Rate::new(ok, seconds),
        errors: tally.errors(),
        usage: UsageReport::new(cpu_after.since(&cpu_before), ok),
    })
}

const INSERT: &str = "INSERT INTO events (seq, id, ts, ts_ms, topic, payload, source, priority, \
    dedupe_count, trace_id, depth, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'medium', 1, ?8, 0, 'published')";

/// The same rows inserted straight into SQLite: WAL, the bus's pragmas and `sync`, one prepared
/// statement, [`RAW_BATCH`] rows per transaction. Ids and JSON are made before the clock starts.
fn raw_sqlite(plan: &Plan, sync: SyncMode) -> anyhow::Result<Baseline> {
    let dir = tempfile::Builder::new().prefix("aiventbus-load-raw-").tempdir()?;
    let path = dir.path().join("raw.db");
    let mut conn = rusqlite::Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("{}: WAL is not available here (got {mode})", path.display());
    }
    let synchronous = match sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous};
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -32768;
         PRAGMA journal_size_limit = 67108864;"
    ))?;
    conn.execute_batch(aiventbus_bus::BASE_SCHEMA)?;

    let rows: Vec<(String, String, String)> = (0..plan.events)
        .map(|n| {
            let connection = (n % plan.connections as u64) as usize;
            let payload = serde_json::to_string(&payload(n, connection))?;
            Ok((
                aiventbus_rpc::ids::prefixed("evt"),
                aiventbus_rpc::ids::prefixed("tr"),
                payload,
            ))
        })
        .collect::<Result<_, serde_json::Error>>()?;

    let processes = [("load", std::process::id())];
    let cpu_before = Snapshot::take(&processes);
    let started = Instant::now();
    let deadline = started + plan.max_run;
    let mut seq: i64 = 0;
    let mut errors = Vec::new();
    for chunk in rows.chunks(RAW_BATCH) {
        if Instant::now() >= deadline {
            errors.push(("cut short by --max-run-secs".to_owned(), 1));
            break;
        }
        let now_ms = aiventbus_rpc::time::now_ms();
        let ts = aiventbus_rpc::time::rfc3339_ms(now_ms);
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            for (id, trace_id, payload) in chunk {
                seq += 1;
                insert.execute(rusqlite::params![
                    seq,
                    id,
                    ts,
                    i64::try_from(now_ms).unwrap_or(i64::MAX),
                    TOPIC,
                    payload,
                    SOURCE,
                    trace_id
                ])?;
            }
        }
        tx.commit()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = Snapshot::take(&processes);
    let written = u64::try_from(seq).unwrap_or(0);
    drop(conn);
    drop(dir);
    Ok(Baseline {
        rate: Rate::new(written, seconds),
        errors,
        usage: UsageReport::new(cpu_after.since(&cpu_before), written),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_event_once() {
        for (events, connections) in [(10, 3), (200_000, 8), (5, 8), (0, 2)] {
            let mut next = 0;
            for index in 0..connections {
                let (first, count) = share(events, connections, index);
                assert_eq!(first, next);
                next += count;
            }
            assert_eq!(next, events);
        }
    }

    #[test]
    fn payload_is_about_100_bytes() {
        let bytes = payload_bytes();
        assert!((80..=120).contains(&bytes), "{bytes}");
    }
}
