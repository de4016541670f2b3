//! `aiventbus-atp-load`: ATP fan-out under load. It starts its own daemon (the real binaries found
//! next to its executable, so `cargo run --release` measures release builds), opens N WebSocket
//! subscribers on `/atp` (default 10), and measures
//!
//! - throughput: events published through `api.sock` as fast as the bus takes them, delivered to
//!   every subscriber — events/s delivered in total and per subscriber;
//! - latency: a paced publisher whose payloads carry their send instant; publish → `event` frame
//!   at each subscriber, p50/p90/p99/max.
//!
//! Every loop is bounded in count and in time; a subscriber cut off as a slow consumer is reported,
//! not hidden. Figures go in release notes, never in tests.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiventbus_benches::quantile;
use aiventbus_client::Client;
use aiventbus_proto::auth::{KeyCreateParams, KeysCreate, Role};
use aiventbus_proto::methods::PublishParams;
use aiventbus_testkit::Daemon;
use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// ATP fan-out benchmark; starts its own daemon from the binaries beside it.
#[derive(Debug, Parser)]
#[command(name = "aiventbus-atp-load", version)]
struct Cli {
    /// WebSocket subscribers.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Events in the throughput run.
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// Publishes in flight at once in the throughput run.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Publishes per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of paced publishing in the latency run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// `gateway.atp_send_queue` for the run.
    #[arg(long, default_value_t = 1024)]
    send_queue: usize,
    /// Longest either run may take before it reports what it has.
    #[arg(long, default_value_t = 120)]
    max_secs: u64,
    /// Worker threads of this tool's own runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.subscribers == 0 || cli.events == 0 || cli.in_flight == 0 || cli.rate == 0 || cli.threads == 0 {
        eprintln!("aiventbus-atp-load: --subscribers, --events, --in-flight, --rate and --threads must be at least 1");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aiventbus-atp-load: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aiventbus-atp-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\natp_send_queue = {}\n",
        cli.send_queue
    );
    let daemon = tokio::task::spawn_blocking(move || Daemon::start_with_config(&config))
        .await
        .context("starting the daemon")??;
    let result = measure(&cli, &daemon).await;
    let _ = tokio::task::spawn_blocking(move || drop(daemon)).await;
    result
}

async fn measure(cli: &Cli, daemon: &Daemon) -> anyhow::Result<()> {
    let client = daemon.client().await?;
    let key = client
        .call::<KeysCreate>(&KeyCreateParams {
            user: "bench".into(),
            role: Role::Viewer,
            label: None,
        })
        .await
        .context("keys.create")?
        .key;
    let addr =
        std::fs::read_to_string(daemon.paths.runtime_dir.join("gateway.addr")).context("reading gateway.addr")?;
    let url = format!("ws://{}/atp", addr.trim().trim_start_matches("http://"));
    let limit = Duration::from_secs(cli.max_secs);

    println!(
        "ATP fan-out: {} subscribers, gateway.atp_send_queue = {}",
        cli.subscribers, cli.send_queue
    );

    // Throughput.
    let topic = "bench.atp.flood";
    let subscribers = subscribe_all(&url, &key, topic, cli.subscribers).await?;
    let started = Instant::now();
    let receivers = spawn_receivers(subscribers, cli.events, started, limit);
    let published = publish_flood(&client, topic, cli.events, cli.in_flight, limit).await?;
    let publish_secs = started.elapsed().as_secs_f64();
    let mut delivered = 0u64;
    let mut slowest = 0f64;
    let mut cut_off = Vec::new();
    for outcome in receivers.join_all().await {
        delivered += outcome.received;
        slowest = slowest.max(outcome.last_at.as_secs_f64());
        if let Some(why) = outcome.ended {
            cut_off.push(why);
        }
    }
    println!(
        "throughput: {published} events published in {publish_secs:.2} s ({:.0}/s); {delivered} deliveries in {slowest:.2} s \
         = {:.0} events/s delivered in total, {:.0}/s per subscriber",
        published as f64 / publish_secs,
        delivered as f64 / slowest.max(f64::EPSILON),
        delivered as f64 / slowest.max(f64::EPSILON) / cli.subscribers as f64,
    );
    for why in &cut_off {
        println!("  a subscriber ended early: {why}");
    }

    // Latency.
    let topic = "bench.atp.latency";
    let origin = Instant::now();
    let subscribers = subscribe_all(&url, &key, topic, cli.subscribers).await?;
    let total = u64::from(cli.rate) * cli.seconds.max(1);
    let mut collectors = JoinSet::new();
    for socket in subscribers {
        collectors.spawn(collect_latencies(socket, origin, total, limit));
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / cli.rate);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let permits = Arc::new(Semaphore::new(10_000));
    for n in 0..total {
        ticker.tick().await;
        let permit = permits.clone().acquire_owned().await?;
        let client = client.clone();
        let sent_ns = nanos_since(origin);
        tokio::spawn(async move {
            let _ = client
                .publish(&PublishParams {
                    topic: topic.to_owned(),
                    payload: Some(json!({"n": n, "sent_ns": sent_ns})),
                    ..PublishParams::default()
                })
                .await;
            drop(permit);
        });
    }
    let mut samples = Vec::new();
    for (mut latencies, ended) in collectors.join_all().await {
        samples.append(&mut latencies);
        if let Some(why) = ended {
            println!("  a subscriber ended early: {why}");
        }
    }
    samples.sort_unstable();
    let us = |q| quantile(&samples, q).map_or("-".to_owned(), |ns| format!("{:.2} ms", ns as f64 / 1e6));
    println!(
        "latency at {}/s for {} s: {} deliveries of {} expected; publish -> event frame p50 {} p90 {} p99 {} max {}",
        cli.rate,
        cli.seconds,
        samples.len(),
        total * cli.subscribers as u64,
        us(0.5),
        us(0.9),
        us(0.99),
        us(1.0)
    );
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe_all(url: &str, key: &str, topic: &str, count: usize) -> anyhow::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", HeaderValue::from_str(&format!("Bearer {key}"))?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let subscribe = json!({"type": "subscribe", "events": [topic]}).to_string();
        socket.send(Message::text(subscribe)).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) if text.as_str().contains("\"subscribed\"") => break,
                Ok(Some(Ok(Message::Text(text)))) => bail!("unexpected answer to subscribe: {text}"),
                Ok(Some(Ok(_))) => continue,
                other => bail!("no answer to subscribe: {other:?}"),
            }
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

