//! `aibus` as a real process (SPEC §13): publish, list, trace, status and tail with `--json`, and
//! the exit statuses for a usage mistake (2) and a daemon that is not running (3).

use std::process::{Output, Stdio};
use std::time::Duration;

use aiventbus_testkit::{Daemon, binary};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{self, event, run_async};

fn aibus(daemon: &Daemon, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| daemon.aibus(args))
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json_stdout(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{}", describe(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", describe(output)))
}

/// The events of a `--json` listing: `{events: […]}` or a bare array.
fn listed_events(document: &Value) -> Vec<Value> {
    match document {
        Value::Array(items) => items.clone(),
        Value::Object(fields) => fields
            .get("events")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("no events array in {document}")),
        other => panic!("not a listing: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_list_trace_and_status() {
    let daemon = support::start().await;

    let published = json_stdout(&aibus(&daemon, &["publish", "demo.x", r#"{"a":1}"#, "--json"]));
    let seq = published["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {published}"));
    let id = published["id"].as_str().expect("id").to_owned();
    let trace_id = published["trace_id"].as_str().expect("trace_id").to_owned();
    assert!(id.starts_with("evt_") && trace_id.starts_with("tr_"), "{published}");
    assert_eq!(published["status"], "published");

    let client = daemon.client().await.expect("client");
    let stored = client.get(&id).await.expect("the CLI's event is stored");
    assert_eq!(stored.seq, seq);
    assert_eq!(stored.payload["a"], 1);

    let high = json_stdout(&aibus(
        &daemon,
        &["publish", "demo.x", "{}", "--priority", "high", "--json"],
    ));
    let high_id = high["id"].as_str().expect("id");
    assert_eq!(
        client.get(high_id).await.expect("stored").priority,
        aiventbus_proto::Priority::High
    );

    let listing = json_stdout(&aibus(&daemon, &["events", "--json"]));
    let events = listed_events(&listing);
    let found = events
        .iter()
        .find(|e| e["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in `aibus events --json`: {listing}"));
    assert_eq!(found["seq"], seq);
    assert_eq!(found["topic"], "demo.x");

    let trace = json_stdout(&aibus(&daemon, &["trace", &trace_id, "--json"]));
    let trace_events = listed_events(&trace);
    assert!(trace_events.iter().any(|e| e["id"] == id.as_str()), "{trace}");
    assert!(
        trace_events.iter().all(|e| e["trace_id"] == trace_id.as_str()),
        "{trace}"
    );

    let status = json_stdout(&aibus(&daemon, &["status", "--json"]));
    let services = status["services"]
        .as_array()
        .unwrap_or_else(|| panic!("no services in {status}"));
    for name in ["bus", "gateway"] {
        let service = services
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {status}"));
        assert_eq!(service["state"], "running", "{service}");
        assert!(service["pid"].is_u64(), "{service}");
    }
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_mistakes_exit_2_and_store_nothing() {
    let daemon = support::start().await;
    for args in [
        &["publish", "demo.x", "[1]"][..],
        &["publish", "demo.x", "not json"][..],
        &["publish", "Demo..x", "{}"][..],
        &["publish"][..],
        &["no-such-command"][..],
    ] {
        let output = aibus(&daemon, args);
        assert_eq!(output.status.code(), Some(2), "aibus {args:?}: {}", describe(&output));
        assert!(!output.stderr.is_empty(), "aibus {args:?} said nothing on stderr");
    }
    let client = daemon.client().await.expect("client");
    let stored = client
        .list(&aiventbus_proto::methods::ListParams {
            topic: Some("demo.x".into()),
            ..Default::default()
        })
        .await
        .expect("events.list");
    assert!(stored.is_empty(), "a refused publish was stored: {stored:?}");

    // A refusal by the daemon itself (a reserved namespace) is a failure, not a usage mistake.
    let output = aibus(&daemon, &["publish", "system.x", "{}"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_exits_3() {
    let empty = tempfile::Builder::new()
        .prefix("aiventbus-test-")
        .tempdir()
        .expect("tempdir");
    for args in [&["events"][..], &["status"][..], &["publish", "demo.x", "{}"][..]] {
        let mut command = std::process::Command::new(binary("aibus"));
        command
            .args(args)
            .env("AIVENTBUS_RUNTIME_DIR", empty.path())
            .env("AIVENTBUS_STATE_DIR", empty.path().join("state"))
            .env("AIVENTBUS_CONFIG", empty.path().join("config.toml"));
        let output = run_async(command, Vec::new(), Duration::from_secs(30)).await;
        assert_eq!(output.status.code(), Some(3), "aibus {args:?}: {}", describe(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not running"), "aibus {args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_events_as_they_come() {
    let daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let before = client
        .publish(&event("tail.before", serde_json::json!({"n": 0})))
        .await
        .expect("publish");

    let mut child = tokio::process::Command::new(binary("aibus"))
        .args(["tail", "--from-seq", "1", "--json"])
        .envs(daemon.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning aibus tail");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let mut published = vec![before];
    for n in 1..=3 {
        published.push(
            client
                .publish(&event("tail.after", serde_json::json!({"n": n})))
                .await
                .expect("publish"),
        );
    }
    let mut seen: Vec<Value> = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reading tail's stdout") {
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON event per line ({e}): {line}"));
            seen.push(value);
            if published.iter().all(|p| seen.iter().any(|e| e["id"] == p.id.as_str())) {
                return true;
            }
        }
        false
    })
    .await;
    let _ = child.kill().await;
    let ids: Vec<&Value> = seen.iter().map(|e| &e["id"]).collect();
    assert_eq!(waited, Ok(true), "tail did not print every event; printed ids {ids:?}");
    let seqs: Vec<u64> = seen.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs.first(), Some(&1), "--from-seq 1 did not start at 1");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "tail skipped or repeated: {seqs:?}"
    );
    support::shut_down(daemon).await;
}
