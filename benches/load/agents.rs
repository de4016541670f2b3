//! The agents phase: what the bus, router and llm add around an agent run.
//!
//! 1. One llm agent whose `ollama` provider is the testkit's scripted model server, answering at
//!    once with a fixed `AgentOutput`; events published one at a time, each timed from publish to
//!    its `agent.completed`. The model server's own share is measured from the client side: the
//!    chat request the llm last sent (as the server recorded it) is replayed from this tool, the
//!    same number of times, over one keep-alive connection, and its median is subtracted.
//! 2. A command agent (a `/bin/sh` script printing a fixed `AgentOutput`) with 8 runs at once:
//!    events published as fast as the bus takes them, then completed runs per second. Every run
//!    spawns a process, so the same script is also spawned straight from this tool for comparison.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aiventbus_benches::{Snapshot, children_cpu};
use aiventbus_client::{Client, EventStream, StreamItem};
use aiventbus_proto::agents::{AgentKind, AgentSpec, AgentsCreate, RuleSpec, RulesCreate};
use aiventbus_proto::methods::PublishParams;
use aiventbus_testkit::Daemon;
use aiventbus_testkit::model::{ModelServer, Reply};
use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::report::{AgentsReport, CommandRunsReport, LlmRunsReport, Quantiles, Rate, UsageReport};
use crate::{Plan, lifecycle, progress};

/// Topic of the llm agent's events (its rule is on `bench.run.**`).
const RUN_TOPIC: &str = "bench.run.x";
/// Topic of the command agent's events (its rule is on `bench.cmd.**`).
const COMMAND_TOPIC: &str = "bench.cmd.x";
/// What a run can end in; the payload of each names the routed event as `event_id`.
const OUTCOME_TOPICS: [&str; 5] = [
    "agent.completed",
    "agent.error",
    "system.agent_failure",
    "system.parse_failure",
    "system.assignment_dropped",
];
/// Outcomes after which the event gets no `agent.completed`.
const TERMINAL_FAILURES: [&str; 2] = ["system.agent_failure", "system.assignment_dropped"];
/// Runs (and direct model requests) before the clock starts: the first run may wait for the
/// llm's first health probe of the provider.
const WARMUP_RUNS: usize = 3;
/// Longest wait for one warm-up run.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for one measured run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Runs of the command agent at once, both per agent and in the llm's general pool.
pub const COMMAND_CONCURRENCY: u32 = 8;
/// Publishes of the command part waiting for their acknowledgement at once.
const PUBLISH_IN_FLIGHT: usize = 256;
/// The p50 the bus overhead of one run is compared against.
pub const TARGET_P50_US: u64 = 5_000;
/// How the model server's time is measured, for the report.
pub const MODEL_METHOD: &str = "the llm's last recorded POST /api/chat body replayed from this tool to the model \
                                server over one keep-alive connection (streamed NDJSON read to its end), as many \
                                times as measured runs; its median is subtracted";

