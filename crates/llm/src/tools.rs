//! The tools of the MCP servers exec runs, as agents' prompts list them: asked of exec
//! (`tools.list`) and cached for [`TTL`], so a run does not wait on exec for every prompt. When exec
//! cannot answer, the last list is used (or none).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aiventbus_proto::exec::{ToolInfo, ToolsList};
use aiventbus_proto::methods::NoParams;
use aiventbus_rpc::Client;

/// How long a fetched list is used.
pub const TTL: Duration = Duration::from_secs(30);
/// How long a run waits for exec's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The cached tool list.
pub struct Tools {
    exec: Client,
    cached: Mutex<Option<(Instant, Vec<ToolInfo>)>>,
}

impl Tools {
    /// Over a client of `exec.sock`.
    pub fn new(exec: Client) -> Tools {
        Tools {
            exec,
            cached: Mutex::new(None),
        }
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Vec<ToolInfo>)>> {
        // Single assignments under the lock: a panic cannot leave it half-written.
        self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tools, fresh within [`TTL`].
    pub async fn list(&self) -> Vec<ToolInfo> {
        if let Some((at, tools)) = self.cached().as_ref()
            && at.elapsed() < TTL
        {
            return tools.clone();
        }
        match tokio::time::timeout(ASK_TIMEOUT, self.exec.call::<ToolsList>(&NoParams {})).await {
            Ok(Ok(result)) => {
                *self.cached() = Some((Instant::now(), result.tools.clone()));
                result.tools
            }
            outcome => {
                if let Ok(Err(error)) = outcome {
                    tracing::debug!(%error, "exec did not list its tools");
                }
                self.cached()
                    .as_ref()
                    .map(|(_, tools)| tools.clone())
                    .unwrap_or_default()
            }
        }
    }
}
