//! Supervision (SPEC §1, §2, §14, §17): a clean stop leaves no process behind, two daemons run side
//! by side, a second init on the same dirs refuses to start, a bad config file exits 64 naming every
//! problem, and the runtime and state files have private modes.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aiventbus_testkit::{bin_dir, binary, process_alive};
use serde_json::json;

use crate::support::{self, event, or_log, rpc_code, run_async};

/// Pids of processes (other than this one) whose environment or command line names `dir`.
fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle_env = format!("AIVENTBUS_RUNTIME_DIR={}", dir.display());
    let needle = dir.display().to_string();
    let own = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own || !process_alive(pid) {
            continue;
        }
        // Other users' processes cannot be read; they cannot be ours either.
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let in_env = environ.split(|b| *b == 0).any(|var| var == needle_env.as_bytes());
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if in_env || cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_process() {
    let mut daemon = support::start().await;
    let client = daemon.client().await.expect("client");
    let services = client.services().await.expect("system.services").services;
    let mut pids: Vec<(String, u32)> = services.iter().filter_map(|s| Some((s.name.clone(), s.pid?))).collect();
    for name in ["bus", "gateway"] {
        assert!(pids.iter().any(|(n, _)| n == name), "{name} has no pid: {services:?}");
    }
    let init_pid = daemon.init_pid().expect("init pid");
    pids.push(("init".into(), init_pid));
    for (name, pid) in &pids {
        assert!(process_alive(*pid), "{name} ({pid}) not alive before the stop");
    }
    assert!(
        !processes_mentioning(&daemon.paths.runtime_dir).is_empty(),
        "the /proc scan finds nothing even while the daemon runs"
    );
    drop(client);

    // Well past the 5 s grace period init gives each service; the wait ends as soon as init exits.
    let code = tokio::task::block_in_place(|| daemon.stop(Duration::from_secs(20)));
    let code = or_log(&daemon, code);
    assert_eq!(code, Some(0), "init's exit status:\n{}", daemon.init_output());
    for (name, pid) in &pids {
        assert!(!process_alive(*pid), "{name} ({pid}) outlived init");
    }
    let left = processes_mentioning(&daemon.paths.runtime_dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_run_side_by_side() {
    let (first, second) = tokio::join!(support::start(), support::start());
    let a = first.client().await.expect("client a");
    let b = second.client().await.expect("client b");
    a.version().await.expect("a answers");
    b.version().await.expect("b answers");
    assert_ne!(
        first.service_pid("bus").await.expect("bus a"),
        second.service_pid("bus").await.expect("bus b")
    );

    let in_a = a.publish(&event("side.only_a", json!({}))).await.expect("publish to a");
    let in_b = b.publish(&event("side.only_b", json!({}))).await.expect("publish to b");
    let (code, _) = rpc_code(b.get(&in_a.id).await);
    assert_eq!(code, -32002, "b sees a's event");
    let (code, _) = rpc_code(a.get(&in_b.id).await);
    assert_eq!(code, -32002, "a sees b's event");
    let topics_b: Vec<String> = b
        .topics()
        .await
        .expect("topics b")
        .topics
        .into_iter()
        .map(|t| t.topic)
        .collect();
    assert!(!topics_b.contains(&"side.only_a".to_owned()), "{topics_b:?}");

    for (name, client) in [("a", &a), ("b", &b)] {
        let events = support::all_events(client).await;
        assert_eq!(events.first().map(|e| e.seq), Some(1), "{name} does not start at seq 1");
        support::assert_store_gap_free(client).await;
    }
    support::shut_down(first).await;
    support::shut_down(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_init_on_the_same_dirs_refuses() {
    let daemon = support::start().await;
    let mut command = Command::new(binary("aiventbus-init"));
    command.envs(daemon.env()).env_remove("NOTIFY_SOCKET");
    let output = run_async(command, Vec::new(), Duration::from_secs(30)).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!output.status.success(), "a second init started: {text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("running") && (lower.contains("another") || lower.contains("already")),
        "the message does not say another instance is running: {text}"
    );
    // The first daemon is untouched: its sockets still answer.
    let client = daemon.client().await.expect("client");
    client.version().await.expect("the first daemon still answers");
    client.publish(&event("still.here", json!({}))).await.expect("publish");
    assert!(daemon.paths.socket("bus").exists());
    support::shut_down(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_exits_64_naming_every_problem() {
    let root = tempfile::Builder::new()
        .prefix("aiventbus-test-")
        .tempdir()
        .expect("tempdir");
    let runtime = root.path().join("run");
    let config = root.path().join("config.toml");
    std::fs::write(&config, "[bus]\ncolour = \"blue\"\nsync = \"sometimes\"\n").expect("config");
    let mut command = Command::new(binary("aiventbus-init"));
    command
        .env("AIVENTBUS_RUNTIME_DIR", &runtime)
        .env("AIVENTBUS_STATE_DIR", root.path().join("state"))
        .env("AIVENTBUS_CONFIG", &config)
        .env("AIVENTBUS_LIBEXEC_DIR", bin_dir())
        .env_remove("NOTIFY_SOCKET");
    let output = run_async(command, Vec::new(), Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "exit status; stderr: {stderr}");
    for needle in ["colour", "sync", config.to_str().expect("utf-8 path")] {
        assert!(stderr.contains(needle), "stderr does not name {needle:?}: {stderr}");
    }
    let left = processes_mentioning(&runtime);
    assert!(left.is_empty(), "a service was started anyway: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_and_state_files_are_private() {
    let daemon = support::start().await;
    let paths = &daemon.paths;
    assert_eq!(mode(&paths.runtime_dir), 0o700, "runtime dir");
    assert_eq!(mode(&paths.state_dir), 0o700, "state dir");
    assert_eq!(mode(&paths.master_key()), 0o600, "master key");

    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(&paths.runtime_dir).expect("runtime dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        if meta.file_type().is_socket() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert_eq!(meta.mode() & 0o777, 0o600, "socket {name}");
            sockets.push(name);
        }
    }
    sockets.sort();
    for expected in ["api.sock", "bus.sock", "gateway.sock", "init.sock"] {
        assert!(sockets.iter().any(|s| s == expected), "{expected} missing: {sockets:?}");
    }

    let creds = paths.runtime_dir.join("creds");
    assert_eq!(mode(&creds), 0o700, "creds dir");
    for service in ["bus", "gateway"] {
        let dir = paths.creds_dir(service);
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for file in std::fs::read_dir(&dir).expect("creds").flatten() {
            assert_eq!(mode(&file.path()), 0o600, "{}", file.path().display());
        }
    }
    // Keys never reach a service through its environment or argv.
    let key = std::fs::read_to_string(paths.creds_dir("bus").join("key")).expect("bus key");
    let bus_pid = daemon.service_pid("bus").await.expect("bus pid");
    let environ = std::fs::read(format!("/proc/{bus_pid}/environ")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{bus_pid}/cmdline")).unwrap_or_default();
    for (what, bytes) in [("environment", environ), ("argv", cmdline)] {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(key.trim()),
            "the bus key is in the bus's {what}"
        );
    }
    support::shut_down(daemon).await;
}
