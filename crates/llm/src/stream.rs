//! Streaming tokens as `agent.stream` events: chunks from the model are coalesced and published
//! every `llm.stream_coalesce` (50 ms) or once 64 characters are waiting, in order, by one task
//! per run. The chunk channel is bounded: a slow bus slows the reading of the model's stream.

use std::sync::Arc;
use std::time::Duration;

use aiventbus_proto::Event;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bus::Bus;

/// Characters that make a chunk worth publishing at once.
pub const COALESCE_CHARS: usize = 64;
/// Chunks waiting for the publisher.
const CHANNEL: usize = 256;

/// Who a run's stream belongs to.
#[derive(Debug, Clone)]
pub struct StreamIds {
    /// The agent.
    pub agent_id: String,
    /// The assignment.
    pub assignment_id: String,
    /// The run.
    pub run_id: String,
}

/// A run's stream: send chunks, then [`Streamer::finish`] to flush what is left.
pub struct Streamer {
    sender: mpsc::Sender<String>,
    task: JoinHandle<u64>,
}

impl Streamer {
    /// Starts the publisher task.
    pub fn start(bus: Bus, event: Arc<Event>, ids: StreamIds, coalesce: Duration) -> Streamer {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(publish(receiver, coalesce, move |n, chunk| {
            let bus = bus.clone();
            let event = event.clone();
            let ids = ids.clone();
            async move {
                let source = format!("agent:{}", ids.agent_id);
                let payload = json!({
                    "agent_id": ids.agent_id,
                    "assignment_id": ids.assignment_id,
                    "run_id": ids.run_id,
                    "event_id": event.id,
                    "n": n,
                    "chunk": chunk,
                });
                bus.report(&event, "agent.stream", &source, payload).await;
            }
        }));
        Streamer { sender, task }
    }

    /// Where the provider sends its text chunks.
    pub fn sender(&self) -> &mpsc::Sender<String> {
        &self.sender
    }

    /// Flushes and waits until every chunk is published; returns how many events were published.
    pub async fn finish(self) -> u64 {
        drop(self.sender);
        self.task.await.unwrap_or(0)
    }
}

/// Coalesces chunks from `receiver` and hands each batch (numbered from 1) to `emit`, in order.
pub async fn publish<F, Fut>(mut receiver: mpsc::Receiver<String>, coalesce: Duration, emit: F) -> u64
where
    F: Fn(u64, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut buffer = String::new();
    let mut deadline: Option<Instant> = None;
    let mut published = 0;
    loop {
        let chunk = tokio::select! {
            chunk = receiver.recv() => chunk,
            _ = sleep_until(deadline) => {
                published += 1;
                emit(published, std::mem::take(&mut buffer)).await;
                deadline = None;
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        if chunk.is_empty() {
            continue;
        }
        buffer.push_str(&chunk);
        deadline.get_or_insert_with(|| Instant::now() + coalesce);
        if buffer.chars().count() >= COALESCE_CHARS {
            published += 1;
            emit(published, std::mem::take(&mut buffer)).await;
            deadline = None;
        }
    }
    if !buffer.is_empty() {
        published += 1;
        emit(published, buffer).await;
    }
    published
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    async fn run(chunks: Vec<(&'static str, Duration)>) -> Vec<String> {
        let (sender, receiver) = mpsc::channel(16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(publish(receiver, Duration::from_millis(50), move |_, chunk| {
            sink.lock().unwrap().push(chunk);
            std::future::ready(())
        }));
        for (chunk, pause) in chunks {
            sender.send(chunk.to_owned()).await.unwrap();
            tokio::time::sleep(pause).await;
        }
        drop(sender);
        task.await.unwrap();
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn small_chunks_are_coalesced_until_the_timer() {
        let short = Duration::from_millis(1);
        let batches = run(vec![
            ("a", short),
            ("b", short),
            ("c", Duration::from_millis(100)),
            ("d", short),
        ])
        .await;
        assert_eq!(batches, ["abc", "d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn sixty_four_characters_go_out_at_once() {
        let long: &'static str = Box::leak("x".repeat(70).into_boxed_str());
        let batches = run(vec![
            ("ab", Duration::ZERO),
            (long, Duration::ZERO),
            ("tail", Duration::ZERO),
        ])
        .await;
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].len(), 72);
        assert_eq!(batches[1], "tail");
        assert_eq!(batches.concat(), format!("ab{long}tail"));
    }
}
