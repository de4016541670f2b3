//! Test helpers: start a whole daemon (the real `aiventbus-init` and its services) in temporary
//! directories, talk to it, break it, and wait for things to happen with a deadline — never a
//! fixed sleep.

pub mod model;

use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aiventbus_client::{Client, StreamItem};
use aiventbus_proto::Event;
use aiventbus_proto::auth::{KeyCreateParams, KeyCreated, KeysCreate, Role};
use aiventbus_rpc::paths::Paths;
use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// Binaries the daemon needs.
pub const BINARIES: [&str; 6] = [
    "aiventbus-init",
    "aiventbus-bus",
    "aiventbus-llm",
    "aiventbus-router",
    "aiventbus-gateway",
    "aibus",
];

/// The directory holding the workspace's built binaries (`target/debug` for tests).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIVENTBUS_LIBEXEC_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of one built binary; panics with instructions when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, or scripts/test)",
        path.display()
    );
    path
}

/// A running daemon in its own temporary directories. Stopped (and every process killed) on drop.
pub struct Daemon {
    /// The daemon's paths.
    pub paths: Paths,
    root: tempfile::TempDir,
    init: Option<Child>,
}

impl Daemon {
    /// Starts a daemon with the default config and waits until every service is ready.
    pub fn start() -> anyhow::Result<Daemon> {
        Daemon::start_with_config("")
    }

    /// Starts a daemon with `config` as its config file. Unless the config says otherwise, its
    /// gateway listens on `127.0.0.1:0` (a free port; see [`Daemon::http_base`]), so daemons run
    /// side by side.
    pub fn start_with_config(config: &str) -> anyhow::Result<Daemon> {
        let root = tempfile::Builder::new().prefix("aiventbus-test-").tempdir()?;
        let paths = Paths {
            runtime_dir: root.path().join("run"),
            state_dir: root.path().join("state"),
            config_file: root.path().join("config.toml"),
        };
        std::fs::write(&paths.config_file, with_free_port(config)?)?;
        let mut daemon = Daemon {
            paths,
            root,
            init: None,
        };
        daemon.launch()?;
        Ok(daemon)
    }

    /// The temporary root holding the runtime dir, state dir and config.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Environment that points a process (init, `aibus`) at this daemon.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("AIVENTBUS_RUNTIME_DIR", self.paths.runtime_dir.clone()),
            ("AIVENTBUS_STATE_DIR", self.paths.state_dir.clone()),
            ("AIVENTBUS_CONFIG", self.paths.config_file.clone()),
            ("AIVENTBUS_LIBEXEC_DIR", bin_dir()),
        ]
    }

    /// Starts init (again) and waits for its readiness notification.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let notify_path = self.root.path().join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = StdDatagram::bind(&notify_path)?;
        let timeout = Duration::from_secs(60);
        notify.set_read_timeout(Some(timeout))?;
        let log = std::fs::File::create(self.root.path().join("init.out"))?;
        let mut command = Command::new(binary("aiventbus-init"));
        command
            .envs(self.env())
            .env("NOTIFY_SOCKET", &notify_path)
            .env("AIVENTBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().context("starting aiventbus-init")?;
        self.init = Some(child);
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            if let Some(status) = self.init.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "aiventbus-init exited with {status} during start-up:\n{}",
                    self.init_output()
                );
            }
            match notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => return Ok(()),
                Ok(_) => continue,
                Err(e) if Instant::now() < deadline && e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("aiventbus-init did not become ready: {e}\n{}", self.init_output()),
            }
        }
    }

    /// What init and its services printed to init's stdout/stderr.
    pub fn init_output(&self) -> String {
        std::fs::read_to_string(self.root.path().join("init.out")).unwrap_or_default()
    }

    /// init's pid.
    pub fn init_pid(&self) -> Option<u32> {
        self.init.as_ref().map(Child::id)
    }

    /// A client on the public socket.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.paths.api_socket()).await?)
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` with `gateway.tls_cert` set): the
    /// gateway's TCP address, read from the `gateway.addr` file it writes once bound. Read it
    /// again after the gateway restarts.
    pub fn http_base(&self) -> String {
        let addr = std::fs::read_to_string(self.paths.runtime_dir.join("gateway.addr")).unwrap_or_default();
        let addr = addr.trim();
        assert!(
            !addr.is_empty(),
            "the gateway has not written gateway.addr\n{}",
            self.init_output()
        );
        let config = std::fs::read_to_string(&self.paths.config_file).unwrap_or_default();
        let tls = config
            .parse::<toml::Table>()
            .ok()
            .and_then(|table| table.get("gateway")?.get("tls_cert").cloned())
            .is_some();
        if tls {
            let port = addr.rsplit(':').next().unwrap_or_default();
            format!("https://localhost:{port}")
        } else {
            format!("http://{addr}")
        }
    }

    /// Creates an API key on api.sock (`keys.create`, which also creates the user): the
    /// `{identity, key, key_id, role}` answer. The key works as `Authorization: Bearer`.
    pub async fn create_api_key(&self, user: &str, role: Role) -> anyhow::Result<KeyCreated> {
        let client = self.client().await?;
        Ok(client
            .call::<KeysCreate>(&KeyCreateParams {
                user: user.to_owned(),
                role,
                label: None,
            })
            .await?)
    }

    /// Pid of a running service, from init's service table.
    pub async fn service_pid(&self, name: &str) -> anyhow::Result<u32> {
        let services = self.client().await?.services().await?;
        services
            .services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.pid)
            .with_context(|| format!("service {name} has no pid"))
    }

    /// Sends SIGTERM to init and waits (up to `timeout`) for it to exit; returns its exit code.
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.init.take() else {
            return Ok(None);
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("aiventbus-init did not stop within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `aibus` against this daemon.
    pub fn aibus(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("aibus"))
            .envs(self.env())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running aibus: {e}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.init.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `config` with `gateway.listen = "127.0.0.1:0"` added unless it sets one.
fn with_free_port(config: &str) -> anyhow::Result<String> {
    let mut table: toml::Table = config.parse().context("the test config is not valid TOML")?;
    let gateway = table
        .entry("gateway")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(gateway) = gateway.as_table_mut() else {
        bail!("the test config's gateway is not a table");
    };
    gateway
        .entry("listen")
        .or_insert_with(|| toml::Value::String("127.0.0.1:0".into()));
    Ok(table.to_string())
}

/// Whether a process exists.
pub fn process_alive(pid: u32) -> bool {
    // A zombie still "exists" to kill(0); treat it as gone by looking at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `check` returns `Some`, retrying every 20 ms, failing after `timeout`. For
/// conditions that have no notification to wait on (a process to appear in `/proc`).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribes to `pattern` from `from_seq` and returns the first event `matches` accepts.
pub async fn wait_for_event(
    client: &Client,
    pattern: &str,
    from_seq: Option<u64>,
    timeout: Duration,
    matches: impl Fn(&Event) -> bool,
) -> anyhow::Result<Event> {
    let mut stream = client.subscribe(vec![pattern.to_owned()], from_seq).await?;
    let found = tokio::time::timeout(timeout, async {
        while let Some(item) = stream.next().await {
            match item? {
                StreamItem::Event(event) if matches(&event) => return Ok(*event),
                StreamItem::Event(_) => continue,
                StreamItem::Ended(error) => bail!("subscription ended: {error}"),
            }
        }
        bail!("subscription connection closed")
    })
    .await;
    match found {
        Ok(result) => result,
        Err(_) => bail!("no event on {pattern} matched within {timeout:?}"),
    }
}
