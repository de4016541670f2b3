//! Restart pacing: exponential backoff from 100 ms doubling to 30 s, reset once a service has been
//! up for a minute, and the crash-loop limit after which init gives up on a service.

use std::time::Duration;

/// Delay before the first restart.
pub const INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between restarts.
pub const MAX: Duration = Duration::from_secs(30);
/// Up this long, a service counts as healthy: the delay and the crash count start over.
pub const HEALTHY_UPTIME: Duration = Duration::from_secs(60);

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Restart after this delay.
    Retry(Duration),
    /// Too many consecutive crashes: stop trying.
    GiveUp {
        /// Consecutive crashes counted.
        crashes: u32,
    },
}

/// Backoff state of one service.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    crashes: u32,
    limit: u32,
}

impl Backoff {
    /// Gives up after `limit` consecutive crashes without a healthy minute between them.
    pub fn new(limit: u32) -> Backoff {
        Backoff {
            next: INITIAL,
            crashes: 0,
            limit: limit.max(1),
        }
    }

    /// Records a crash of a service that had been up for `uptime` (zero if it never became ready).
    pub fn on_crash(&mut self, uptime: Duration) -> Verdict {
        if uptime >= HEALTHY_UPTIME {
            self.next = INITIAL;
            self.crashes = 0;
        }
        self.crashes += 1;
        if self.crashes >= self.limit {
            return Verdict::GiveUp { crashes: self.crashes };
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        Verdict::Retry(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_100ms_and_caps_at_30s() {
        let mut backoff = Backoff::new(100);
        let delays: Vec<Duration> = (0..12)
            .map(|_| match backoff.on_crash(Duration::ZERO) {
                Verdict::Retry(delay) => delay,
                Verdict::GiveUp { .. } => panic!("gave up too early"),
            })
            .collect();
        let expected: Vec<Duration> = [
            100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000, 30_000,
        ]
        .into_iter()
        .map(ms)
        .collect();
        assert_eq!(delays, expected);
    }

    #[test]
    fn a_healthy_minute_resets_the_delay_and_the_count() {
        let mut backoff = Backoff::new(4);
        assert_eq!(backoff.on_crash(Duration::ZERO), Verdict::Retry(ms(100)));
        assert_eq!(backoff.on_crash(Duration::from_secs(59)), Verdict::Retry(ms(200)));
        assert_eq!(backoff.on_crash(Duration::from_secs(30)), Verdict::Retry(ms(400)));
        // Up for a minute: starts over, and the three crashes before no longer count.
        assert_eq!(backoff.on_crash(HEALTHY_UPTIME), Verdict::Retry(ms(100)));
        assert_eq!(backoff.on_crash(Duration::ZERO), Verdict::Retry(ms(200)));
        assert_eq!(backoff.on_crash(Duration::ZERO), Verdict::Retry(ms(400)));
        assert_eq!(backoff.on_crash(Duration::ZERO), Verdict::GiveUp { crashes: 4 });
    }

    #[test]
    fn gives_up_after_the_crash_loop_limit() {
        let mut backoff = Backoff::new(10);
        for crash in 1..10 {
            assert!(
                matches!(backoff.on_crash(Duration::from_secs(1)), Verdict::Retry(_)),
                "crash {crash} should be retried"
            );
        }
        assert_eq!(
            backoff.on_crash(Duration::from_secs(1)),
            Verdict::GiveUp { crashes: 10 }
        );
    }
}