/// The fixed answer both agents give.
fn answer() -> Value {
    json!({"type": "answer", "summary": "bench"})
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs both parts.
pub fn run(runtime: &Runtime, plan: &Plan) -> anyhow::Result<AgentsReport> {
    let llm = llm_runs(runtime, plan)?;
    let command = command_runs(runtime, plan)?;
    Ok(AgentsReport { llm, command })
}

// ---------------------------------------------------------------- part 1: one llm run at a time

fn llm_runs(runtime: &Runtime, plan: &Plan) -> anyhow::Result<LlmRunsReport> {
    let server = runtime
        .block_on(ModelServer::start())
        .context("starting the scripted model server")?;
    server.set_default(Reply::Json(answer()));
    progress("agents: starting a daemon whose ollama provider is the scripted model server");
    let config = format!("[providers.ollama]\nbase_url = \"{}\"\n", server.ollama_url());
    // Declared after the server, so it is stopped first.
    let daemon = Daemon::start_with_config(&config).context("starting the daemon")?;
    runtime.block_on(measure_llm(&daemon, &server, plan))
}

async fn measure_llm(daemon: &Daemon, server: &ModelServer, plan: &Plan) -> anyhow::Result<LlmRunsReport> {
    let client = daemon.client().await?;
    let agent = create_agent(
        &client,
        AgentSpec {
            name: Some("bench-llm".into()),
            kind: Some(AgentKind::Llm),
            provider: Some("ollama".into()),
            model: Some("test-model".into()),
            ..AgentSpec::default()
        },
    )
    .await?;
    create_rule(&client, "bench-run", "bench.run.**", &agent).await?;
    let mut stream = subscribe_outcomes(&client).await?;
    for _ in 0..WARMUP_RUNS {
        one_run(&client, &mut stream, RUN_TOPIC, WARMUP_TIMEOUT)
            .await
            .context("a warm-up run of the llm agent")?;
    }

    let runs = plan.agent_runs;
    progress(format!(
        "agents: {runs} llm runs one at a time (publish {RUN_TOPIC} -> agent.completed)"
    ));
    let processes = lifecycle::pids(daemon).await?;
    let processes = processes.labelled();
    let cpu_before = Snapshot::take(&processes);
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        samples.push(one_run(&client, &mut stream, RUN_TOPIC, RUN_TIMEOUT).await?);
    }
    let cpu_after = Snapshot::take(&processes);

    let request = server
        .chat_requests()
        .pop()
        .context("the model server saw no chat request")?;
    progress(format!(
        "agents: replaying the llm's chat request to the model server {runs} times"
    ));
    let mut model = direct_posts(server.address(), &request.body, runs).await?;
    model.sort_unstable();
    let model_median = aiventbus_benches::quantile(&model, 0.5).unwrap_or(0);
    let overhead: Vec<u64> = samples
        .iter()
        .map(|sample| sample.saturating_sub(model_median))
        .collect();
    Ok(LlmRunsReport {
        runs,
        warmup_runs: WARMUP_RUNS,
        completed_us: Quantiles::of_nanos(samples),
        model_us: Quantiles::of_nanos(model),
        model_method: MODEL_METHOD,
        overhead_us: Quantiles::of_nanos(overhead),
        target_p50_us: TARGET_P50_US,
        usage: UsageReport::new(cpu_after.since(&cpu_before), runs as u64),
    })
}

async fn create_agent(client: &Client, spec: AgentSpec) -> anyhow::Result<String> {
    Ok(client.call::<AgentsCreate>(&spec).await.context("agents.create")?.id)
}

async fn create_rule(client: &Client, name: &str, pattern: &str, agent: &str) -> anyhow::Result<()> {
    client
        .call::<RulesCreate>(&RuleSpec {
            name: Some(name.into()),
            topic_pattern: Some(pattern.into()),
            agent_id: Some(agent.into()),
            ..RuleSpec::default()
        })
        .await
        .context("rules.create")?;
    Ok(())
}

async fn subscribe_outcomes(client: &Client) -> anyhow::Result<EventStream> {
    client
        .subscribe(OUTCOME_TOPICS.iter().map(|topic| (*topic).to_owned()).collect(), None)
        .await
        .context("subscribing to agent.completed")
}

fn event_params(topic: &str, n: u64) -> PublishParams {
    PublishParams {
        topic: topic.to_owned(),
        payload: Some(json!({ "n": n })),
        ..PublishParams::default()
    }
}

/// Publishes one event on `topic` and waits for its `agent.completed` on `stream`; returns the
/// time between, in nanoseconds. Another outcome for the event is an error.
async fn one_run(client: &Client, stream: &mut EventStream, topic: &str, timeout: Duration) -> anyhow::Result<u64> {
    let started = Instant::now();
    let published = client
        .publish(&event_params(topic, 0))
        .await
        .with_context(|| format!("publishing {topic}"))?;
    let wait = async {
        while let Some(item) = stream.next().await {
            match item? {
                StreamItem::Event(event) => {
                    if event.payload.get("event_id").and_then(Value::as_str) != Some(published.id.as_str()) {
                        continue;
                    }
                    if event.topic == "agent.completed" {
                        return Ok(nanos(started.elapsed()));
                    }
                    bail!(
                        "{} for {}: {}",
                        event.topic,
                        published.id,
                        Value::Object(event.payload.clone())
                    );
                }
                StreamItem::Ended(error) => bail!("the subscription ended: {}", error.message),
            }
        }
        bail!("the subscription connection closed")
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(result) => result,
        Err(_) => bail!("no agent.completed for {} within {timeout:?}", published.id),
    }
}

