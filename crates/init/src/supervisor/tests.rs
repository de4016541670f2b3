//! Supervisor tests with real child processes (small shell scripts) and in-process fakes of their
//! sockets: the test answers `system.health` and records `events.publish`, and sends `READY=1` on
//! a service's behalf once it sees the process. Grandchildren are observed by making the test
//! process a child subreaper, so it can wait for them like for its own children.

use std::sync::Arc;
use std::time::Duration;

use aiventbus_proto::EventStatus;
use aiventbus_proto::methods::{Health, HealthResult, NoParams, Publish, PublishParams, PublishResult};
use aiventbus_rpc::config::{InitConfig, RpcConfig};
use aiventbus_rpc::token::Verifier;
use aiventbus_rpc::{Auth, Methods, ServeOptions};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::*;

const DEADLINE: Duration = Duration::from_secs(30);

struct Harness {
    _tmp: tempfile::TempDir,
    paths: Paths,
    status: watch::Receiver<Vec<ServiceInfo>>,
    published: watch::Receiver<Vec<Value>>,
    events: Arc<EventQueue>,
    shutdown: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
    servers: CancellationToken,
    run: Option<JoinHandle<()>>,
}

impl Harness {
    async fn start(table: &'static [ServiceSpec], config: InitConfig, scripts: &[(&str, &str)]) -> Harness {
        nix::sys::prctl::set_child_subreaper(true).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let paths = Paths {
            runtime_dir: tmp.path().join("run"),
            state_dir: tmp.path().join("state"),
            config_file: tmp.path().join("config.toml"),
        };
        paths.ensure_dirs().unwrap();
        aiventbus_rpc::paths::ensure_private_dir(&notify_dir(&paths)).unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, body) in scripts {
            use std::os::unix::fs::PermissionsExt;
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        nix::unistd::mkfifo(&paths.state_dir.join("grandchild"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        let master = Key::generate().unwrap();
        let (recorder, published) = watch::channel(Vec::new());
        let recorder = Arc::new(recorder);
        let servers = CancellationToken::new();
        for spec in table {
            fake_service(&paths, spec.name, &master, recorder.clone(), servers.clone()).await;
        }

        let events = Arc::new(EventQueue::new(events_limit()));
        let (bus, bus_receiver) = watch::channel(None);
        let (status, status_receiver) = watch::channel(Vec::new());
        tokio::spawn(crate::events::publish_loop(
            events.clone(),
            bus_receiver,
            servers.clone(),
        ));
        let tracker = TaskTracker::new();
        let supervisor = Supervisor::new(
            Context {
                paths: paths.clone(),
                config,
                master,
                binaries: table.iter().map(|spec| bin.join(spec.binary)).collect(),
                output: Output::Pipe,
                events: events.clone(),
                bus,
                status,
                tracker: tracker.clone(),
                background: servers.child_token(),
            },
            table,
        );
        let shutdown = CancellationToken::new();
        let force = CancellationToken::new();
        let run = {
            let (shutdown, force) = (shutdown.clone(), force.clone());
            tokio::spawn(async move { supervisor.run(&shutdown, &force).await })
        };
        Harness {
            _tmp: tmp,
            paths,
            status: status_receiver,
            published,
            events,
            shutdown,
            force,
            tracker,
            servers,
            run: Some(run),
        }
    }

    async fn wait_status(&mut self, what: &str, check: impl FnMut(&Vec<ServiceInfo>) -> bool) -> Vec<ServiceInfo> {
        let reached = match tokio::time::timeout(DEADLINE, self.status.wait_for(check)).await {
            Ok(Ok(services)) => Some(services.clone()),
            Ok(Err(_)) => panic!("{what}: the supervisor is gone"),
            Err(_) => None,
        };
        reached.unwrap_or_else(|| panic!("{what}: not reached; services are {:?}", *self.status.borrow()))
    }

    /// Waits for `name` to be starting with a process other than `previous`, and returns its pid.
    async fn wait_spawned(&mut self, name: &str, previous: Option<u32>) -> u32 {
        let services = self
            .wait_status(&format!("{name} spawned"), |services| {
                let service = find(services, name);
                service.state == "starting" && service.pid.is_some() && service.pid != previous
            })
            .await;
        find(&services, name).pid.unwrap()
    }

    /// Sends `READY=1` as the service would, and waits for it to be running.
    async fn make_ready(&mut self, name: &str) {
        let path = notify_dir(&self.paths).join(format!("{name}.sock"));
        std::os::unix::net::UnixDatagram::unbound()
            .unwrap()
            .send_to(b"READY=1\n", &path)
            .unwrap();
        self.wait_status(&format!("{name} running"), |services| {
            find(services, name).state == "running"
        })
        .await;
    }

    async fn wait_published(&mut self, count: usize) -> Vec<Value> {
        let reached =
            match tokio::time::timeout(DEADLINE, self.published.wait_for(|events| events.len() >= count)).await {
                Ok(Ok(events)) => Some(events.clone()),
                _ => None,
            };
        reached.unwrap_or_else(|| panic!("{count} events not published; got {:?}", *self.published.borrow()))
    }

    /// Reads the pid a service script wrote to the `grandchild` fifo (blocks until it writes).
    async fn grandchild(&self) -> u32 {
        let fifo = self.paths.state_dir.join("grandchild");
        let text = tokio::time::timeout(DEADLINE, tokio::fs::read_to_string(fifo))
            .await
            .unwrap()
            .unwrap();
        text.trim().parse().unwrap()
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        self.join().await;
    }

    async fn join(&mut self) {
        let run = self.run.take().unwrap();
        tokio::time::timeout(DEADLINE, run)
            .await
            .expect("the supervisor did not finish")
            .unwrap();
        self.tracker.close();
        tokio::time::timeout(DEADLINE, self.tracker.wait())
            .await
            .expect("helper tasks did not finish");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.servers.cancel();
    }
}

fn events_limit() -> usize {
    crate::events::QUEUE_LIMIT
}

fn find<'a>(services: &'a [ServiceInfo], name: &str) -> &'a ServiceInfo {
    services.iter().find(|service| service.name == name).unwrap()
}