struct Received {
    received: u64,
    /// When the last event arrived, since the start.
    last_at: Duration,
    ended: Option<String>,
}

fn spawn_receivers(sockets: Vec<Socket>, expected: u64, started: Instant, limit: Duration) -> JoinSet<Received> {
    let mut set = JoinSet::new();
    for mut socket in sockets {
        set.spawn(async move {
            let mut outcome = Received {
                received: 0,
                last_at: Duration::ZERO,
                ended: None,
            };
            let until = tokio::time::Instant::from_std(started + limit);
            while outcome.received < expected {
                match tokio::time::timeout_at(until, socket.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        if text.as_str().starts_with("{\"type\":\"event\"") {
                            outcome.received += 1;
                            outcome.last_at = started.elapsed();
                        } else if text.as_str().contains("\"closing\"") {
                            outcome.ended = Some(text.as_str().to_owned());
                            break;
                        }
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(other) => {
                        outcome.ended = Some(format!("connection ended: {other:?}"));
                        break;
                    }
                    Err(_) => {
                        outcome.ended = Some(format!("timed out with {} events", outcome.received));
                        break;
                    }
                }
            }
            outcome
        });
    }
    set
}

async fn publish_flood(
    client: &Client,
    topic: &str,
    events: u64,
    in_flight: usize,
    limit: Duration,
) -> anyhow::Result<u64> {
    let permits = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..events {
        if started.elapsed() > limit {
            break;
        }
        let permit = permits.clone().acquire_owned().await?;
        let client = client.clone();
        let topic = topic.to_owned();
        tasks.spawn(async move {
            let params = PublishParams {
                topic,
                payload: Some(json!({"n": n, "text": "the quick brown fox jumps over the lazy dog"})),
                ..PublishParams::default()
            };
            let ok = client.publish(&params).await.is_ok();
            drop(permit);
            ok
        });
    }
    let mut published = 0;
    while let Some(done) = tasks.join_next().await {
        if matches!(done, Ok(true)) {
            published += 1;
        }
    }
    Ok(published)
}

fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

async fn collect_latencies(
    mut socket: Socket,
    origin: Instant,
    total: u64,
    limit: Duration,
) -> (Vec<u64>, Option<String>) {
    let mut samples = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let until = tokio::time::Instant::now() + limit;
    while (samples.len() as u64) < total {
        match tokio::time::timeout_at(until, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let received = nanos_since(origin);
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if frame["type"] == "closing" {
                    return (samples, Some(text.as_str().to_owned()));
                }
                if let Some(sent) = frame["body"]["payload"]["sent_ns"].as_u64() {
                    samples.push(received.saturating_sub(sent));
                }
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => return (samples, Some(format!("connection ended: {other:?}"))),
            Err(_) => {
                let why = format!("timed out with {} events", samples.len());
                return (samples, Some(why));
            }
        }
    }
    (samples, None)
}