/// `count` timed POSTs of `body` to `/api/chat` over one connection, after a few untimed ones;
/// nanoseconds from writing the request to reading the end of the streamed answer.
async fn direct_posts(address: SocketAddr, body: &Value, count: usize) -> anyhow::Result<Vec<u64>> {
    let body = serde_json::to_vec(body)?;
    let socket = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to the model server at {address}"))?;
    socket.set_nodelay(true)?;
    let mut connection = BufReader::new(socket);
    let mut request = format!(
        "POST /api/chat HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\naccept: */*\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    for _ in 0..WARMUP_RUNS {
        post(&mut connection, &request).await?;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        post(&mut connection, &request).await?;
        samples.push(nanos(started.elapsed()));
    }
    Ok(samples)
}

/// Sends one HTTP/1.1 request and reads its whole answer (chunked or with a length), which must
/// be a 200.
async fn post(connection: &mut BufReader<TcpStream>, request: &[u8]) -> anyhow::Result<()> {
    connection.get_mut().write_all(request).await?;
    let mut line = String::new();
    read_line(connection, &mut line).await?;
    ensure!(
        line.starts_with("HTTP/1.1 200"),
        "the model server answered {}",
        line.trim_end()
    );
    let mut chunked = false;
    let mut length = None;
    loop {
        read_line(connection, &mut line).await?;
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().context("a bad content-length")?);
            }
        }
    }
    if !chunked {
        let mut body = vec![0; length.context("an answer with neither a length nor chunks")?];
        connection.read_exact(&mut body).await?;
        return Ok(());
    }
    loop {
        read_line(connection, &mut line).await?;
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).with_context(|| format!("a bad chunk size {size:?}"))?;
        if size == 0 {
            // No trailers: the empty line ends the answer.
            read_line(connection, &mut line).await?;
            return Ok(());
        }
        // The chunk and its CRLF.
        let mut chunk = vec![0; size + 2];
        connection.read_exact(&mut chunk).await?;
    }
}

async fn read_line(connection: &mut BufReader<TcpStream>, line: &mut String) -> anyhow::Result<()> {
    line.clear();
    if connection.read_line(line).await? == 0 {
        bail!("the model server closed the connection");
    }
    Ok(())
}

// ---------------------------------------------------------------- part 2: command agent throughput

fn command_runs(runtime: &Runtime, plan: &Plan) -> anyhow::Result<CommandRunsReport> {
    let dir = tempfile::Builder::new().prefix("aiventbus-load-agent-").tempdir()?;
    let script = dir.path().join("answer.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho '{}'\n", answer()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    }
    progress(format!(
        "agents: spawning {} straight from this tool {} times",
        script.display(),
        plan.agent_runs
    ));
    let spawn = direct_spawns(&script, plan.agent_runs)?;

    // The queue bound must not drop any of the burst.
    let max_queue = plan.agent_events.clamp(1_000, 10_000_000);
    let config = format!("[llm]\nmax_concurrent = {COMMAND_CONCURRENCY}\n[router]\nmax_queue = {max_queue}\n");
    progress("agents: starting a daemon for the command agent");
    let daemon = Daemon::start_with_config(&config).context("starting the daemon")?;
    let mut report = runtime.block_on(measure_command(&daemon, &script, plan))?;
    report.spawn_us = spawn;
    report.max_queue = max_queue;
    Ok(report)
}

