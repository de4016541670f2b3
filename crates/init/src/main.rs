//! `aiventbus-init`: resolves paths, loads the config (exit 64 when it is invalid) and runs the
//! supervisor on a current-thread runtime until SIGTERM/SIGINT.

use std::process::ExitCode;

use aiventbus_rpc::config::{Config, EXIT_CONFIG};
use aiventbus_rpc::paths::Paths;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    aiventbus_rpc::telemetry::init("init");
    let paths = Paths::from_env();
    let config = match Config::load(&paths.config_file) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("aiventbus-init: {errors}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    // One thread: every child is spawned from it, and a child's parent-death signal fires when the
    // thread that forked it ends, which must be when init ends.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aiventbus-init: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(aiventbus_init::run(paths, config, CancellationToken::new())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aiventbus-init: {error:#}");
            ExitCode::FAILURE
        }
    }
}
