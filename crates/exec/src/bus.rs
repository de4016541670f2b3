//! Publishing exec's events to the bus. Each publish carries an id chosen here, so a retry after a
//! dropped connection cannot store the event twice.

use std::time::Duration;

use aiventbus_proto::Method as _;
use aiventbus_proto::methods::{Publish, PublishParams, PublishResult};
use aiventbus_rpc::{Client, ClientError};
use serde_json::Value;

/// How long one event may take, retries included, before it is given up (and logged).
const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);

/// Where an action's events belong.
#[derive(Debug, Clone, Default)]
pub struct Thread {
    /// The action or run id.
    pub correlation_id: String,
    /// The trace.
    pub trace_id: Option<String>,
    /// The event the action reacts to.
    pub parent_event: Option<String>,
}

/// The bus client.
#[derive(Clone)]
pub struct Bus {
    /// The underlying connection (knowledge calls use it directly).
    pub client: Client,
}

impl Bus {
    /// Over a client.
    pub fn new(client: Client) -> Bus {
        Bus { client }
    }

    /// Publishes a `system` event tied to `thread`.
    pub async fn publish(&self, topic: &str, payload: Value, thread: &Thread) -> Result<PublishResult, ClientError> {
        self.publish_params(PublishParams {
            topic: topic.to_owned(),
            payload: Some(payload),
            source: Some("system".into()),
            trace_id: thread.trace_id.clone(),
            parent_event: thread.parent_event.clone(),
            correlation_id: Some(thread.correlation_id.clone()),
            ..Default::default()
        })
        .await
    }

    /// Publishes with full control of the params; retried (same id) while the bus is unreachable,
    /// for at most [`PUBLISH_DEADLINE`].
    pub async fn publish_params(&self, mut params: PublishParams) -> Result<PublishResult, ClientError> {
        if params.id.is_none() {
            params.id = Some(aiventbus_rpc::ids::prefixed("evt"));
        }
        let raw = serde_json::value::to_raw_value(&params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        let mut backoff = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match self
                .client
                .call_raw_with_timeout(Publish::NAME, Some(raw.clone()), left)
                .await
            {
                Ok(result) => {
                    return serde_json::from_str(result.get())
                        .map_err(|e| ClientError::Protocol(format!("events.publish result: {e}")));
                }
                Err(error) => error,
            };
            let retry = matches!(error, ClientError::Disconnected | ClientError::Unavailable(_));
            if !retry || tokio::time::Instant::now() + backoff >= deadline {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Publishes and logs a failure at warn: events that report on actions must not vanish
    /// silently, but an action's outcome does not depend on them.
    pub async fn report(&self, topic: &str, payload: Value, thread: &Thread) -> bool {
        match self.publish(topic, payload, thread).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(topic, correlation = %thread.correlation_id, %error, "could not publish an event");
                false
            }
        }
    }
}