/// Answers `system.health` (and records `events.publish`) on the service's socket.
async fn fake_service(
    paths: &Paths,
    name: &'static str,
    master: &Key,
    recorder: Arc<watch::Sender<Vec<Value>>>,
    stop: CancellationToken,
) {
    let listener = aiventbus_rpc::bind(&paths.socket(name)).await.unwrap();
    let mut methods = Methods::new(recorder);
    methods
        .add::<Health, _, _>(move |_, _, _: NoParams| async move {
            Ok(HealthResult {
                service: name.into(),
                status: "ok".into(),
                details: Default::default(),
            })
        })
        .add::<Publish, _, _>(|recorder, peer, params: PublishParams| {
            assert_eq!(peer.subject, "init");
            assert_eq!(params.topic, "system.service");
            assert_eq!(params.source.as_deref(), Some("system"));
            let mut seq = 0;
            recorder.send_modify(|events| {
                events.push(params.payload.clone().unwrap_or_default());
                seq = events.len() as u64;
            });
            std::future::ready(Ok(PublishResult {
                id: params.id.clone().unwrap_or_default(),
                seq,
                trace_id: "tr_test".into(),
                status: EventStatus::Published,
            }))
        });
    let verifier = Verifier::new(name, &master.audience_key(name));
    let options = ServeOptions::new(name, Auth::Token(verifier), &RpcConfig::default());
    tokio::spawn(aiventbus_rpc::serve(listener, Arc::new(methods), options, stop));
}

fn config(crash_loop_limit: u32, ready_timeout: Duration, grace: Duration) -> InitConfig {
    InitConfig {
        grace,
        ready_timeout,
        log_max: 1 << 20,
        crash_loop_limit,
        health_interval: Duration::from_secs(3600),
    }
}

fn event<'a>(events: &'a [Value], service: &str, state: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["service"] == service && event["state"] == state)
        .collect()
}

/// Waits for a process that is not our child (a grandchild, reparented to the test) to die.
async fn reap_grandchild(pid: u32) -> WaitStatus {
    let waited = tokio::task::spawn_blocking(move || waitpid(Pid::from_raw(pid as i32), None));
    tokio::time::timeout(DEADLINE, waited)
        .await
        .expect("grandchild still alive")
        .unwrap()
        .unwrap()
}

fn is_gone(pid: u32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), None) == Err(nix::errno::Errno::ESRCH)
}

