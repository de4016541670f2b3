//! The llm's calls to the bus over one shared, self-reconnecting client: the assignments queue
//! (long-poll claim, heartbeat, complete, fail) and publishing events into a run's trace as
//! children of the triggering event.

use std::time::Duration;

use aiventbus_proto::agents::{
    Assignment, AssignmentsClaim, AssignmentsComplete, AssignmentsFail, AssignmentsHeartbeat, AssignmentsSuspend,
    ClaimParams, ClaimResult, FailParams, LeaseParams, LeaseResult,
};
use aiventbus_proto::methods::{Publish, PublishParams, PublishResult};
use aiventbus_proto::{Event, Method};
use aiventbus_rpc::{Client, ClientError};
use serde_json::Value;

/// Extra time a long-poll claim gets beyond its `wait_ms` before the call is given up.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);
/// Tries of a complete or fail whose reply was lost to a disconnect.
const REPORT_TRIES: u32 = 5;

/// Typed calls on the shared bus client.
#[derive(Clone)]
pub struct Bus {
    /// The underlying client (context reads, knowledge, memory).
    pub client: Client,
}

impl Bus {
    /// Over a client.
    pub fn new(client: Client) -> Bus {
        Bus { client }
    }

    /// Claims work, waiting up to `wait_ms` on the bus for some to arrive.
    pub async fn claim(&self, params: &ClaimParams) -> Result<ClaimResult, ClientError> {
        let timeout = Duration::from_millis(params.wait_ms.unwrap_or(0)) + CLAIM_MARGIN;
        let raw = serde_json::value::to_raw_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let reply = self
            .client
            .call_raw_with_timeout(AssignmentsClaim::NAME, Some(raw), timeout)
            .await?;
        serde_json::from_str(reply.get()).map_err(|e| ClientError::Protocol(format!("assignments.claim result: {e}")))
    }

    /// Extends a lease.
    pub async fn heartbeat(&self, id: &str, worker: &str, lease: Duration) -> Result<LeaseResult, ClientError> {
        self.client
            .call::<AssignmentsHeartbeat>(&LeaseParams {
                id: id.to_owned(),
                worker: worker.to_owned(),
                lease_ms: Some(lease.as_millis() as u64),
            })
            .await
    }

    /// Marks work done (retrying a lost reply: completing twice is answered the same or -32003).
    pub async fn complete(&self, id: &str, worker: &str) -> Result<Assignment, ClientError> {
        let params = LeaseParams {
            id: id.to_owned(),
            worker: worker.to_owned(),
            lease_ms: None,
        };
        retry(|| self.client.call::<AssignmentsComplete>(&params)).await
    }

    /// Suspends work until a human decides (retrying a lost reply).
    pub async fn suspend(&self, id: &str, worker: &str) -> Result<Assignment, ClientError> {
        let params = LeaseParams {
            id: id.to_owned(),
            worker: worker.to_owned(),
            lease_ms: None,
        };
        retry(|| self.client.call::<AssignmentsSuspend>(&params)).await
    }

    /// Fails or releases work.
    pub async fn fail(&self, params: FailParams) -> Result<Assignment, ClientError> {
        retry(|| self.client.call::<AssignmentsFail>(&params)).await
    }

    /// Publishes a child of `parent`: same trace, `parent_event` = the parent.
    pub async fn publish_child(
        &self,
        parent: &Event,
        topic: &str,
        source: &str,
        payload: Value,
    ) -> Result<PublishResult, ClientError> {
        self.client
            .call::<Publish>(&PublishParams {
                topic: topic.to_owned(),
                payload: Some(payload),
                source: Some(source.to_owned()),
                trace_id: Some(parent.trace_id.clone()),
                parent_event: Some(parent.id.clone()),
                ..PublishParams::default()
            })
            .await
    }

    /// Like [`Bus::publish_child`], logging instead of failing: reports about a run must not end it.
    pub async fn report(&self, parent: &Event, topic: &str, source: &str, payload: Value) {
        if let Err(error) = self.publish_child(parent, topic, source, payload).await {
            tracing::warn!(topic, event = %parent.id, %error, "could not publish");
        }
    }
}

async fn retry<T, F, Fut>(mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Err(ClientError::Disconnected | ClientError::Unavailable(_) | ClientError::Timeout)
                if tries < REPORT_TRIES =>
            {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
}
