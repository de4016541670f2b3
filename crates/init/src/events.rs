//! `system.service` events: what init tells the bus about services starting, exiting, restarting,
//! failing and stopping. They wait in a bounded in-memory queue while the bus is down (its own
//! restarts included) and are published in order, each with an id chosen here so that a publish
//! retried after a lost reply is stored once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aiventbus_proto::methods::{Publish, PublishParams};
use aiventbus_proto::{ErrorCode, Priority};
use aiventbus_rpc::{Client, ClientError};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Topic of every event here.
pub const TOPIC: &str = "system.service";
/// Events kept while the bus is down; past this the oldest are dropped.
pub const QUEUE_LIMIT: usize = 1000;
/// Deadline of one publish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before retrying a publish the bus could not take right now.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What happened to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Ready for the first time.
    Started,
    /// Its process ended without init asking (a crash, or killed for failing readiness or health).
    Exited,
    /// Ready again after a restart.
    Restarted,
    /// Crash loop: init gave up.
    Failed,
    /// Stopped by init at shutdown.
    Stopped,
}

impl Change {
    /// The `state` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Started => "started",
            Change::Exited => "exited",
            Change::Restarted => "restarted",
            Change::Failed => "failed",
            Change::Stopped => "stopped",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
}

impl Exit {
    /// From a wait status.
    pub fn from_status(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        Exit {
            code: status.code(),
            signal: status.signal(),
        }
    }

    /// The signal's name (`SIGKILL`), or its number when unknown.
    pub fn signal_name(&self) -> Option<String> {
        self.signal
            .map(|number| match nix::sys::signal::Signal::try_from(number) {
                Ok(signal) => signal.as_str().to_owned(),
                Err(_) => format!("signal {number}"),
            })
    }

    /// `exited with code 1`, `killed by SIGSEGV`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal_name()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("killed by {signal}"),
            (None, None) => "ended with an unknown status".into(),
        }
    }
}

/// One `system.service` event.
#[derive(Debug, Clone)]
pub struct ServiceEvent {
    /// The service's short name.
    pub service: &'static str,
    /// What happened.
    pub change: Change,
    /// The process id it had.
    pub pid: Option<u32>,
    /// How it ended (for `exited` and `stopped`).
    pub exit: Exit,
    /// Restarts so far.
    pub restarts: u32,
    /// Why, in words.
    pub reason: Option<String>,
}

impl ServiceEvent {
    /// The event's payload: `{service, state, pid, exit_code, signal, restarts, reason}`; fields
    /// that do not apply are null.
    pub fn payload(&self) -> serde_json::Value {
        json!({
            "service": self.service,
            "state": self.change.as_str(),
            "pid": self.pid,
            "exit_code": self.exit.code,
            "signal": self.exit.signal_name(),
            "restarts": self.restarts,
            "reason": self.reason,
        })
    }

    /// The publish request, with a fresh event id.
    pub fn to_publish(&self) -> PublishParams {
        PublishParams {
            topic: TOPIC.into(),
            payload: Some(self.payload()),
            priority: (self.change == Change::Failed).then_some(Priority::High),
            id: Some(aiventbus_rpc::ids::prefixed("evt")),
            source: Some("system".into()),
            ..PublishParams::default()
        }
    }
}

/// The bounded queue of events waiting for the bus. An event leaves it only once the bus has
/// accepted it (or refused it for good); past [`QUEUE_LIMIT`] the oldest is dropped with a warning.
pub struct EventQueue {
    items: Mutex<VecDeque<PublishParams>>,
    limit: usize,
    len: watch::Sender<usize>,
}

