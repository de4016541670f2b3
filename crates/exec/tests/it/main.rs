//! exec in-process on temp dirs, against a fake bus on a real socket, called over `exec.sock` the
//! way policy calls it: tokens, at-most-once, process runs and their events, files, HTTP, tools,
//! notifications and restarts.

mod actions;
mod auth;
mod fake;
mod files;
mod http;
mod process;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use aiventbus_exec::notify::Notifier;
use aiventbus_exec::shell::BaseEnv;
use aiventbus_exec::{Options, Running};
use aiventbus_proto::exec::{ActionRef, ExecExecute, ExecOutcome, ExecuteParams, ExecuteResult, Outcome};
use aiventbus_proto::methods::{Health, NoParams};
use aiventbus_rpc::config::{ExecConfig, PolicyConfig, RpcConfig};
use aiventbus_rpc::token::{Key, Minter, Verifier, attenuate};
use aiventbus_rpc::{Client, ClientError, Endpoint, TokenSource};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::fake::FakeBus;

/// How long anything in these tests may take before it counts as broken.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// What differs between harnesses.
#[derive(Default)]
pub struct Setup {
    /// `[exec]`.
    pub exec: ExecConfig,
    /// `policy.private_allow`.
    pub private_allow: Vec<String>,
    /// Where notifications go (none by default: no DBus, no notify-send).
    pub notifier: Notifier,
    /// `xdg-open`.
    pub xdg_open: Option<PathBuf>,
    /// Names answered without DNS.
    pub fixed_hosts: HashMap<String, Vec<IpAddr>>,
}

/// exec and its fake bus in a temp dir.
pub struct Harness {
    /// The temp dir.
    pub dir: tempfile::TempDir,
    /// The home directory policy's checks use.
    pub home: PathBuf,
    /// The one file root (`~/root`).
    pub root: PathBuf,
    /// The fake bus.
    pub bus: FakeBus,
    /// exec's audience key (init would derive it from the master key).
    pub key: Key,
    /// A connection as policy.
    pub client: Client,
    exec: Option<(CancellationToken, Running)>,
    setup: Setup,
}