/// Spawns `script` `count` times, one at a time, the way the llm does (stdio piped, own process
/// group, `/` as its directory), after a few untimed ones; spawn to exit, in microseconds.
fn direct_spawns(script: &Path, count: usize) -> anyhow::Result<Quantiles> {
    use std::os::unix::process::CommandExt as _;
    let spawn_once = || -> anyhow::Result<u64> {
        let started = Instant::now();
        let output = Command::new(script)
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        let took = nanos(started.elapsed());
        ensure!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            output.status
        );
        Ok(took)
    };
    for _ in 0..WARMUP_RUNS {
        spawn_once()?;
    }
    let samples = (0..count).map(|_| spawn_once()).collect::<anyhow::Result<Vec<u64>>>()?;
    Ok(Quantiles::of_nanos(samples))
}

async fn measure_command(daemon: &Daemon, script: &Path, plan: &Plan) -> anyhow::Result<CommandRunsReport> {
    let client = daemon.client().await?;
    let agent = create_agent(
        &client,
        AgentSpec {
            name: Some("bench-command".into()),
            kind: Some(AgentKind::Command),
            command: Some(vec![script.display().to_string()]),
            max_concurrent: Some(COMMAND_CONCURRENCY),
            ..AgentSpec::default()
        },
    )
    .await?;
    create_rule(&client, "bench-cmd", "bench.cmd.**", &agent).await?;
    let mut stream = subscribe_outcomes(&client).await?;
    for _ in 0..WARMUP_RUNS {
        one_run(&client, &mut stream, COMMAND_TOPIC, WARMUP_TIMEOUT)
            .await
            .context("a warm-up run of the command agent")?;
    }

    let events = plan.agent_events;
    progress(format!(
        "agents: {events} {COMMAND_TOPIC} events for the command agent, {COMMAND_CONCURRENCY} runs at once"
    ));
    let processes = lifecycle::pids(daemon).await?;
    let processes = processes.labelled();
    let llm_pid = processes
        .iter()
        .find_map(|(name, pid)| (*name == "llm").then_some(*pid));
    let children_before = llm_pid.and_then(children_cpu);
    let cpu_before = Snapshot::take(&processes);
    let started = Instant::now();
    let deadline = started + plan.max_run;
    let (ids, published_ids) = mpsc::unbounded_channel();
    let tally = tokio::spawn(tally(stream, published_ids, started, deadline));

    let permits = Arc::new(Semaphore::new(PUBLISH_IN_FLIGHT));
    let mut publishes = JoinSet::new();
    let mut cut_short = false;
    for n in 0..events {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        if Instant::now() > deadline {
            cut_short = true;
            break;
        }
        let client = client.clone();
        let ids = ids.clone();
        publishes.spawn(async move {
            let result = client.publish(&event_params(COMMAND_TOPIC, n)).await;
            drop(permit);
            match result {
                Ok(published) => {
                    let _ = ids.send(published.id);
                    Ok(())
                }
                Err(error) => Err(error.to_string()),
            }
        });
    }
    drop(ids);
    let mut publish_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut published = 0;
    while let Some(joined) = publishes.join_next().await {
        match joined.context("a publish task failed")? {
            Ok(()) => published += 1,
            Err(error) => *publish_errors.entry(error).or_default() += 1,
        }
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let outcome = tally.await.context("the subscriber task failed")?;
    let cpu_after = Snapshot::take(&processes);
    let children_after = llm_pid.and_then(children_cpu);
    let script_cpu_us_per_run = match (children_before, children_after) {
        (Some(before), Some(after)) if outcome.completed > 0 => {
            Some(after.saturating_sub(before).as_secs_f64() * 1e6 / outcome.completed as f64)
        }
        _ => None,
    };
    Ok(CommandRunsReport {
        events,
        published,
        publish_seconds,
        publish_errors: publish_errors.into_iter().collect(),
        cut_short,
        agent_max_concurrent: COMMAND_CONCURRENCY,
        llm_max_concurrent: COMMAND_CONCURRENCY,
        max_queue: 0,
        completed: Rate::new(outcome.completed, outcome.seconds),
        other_outcomes: outcome.other.into_iter().collect(),
        ended: outcome.ended,
        run_us: Quantiles::of_nanos(outcome.run_ns),
        spawn_us: Quantiles::default(),
        script_cpu_us_per_run,
        usage: UsageReport::new(cpu_after.since(&cpu_before), outcome.completed),
    })
}

/// What the subscriber saw for the published events.
struct Outcome {
    /// `agent.completed` for a published event.
    completed: u64,
    /// Start until the last of those (or until it stopped waiting).
    seconds: f64,
    /// Other outcomes for published events, by topic.
    other: BTreeMap<String, u64>,
    /// `duration_ms` of each completed run as the llm reports it, in nanoseconds.
    run_ns: Vec<u64>,
    /// Why it stopped before every published event had an outcome, if it did.
    ended: Option<String>,
}

/// One outcome event, kept until its event's id is known to be one of ours.
struct Seen {
    topic: String,
    at: Instant,
    duration_ms: Option<u64>,
}

/// Counts outcomes for the ids that arrive on `published` (an outcome may come before its
/// publish's answer) until every published event has an `agent.completed` or a terminal failure,
/// the stream ends, or `deadline`.
async fn tally(
    mut stream: EventStream,
    mut published: mpsc::UnboundedReceiver<String>,
    started: Instant,
    deadline: Instant,
) -> Outcome {
    let mut ours: HashSet<String> = HashSet::new();
    let mut early: HashMap<String, Vec<Seen>> = HashMap::new();
    let mut outcome = Outcome {
        completed: 0,
        seconds: 0.0,
        other: BTreeMap::new(),
        run_ns: Vec::new(),
        ended: None,
    };
    let mut settled = 0u64;
    let mut last = started;
    let mut apply = |seen: Seen, outcome: &mut Outcome, settled: &mut u64| {
        if seen.topic == "agent.completed" {
            outcome.completed += 1;
            *settled += 1;
            last = last.max(seen.at);
            outcome.seconds = last.duration_since(started).as_secs_f64();
            if let Some(ms) = seen.duration_ms {
                outcome.run_ns.push(ms.saturating_mul(1_000_000));
            }
        } else {
            if TERMINAL_FAILURES.contains(&seen.topic.as_str()) {
                *settled += 1;
            }
            *outcome.other.entry(seen.topic).or_default() += 1;
        }
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut publishing = true;
    while publishing || settled < ours.len() as u64 {
        tokio::select! {
            id = published.recv(), if publishing => match id {
                Some(id) => {
                    for seen in early.remove(&id).unwrap_or_default() {
                        apply(seen, &mut outcome, &mut settled);
                    }
                    ours.insert(id);
                }
                None => publishing = false,
            },
            item = tokio::time::timeout_at(deadline, stream.next()) => {
                let at = Instant::now();
                let event = match item {
                    Ok(Some(Ok(StreamItem::Event(event)))) => event,
                    Ok(Some(Ok(StreamItem::Ended(error)))) => {
                        outcome.ended = Some(format!("the subscription ended: {}", error.message));
                        break;
                    }
                    Ok(Some(Err(error))) => {
                        outcome.ended = Some(error.to_string());
                        break;
                    }
                    Ok(None) => {
                        outcome.ended = Some("the subscription connection closed".to_owned());
                        break;
                    }
                    Err(_) => {
                        outcome.ended = Some("timed out (--max-run-secs) waiting for the remaining runs".to_owned());
                        break;
                    }
                };
                let Some(id) = event.payload.get("event_id").and_then(Value::as_str) else {
                    continue;
                };
                let seen = Seen {
                    topic: event.topic.clone(),
                    at,
                    duration_ms: event.payload.get("duration_ms").and_then(Value::as_u64),
                };
                if ours.contains(id) {
                    apply(seen, &mut outcome, &mut settled);
                } else {
                    early.entry(id.to_owned()).or_default().push(seen);
                }
            }
        }
    }
    if outcome.ended.is_some() {
        outcome.seconds = started.elapsed().as_secs_f64();
    }
    outcome
}
