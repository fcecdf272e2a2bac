//! The request budget per window, shared by every worker.
//!
//! Chatwoot (rack-attack) counts requests per client IP in fixed windows aligned to the Unix
//! epoch on the server's clock, and answers 429 `Retry later` with no `Retry-After` once the
//! window's count passes the limit; throttled requests count too. A per-request backoff
//! against that becomes a retry storm. So this governor:
//! - hands out at most `budget` requests per window, windows aligned to the server's clock
//!   (estimated from `Date` headers, which have one-second resolution: each answer bounds the
//!   offset between the clocks, and the bounds narrow as answers arrive);
//! - on a 429 learns the budget downward (to the requests that succeeded in that window) and
//!   pauses every worker together until the next window, plus jitter;
//! - starts from `--rate-limit` (Chatwoot's default, 3000 a minute) or, with 0, from no budget,
//!   and in both cases converges on the server's real limit by itself.
//!
//! Receives: ticket requests, answers' outcomes and `Date` headers. Emits: when each request may
//! go, and a status for the progress bar.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::rng::Rng;

/// The window a request was sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(i64);

/// What the governor is doing, for the progress bar and the run report.
#[derive(Clone, Copy, Debug, Default)]
pub struct GovernorStatus {
    /// Requests allowed per window (None: no limit known).
    pub budget: Option<u64>,
    pub window: Duration,
    /// Time until requests may go again, if workers are waiting for a window.
    pub waiting: Option<Duration>,
    /// Requests sent in all windows.
    pub sent: u64,
    /// Of those, answered 429.
    pub throttled: u64,
}

#[derive(Debug)]
struct State {
    budget: Option<u64>,
    window: i64,
    sent_in_window: u64,
    succeeded_in_window: u64,
    /// The window whose 429 set the budget; later successes in it raise the budget again.
    learned_in: Option<i64>,
    paused_until: Option<Instant>,
    /// Bounds on (server clock - local clock), in seconds.
    offset_low: f64,
    offset_high: f64,
    sent: u64,
    throttled: u64,
    rng: Rng,
}

/// Shared request budget.
#[derive(Debug)]
pub struct RateGovernor {
    window: Duration,
    state: Mutex<State>,
}

/// Margin after a window starts before its first request goes, on top of the clock's
/// uncertainty: our idea of "the next window" must not be early by the server's clock.
const GUARD: f64 = 0.05;