impl Harness {
    /// Starts the fake bus and exec.
    pub async fn start(setup: Setup) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        let root = home.join("root");
        std::fs::create_dir_all(&root).expect("file root");
        let bus = FakeBus::start(dir.path().join("bus.sock")).await;
        let key = Key::generate().expect("key");
        let token = Minter::new("exec", &key).mint(
            "policy",
            &["exec.*", "tools.list", "system.health"],
            aiventbus_rpc::time::now_ms() + 3_600_000,
        );
        let client = Client::new(Endpoint {
            path: dir.path().join("exec.sock"),
            token: TokenSource::Static(token),
        });
        let mut harness = Harness {
            dir,
            home,
            root,
            bus,
            key,
            client,
            exec: None,
            setup,
        };
        harness.start_exec().await;
        harness
    }

    /// The default setup.
    pub async fn new() -> Harness {
        Harness::start(Setup::default()).await
    }

    /// exec's database file.
    pub fn database(&self) -> PathBuf {
        self.dir.path().join("exec.db")
    }

    /// Starts exec (again) on the harness's files.
    pub async fn start_exec(&mut self) {
        let policy = PolicyConfig {
            file_roots: vec!["~/root".into()],
            private_allow: self.setup.private_allow.clone(),
            ..PolicyConfig::default()
        };
        let guard = aiventbus_exec::guard_settings(&policy, &self.home, &[self.dir.path().join("state")])
            .expect("guard settings");
        let options = Options {
            database: self.database(),
            socket: self.dir.path().join("exec.sock"),
            verifier: Verifier::new("exec", &self.key),
            rpc: RpcConfig::default(),
            exec: self.setup.exec.clone(),
            guard,
            bus: self.bus.endpoint(),
            base_env: BaseEnv::from_process(),
            notifier: self.setup.notifier.clone(),
            xdg_open: self.setup.xdg_open.clone(),
            fixed_hosts: self.setup.fixed_hosts.clone(),
        };
        let stop = CancellationToken::new();
        let running = tokio::time::timeout(DEADLINE, aiventbus_exec::start(options, stop.clone()))
            .await
            .expect("exec start timed out")
            .expect("exec start");
        self.exec = Some((stop, running));
        // The client may still hold its connection to an exec that stopped: a call written on it
        // fails as disconnected. Wait until one goes through the new exec.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while let Err(error) = self.client.call::<Health>(&NoParams {}).await {
            assert!(tokio::time::Instant::now() < deadline, "exec does not answer: {error}");
        }
    }

    /// Stops exec and waits for it.
    pub async fn stop_exec(&mut self) {
        let (stop, running) = self.exec.take().expect("exec running");
        stop.cancel();
        tokio::time::timeout(DEADLINE, running.stopped())
            .await
            .expect("exec stop timed out");
    }

    /// Stops and starts exec on the same files.
    pub async fn restart_exec(&mut self) {
        self.stop_exec().await;
        self.start_exec().await;
    }

    /// A minter for exec tokens (as init holds).
    pub fn minter(&self) -> Minter {
        Minter::new("exec", &self.key)
    }

    /// Policy's exec token attenuated as policy does per decision: this action, two minutes.
    pub fn action_token(&self, action_id: &str) -> String {
        let now = aiventbus_rpc::time::now_ms();
        let token = self
            .minter()
            .mint("policy", &["exec.execute", "exec.outcome"], now + 3_600_000);
        let bound = attenuate(&token, &format!("action={action_id}")).expect("attenuate");
        attenuate(&bound, &format!("exp={}", now + 120_000)).expect("attenuate")
    }

    /// Params of a fresh action with a correct token.
    pub fn params(&self, action_type: &str, params: Value) -> ExecuteParams {
        let action_id = aiventbus_rpc::ids::prefixed("act");
        ExecuteParams {
            token: self.action_token(&action_id),
            action_id,
            action_type: action_type.into(),
            params: object(params),
            trace_id: Some(aiventbus_rpc::ids::prefixed("tr")),
            parent_event: Some(aiventbus_rpc::ids::prefixed("evt")),
            agent_id: Some("agt_test".into()),
            owner: false,
            detach: false,
        }
    }

    /// Calls `exec.execute`.
    pub async fn try_execute(&self, params: &ExecuteParams) -> Result<ExecuteResult, ClientError> {
        self.client.call::<ExecExecute>(params).await
    }

    /// Executes a fresh action, which must be answered.
    pub async fn execute(&self, action_type: &str, params: Value) -> (ExecuteParams, ExecuteResult) {
        let params = self.params(action_type, params);
        let result = self.try_execute(&params).await.expect("exec.execute");
        (params, result)
    }

    /// `exec.outcome`.
    pub async fn outcome(&self, action_id: &str) -> Result<Outcome, ClientError> {
        self.client
            .call::<ExecOutcome>(&ActionRef {
                action_id: action_id.into(),
            })
            .await
    }

    /// Waits until an action's outcome is final.
    pub async fn final_outcome(&self, action_id: &str) -> Outcome {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let outcome = self.outcome(action_id).await.expect("exec.outcome");
            if outcome.status != "executing" {
                return outcome;
            }
            assert!(tokio::time::Instant::now() < deadline, "{action_id} still executing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A JSON object.
pub fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// The JSON-RPC code of a failed call.
pub fn code(error: &ClientError) -> i32 {
    error.rpc().map_or(0, |rpc| rpc.code)
}

/// The error message of a failed action.
pub fn message(result: &ExecuteResult) -> String {
    assert!(!result.ok, "expected a failure: {:?}", result.result);
    result.result["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {}", result.result))
        .to_owned()
}

/// Waits until a condition over the system holds (a process is gone, a file appears).
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
