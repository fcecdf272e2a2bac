//! How many requests to keep in flight: adaptive, up to `--concurrency`.
//!
//! After Vector's adaptive request concurrency: the limit grows while answers come back as
//! fast as usual and shrinks multiplicatively when they slow down or fail (5xx, dropped
//! connections, time-outs), so a small self-hosted server is not overloaded. It starts with a
//! slow-start phase (one more per answer, doubling each round trip) until the first sign of
//! pressure, then grows by one per round trip (additive increase). 429s are the rate
//! governor's business, not a sign of overload, and leave the limit alone.
//!
//! Receives: permit requests and each answer's round-trip time and outcome. Emits: permits,
//! and the current limit for the progress bar.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The limit to start from: as many as the walk asks for with page 1 and more, and in reach
/// of `--concurrency 16` in one round trip of slow start.
const INITIAL_LIMIT: usize = 8;
/// Multiplicative decrease on pressure.
const DECREASE: f64 = 0.9;
/// A round trip this much slower than the long-run average is pressure...
const RTT_RISE: f64 = 1.5;
/// ...if it is also this much slower in absolute terms (loopback jitter is not pressure).
const RTT_FLOOR: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    slow_start: bool,
    /// Long-run and recent round-trip averages, in seconds.
    rtt_slow: Option<f64>,
    rtt_fast: Option<f64>,
    last_decrease: Option<Instant>,
}

/// Shared concurrency limit.
#[derive(Debug)]
pub struct AdaptiveConcurrency {
    max: usize,
    state: Mutex<State>,
    released: Notify,
}

/// A place in flight; give it back with `done` (or drop it on an error path).
#[derive(Debug)]
pub struct Permit<'a> {
    owner: &'a AdaptiveConcurrency,
    started: Instant,
    open: bool,
}

impl AdaptiveConcurrency {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            state: Mutex::new(State {
                limit: max.min(INITIAL_LIMIT) as f64,
                in_flight: 0,
                slow_start: true,
                rtt_slow: None,
                rtt_fast: None,
                last_decrease: None,
            }),
            released: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a place in flight.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release between check and wait is not lost.
            released.as_mut().enable();
            {
                let mut state = self.lock();
                if state.in_flight < state.limit.floor().max(1.0) as usize {
                    state.in_flight += 1;
                    return Permit {
                        owner: self,
                        started: Instant::now(),
                        open: true,
                    };
                }
            }
            released.await;
        }
    }

    /// The current limit (whole requests).
    pub fn limit(&self) -> usize {
        self.lock().limit.floor().max(1.0) as usize
    }

    fn release(&self, outcome: Option<(Duration, bool)>) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some((rtt, pressure)) = outcome {
            self.adjust(&mut state, rtt.as_secs_f64(), pressure);
        }
        drop(state);
        self.released.notify_waiters();
    }

    fn adjust(&self, state: &mut State, rtt: f64, failed: bool) {
        let slow = *state.rtt_slow.get_or_insert(rtt);
        let fast = *state.rtt_fast.get_or_insert(rtt);
        let rising = fast > slow * RTT_RISE && fast - slow > RTT_FLOOR.as_secs_f64();
        let now = Instant::now();
        if failed || rising {
            // At most one decrease per round trip: a burst of failures is one signal.
            let recent = state
                .last_decrease
                .is_some_and(|at| now.duration_since(at).as_secs_f64() < slow);
            if !recent {
                state.limit = (state.limit * DECREASE).max(1.0);
                state.slow_start = false;
                state.last_decrease = Some(now);
            }
        } else if state.slow_start {
            state.limit += 1.0;
        } else {
            state.limit += 1.0 / state.limit;
        }
        state.limit = state.limit.min(self.max as f64);
        state.rtt_slow = Some(slow * 0.95 + rtt * 0.05);
        state.rtt_fast = Some(fast * 0.7 + rtt * 0.3);
    }
}

impl Permit<'_> {
    /// The request is answered: `pressure` when the server failed or dropped it.
    pub fn done(mut self, pressure: bool) {
        self.open = false;
        self.owner.release(Some((self.started.elapsed(), pressure)));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.open {
            self.owner.release(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grows_to_the_maximum_when_all_is_well() {
        let concurrency = AdaptiveConcurrency::new(16);
        for _ in 0..40 {
            concurrency.acquire().await.done(false);
        }
        assert_eq!(concurrency.limit(), 16);
    }

    #[tokio::test]
    async fn shrinks_on_failures_but_not_below_one() {
        let concurrency = AdaptiveConcurrency::new(16);
        for _ in 0..40 {
            concurrency.acquire().await.done(false);
        }
        for _ in 0..200 {
            let permit = concurrency.acquire().await;
            // Force every failure to count: no decrease happened within a round trip.
            concurrency.lock().last_decrease = None;
            permit.done(true);
        }
        assert_eq!(concurrency.limit(), 1);
    }

    #[tokio::test]
    async fn never_more_in_flight_than_the_limit() {
        let concurrency = AdaptiveConcurrency::new(3);
        let a = concurrency.acquire().await;
        let b = concurrency.acquire().await;
        let c = concurrency.acquire().await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), concurrency.acquire()).await;
        assert!(waiting.is_err(), "a fourth permit must wait");
        drop(a);
        let d = tokio::time::timeout(Duration::from_millis(500), concurrency.acquire()).await;
        assert!(d.is_ok(), "a released place is handed on");
        drop((b, c, d));
    }
}
