//! Tracing setup shared by every binary: `AIVENTBUS_LOG` (EnvFilter syntax) and
//! `AIVENTBUS_LOG_FORMAT=json|plain`, to stderr, where journald or init's log files pick it up.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber for `service`. Safe to call once per process.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_env("AIVENTBUS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AIVENTBUS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "logging initialised");
    }
}
