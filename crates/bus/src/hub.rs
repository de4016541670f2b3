//! Live subscriptions with replay. After each commit the store's notifier thread hands the
//! batch to [`Hub::deliver`], which moves the head and offers each event to every matching
//! subscriber's bounded channel under one lock; a replaying subscription registers under that
//! same lock once it has read everything up to the head, so the switch from replay to live has
//! no gap and no duplicate. A subscriber whose channel is full is cut off, never skipped: it
//! drains what it was given and then learns the first seq it missed, so it can resume there.
//! Bounds: `buffer` events per live subscriber (then cut off), one replay page of
//! [`REPLAY_PAGE`] events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use aiventbus_proto::TopicPattern;

use crate::schema::{ReadPool, scan};
use crate::store::{Committed, Store};

/// Events read from the store per replay page.
pub const REPLAY_PAGE: usize = 512;

/// Why a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionEnd {
    /// The subscriber fell `buffer` events behind and was cut off; subscribing again with
    /// `from_seq = next_seq` continues without a loss.
    #[error("subscriber fell behind and was cut off; resume with from_seq {next_seq}")]
    Lagged {
        /// The first seq not delivered.
        next_seq: u64,
    },
    /// The bus is shutting down.
    #[error("the bus is shutting down")]
    Closed,
    /// Replay could not read the store; resuming from `next_seq` continues without a loss.
    #[error("replay failed at seq {next_seq}: {message}")]
    Failed {
        /// The first seq not delivered.
        next_seq: u64,
        /// What went wrong.
        message: String,
    },
}

/// What a live subscriber's channel end learns after its channel closes.
type EndSlot = Mutex<Option<SubscriptionEnd>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent at every await-free step, so a panic elsewhere
    // while holding the lock leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Compiled patterns of one subscription.
#[derive(Debug)]
struct Matcher {
    patterns: Vec<TopicPattern>,
    everything: bool,
}

impl Matcher {
    fn new(patterns: Vec<TopicPattern>) -> Matcher {
        let everything = patterns.iter().any(TopicPattern::matches_everything);
        Matcher { patterns, everything }
    }

    fn matches(&self, topic: &str) -> bool {
        self.everything || self.patterns.iter().any(|pattern| pattern.matches(topic))
    }
}

struct Subscriber {
    id: u64,
    matcher: Arc<Matcher>,
    /// Events below this seq were replayed already.
    min_seq: u64,
    sender: mpsc::Sender<Arc<Committed>>,
    /// Events that may wait in `sender` before a new batch cuts the subscriber off.
    limit: usize,
    end: Arc<EndSlot>,
}

/// Room beyond the subscriber's buffer for one commit batch: lag is measured at batch
/// boundaries, so a subscriber that keeps up is never cut off merely because one commit carried
/// more events than its buffer (each publish may add a chain-limit event, hence twice the batch).
const BATCH_SLACK: usize = 2 * crate::writer::MAX_BATCH + 16;

#[derive(Default)]
struct HubState {
    subscribers: Vec<Subscriber>,
    next_id: u64,
    closed: bool,
}

/// The live subscribers and the committed head.
pub struct Hub {
    state: Mutex<HubState>,
    head: AtomicU64,
}

impl Hub {
    pub(crate) fn new(head: u64) -> Hub {
        Hub {
            state: Mutex::new(HubState::default()),
            head: AtomicU64::new(head),
        }
    }

