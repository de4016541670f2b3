//! Shutdown signalling: the first SIGTERM or SIGINT cancels the service's token so every loop
//! drains; a second one forces the process out at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code used when a second signal forces the exit.
pub const FORCED_EXIT: i32 = 130;

/// A token cancelled on the first SIGTERM/SIGINT. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(FORCED_EXIT);
    });
    Ok(token)
}