static ORDERED: &[ServiceSpec] = &[
    ServiceSpec {
        name: "bus",
        binary: "bus.sh",
        calls: &[],
        secrets: false,
    },
    ServiceSpec {
        name: "worker",
        binary: "worker.sh",
        calls: &[("bus", &["system.health"])],
        secrets: false,
    },
];

const WORKER: &str = r#"echo "worker says hello" >&2
sleep 600 &
echo $! > "$AIVENTBUS_STATE_DIR/grandchild"
exec sleep 600"#;

#[tokio::test(flavor = "current_thread")]
async fn starts_in_order_restarts_a_crash_and_stops_everything() {
    let mut harness = Harness::start(
        ORDERED,
        config(5, Duration::from_secs(30), Duration::from_secs(30)),
        &[("bus.sh", "exec sleep 600"), ("worker.sh", WORKER)],
    )
    .await;

    // The worker is not started before the bus is ready.
    let bus_pid = harness.wait_spawned("bus", None).await;
    assert_eq!(find(&harness.status.borrow(), "worker").pid, None);
    harness.make_ready("bus").await;
    let worker_pid = harness.wait_spawned("worker", None).await;
    let first_grandchild = harness.grandchild().await;
    harness.make_ready("worker").await;

    let events = harness.wait_published(2).await;
    assert_eq!(
        events[0],
        serde_json::json!({"service": "bus", "state": "started", "pid": bus_pid, "exit_code": null,
                           "signal": null, "restarts": 0, "reason": null})
    );
    assert_eq!(events[1]["service"], "worker");
    assert_eq!(events[1]["state"], "started");

    // A crash is noticed, everything in its group goes with it, and it comes back.
    nix::sys::signal::kill(Pid::from_raw(worker_pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let restarted_pid = harness.wait_spawned("worker", Some(worker_pid)).await;
    assert!(is_gone(worker_pid));
    // The crashed worker was reaped, so its orphan now belongs to us: it was killed with the group.
    assert_eq!(
        reap_grandchild(first_grandchild).await,
        WaitStatus::Signaled(
            Pid::from_raw(first_grandchild as i32),
            nix::sys::signal::Signal::SIGKILL,
            false
        )
    );
    let second_grandchild = harness.grandchild().await;
    harness.make_ready("worker").await;
    let services = harness.status.borrow().clone();
    assert_eq!(find(&services, "worker").restarts, 1);
    assert_eq!(find(&services, "init").state, "running");

    let events = harness.wait_published(4).await;
    let exited = event(&events, "worker", "exited");
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0]["pid"], worker_pid);
    assert_eq!(exited[0]["signal"], "SIGKILL");
    assert_eq!(exited[0]["reason"], "killed by SIGKILL");
    let restarted = event(&events, "worker", "restarted");
    assert_eq!(restarted[0]["pid"], restarted_pid);
    assert_eq!(restarted[0]["restarts"], 1);

    // Stop: reverse order, each reaped, the worker's "stopped" delivered before the bus goes.
    harness.stop().await;
    let services = harness.status.borrow().clone();
    for name in ["bus", "worker"] {
        assert_eq!(find(&services, name).state, "stopped");
        assert_eq!(find(&services, name).pid, None);
    }
    assert!(is_gone(bus_pid) && is_gone(restarted_pid));
    assert!(matches!(
        reap_grandchild(second_grandchild).await,
        WaitStatus::Signaled(_, _, _)
    ));
    let events = harness.published.borrow().clone();
    let stopped = event(&events, "worker", "stopped");
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["reason"], "shutdown");
    assert_eq!(stopped[0]["signal"], "SIGTERM");

    let log = std::fs::read_to_string(harness.paths.log_file("worker")).unwrap();
    assert_eq!(log.matches("worker says hello").count(), 2, "{log}");
}

static FLAKY: &[ServiceSpec] = &[
    ServiceSpec {
        name: "bus",
        binary: "bus.sh",
        calls: &[],
        secrets: false,
    },
    ServiceSpec {
        name: "flaky",
        binary: "flaky.sh",
        calls: &[],
        secrets: false,
    },
];

