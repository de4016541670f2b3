//! The exec phase: the owner's `exec.run` of `/bin/true`, one at a time, timed from the call on
//! `api.sock` (gateway → policy's deny rules → exec, which spawns it) until its `exec.finished`
//! event arrives on a live subscription. The same program spawned straight from this tool is the
//! baseline: what the daemon adds is the difference.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aiventbus_client::{Client, StreamItem};
use aiventbus_proto::exec::{ExecRun, RunParams};
use aiventbus_testkit::Daemon;
use anyhow::{Context as _, bail};

use crate::report::{ExecReport, Quantiles};

/// Runs before the clock starts.
const WARMUP_RUNS: usize = 5;
/// Longest wait for one run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The p50 the round trip is compared against.
pub const TARGET_P50_US: u64 = 5_000;

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

/// Measures `runs` round trips.
pub async fn run(daemon: &Daemon, runs: usize) -> anyhow::Result<ExecReport> {
    let client = daemon.client().await.context("connecting to api.sock")?;
    let mut finished = client
        .subscribe(vec!["exec.finished".into()], None)
        .await
        .context("subscribing to exec.finished")?;
    let mut samples = Vec::with_capacity(runs);
    for index in 0..WARMUP_RUNS + runs {
        let started = Instant::now();
        let run_id = one(&client).await?;
        tokio::time::timeout(RUN_TIMEOUT, async {
            while let Some(item) = finished.next().await {
                match item? {
                    StreamItem::Event(event) if event.payload["run_id"] == run_id.as_str() => {
                        if event.payload["exit_code"] != 0 {
                            bail!("/bin/true exited with {}", event.payload["exit_code"]);
                        }
                        return Ok(());
                    }
                    StreamItem::Event(_) => continue,
                    StreamItem::Ended(error) => bail!("subscription ended: {error}"),
                }
            }
            bail!("subscription closed")
        })
        .await
        .with_context(|| format!("run {run_id} did not finish within {RUN_TIMEOUT:?}"))??;
        if index >= WARMUP_RUNS {
            samples.push(nanos(started.elapsed()));
        }
    }
    let mut direct = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("spawning /bin/true")?;
        if !status.success() {
            bail!("/bin/true failed");
        }
        direct.push(nanos(started.elapsed()));
    }
    Ok(ExecReport {
        runs,
        round_trip_us: Quantiles::of_nanos(samples),
        direct_spawn_us: Quantiles::of_nanos(direct),
        target_p50_us: TARGET_P50_US,
    })
}

async fn one(client: &Client) -> anyhow::Result<String> {
    let started = client
        .call::<ExecRun>(&RunParams {
            argv: vec!["/bin/true".into()],
            ..RunParams::default()
        })
        .await
        .context("exec.run")?;
    Ok(started.run_id)
}