impl EventQueue {
    /// An empty queue holding at most `limit` events.
    pub fn new(limit: usize) -> EventQueue {
        EventQueue {
            items: Mutex::new(VecDeque::new()),
            limit: limit.max(1),
            len: watch::Sender::new(0),
        }
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<PublishParams>> {
        // The lock is never held across a panic point that could poison it in a way that matters:
        // the queue stays consistent either way, so a poisoned lock is used as is.
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an event.
    pub fn push(&self, event: &ServiceEvent) {
        let mut items = self.items();
        if items.len() >= self.limit
            && let Some(dropped) = items.pop_front()
        {
            tracing::warn!(
                limit = self.limit,
                dropped = dropped.id.as_deref().unwrap_or(""),
                "the bus has been away too long; dropped the oldest queued system.service event"
            );
        }
        tracing::debug!(
            service = event.service,
            state = event.change.as_str(),
            "queued system.service event"
        );
        items.push_back(event.to_publish());
        self.len.send_replace(items.len());
    }

    /// The oldest event, left in place.
    pub fn front(&self) -> Option<PublishParams> {
        self.items().front().cloned()
    }

    /// Removes the oldest event if it is still the one with `id`.
    pub fn remove_front(&self, id: Option<&str>) {
        let mut items = self.items();
        if items.front().is_some_and(|front| front.id.as_deref() == id) {
            items.pop_front();
            self.len.send_replace(items.len());
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.items().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every queued event is published, or until `deadline`. True when empty.
    pub async fn wait_empty(&self, deadline: Instant) -> bool {
        let mut len = self.len.subscribe();
        loop {
            if *len.borrow_and_update() == 0 {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return false,
                changed = len.changed() => if changed.is_err() { return false },
            }
        }
    }
}

/// Publishes queued events in order whenever `bus` holds a client (set by the supervisor while the
/// bus is ready), until `stop`.
pub async fn publish_loop(queue: Arc<EventQueue>, mut bus: watch::Receiver<Option<Client>>, stop: CancellationToken) {
    let mut queued = queue.len.subscribe();
    loop {
        let client = bus.borrow_and_update().clone();
        let Some(client) = client else {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = bus.changed() => if changed.is_err() { return },
            }
            continue;
        };
        queued.borrow_and_update();
        let Some(event) = queue.front() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = queued.changed() => if changed.is_err() { return },
                changed = bus.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            // The bus went away or came back: start over with the current client.
            _ = bus.changed() => continue,
            result = publish(&client, &event) => result,
        };
        let id = event.id.as_deref();
        match result {
            Ok(()) => queue.remove_front(id),
            Err(ClientError::Rpc(error))
                if error.code != ErrorCode::Overloaded.code() && error.code != ErrorCode::Unavailable.code() =>
            {
                tracing::warn!(id, code = error.code, message = %error.message, "the bus refused a system.service event; dropped");
                queue.remove_front(id);
            }
            Err(error) => {
                tracing::debug!(id, %error, "publishing a system.service event failed; will retry");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = bus.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    }
}

async fn publish(client: &Client, event: &PublishParams) -> Result<(), ClientError> {
    let params = serde_json::value::to_raw_value(event).map_err(|e| ClientError::Protocol(e.to_string()))?;
    client
        .call_raw_with_timeout(
            <Publish as aiventbus_proto::Method>::NAME,
            Some(params),
            PUBLISH_TIMEOUT,
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(service: &'static str, change: Change) -> ServiceEvent {
        ServiceEvent {
            service,
            change,
            pid: Some(42),
            exit: Exit::default(),
            restarts: 0,
            reason: None,
        }
    }

    #[test]
    fn payload_has_every_field() {
        let exited = ServiceEvent {
            exit: Exit {
                code: None,
                signal: Some(9),
            },
            restarts: 3,
            reason: Some("killed by SIGKILL".into()),
            ..event("bus", Change::Exited)
        };
        assert_eq!(
            exited.payload(),
            json!({"service": "bus", "state": "exited", "pid": 42, "exit_code": null, "signal": "SIGKILL",
                   "restarts": 3, "reason": "killed by SIGKILL"})
        );
        let publish = exited.to_publish();
        assert_eq!(publish.topic, "system.service");
        assert_eq!(publish.source.as_deref(), Some("system"));
        let id = publish.id.unwrap();
        aiventbus_proto::event::validate_prefixed_id(&id, "evt_").unwrap();
        assert_eq!(id.len(), 30);
        assert_eq!(event("bus", Change::Failed).to_publish().priority, Some(Priority::High));
    }

    #[test]
    fn queue_drops_the_oldest_past_its_limit_and_keeps_order() {
        let queue = EventQueue::new(3);
        for restarts in 0..5 {
            queue.push(&ServiceEvent {
                restarts,
                ..event("gateway", Change::Exited)
            });
        }
        assert_eq!(queue.len(), 3);
        let mut seen = Vec::new();
        while let Some(front) = queue.front() {
            seen.push(front.payload.as_ref().unwrap()["restarts"].as_u64().unwrap());
            queue.remove_front(front.id.as_deref());
        }
        assert_eq!(seen, vec![2, 3, 4]);
        assert!(queue.is_empty());
    }

    #[test]
    fn remove_front_leaves_a_different_event_alone() {
        let queue = EventQueue::new(10);
        queue.push(&event("bus", Change::Started));
        queue.remove_front(Some("evt_other"));
        assert_eq!(queue.len(), 1);
    }
}
