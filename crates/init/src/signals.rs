//! init's own signal handling: the first SIGTERM or SIGINT begins the orderly stop; a second one
//! during the stop turns it into SIGKILL for every remaining service (init still reaps them and
//! cleans up before it exits, unlike a service's forced exit).

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Installs the handlers: signals cancel `shutdown`, then `force`. Listens until `done`.
pub fn listen(shutdown: CancellationToken, force: CancellationToken, done: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = done.cancelled() => return,
                _ = term.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            if shutdown.is_cancelled() {
                tracing::warn!(signal = name, "second signal: killing every service now");
                force.cancel();
            } else {
                tracing::info!(signal = name, "shutting down");
                shutdown.cancel();
            }
        }
    });
    Ok(())
}
