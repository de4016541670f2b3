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
    let status = tokio::process::Command::new(program)
        .arg("--app-name=aiventbus")
        .arg(format!("--urgency={}", urgency.word()))
        .arg("--")
        .arg(title)
        .arg(message)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("notify-send {status}")))
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
