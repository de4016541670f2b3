//! Readiness without polling: each service gets a datagram socket `<runtime>/notify/<name>.sock`
//! as `NOTIFY_SOCKET` and sends `READY=1` once it answers (the sd_notify protocol, so the same
//! binaries report readiness to systemd). init waits for that datagram, then confirms it with a
//! real `system.health` call on the service's socket.

use std::io;
use std::path::Path;
use std::time::Duration;

use aiventbus_proto::Method;
use aiventbus_proto::methods::{Health, HealthResult};
use aiventbus_rpc::{Client, Endpoint};
use tokio::net::UnixDatagram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest notification read; sd_notify messages are a few short lines.
const DATAGRAM_MAX: usize = 4096;
/// The health call that confirms readiness gets at least this long, even at the deadline.
const MIN_CONFIRM: Duration = Duration::from_secs(1);

/// Binds a service's notification socket (mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> io::Result<UnixDatagram> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let socket = UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(socket)
}

/// Whether an sd_notify message says `READY=1`.
fn says_ready(message: &str) -> bool {
    message.lines().any(|line| line.trim() == "READY=1")
}

/// Waits up to `timeout` for `READY=1` on `socket`, then calls `system.health` through `endpoint`.
/// Returns the connected client (kept for health checks) or why the service is not ready.
pub async fn wait_ready(
    service: &'static str,
    socket: &UnixDatagram,
    endpoint: Endpoint,
    timeout: Duration,
) -> Result<Client, String> {
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; DATAGRAM_MAX];
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer))
            .await
            .map_err(|_| format!("no READY=1 within {timeout:?}"))?
            .map_err(|error| format!("reading the notification socket: {error}"))?;
        let message = String::from_utf8_lossy(&buffer[..received]);
        tracing::debug!(service, message = %message.trim(), "notification");
        if says_ready(&message) {
            break;
        }
    }
    let client = Client::new(endpoint);
    let remaining = deadline.saturating_duration_since(Instant::now()).max(MIN_CONFIRM);
    health(&client, remaining)
        .await
        .map_err(|error| format!("sent READY=1 but system.health failed: {error}"))?;
    Ok(client)
}

/// One `system.health` call with a deadline.
pub async fn health(client: &Client, timeout: Duration) -> Result<HealthResult, String> {
    let raw = client
        .call_raw_with_timeout(Health::NAME, None, timeout)
        .await
        .map_err(|error| error.to_string())?;
    serde_json::from_str(raw.get()).map_err(|error| format!("unreadable system.health result: {error}"))
}

/// Reads and logs later notifications (`STOPPING=1`, `STATUS=…`) until `stop`, so a service never
/// finds the socket gone or full.
pub async fn drain(service: &'static str, socket: &UnixDatagram, stop: &CancellationToken) {
    let mut buffer = [0u8; DATAGRAM_MAX];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv(&mut buffer) => match received {
                Ok(n) => tracing::debug!(service, message = %String::from_utf8_lossy(&buffer[..n]).trim(), "notification"),
                Err(error) => {
                    tracing::warn!(service, %error, "notification socket failed");
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use aiventbus_proto::methods::NoParams;
    use aiventbus_rpc::config::RpcConfig;
    use aiventbus_rpc::token::{Key, Minter, Verifier};
    use aiventbus_rpc::{Auth, Methods, ServeOptions, TokenSource};

    #[test]
    fn recognises_ready_among_other_lines() {
        assert!(says_ready("READY=1\n"));
        assert!(says_ready("STATUS=up\nREADY=1"));
        assert!(!says_ready("STOPPING=1\n"));
        assert!(!says_ready("READY=10"));
    }

    /// A service on `<dir>/svc.sock` answering `system.health`, and a token init would present.
    async fn fake_service(dir: &Path, stop: CancellationToken) -> Endpoint {
        let master = Key::generate().unwrap();
        let key = master.audience_key("svc");
        let listener = aiventbus_rpc::bind(&dir.join("svc.sock")).await.unwrap();
        let mut methods = Methods::new(Arc::new(()));
        methods.add::<Health, _, _>(|_, _, _: NoParams| async {
            Ok(HealthResult {
                service: "svc".into(),
                status: "ok".into(),
                details: Default::default(),
            })
        });
        let options = ServeOptions::new("svc", Auth::Token(Verifier::new("svc", &key)), &RpcConfig::default());
        tokio::spawn(aiventbus_rpc::serve(listener, Arc::new(methods), options, stop));
        let token = Minter::new("svc", &key).mint("init", &["system.health"], aiventbus_rpc::time::now_ms() + 60_000);
        Endpoint {
            path: dir.join("svc.sock"),
            token: TokenSource::Static(token),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ready_once_notified_and_healthy() {
        let tmp = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let endpoint = fake_service(tmp.path(), stop.clone()).await;
        let path = tmp.path().join("svc.notify");
        let socket = bind(&path).unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender.send_to(b"STATUS=warming up\n", &path).unwrap();
        sender.send_to(b"READY=1\n", &path).unwrap();
        let client = wait_ready("svc", &socket, endpoint, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(health(&client, Duration::from_secs(10)).await.unwrap().service, "svc");
        stop.cancel();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn not_ready_without_the_datagram() {
        let tmp = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let endpoint = fake_service(tmp.path(), stop.clone()).await;
        let socket = bind(&tmp.path().join("svc.notify")).unwrap();
        let Err(error) = wait_ready("svc", &socket, endpoint, Duration::from_millis(50)).await else {
            panic!("ready without READY=1 and a health answer");
        };
        assert!(error.contains("READY=1"), "{error}");
        stop.cancel();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ready_without_a_socket_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("svc.notify");
        let socket = bind(&path).unwrap();
        std::os::unix::net::UnixDatagram::unbound()
            .unwrap()
            .send_to(b"READY=1", &path)
            .unwrap();
        let endpoint = Endpoint {
            path: tmp.path().join("missing.sock"),
            token: TokenSource::Static("v1.x.y".into()),
        };
        let Err(error) = wait_ready("svc", &socket, endpoint, Duration::from_millis(50)).await else {
            panic!("ready without READY=1 and a health answer");
        };
        assert!(error.contains("system.health failed"), "{error}");
    }
}