impl RateGovernor {
    /// `budget` requests per `window`; `None` means no budget until a 429 teaches one.
    pub fn new(budget: Option<u64>, window: Duration) -> Self {
        Self {
            window: window.max(Duration::from_millis(100)),
            state: Mutex::new(State {
                budget: budget.map(|b| b.max(1)),
                window: i64::MIN,
                sent_in_window: 0,
                succeeded_in_window: 0,
                learned_in: None,
                paused_until: None,
                offset_low: f64::NEG_INFINITY,
                offset_high: f64::INFINITY,
                sent: 0,
                throttled: 0,
                rng: Rng::from_entropy(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until a request may be sent and counts it in its window.
    pub async fn acquire(&self) -> Ticket {
        loop {
            let wait = {
                let mut state = self.lock();
                let now = Instant::now();
                if let Some(until) = state.paused_until {
                    if until > now {
                        until - now
                    } else {
                        state.paused_until = None;
                        continue;
                    }
                } else {
                    let (window, into_window) = self.window_now(&state);
                    if window != state.window {
                        state.window = window;
                        state.sent_in_window = 0;
                        state.succeeded_in_window = 0;
                    }
                    if state
                        .budget
                        .is_none_or(|budget| state.sent_in_window < budget)
                    {
                        state.sent_in_window += 1;
                        state.sent += 1;
                        return Ticket(window);
                    }
                    // Budget spent: wait for the next window (all workers land on the same
                    // instant; the small jitter spreads them).
                    let jitter = self.jitter(&mut state);
                    let wait = self.until_next_window(&state, into_window) + jitter;
                    state.paused_until = Some(now + wait);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The request with `ticket` was answered without a 429.
    pub fn succeeded(&self, ticket: Ticket) {
        let mut state = self.lock();
        if ticket.0 == state.window {
            state.succeeded_in_window += 1;
            if state.learned_in == Some(ticket.0) {
                let succeeded = state.succeeded_in_window;
                state.budget = state.budget.map(|b| b.max(succeeded));
            }
        }
    }

    /// The request with `ticket` was answered 429: learn the budget and pause everyone until
    /// the next window (or for `retry_after`, when the server said).
    pub fn throttled(&self, ticket: Ticket, retry_after: Option<Duration>) {
        let mut state = self.lock();
        state.throttled += 1;
        if ticket.0 == state.window && state.learned_in != Some(ticket.0) {
            let succeeded = state.succeeded_in_window.max(1);
            state.budget = Some(state.budget.map_or(succeeded, |b| b.min(succeeded)));
            state.learned_in = Some(ticket.0);
        }
        let (window, into_window) = self.window_now(&state);
        let wait = match retry_after {
            Some(wait) => wait,
            None if window == ticket.0 => self.until_next_window(&state, into_window),
            // The window has turned since the request went: go again now.
            None => Duration::ZERO,
        };
        let wait = wait + self.jitter(&mut state);
        let until = Instant::now() + wait;
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
    }

    /// Narrows the clock offset with an answer's `Date` header, received at `received`.
    pub fn observe_date(&self, date: SystemTime, received: SystemTime) {
        let (Ok(date), Ok(received)) = (
            date.duration_since(UNIX_EPOCH),
            received.duration_since(UNIX_EPOCH),
        ) else {
            return;
        };
        let (date, received) = (date.as_secs_f64(), received.as_secs_f64());
        let mut state = self.lock();
        // The server's clock read `date` (truncated to the second) some time before we got it.
        let low = date - received;
        let high = date + 1.0 - received + 0.002;
        state.offset_low = state.offset_low.max(low);
        state.offset_high = state.offset_high.min(high);
        if state.offset_low > state.offset_high {
            // Contradictory (a clock jumped): start over from this answer.
            state.offset_low = low;
            state.offset_high = high;
        }
    }

    pub fn status(&self) -> GovernorStatus {
        let state = self.lock();
        let now = Instant::now();
        GovernorStatus {
            budget: state.budget,
            window: self.window,
            waiting: state
                .paused_until
                .filter(|until| *until > now)
                .map(|until| until - now),
            sent: state.sent,
            throttled: state.throttled,
        }
    }

    /// The current window number on the server's clock, and how far into it we are (secs).
    fn window_now(&self, state: &State) -> (i64, f64) {
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let server = local + self.offset(state) - GUARD - self.uncertainty(state);
        let length = self.window.as_secs_f64();
        let window = (server / length).floor();
        (window as i64, server - window * length)
    }

    fn until_next_window(&self, _state: &State, into_window: f64) -> Duration {
        Duration::from_secs_f64((self.window.as_secs_f64() - into_window).max(0.0))
    }

    /// Up to 2% of the window (at most a second).
    fn jitter(&self, state: &mut State) -> Duration {
        let spread = (self.window.as_secs_f64() * 0.02).min(1.0);
        Duration::from_secs_f64(spread * state.rng.unit())
    }

    fn offset(&self, state: &State) -> f64 {
        match (state.offset_low.is_finite(), state.offset_high.is_finite()) {
            (true, true) => (state.offset_low + state.offset_high) / 2.0,
            _ => 0.0,
        }
    }

    fn uncertainty(&self, state: &State) -> f64 {
        if state.offset_low.is_finite() && state.offset_high.is_finite() {
            (state.offset_high - state.offset_low) / 2.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_out_the_budget_then_waits_for_the_next_window() {
        let governor = RateGovernor::new(Some(3), Duration::from_millis(400));
        let started = Instant::now();
        let mut windows = Vec::new();
        for _ in 0..7 {
            windows.push(governor.acquire().await.0);
        }
        // Seven requests at three a window span three windows.
        windows.dedup();
        assert_eq!(windows.len(), 3, "{windows:?}");
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert_eq!(governor.status().sent, 7);
    }

    #[tokio::test]
    async fn a_429_teaches_the_budget_and_pauses_everyone() {
        let governor = RateGovernor::new(None, Duration::from_secs(3600));
        let mut tickets = Vec::new();
        for _ in 0..5 {
            tickets.push(governor.acquire().await);
        }
        for ticket in &tickets[..4] {
            governor.succeeded(*ticket);
        }
        governor.throttled(tickets[4], None);
        let status = governor.status();
        assert_eq!(status.budget, Some(4));
        assert!(status.waiting.is_some_and(|w| w > Duration::ZERO));
        assert_eq!(status.throttled, 1);
    }

    #[test]
    fn date_headers_narrow_the_clock_offset() {
        let governor = RateGovernor::new(Some(10), Duration::from_secs(60));
        let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
        // The server is 10.3 s ahead; Date headers truncate to the second.
        governor.observe_date(at(1010.0), at(1000.0));
        governor.observe_date(at(1010.0), at(999.75));
        governor.observe_date(at(1011.0), at(1000.71));
        governor.observe_date(at(1010.0), at(1000.69));
        let state = governor.lock();
        assert!(state.offset_low <= 10.3 && state.offset_high >= 10.3);
        assert!(
            state.offset_high - state.offset_low < 0.1,
            "{} {}",
            state.offset_low,
            state.offset_high
        );
    }
}
