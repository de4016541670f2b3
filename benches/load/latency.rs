//! The latency phase: a live subscriber on `bench.lat` through `api.sock`, and a paced publisher
//! whose payloads carry their send instant (nanoseconds since one `Instant` of this process); the
//! subscriber's receipt time minus that instant is the publish → delivery latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aiventbus_client::{EventStream, StreamItem};
use aiventbus_proto::methods::PublishParams;
use aiventbus_testkit::Daemon;
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::report::{LatencyReport, Quantiles};
use crate::{Plan, progress};

/// The subscribed topic.
const TOPIC: &str = "bench.lat";
/// How long delivery may trail the last publish before the subscriber stops waiting.
const TRAIL: Duration = Duration::from_secs(15);
/// Publishes waiting for their acknowledgement at once; the pacing never waits on them below it.
const MAX_IN_FLIGHT: usize = 10_000;

fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn params(sent_ns: u64, n: i64) -> PublishParams {
    PublishParams {
        topic: TOPIC.to_owned(),
        payload: Some(json!({ "n": n, "sent_ns": sent_ns })),
        ..PublishParams::default()
    }
}

/// Runs the phase on `daemon`.
pub async fn run(daemon: &Daemon, plan: &Plan) -> anyhow::Result<LatencyReport> {
    let origin = Instant::now();
    let client = daemon.client().await?;
    let mut stream = client
        .subscribe(vec![TOPIC.to_owned()], None)
        .await
        .context("subscribing to bench.lat")?;
    // One event through first, so the subscription is live and both paths are warm.
    client
        .publish(&params(nanos_since(origin), -1))
        .await
        .context("warm-up publish")?;
    wait_for_warmup(&mut stream).await?;

    let total = u64::from(plan.latency_rate) * plan.latency_time.as_secs().max(1);
    progress(format!(
        "latency: {total} events at {}/s, subscriber on {TOPIC}",
        plan.latency_rate
    ));
    let receive_until = Instant::now() + plan.latency_time + TRAIL;
    let receiver = tokio::spawn(receive(stream, origin, total, receive_until));

    let acks = Arc::new(Mutex::new(Vec::with_capacity(usize::try_from(total).unwrap_or(0))));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / plan.latency_rate);
    // Catch up after a late tick so the average rate holds.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let sending = Instant::now();
    for n in 0..total {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let sent_ns = nanos_since(origin);
        let client = client.clone();
        let acks = Arc::clone(&acks);
        let acknowledged = Arc::clone(&acknowledged);
        tokio::spawn(async move {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            if client.publish(&params(sent_ns, n)).await.is_ok() {
                let took = nanos_since(origin).saturating_sub(sent_ns);
                acks.lock().unwrap_or_else(PoisonError::into_inner).push(took);
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    let send_seconds = sending.elapsed().as_secs_f64();
    let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(TRAIL, permits.acquire_many(all)).await;
    let (delivered, ended) = receiver.await.context("the subscriber task failed")?;
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(LatencyReport {
        sent: total,
        acknowledged: acknowledged.load(Ordering::Relaxed),
        received: delivered.len() as u64,
        send_rate: if send_seconds > 0.0 {
            total as f64 / send_seconds
        } else {
            0.0
        },
        ended,
        delivery_us: Quantiles::of_nanos(delivered),
        ack_us: Quantiles::of_nanos(acks),
    })
}

async fn wait_for_warmup(stream: &mut EventStream) -> anyhow::Result<()> {
    let wait = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = stream.next().await {
            match item? {
                StreamItem::Event(event) if event.payload.get("n").and_then(Value::as_i64) == Some(-1) => return Ok(()),
                StreamItem::Event(_) => continue,
                StreamItem::Ended(error) => bail!("the subscription ended: {}", error.message),
            }
        }
        bail!("the subscription connection closed")
    });
    wait.await.context("the warm-up event did not arrive within 10 s")?
}

/// Collects `total` latencies (ns) or stops at `until`; also says why the subscription ended, if
/// it did.
async fn receive(mut stream: EventStream, origin: Instant, total: u64, until: Instant) -> (Vec<u64>, Option<String>) {
    let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let until = tokio::time::Instant::from_std(until);
    while (samples.len() as u64) < total {
        let item = match tokio::time::timeout_at(until, stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return (samples, Some("the subscription connection closed".to_owned())),
            Err(_) => return (samples, Some("timed out waiting for the remaining events".to_owned())),
        };
        let received_ns = nanos_since(origin);
        match item {
            Ok(StreamItem::Event(event)) => {
                let measured = event.payload.get("n").and_then(Value::as_i64).is_some_and(|n| n >= 0);
                if let Some(sent_ns) = event.payload.get("sent_ns").and_then(Value::as_u64)
                    && measured
                {
                    samples.push(received_ns.saturating_sub(sent_ns));
                }
            }
            Ok(StreamItem::Ended(error)) => return (samples, Some(error.message)),
            Err(error) => return (samples, Some(error.to_string())),
        }
    }
    (samples, None)
}
