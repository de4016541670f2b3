//! Readiness notification in the systemd `sd_notify` protocol: a service sends `READY=1` to
//! `$NOTIFY_SOCKET` once it answers on its socket. init provides the same socket to its children,
//! so the same binaries report readiness under either supervisor, with no polling.

use std::os::unix::net::UnixDatagram;

/// Environment variable naming the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `READY=1` if a supervisor asked for it; does nothing otherwise.
pub fn ready() {
    send("READY=1\n");
}

/// Sends `STOPPING=1`.
pub fn stopping() {
    send("STOPPING=1\n");
}

fn send(message: &str) {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message.as_bytes(), &addr)
        } else {
            socket.send_to(message.as_bytes(), &path)
        }
    });
    if let Err(error) = result {
        tracing::warn!(%error, "could not notify the supervisor");
    }
}
