//! Desktop notifications: `org.freedesktop.Notifications.Notify` on the session bus, else the
//! `notify-send` program, else nothing (`{delivered: false, via: "none"}`) — a machine without a
//! desktop is not an error.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aiventbus_proto::exec::NotifyResult;

/// How long one attempt (connecting and calling, or running `notify-send`) may take.
const ATTEMPT: Duration = Duration::from_secs(3);

/// How urgent a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Low.
    Low,
    /// Normal.
    Normal,
    /// Critical (alerts).
    Critical,
}

impl Urgency {
    /// Parses `low|normal|critical`.
    pub fn parse(text: &str) -> Option<Urgency> {
        match text {
            "low" => Some(Urgency::Low),
            "normal" => Some(Urgency::Normal),
            "critical" => Some(Urgency::Critical),
            _ => None,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Urgency::Low => 0,
            Urgency::Normal => 1,
            Urgency::Critical => 2,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::Critical => "critical",
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// The session bus address (`unix:path=…`), if there is one.
    pub session_bus: Option<String>,
    /// The `notify-send` program, if installed.
    pub notify_send: Option<PathBuf>,
}

impl Notifier {
    /// From exec's environment: `DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus` when that
    /// socket exists; `notify-send` looked up on `PATH`.
    pub fn from_env() -> Notifier {
        let session_bus = std::env::var("DBUS_SESSION_BUS_ADDRESS")
            .ok()
            .filter(|address| !address.is_empty())
            .or_else(|| {
                let runtime = std::env::var_os("XDG_RUNTIME_DIR")?;
                let socket = Path::new(&runtime).join("bus");
                socket.exists().then(|| format!("unix:path={}", socket.display()))
            });
        Notifier {
            session_bus,
            notify_send: find_program("notify-send", std::env::var_os("PATH").as_deref()),
        }
    }

    /// Shows a notification the best way available.
    pub async fn notify(&self, title: &str, message: &str, urgency: Urgency) -> NotifyResult {
        if let Some(address) = &self.session_bus {
            match tokio::time::timeout(ATTEMPT, dbus_notify(address, title, message, urgency)).await {
                Ok(Ok(())) => return delivered("dbus"),
                Ok(Err(error)) => tracing::debug!(%error, "no notification through the session bus"),
                Err(_) => tracing::debug!("the session bus did not answer in time"),
            }
        }
        if let Some(program) = &self.notify_send {
            match tokio::time::timeout(ATTEMPT, notify_send(program, title, message, urgency)).await {
                Ok(Ok(())) => return delivered("notify-send"),
                Ok(Err(error)) => tracing::debug!(%error, "notify-send failed"),
                Err(_) => tracing::debug!("notify-send did not finish in time"),
            }
        }
        NotifyResult {
            delivered: false,
            via: "none".into(),
        }
    }
}

fn delivered(via: &str) -> NotifyResult {
    NotifyResult {
        delivered: true,
        via: via.into(),
    }
}

async fn dbus_notify(address: &str, title: &str, message: &str, urgency: Urgency) -> zbus::Result<()> {
    let connection = zbus::connection::Builder::address(address).build().await?;
    let mut hints: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    hints.insert("urgency", zbus::Variant::from(urgency.byte()));
    let actions: Vec<&str> = Vec::new();
    connection
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "Notify",
            &("aiventbus", 0u32, "", title, message, actions, hints, -1i32),
        )
        .await?;
    Ok(())
}

async fn notify_send(program: &Path, title: &str, message: &str, urgency: Urgency) -> std::io::Result<()> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--app-name=aiventbus")
        .arg(format!("--urgency={}", urgency.word()))
        .arg("--")
        .arg(title)
        .arg(message)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let status = spawn_helper(&mut command).await?.wait().await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("notify-send {status}")))
    }
}

/// Starts a helper program (`notify-send`, `xdg-open`). A program file that was just written —
/// replaced by an upgrade, or created while another thread forked — can be briefly "busy"
/// (ETXTBSY) until the forked child execs; that passes within milliseconds, so it is retried.
pub async fn spawn_helper(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut attempts = 0;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(nix::libc::ETXTBSY) && attempts < 10 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// The first executable `name` in the directories of `path`.
pub fn find_program(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_available_is_not_an_error() {
        let result = Notifier::default().notify("t", "m", Urgency::Normal).await;
        assert_eq!((result.delivered, result.via.as_str()), (false, "none"));
    }

    struct FakeNotifications {
        seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u8)>>>,
    }

    #[zbus::interface(name = "org.freedesktop.Notifications")]
    impl FakeNotifications {
        #[allow(clippy::too_many_arguments)]
        fn notify(
            &self,
            _app_name: String,
            _replaces_id: u32,
            _app_icon: String,
            summary: String,
            body: String,
            _actions: Vec<String>,
            hints: HashMap<String, zbus::OwnedVariant>,
            _expire_timeout: i32,
        ) -> u32 {
            let urgency = hints
                .get("urgency")
                .and_then(|value| u8::try_from(value.clone()).ok())
                .unwrap_or(99);
            self.seen.lock().unwrap().push((summary, body, urgency));
            7
        }
    }

    #[tokio::test]
    async fn notifications_go_to_the_session_bus_first() {
        use tokio::io::AsyncBufReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let daemon = tokio::process::Command::new("dbus-daemon")
            .arg("--session")
            .arg("--nofork")
            .arg("--print-address=1")
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let Ok(mut daemon) = daemon else {
            eprintln!("SKIPPED notifications_go_to_the_session_bus_first: dbus-daemon is not installed");
            return;
        };
        let mut lines = tokio::io::BufReader::new(daemon.stdout.take().unwrap()).lines();
        let address = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("dbus-daemon prints its address");
        let seen = std::sync::Arc::default();
        let _server = zbus::connection::Builder::address(address.as_str())
            .name("org.freedesktop.Notifications")
            .serve_at(
                "/org/freedesktop/Notifications",
                FakeNotifications {
                    seen: std::sync::Arc::clone(&seen),
                },
            )
            .build()
            .await
            .unwrap();
        let notifier = Notifier {
            session_bus: Some(address),
            notify_send: Some(PathBuf::from("/no/such/notify-send")),
        };
        let result = notifier
            .notify("Approval needed", "agent wants to run ls", Urgency::Critical)
            .await;
        assert_eq!((result.delivered, result.via.as_str()), (true, "dbus"));
        assert_eq!(
            *seen.lock().unwrap(),
            [("Approval needed".to_owned(), "agent wants to run ls".to_owned(), 2)]
        );
        daemon.kill().await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_session_bus_falls_back_to_notify_send() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("args");
        let program = dir.path().join("notify-send");
        std::fs::write(
            &program,
            format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let notifier = Notifier {
            session_bus: Some(format!("unix:path={}", dir.path().join("no-bus").display())),
            notify_send: find_program("notify-send", Some(dir.path().as_os_str())),
        };
        let result = notifier.notify("Title", "Body text", Urgency::Critical).await;
        assert_eq!((result.delivered, result.via.as_str()), (true, "notify-send"));
        let args = std::fs::read_to_string(&log).unwrap();
        assert_eq!(args, "--app-name=aiventbus\n--urgency=critical\n--\nTitle\nBody text\n");
    }
}
