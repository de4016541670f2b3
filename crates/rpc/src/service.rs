//! The common skeleton of a service binary: logging, paths, config (exit 64 on a bad file),
//! credentials, the tokio runtime and the shutdown signal, then the service's own `run`.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, EXIT_CONFIG};
use crate::creds::Credentials;
use crate::paths::Paths;

/// Everything a service's `run` starts from.
pub struct Context {
    /// Short name: `bus`, `gateway`, …
    pub name: &'static str,
    /// Resolved directories.
    pub paths: Paths,
    /// The validated config file.
    pub config: Config,
    /// This service's credentials directory.
    pub creds: Credentials,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
}

impl Context {
    /// The endpoint of another service, authenticated with the token init gave us for it.
    pub fn endpoint(&self, service: &str) -> crate::client::Endpoint {
        crate::client::Endpoint::internal(self.paths.socket(service), self.creds.token_path(service))
    }
}

/// Runs a service binary to completion and exits the process with its status.
pub fn main<F, Fut>(name: &'static str, run: F) -> !
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::init(name);
    let paths = Paths::from_env();
    let config = match Config::load(&paths.config_file) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("aiventbus-{name}: {errors}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let creds = Credentials::locate(&paths, name);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name(format!("aiventbus-{name}"))
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aiventbus-{name}: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = crate::shutdown::shutdown_signal()?;
        run(Context {
            name,
            paths,
            config,
            creds,
            shutdown,
        })
        .await
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            tracing::error!(service = name, error = format!("{error:#}"), "exiting");
            eprintln!("aiventbus-{name}: {error:#}");
            std::process::exit(1);
        }
    }
}
