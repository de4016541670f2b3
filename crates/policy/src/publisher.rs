//! Policy's events to the bus, in the order they were decided, off the decision path. One task
//! drains a bounded queue (callers wait for room when the bus has been down long enough to fill
//! it); each event carries an id chosen here, so retrying after a bus restart cannot store it
//! twice. An event that still cannot be published after retrying is logged at warn, never
//! dropped silently.

use std::time::Duration;

use aiventbus_proto::methods::{Publish, PublishParams};
use aiventbus_proto::{ErrorCode, Method as _, Priority};
use aiventbus_rpc::{Client, ClientError};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Events waiting to be published.
const QUEUE: usize = 1024;
/// How long one event is retried while the bus is unreachable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// How long the queue is drained after shutdown.
const DRAIN: Duration = Duration::from_secs(2);

/// Where an event belongs: its trace, the event it follows, what it is about.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// The trace.
    pub trace_id: Option<String>,
    /// The event that caused it.
    pub parent_event: Option<String>,
    /// The action or request it is about.
    pub correlation_id: Option<String>,
}

/// Queues events for the bus. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::Sender<PublishParams>,
}

/// The task behind a [`Publisher`].
pub struct PublisherTask {
    handle: JoinHandle<()>,
    finish: CancellationToken,
}

impl PublisherTask {
    /// Publishes what is still queued (for at most a couple of seconds), then ends.
    pub async fn finish(self) {
        self.finish.cancel();
        let _ = self.handle.await;
    }
}

impl Publisher {
    /// A publisher to `bus` and its task.
    pub fn start(bus: Client) -> (Publisher, PublisherTask) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let finish = CancellationToken::new();
        let handle = tokio::spawn(run(bus, receiver, finish.clone()));
        (Publisher { queue }, PublisherTask { handle, finish })
    }

    /// Queues an event with source `system`.
    pub async fn publish(&self, topic: &str, payload: Value, links: Links) {
        let params = PublishParams {
            topic: topic.to_owned(),
            payload: Some(payload),
            priority: Some(Priority::Medium),
            id: Some(aiventbus_rpc::ids::prefixed("evt")),
            source: Some("system".into()),
            trace_id: links.trace_id,
            parent_event: links.parent_event,
            correlation_id: links.correlation_id,
            ..PublishParams::default()
        };
        if self.queue.send(params).await.is_err() {
            tracing::warn!(topic, "the event publisher has stopped; event not published");
        }
    }
}

async fn run(bus: Client, mut queue: mpsc::Receiver<PublishParams>, finish: CancellationToken) {
    loop {
        let params = tokio::select! {
            biased;
            params = queue.recv() => match params {
                Some(params) => params,
                None => return,
            },
            _ = finish.cancelled() => break,
        };
        publish_with_retry(&bus, params, GIVE_UP_AFTER, &finish).await;
    }
    // Shutting down: what is queued gets one short chance each, within one overall deadline.
    let deadline = tokio::time::Instant::now() + DRAIN;
    let never = CancellationToken::new();
    while let Ok(params) = queue.try_recv() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            tracing::warn!(topic = %params.topic, "stopping before the event could be published");
            continue;
        }
        publish_with_retry(&bus, params, left, &never).await;
    }
}

/// Publishes one event, retrying while the bus is unreachable for up to `patience`. A parent the
/// bus does not know (compacted away) is dropped from the links rather than losing the event.
async fn publish_with_retry(bus: &Client, mut params: PublishParams, patience: Duration, finish: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(50);
    let mut finishing = finish.is_cancelled();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let result = match serde_json::value::to_raw_value(&params) {
            Ok(raw) => {
                bus.call_raw_with_timeout(Publish::NAME, Some(raw), left.max(Duration::from_millis(10)))
                    .await
            }
            Err(error) => Err(ClientError::Protocol(error.to_string())),
        };
        match result {
            Ok(_) => return,
            Err(ClientError::Rpc(error))
                if error.kind() == Some(ErrorCode::InvalidParams)
                    && params.parent_event.is_some()
                    && error.message.contains("parent_event") =>
            {
                tracing::debug!(topic = %params.topic, "the parent event is gone; publishing without it");
                params.parent_event = None;
                continue;
            }
            Err(ClientError::Rpc(error)) if error.kind() != Some(ErrorCode::Overloaded) => {
                tracing::warn!(topic = %params.topic, %error, "the bus refused an event");
                return;
            }
            Err(error) => {
                if tokio::time::Instant::now() + backoff >= deadline || finishing {
                    tracing::warn!(topic = %params.topic, %error, "could not publish an event; giving up");
                    return;
                }
                tracing::debug!(topic = %params.topic, %error, "publish failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = finish.cancelled(), if !finishing => finishing = true,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
