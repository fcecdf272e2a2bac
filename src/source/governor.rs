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
    throttled_in_window: bool,
    /// The window whose 429 set the budget; later successes in it raise the budget again.
    learned_in: Option<i64>,
    /// Windows in a row that used the whole budget without a 429 (time to probe upward).
    clean_full_windows: u32,
    paused_until: Option<Instant>,
    /// Bounds on (server clock - local clock), in seconds.
    offset_low: f64,
    offset_high: f64,
    /// Average round trip, in seconds: a request counts where it arrives, half of it later.
    rtt: f64,
    sent: u64,
    throttled: u64,
    rng: Rng,
}

/// Shared request budget.
#[derive(Debug)]
pub struct RateGovernor {
    window: Duration,
    /// The most the budget may grow back to when probing (the configured budget).
    ceiling: Option<u64>,
    state: Mutex<State>,
}

/// Margin kept free at each end of a window: our idea of the window must sit inside the
/// server's, whatever the small errors of clocks and timing.
const GUARD: f64 = 0.05;
/// After this many full windows without a 429, a learned budget is probed one step upward,
/// so a budget learned too low (a burst of other traffic from the same IP) recovers.
const PROBE_AFTER_WINDOWS: u32 = 10;

impl RateGovernor {
    /// `budget` requests per `window`; `None` means no budget until a 429 teaches one.
    pub fn new(budget: Option<u64>, window: Duration) -> Self {
        let budget = budget.map(|b| b.max(1));
        Self {
            window: window.max(Duration::from_millis(100)),
            ceiling: budget,
            state: Mutex::new(State {
                budget,
                window: i64::MIN,
                sent_in_window: 0,
                succeeded_in_window: 0,
                throttled_in_window: false,
                learned_in: None,
                clean_full_windows: 0,
                paused_until: None,
                offset_low: f64::NEG_INFINITY,
                offset_high: f64::INFINITY,
                rtt: 0.0,
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
                match state.paused_until {
                    Some(until) if until > now => until - now,
                    _ => {
                        state.paused_until = None;
                        match self.try_take(&mut state) {
                            Ok(ticket) => return ticket,
                            Err(wait) => {
                                // Everyone waits for the same instant; jitter spreads them.
                                let wait = wait + self.jitter(&mut state);
                                state.paused_until = Some(now + wait);
                                wait
                            }
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a request from the current window's budget, or says how long until one is free.
    fn try_take(&self, state: &mut State) -> Result<Ticket, Duration> {
        let length = self.window.as_secs_f64();
        let (offset, uncertainty) = self.offset(state);
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let server = local + offset;
        let window = (server / length).floor() as i64;
        let into = server - window as f64 * length;
        if window != state.window {
            self.close_window(state);
            state.window = window;
            state.sent_in_window = 0;
            state.succeeded_in_window = 0;
            state.throttled_in_window = false;
        }
        let Some(budget) = state.budget else {
            state.sent += 1;
            return Ok(Ticket(window));
        };
        // Send only where the request surely lands in this window of the server's: not
        // before its start, not so near its end that it arrives in the next one.
        let start_guard = GUARD + uncertainty;
        let end_guard = GUARD + uncertainty + state.rtt / 2.0;
        let guarded = length > 4.0 * (start_guard + end_guard);
        if guarded && into < start_guard {
            return Err(Duration::from_secs_f64(start_guard - into));
        }
        if state.sent_in_window >= budget || (guarded && into > length - end_guard) {
            return Err(Duration::from_secs_f64(
                length - into + if guarded { start_guard } else { 0.0 },
            ));
        }
        state.sent_in_window += 1;
        state.sent += 1;
        Ok(Ticket(window))
    }

    /// Bookkeeping when a window ends: probe a learned budget upward after enough windows
    /// that used all of it without a 429.
    fn close_window(&self, state: &mut State) {
        let Some(budget) = state.budget else { return };
        if state.throttled_in_window || state.sent_in_window < budget {
            state.clean_full_windows = 0;
            return;
        }
        state.clean_full_windows += 1;
        if state.clean_full_windows >= PROBE_AFTER_WINDOWS
            && self.ceiling.is_none_or(|c| budget < c)
        {
            let step = (budget / 20).max(1);
            state.budget = Some(
                self.ceiling
                    .map_or(budget + step, |c| (budget + step).min(c)),
            );
            state.clean_full_windows = 0;
        }
    }

    /// The request with `ticket` was answered without a 429, after `rtt`.
    pub fn succeeded(&self, ticket: Ticket, rtt: Duration) {
        let mut state = self.lock();
        let rtt = rtt.as_secs_f64();
        state.rtt = if state.rtt == 0.0 {
            rtt
        } else {
            state.rtt * 0.9 + rtt * 0.1
        };
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
        if ticket.0 == state.window {
            state.throttled_in_window = true;
            if state.learned_in != Some(ticket.0) {
                let succeeded = state.succeeded_in_window.max(1);
                state.budget = Some(state.budget.map_or(succeeded, |b| b.min(succeeded)));
                state.learned_in = Some(ticket.0);
            }
        }
        let wait = match retry_after {
            Some(wait) => wait,
            None if ticket.0 == state.window => {
                // Nothing more in this window: take all that is left of it.
                let left = state.budget.unwrap_or(0);
                state.sent_in_window = state.sent_in_window.max(left);
                Duration::ZERO
            }
            // The window has turned since the request went: go again now.
            None => Duration::ZERO,
        };
        if !wait.is_zero() {
            let until = Instant::now() + wait + self.jitter(&mut state);
            if state.paused_until.is_none_or(|current| current < until) {
                state.paused_until = Some(until);
            }
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

    /// (server clock - local clock, uncertainty of that), in seconds. A synchronised local
    /// clock (the `Date` headers agree with it) is exact to well under a second, finer than
    /// the headers can tell; otherwise the middle of what the headers allow.
    fn offset(&self, state: &State) -> (f64, f64) {
        let (low, high) = (state.offset_low, state.offset_high);
        if !(low.is_finite() && high.is_finite()) || (low <= 0.0 && 0.0 <= high) {
            return (0.0, 0.0);
        }
        ((low + high) / 2.0, (high - low) / 2.0)
    }

    /// Up to 2% of the window (at most a second).
    fn jitter(&self, state: &mut State) -> Duration {
        let spread = (self.window.as_secs_f64() * 0.02).min(1.0);
        Duration::from_secs_f64(spread * state.rng.unit())
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
            governor.succeeded(*ticket, Duration::from_millis(5));
        }
        governor.throttled(tickets[4], None);
        let status = governor.status();
        assert_eq!(status.budget, Some(4));
        assert_eq!(status.throttled, 1);
        // The window is used up: the next request waits for the next one.
        let waited = tokio::time::timeout(Duration::from_millis(100), governor.acquire()).await;
        assert!(waited.is_err(), "no more requests in a throttled window");
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