    /// Seq of the newest committed event.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Subscribers receiving live events.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.state).subscribers.len()
    }

    /// Called after each commit, in commit order: moves the head to `head` and offers each event
    /// to every matching subscriber without ever waiting; a full subscriber is cut off.
    pub(crate) fn deliver(&self, events: &[Arc<Committed>], head: u64) {
        let mut state = lock(&self.state);
        self.head.store(head, Ordering::Release);
        if state.closed {
            return;
        }
        state.subscribers.retain(|subscriber| {
            // Consecutive events often share a topic; match each run once.
            let mut last: Option<(&str, bool)> = None;
            let mut lag_checked = false;
            for committed in events {
                let event = &committed.event;
                if event.seq < subscriber.min_seq {
                    continue;
                }
                let matched = match last {
                    Some((topic, matched)) if topic == event.topic => matched,
                    _ => {
                        let matched = subscriber.matcher.matches(&event.topic);
                        last = Some((&event.topic, matched));
                        matched
                    }
                };
                if !matched {
                    continue;
                }
                if !lag_checked {
                    lag_checked = true;
                    let waiting = subscriber.sender.max_capacity() - subscriber.sender.capacity();
                    if waiting >= subscriber.limit {
                        tracing::debug!(
                            subscriber = subscriber.id,
                            next_seq = event.seq,
                            waiting,
                            "slow subscriber cut off"
                        );
                        *lock(&subscriber.end) = Some(SubscriptionEnd::Lagged { next_seq: event.seq });
                        return false;
                    }
                }
                match subscriber.sender.try_send(Arc::clone(committed)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        tracing::debug!(
                            subscriber = subscriber.id,
                            next_seq = event.seq,
                            "slow subscriber cut off"
                        );
                        *lock(&subscriber.end) = Some(SubscriptionEnd::Lagged { next_seq: event.seq });
                        return false;
                    }
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    /// Ends every subscription with `Closed` once it has drained; later ones end at once.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        for subscriber in state.subscribers.drain(..) {
            *lock(&subscriber.end) = Some(SubscriptionEnd::Closed);
        }
    }

    /// Subscribes to events whose topic matches any of `patterns` (none: nothing matches).
    /// Without `from_seq` delivery starts after the current head; with it (inclusive, 0 means 1)
    /// stored events are replayed first, then live ones follow without a gap or a duplicate.
    /// Live events wait in a channel of `buffer` events (at least 1); a subscriber that lets it
    /// fill is ended with [`SubscriptionEnd::Lagged`] after the events already buffered.
    pub fn subscribe(store: &Store, patterns: Vec<TopicPattern>, from_seq: Option<u64>, buffer: usize) -> Subscription {
        let hub = Arc::clone(store.hub());
        let matcher = Arc::new(Matcher::new(patterns));
        let buffer = buffer.max(1);
        let mut subscription = Subscription {
            hub,
            readers: Arc::clone(store.readers()),
            matcher,
            buffer,
            id: None,
            phase: Phase::Ended(SubscriptionEnd::Closed),
        };
        subscription.phase = match from_seq {
            Some(from_seq) => Phase::Replay {
                next_seq: from_seq.max(1),
                pending: VecDeque::new(),
            },
            None => {
                let hub = Arc::clone(&subscription.hub);
                let mut state = lock(&hub.state);
                let head = hub.head();
                let phase = subscription.register(&mut state, head + 1, VecDeque::new());
                drop(state);
                phase
            }
        };
        subscription
    }
}

enum Phase {
    /// Reading stored events; `next_seq` is where the next page starts.
    Replay {
        next_seq: u64,
        pending: VecDeque<Arc<Committed>>,
    },
    /// Receiving from the hub, after the last replayed events in `pending`.
    Live {
        pending: VecDeque<Arc<Committed>>,
        receiver: mpsc::Receiver<Arc<Committed>>,
        end: Arc<EndSlot>,
    },
    Ended(SubscriptionEnd),
}

/// One subscription. Dropping it unregisters it.
pub struct Subscription {
    hub: Arc<Hub>,
    readers: Arc<ReadPool>,
    matcher: Arc<Matcher>,
    buffer: usize,
    id: Option<u64>,
    phase: Phase,
}

impl Subscription {
    /// Registers with the hub for events from `min_seq` on; the caller holds the hub lock.
    fn register(&mut self, state: &mut HubState, min_seq: u64, pending: VecDeque<Arc<Committed>>) -> Phase {
        if state.closed {
            return Phase::Ended(SubscriptionEnd::Closed);
        }
        let (sender, receiver) = mpsc::channel(self.buffer + BATCH_SLACK);
        let end = Arc::new(Mutex::new(None));
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.push(Subscriber {
            id,
            matcher: Arc::clone(&self.matcher),
            min_seq,
            sender,
            limit: self.buffer,
            end: Arc::clone(&end),
        });
        self.id = Some(id);
        Phase::Live { pending, receiver, end }
    }

    /// Whether replay is over and events now come from the hub.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live { .. })
    }

    /// The next matching event in seq order, or why the subscription ended (every later call
    /// gives the same answer). Cancel safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Arc<Committed>, SubscriptionEnd> {
        loop {
            let from_seq = match &mut self.phase {
                Phase::Ended(end) => return Err(end.clone()),
                Phase::Live { pending, receiver, end } => {
                    if let Some(committed) = pending.pop_front() {
                        return Ok(committed);
                    }
                    match receiver.recv().await {
                        Some(committed) => return Ok(committed),
                        None => {
                            let reason = lock(end).take().unwrap_or(SubscriptionEnd::Closed);
                            self.phase = Phase::Ended(reason.clone());
                            return Err(reason);
                        }
                    }
                }
                Phase::Replay { next_seq, pending } => match pending.pop_front() {
                    Some(committed) => return Ok(committed),
                    None => *next_seq,
                },
            };
            if lock(&self.hub.state).closed {
                self.phase = Phase::Ended(SubscriptionEnd::Closed);
                continue;
            }
            let matcher = Arc::clone(&self.matcher);
            let page = self
                .readers
                .run(move |conn| {
                    let patterns = (!matcher.everything).then_some(matcher.patterns.as_slice());
                    scan(conn, from_seq, patterns, REPLAY_PAGE)
                })
                .await;
            // Nothing changed before the await, so cancelling it is harmless.
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    self.phase = Phase::Ended(SubscriptionEnd::Failed {
                        next_seq: from_seq,
                        message: error.to_string(),
                    });
                    continue;
                }
            };
            let pending = VecDeque::from(page.events);
            if page.complete {
                // The page reached what was committed when it was read. Under the hub lock the
                // head cannot move: unless it has passed the page, go live from here; events
                // delivered below `next_seq` later were read in this page already.
                // After shutdown, stay in replay: the page is handed out, then the end.
                let hub = Arc::clone(&self.hub);
                let mut state = lock(&hub.state);
                if hub.head() < page.next_seq && !state.closed {
                    self.phase = self.register(&mut state, page.next_seq, pending);
                    continue;
                }
            }
            self.phase = Phase::Replay {
                next_seq: page.next_seq,
                pending,
            };
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.hub.state)
                .subscribers
                .retain(|subscriber| subscriber.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{event, open_test};
    use std::time::Duration;

    fn patterns(list: &[&str]) -> Vec<TopicPattern> {
        list.iter().map(|p| TopicPattern::parse(p).unwrap()).collect()
    }

    /// The next event or end, failing the test if nothing comes within the deadline.
    async fn next(subscription: &mut Subscription) -> Result<Arc<Committed>, SubscriptionEnd> {
        tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .expect("no event within the deadline")
    }

    async fn seqs_until(subscription: &mut Subscription, last: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.last() != Some(&last) {
            seqs.push(next(subscription).await.unwrap().seq());
        }
        seqs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_subscriptions_start_after_the_head_and_filter() {
        let test = open_test(|_| {});
        for n in 0..3 {
            test.store.publish(event("fs.old", n)).await.unwrap();
        }
        let mut everything = test.store.subscribe(patterns(&["**"]), None, 16);
        let mut files = test.store.subscribe(patterns(&["fs.*", "cron.**"]), None, 16);
        assert!(everything.is_live());
        for topic in ["fs.created", "user.query", "cron.daily.run", "fs.deleted"] {
            test.store.publish(event(topic, 0)).await.unwrap();
        }
        assert_eq!(seqs_until(&mut everything, 7).await, vec![4, 5, 6, 7]);
        let mut topics = Vec::new();
        for _ in 0..3 {
            topics.push(next(&mut files).await.unwrap().event.topic.clone());
        }
        assert_eq!(topics, vec!["fs.created", "cron.daily.run", "fs.deleted"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_switches_to_live_without_gap_or_duplicate() {
        let test = open_test(|_| {});
        let topic = |n: u64| if n % 3 == 0 { "pick.me" } else { "skip.me" };
        for n in 0..1200 {
            test.store.submit(event(topic(n), n)).unwrap();
        }
        test.store.publish(event(topic(1200), 1200)).await.unwrap();
        let total = 4000u64;

        let mut all = test.store.subscribe(patterns(&["**"]), Some(0), 8192);
        let mut picked = test.store.subscribe(patterns(&["pick.*"]), Some(250), 8192);
        // The publisher starts once replay has begun, so the switch happens under load.
        let first = next(&mut all).await.unwrap();
        assert_eq!(first.seq(), 1);
        let publisher = {
            let store = test.store.clone();
            tokio::spawn(async move {
                for start in (1201..total).step_by(100) {
                    let answers: Vec<_> = (start..(start + 100).min(total))
                        .map(|n| store.submit(event(topic(n), n)).unwrap())
                        .collect();
                    for answer in answers {
                        answer.await.unwrap().unwrap();
                    }
                }
            })
        };
        let mut seqs = vec![first.seq()];
        seqs.extend(seqs_until(&mut all, total).await);
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());

        publisher.await.unwrap();
        // Payload n was published as seq n + 1.
        let expected: Vec<u64> = (0..total)
            .filter(|n| n % 3 == 0)
            .map(|n| n + 1)
            .filter(|seq| *seq >= 250)
            .collect();
        let last = *expected.last().unwrap();
        let got = seqs_until(&mut picked, last).await;
        assert_eq!(got, expected);
        // Delivery continues, and by now both have switched to live.
        test.store.publish(event("pick.me", 0)).await.unwrap();
        assert_eq!(next(&mut picked).await.unwrap().seq(), total + 1);
        assert_eq!(next(&mut all).await.unwrap().seq(), total + 1);
        assert!(picked.is_live() && all.is_live());
        assert_eq!(test.store.hub().subscriber_count(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_from_beyond_the_head_waits_for_that_seq() {
        let test = open_test(|_| {});
        for n in 0..3 {
            test.store.publish(event("a", n)).await.unwrap();
        }
        let mut later = test.store.subscribe(patterns(&["a"]), Some(6), 16);
        let mut from_zero = test.store.subscribe(patterns(&["a"]), Some(0), 16);
        assert_eq!(seqs_until(&mut from_zero, 3).await, vec![1, 2, 3]);
        for n in 3..8 {
            test.store.publish(event("a", n)).await.unwrap();
        }
        assert_eq!(seqs_until(&mut later, 8).await, vec![6, 7, 8]);
        assert_eq!(seqs_until(&mut from_zero, 8).await, vec![4, 5, 6, 7, 8]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_subscriber_is_cut_off_and_resumes_without_loss() {
        let test = open_test(|_| {});
        let mut slow = test.store.subscribe(patterns(&["**"]), None, 4);
        let mut picky = test.store.subscribe(patterns(&["a.*"]), None, 2);
        for n in 1..=10u64 {
            let topic = if n % 2 == 1 { "a.x" } else { "b.x" };
            test.store.publish(event(topic, n)).await.unwrap();
        }
        assert_eq!(test.store.hub().subscriber_count(), 0, "both were cut off");
        // The buffered events first, then the reason with the first seq missed.
        assert_eq!(seqs_until(&mut slow, 4).await, vec![1, 2, 3, 4]);
        assert_eq!(
            next(&mut slow).await.unwrap_err(),
            SubscriptionEnd::Lagged { next_seq: 5 }
        );
        assert_eq!(
            next(&mut slow).await.unwrap_err(),
            SubscriptionEnd::Lagged { next_seq: 5 }
        );
        assert_eq!(seqs_until(&mut picky, 3).await, vec![1, 3]);
        assert_eq!(
            next(&mut picky).await.unwrap_err(),
            SubscriptionEnd::Lagged { next_seq: 5 }
        );

        let mut resumed = test.store.subscribe(patterns(&["**"]), Some(5), 4);
        assert_eq!(seqs_until(&mut resumed, 10).await, vec![5, 6, 7, 8, 9, 10]);
        let mut picky_resumed = test.store.subscribe(patterns(&["a.*"]), Some(5), 2);
        assert_eq!(seqs_until(&mut picky_resumed, 9).await, vec![5, 7, 9]);
        test.store.publish(event("a.x", 11)).await.unwrap();
        assert_eq!(next(&mut resumed).await.unwrap().seq(), 11);
        assert_eq!(next(&mut picky_resumed).await.unwrap().seq(), 11);
    }

    fn synthetic_batch(seqs: std::ops::RangeInclusive<u64>) -> Vec<Arc<Committed>> {
        seqs.map(|seq| {
            let event = aiventbus_proto::Event {
                id: format!("evt_{seq}"),
                seq,
                ts: "2026-01-01T00:00:00.000Z".into(),
                topic: "a".into(),
                payload: Default::default(),
                source: "system".into(),
                priority: Default::default(),
                semantic_type: None,
                dedupe_key: None,
                dedupe_count: 1,
                duplicate_of: None,
                trace_id: format!("tr_{seq}"),
                parent_event: None,
                correlation_id: None,
                output_topic: None,
                context_refs: Vec::new(),
                memory_scope: None,
                expires_at: None,
                depth: 0,
                status: aiventbus_proto::EventStatus::Published,
            };
            Arc::new(Committed::new(event).unwrap())
        })
        .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lag_is_measured_at_batch_boundaries() {
        let test = open_test(|_| {});
        let hub = test.store.hub();
        let mut small = test.store.subscribe(patterns(&["**"]), None, 4);
        // One commit far larger than the buffer reaches a subscriber that keeps up, whole.
        hub.deliver(&synthetic_batch(1..=200), 200);
        assert_eq!(seqs_until(&mut small, 200).await, (1..=200).collect::<Vec<u64>>());
        hub.deliver(&synthetic_batch(201..=210), 210);
        assert_eq!(seqs_until(&mut small, 210).await, (201..=210).collect::<Vec<u64>>());
        // A batch that finds the buffer's worth still waiting cuts it off after what it holds.
        hub.deliver(&synthetic_batch(211..=220), 220);
        hub.deliver(&synthetic_batch(221..=230), 230);
        assert_eq!(seqs_until(&mut small, 220).await, (211..=220).collect::<Vec<u64>>());
        assert_eq!(
            next(&mut small).await.unwrap_err(),
            SubscriptionEnd::Lagged { next_seq: 221 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_ends_subscriptions_after_their_buffered_events() {
        let test = open_test(|_| {});
        let mut live = test.store.subscribe(patterns(&["**"]), None, 16);
        test.store.publish(event("x", 0)).await.unwrap();
        test.store.publish(event("x", 1)).await.unwrap();
        test.store.close().await;
        assert_eq!(seqs_until(&mut live, 2).await, vec![1, 2]);
        assert_eq!(next(&mut live).await.unwrap_err(), SubscriptionEnd::Closed);
        let mut late_live = test.store.subscribe(patterns(&["**"]), None, 16);
        assert_eq!(next(&mut late_live).await.unwrap_err(), SubscriptionEnd::Closed);
        let mut late_replay = test.store.subscribe(patterns(&["**"]), Some(1), 16);
        assert_eq!(next(&mut late_replay).await.unwrap_err(), SubscriptionEnd::Closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_subscription_unregisters_it() {
        let test = open_test(|_| {});
        let first = test.store.subscribe(patterns(&["**"]), None, 16);
        let mut second = test.store.subscribe(patterns(&["**"]), Some(1), 16);
        assert_eq!(test.store.hub().subscriber_count(), 1);
        test.store.publish(event("x", 0)).await.unwrap();
        assert_eq!(next(&mut second).await.unwrap().seq(), 1);
        assert_eq!(test.store.hub().subscriber_count(), 2, "the replaying one went live");
        drop(first);
        assert_eq!(test.store.hub().subscriber_count(), 1);
        drop(second);
        assert_eq!(test.store.hub().subscriber_count(), 0);
        assert_eq!(test.store.stats().await.unwrap().subscribers, 0);
    }
}
