//! What every handler and background task of the policy service shares, and the one place store
//! errors become wire errors.

use std::path::PathBuf;
use std::time::Duration;

use aiventbus_proto::{ErrorCode, Method};
use aiventbus_rpc::{Client, ClientError, RpcError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::{Db, StoreError};
use crate::hub::Waiters;
use crate::limiter::Limiter;
use crate::publisher::Publisher;
use crate::settings::Settings;

/// The service's shared state.
pub struct State {
    /// `policy.db`.
    pub db: Db,
    /// The decision rules.
    pub guard: aiventbus_guard::Settings,
    /// Tunables.
    pub settings: Settings,
    /// The bus (taint lookups; events go through [`State::events`]).
    pub bus: Client,
    /// exec, which carries out what is decided.
    pub exec: Client,
    /// The file holding policy's token for exec, attenuated per action.
    pub exec_token: PathBuf,
    /// Events to the bus.
    pub events: Publisher,
    /// Proposals per agent and action type.
    pub limiter: Limiter,
    /// Wakes the expiry timer when a new waiting action may expire sooner.
    pub expiry: Notify,
    /// Long polls waiting on sessions' inboxes.
    pub waiters: Waiters,
    /// Background work: approved actions running, notifications, reports.
    pub tasks: TaskTracker,
    /// Cancelled when the service stops.
    pub shutdown: CancellationToken,
}

/// The one place store errors become wire errors (internals are logged, not sent).
pub fn rpc_error(error: StoreError) -> RpcError {
    match error.code() {
        ErrorCode::Internal => RpcError::internal(error),
        code => RpcError::new(code, error.to_string()),
    }
}

/// Calls `M` on `client` with a deadline of its own (the client's default is 30 s).
pub async fn call<M: Method>(client: &Client, params: &M::Params, timeout: Duration) -> Result<M::Result, ClientError> {
    let raw = serde_json::value::to_raw_value(params).map_err(|error| ClientError::Protocol(error.to_string()))?;
    let reply = client.call_raw_with_timeout(M::NAME, Some(raw), timeout).await?;
    serde_json::from_str(reply.get()).map_err(|error| ClientError::Protocol(format!("{} result: {error}", M::NAME)))
}