#[tokio::test(flavor = "current_thread")]
async fn a_crash_loop_ends_in_failed() {
    let mut harness = Harness::start(
        FLAKY,
        config(3, Duration::from_secs(30), Duration::from_secs(30)),
        &[("bus.sh", "exec sleep 600"), ("flaky.sh", "exit 3")],
    )
    .await;
    harness.wait_spawned("bus", None).await;
    harness.make_ready("bus").await;
    let services = harness
        .wait_status("flaky failed", |services| find(services, "flaky").state == "failed")
        .await;
    assert_eq!(find(&services, "flaky").restarts, 2);
    assert_eq!(find(&services, "flaky").pid, None);

    let events = harness.wait_published(5).await;
    let exited = event(&events, "flaky", "exited");
    assert_eq!(exited.len(), 3);
    assert!(
        exited
            .iter()
            .all(|event| event["exit_code"] == 3 && event["reason"] == "exited with code 3")
    );
    let failed = event(&events, "flaky", "failed");
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("crash loop: 3 crashes"),
        "{}",
        failed[0]
    );

    harness.stop().await;
    assert_eq!(find(&harness.status.borrow(), "flaky").state, "failed");
}

static STUBBORN: &[ServiceSpec] = &[
    ServiceSpec {
        name: "bus",
        binary: "stubborn.sh",
        calls: &[],
        secrets: false,
    },
    ServiceSpec {
        name: "silent",
        binary: "silent.sh",
        calls: &[],
        secrets: false,
    },
];

#[tokio::test(flavor = "current_thread")]
async fn unready_services_are_killed_and_a_second_signal_kills_the_rest() {
    let mut harness = Harness::start(
        STUBBORN,
        config(2, Duration::from_millis(200), Duration::from_secs(3600)),
        &[
            ("stubborn.sh", "trap '' TERM\nexec sleep 600"),
            ("silent.sh", "exec sleep 600"),
        ],
    )
    .await;
    let bus_pid = harness.wait_spawned("bus", None).await;
    harness.make_ready("bus").await;
    harness
        .wait_status("silent failed", |services| find(services, "silent").state == "failed")
        .await;
    let events = harness.wait_published(4).await;
    let exited = event(&events, "silent", "exited");
    assert_eq!(exited.len(), 2);
    for exit in exited {
        assert_eq!(exit["signal"], "SIGKILL");
        assert!(
            exit["reason"].as_str().unwrap().starts_with("not ready: no READY=1"),
            "{exit}"
        );
    }

    // The bus ignores SIGTERM and the grace is an hour: only the second signal ends it.
    harness.shutdown.cancel();
    harness
        .wait_status("bus stopping", |services| find(services, "bus").state == "stopping")
        .await;
    assert!(!is_gone(bus_pid));
    harness.force.cancel();
    harness.join().await;
    assert!(is_gone(bus_pid));
    assert_eq!(find(&harness.status.borrow(), "bus").state, "stopped");
    // The bus's own "stopped" could not be published; it is the newest queued event.
    let mut last = None;
    while let Some(front) = harness.events.front() {
        harness.events.remove_front(front.id.as_deref());
        last = front.payload;
    }
    let last = last.unwrap();
    assert_eq!(
        (last["service"].as_str(), last["state"].as_str()),
        (Some("bus"), Some("stopped"))
    );
    assert_eq!(last["signal"], "SIGKILL");
}

static GHOST: &[ServiceSpec] = &[
    ServiceSpec {
        name: "bus",
        binary: "bus.sh",
        calls: &[],
        secrets: false,
    },
    ServiceSpec {
        name: "ghost",
        binary: "vanished",
        calls: &[],
        secrets: false,
    },
];

#[tokio::test(flavor = "current_thread")]
async fn a_binary_that_cannot_be_spawned_counts_as_a_crash() {
    let mut harness = Harness::start(
        GHOST,
        config(1, Duration::from_secs(30), Duration::from_secs(30)),
        &[("bus.sh", "exec sleep 600")],
    )
    .await;
    harness.wait_spawned("bus", None).await;
    harness.make_ready("bus").await;
    harness
        .wait_status("ghost failed", |services| find(services, "ghost").state == "failed")
        .await;
    let events = harness.wait_published(3).await;
    let exited = event(&events, "ghost", "exited");
    assert_eq!(exited[0]["pid"], Value::Null);
    let reason = exited[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("cannot start: spawning") && reason.contains("vanished"),
        "{reason}"
    );
    assert_eq!(event(&events, "ghost", "failed").len(), 1);
    harness.stop().await;
}
