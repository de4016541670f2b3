//! Typed calls for the owner's own commands (`exec.run|get|cancel`, SPEC §9): the run's output
//! arrives as `exec.*` events, so follow them with [`Client::subscribe`] before starting it.

use aiventbus_proto::exec::{ExecCancel, ExecGet, ExecRun, RunInfo, RunParams, RunRef};

use crate::{Client, Error};

impl Client {
    /// Starts a command through policy and exec; answers `run_…` at once (`exec.run`).
    pub async fn run(&self, params: &RunParams) -> Result<String, Error> {
        Ok(self.call::<ExecRun>(params).await?.run_id)
    }

    /// One run by id (`exec.get`).
    pub async fn run_info(&self, run_id: &str) -> Result<RunInfo, Error> {
        self.call::<ExecGet>(&RunRef {
            run_id: run_id.to_owned(),
        })
        .await
    }

    /// Kills a run's process group; false when it had already finished (`exec.cancel`).
    pub async fn cancel_run(&self, run_id: &str) -> Result<bool, Error> {
        Ok(self
            .call::<ExecCancel>(&RunRef {
                run_id: run_id.to_owned(),
            })
            .await?
            .cancelled)
    }
}
