//! The request rate, shared by every worker: paced, learned from the server's own answers.
//!
//! Chatwoot's rack-attack counts requests per client IP in fixed windows (60 s by default,
//! aligned to the epoch on the server's clock) and answers 429 with no `Retry-After`; proxies in
//! front of it limit in other ways (nginx `limit_req` leaks a bucket and answers 503 or 429; CDNs
//! slide windows and send `Retry-After`). The window may have been used by someone else on the
//! same IP before the export started, the clocks may disagree, and the agents' dashboards share
//! the budget. So this governor assumes no model of the limiter:
//! - it **paces** requests evenly at `share` of the rate it believes the server sustains. An
//!   even pace stays inside every kind of limit at once (any window length, any phase, any
//!   bucket), needs no clock, and leaves the rest of each window to the other users of the IP
//!   instead of taking the whole budget in its first seconds;
//! - when the server refuses (429, or 503, which is what nginx's limiter answers by default), it
//!   stops every worker at once and sends **one probe** at a time until the server accepts
//!   again: after `Retry-After` when the server says, otherwise soon (0.25 s) and then at whole
//!   seconds, 1, 2, 5, 10, 15, 30, 60 s apart, where fixed windows turn. Once a pause has ended
//!   at a window's turn, probes count from that turn (the server's clock may be off, and puma
//!   sends no `Date`), and go straight to the next turn once the window's length is known;
//! - it **learns** the sustainable rate from a full cycle between two reopenings: the requests
//!   the server accepted in the cycle's last window, over that window. That is exactly the
//!   budget per window for a fixed window, and the leak rate for a bucket (short cycles are
//!   averaged over 5 s). A first, partial cycle (the window may have been used before the export
//!   started) proves nothing and changes nothing, so the rate never collapses on one early 429;
//! - a lone refusal followed by an accepted probe (a stray 503, or a pace just over a bucket's
//!   leak) steps the pace down 10%, and a calm spell steps it back up to the rate told or
//!   learned; past that only after a long calm, 5% at a time, so a rate learned while someone
//!   else was busy on the IP recovers.
//!
//! Receives: ticket requests, answers' outcomes (with `Retry-After`) and `Date` headers. Emits:
//! when each request may go, and a status for the progress bar and the manifest.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::rng::Rng;

/// A request's place: the phase it was sent in, and whether it is the probe of a pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

/// How the rate in force was arrived at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateMode {
    /// No limit told and none met: requests go as fast as concurrency allows.
    #[default]
    Unlimited,
    /// The rate told (`--rate-limit`), never contradicted by the server.
    Told,
    /// Learned from the server's refusals.
    Learned,
}

/// What the governor is doing, for the progress bar and the run report.
#[derive(Clone, Copy, Debug, Default)]
pub struct GovernorStatus {
    pub mode: RateMode,
    /// The rate the server is believed to sustain for this run, in requests a second.
    pub limit: Option<f64>,
    /// The rate requests are paced at (`share` of `limit`), in requests a second.
    pub pace: Option<f64>,
    /// The cycle between the last two reopenings, when one was measured: for a fixed-window
    /// limiter, its window.
    pub cycle: Option<Duration>,
    /// Time until requests may go again, if the server is refusing now.
    pub waiting: Option<Duration>,
    /// Time spent with every worker stopped by a refusal, over the run.
    pub paused: Duration,
    /// Requests sent in all phases.
    pub sent: u64,
    /// Of those, refused by a rate limit (429, or 503).
    pub throttled: u64,
    /// Whether the server sent `Retry-After` with a refusal.
    pub retry_after_seen: bool,
}

/// A pause: every worker stopped because the server refused.
#[derive(Debug)]
struct Pause {
    since: Instant,
    next_probe: Instant,
    probe_out: bool,
    probe_sent: Instant,
    /// Whether the quick first probe was scheduled (its failure says little).
    quick: bool,
    failed_probes: u32,
    refusals: u32,
}

/// The server accepted again after a pause.
#[derive(Clone, Copy, Debug)]
struct Reopening {
    at: Instant,
    /// Requests accepted before this reopening's probe, in the whole run.
    accepted_before: u64,
    /// Whether the pause before it showed a limit (not one stray refusal).
    strong: bool,
}

#[derive(Debug)]
struct State {
    limit: Option<f64>,
    mode: RateMode,
    next_slot: Instant,
    epoch: u64,
    pause: Option<Pause>,
    reopenings: VecDeque<Reopening>,
    accepted: u64,
    /// When the latest requests were accepted, to count those of the last window.
    accepted_log: VecDeque<Instant>,
    /// Outcomes of the latest answers, true for a refusal, to tell a limit from stray errors.
    recent: VecDeque<bool>,
    /// When the rate last went down or was last raised: raises wait for a quiet spell.
    calm_since: Instant,
    /// Whether a worker had to wait for the pace since `calm_since` (raising an idle rate
    /// proves nothing).
    pace_bound: bool,
    cycle: Option<Duration>,
    /// The rate last learned from a full cycle: raises go quickly back up to it, and past it
    /// only after a long calm.
    learned: Option<f64>,
    learned_at: Instant,
    paused: Duration,
    sent: u64,
    throttled: u64,
    retry_after_seen: bool,
    /// Where the server's window turned at the last reopening after a limit's pause (server
    /// clock seconds, as far as we know it): later probes count whole steps from there.
    anchor: Option<f64>,
    /// Whether the last limit's pause ended at a stepped probe (a window's turn), not at the
    /// quick one (a bucket's room).
    window_like: bool,
    /// Bounds on (server clock - local clock), in seconds, from `Date` headers.
    offset_low: f64,
    offset_high: f64,
    rng: Rng,
}

/// Shared request pacing.
#[derive(Debug)]
pub struct RateGovernor {
    /// The rate told, in requests a second: where the pace starts and the most it is raised to.
    told: Option<f64>,
    /// The part of the sustainable rate this run takes (the rest is left to the IP's other
    /// users: agents' dashboards, other integrations).
    share: f64,
    /// The local wall clock at `base`, so every reading of time comes from tokio's clock.
    wall_base: f64,
    base: Instant,
    state: Mutex<State>,
    reopened: Notify,
}

/// The first probe of a pause goes this soon: a leaky bucket has room again almost at once.
const FIRST_PROBE: Duration = Duration::from_millis(250);
/// Later probes go at whole multiples of these (server clock), one step further each time.
const PROBE_STEPS: [f64; 7] = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0];
/// A probe goes this long after a whole second of the server's clock, so it lands after it.
const PROBE_GUARD: f64 = 0.05;
/// Answers remembered to tell a limit from stray errors, and the refusals among them that
/// make even single refusals a limit's.
const RECENT: usize = 64;
const RECENT_REFUSALS: usize = 4;
/// Reopenings remembered (weak ones included) to find where the last full cycle began.
const CYCLES_KEPT: usize = 16;
/// Acceptances remembered: a 60 s window at 3,000 a minute, and room to spare.
const ACCEPTED_KEPT: usize = 8192;
/// A probe not answered in this long is taken as lost (its task ended): another may go.
const PROBE_LOST: Duration = Duration::from_secs(120);
/// A raise after this many cycles (or this long, whichever is more) without a refusal...
const CALM_CYCLES: f64 = 2.0;
const CALM_MIN: Duration = Duration::from_secs(2);
/// Cycles shorter than this (a bucket's, where the room regained in a pause inflates one
/// cycle's count) are averaged together up to it.
const AVERAGED_SPAN: Duration = Duration::from_secs(5);
/// ...by this much.
const RAISE: f64 = 1.05;
/// Raises stop at the rate learned until a long calm of this many shortest cycles (or this long, whichever is more).
const LONG_CALM_CYCLES: f64 = 30.0;
const LONG_CALM_MIN: Duration = Duration::from_secs(60);
/// The long calm, when the server sends `Retry-After`: this many shortest cycles.
const RETRY_AFTER_CALM_CYCLES: f64 = 5.0;
/// A lone refusal lowers the pace this much.
const STRAY_STEP: f64 = 0.9;

impl RateGovernor {
    /// `limit` requests per `window` told (None: none told; the rate is learned if the server
    /// ever refuses), of which the run takes `share` (0 to 1).
    pub fn new(limit: Option<u64>, window: Duration, share: f64) -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self::with_wall_clock(limit, window, share, wall)
    }

    /// As `new`, with the local wall clock reading `wall_base` seconds since the epoch now
    /// (tests run on tokio's paused clock, which the wall clock does not follow).
    fn with_wall_clock(limit: Option<u64>, window: Duration, share: f64, wall_base: f64) -> Self {
        let window = window.max(Duration::from_millis(100)).as_secs_f64();
        let told = limit.map(|limit| limit.max(1) as f64 / window);
        let base = Instant::now();
        Self {
            told,
            share: share.clamp(0.01, 1.0),
            wall_base,
            base,
            state: Mutex::new(State {
                limit: told,
                mode: if told.is_some() {
                    RateMode::Told
                } else {
                    RateMode::Unlimited
                },
                next_slot: base,
                epoch: 0,
                pause: None,
                reopenings: VecDeque::new(),
                accepted: 0,
                accepted_log: VecDeque::new(),
                recent: VecDeque::with_capacity(RECENT),
                calm_since: base,
                pace_bound: false,
                cycle: None,
                learned: None,
                learned_at: base,
                paused: Duration::ZERO,
                sent: 0,
                throttled: 0,
                retry_after_seen: false,
                anchor: None,
                window_like: false,
                offset_low: f64::NEG_INFINITY,
                offset_high: f64::INFINITY,
                rng: Rng::from_entropy(),
            }),
            reopened: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until a request may be sent and counts it.
    pub async fn acquire(&self) -> Ticket {
        loop {
            let reopened = self.reopened.notified();
            tokio::pin!(reopened);
            // Registered before the check, so a reopening between check and wait is not lost.
            reopened.as_mut().enable();
            let (wait, reserved) = {
                let mut state = self.lock();
                let now = Instant::now();
                if let Some(pause) = &mut state.pause {
                    if pause.probe_out && now - pause.probe_sent > PROBE_LOST {
                        pause.probe_out = false;
                    }
                    if !pause.probe_out && now >= pause.next_probe {
                        pause.probe_out = true;
                        pause.probe_sent = now;
                        state.sent += 1;
                        return Ticket {
                            epoch: state.epoch,
                            probe: true,
                        };
                    }
                    // A probe in flight ends the pause or schedules the next: wake on either.
                    let wait = if pause.probe_out {
                        Duration::from_millis(100)
                    } else {
                        pause.next_probe - now
                    };
                    (wait, None)
                } else {
                    match self.pace(&state) {
                        None => {
                            state.sent += 1;
                            return Ticket {
                                epoch: state.epoch,
                                probe: false,
                            };
                        }
                        Some(pace) => {
                            let slot = state.next_slot.max(now);
                            state.next_slot = slot + Duration::from_secs_f64(1.0 / pace);
                            if slot <= now {
                                state.sent += 1;
                                return Ticket {
                                    epoch: state.epoch,
                                    probe: false,
                                };
                            }
                            state.pace_bound = true;
                            (slot - now, Some(state.epoch))
                        }
                    }
                }
            };
            match reserved {
                // The slot is this worker's: it goes at its time unless a pause began meanwhile.
                Some(epoch) => {
                    tokio::time::sleep(wait).await;
                    let mut state = self.lock();
                    if state.epoch == epoch && state.pause.is_none() {
                        state.sent += 1;
                        return Ticket {
                            epoch,
                            probe: false,
                        };
                    }
                }
                None => {
                    let _ = tokio::time::timeout(wait, reopened).await;
                }
            }
        }
    }

    /// The pace in requests a second, or None for no pacing.
    fn pace(&self, state: &State) -> Option<f64> {
        state.limit.map(|limit| (limit * self.share).max(0.01))
    }

    /// The request with `ticket` was answered (anything but a rate limit's refusal).
    pub fn succeeded(&self, ticket: Ticket) {
        let mut state = self.lock();
        let now = Instant::now();
        state.accepted += 1;
        if state.accepted_log.len() == ACCEPTED_KEPT {
            state.accepted_log.pop_front();
        }
        state.accepted_log.push_back(now);
        remember(&mut state.recent, false);
        if ticket.probe && ticket.epoch == state.epoch && state.pause.is_some() {
            self.reopen(&mut state, now);
            drop(state);
            self.reopened.notify_waiters();
            return;
        }
        self.maybe_raise(&mut state, now);
    }

    /// The request with `ticket` was refused by a rate limit (429, or 503): pause everyone
    /// until a probe is accepted, after `retry_after` when the server said.
    pub fn throttled(&self, ticket: Ticket, retry_after: Option<Duration>) {
        let mut state = self.lock();
        let now = Instant::now();
        state.throttled += 1;
        state.retry_after_seen |= retry_after.is_some();
        remember(&mut state.recent, true);
        if ticket.epoch != state.epoch {
            // Sent before the latest reopening: its refusal is old news.
            return;
        }
        if state.pause.is_none() {
            state.epoch += 1;
            state.pause = Some(Pause {
                since: now,
                next_probe: now,
                probe_out: false,
                probe_sent: now,
                quick: false,
                failed_probes: 0,
                refusals: 0,
            });
        } else if ticket.probe {
            let pause = state.pause.as_mut().expect("paused");
            pause.failed_probes += 1;
            pause.probe_out = false;
        }
        let next = match retry_after {
            Some(wait) => now + wait + self.jitter(&mut state, wait.mul_f64(0.1)),
            None => self.next_probe(&mut state, now),
        };
        let pause = state.pause.as_mut().expect("paused");
        pause.refusals += 1;
        if ticket.probe || pause.refusals == 1 {
            pause.next_probe = next;
        } else if retry_after.is_some() {
            // The server's word wins over our schedule, but never brings a probe forward.
            pause.next_probe = pause.next_probe.max(next);
        }
    }

    /// When the next probe of a pause goes, with no `Retry-After`.
    fn next_probe(&self, state: &mut State, now: Instant) -> Instant {
        let Some(pause) = &state.pause else {
            return now;
        };
        let first = pause.failed_probes == 0 && pause.refusals == 0;
        // Once a pause has ended at a window's turn, the next goes straight to the turn: after
        // the window's length when it is known, else from whole seconds on. Otherwise (a
        // bucket, or nothing known yet) a quick probe first, then whole seconds and larger steps.
        let window = (state.window_like && state.anchor.is_some())
            .then(|| state.cycle.map(|cycle| cycle.as_secs_f64().round()))
            .map(|known| known.filter(|length| *length >= 1.0));
        let step = match (first, window) {
            (true, Some(Some(length))) => length,
            (true, Some(None)) => PROBE_STEPS[0],
            (true, None) => {
                let jitter = self.jitter(state, Duration::from_millis(50));
                state.pause.as_mut().expect("paused").quick = true;
                return now + FIRST_PROBE + jitter;
            }
            (false, _) => {
                let steps = pause.failed_probes.saturating_sub(u32::from(pause.quick));
                PROBE_STEPS[(steps as usize).min(PROBE_STEPS.len() - 1)]
            }
        };
        let server = self.wall(now) + self.offset(state);
        // Windows turn at whole multiples of their length from the epoch of the server's clock,
        // which is ours less an offset that `Date` may never tell: after one reopening, count
        // from where it turned instead.
        let anchor = state.anchor.unwrap_or(0.0);
        let boundary = anchor + ((server - anchor + 1e-3) / step).ceil() * step;
        let jitter = self.jitter(state, Duration::from_millis(50));
        now + Duration::from_secs_f64(boundary - server + PROBE_GUARD) + jitter
    }

    /// A probe was accepted: the pause ends, and a full cycle since the last reopening
    /// teaches the rate.
    fn reopen(&self, state: &mut State, now: Instant) {
        let pause = state.pause.take().expect("paused");
        state.paused += now - pause.since;
        state.epoch += 1;
        state.next_slot = now;
        let strong = pause.refusals >= 2
            || pause.failed_probes >= 1
            || state.recent.iter().filter(|refused| **refused).count() >= RECENT_REFUSALS;
        let reopening = Reopening {
            at: now,
            accepted_before: state.accepted - 1,
            strong,
        };
        state.reopenings.push_back(reopening);
        if strong {
            // The probe went a guard after a whole step; the window turned before it.
            state.anchor = Some(self.wall(pause.probe_sent) + self.offset(state) - PROBE_GUARD);
            state.window_like = !pause.quick || pause.failed_probes > 0;
        }
        if state.reopenings.len() > CYCLES_KEPT {
            state.reopenings.pop_front();
        }
        if !strong {
            // One refusal, and the next request accepted: a stray error, or a pace just over
            // a bucket's leak. A step down settles the second in a few refusals; the calm
            // after a stray raises the pace back within seconds (to the rate told or learned).
            if state.learned.is_none() {
                state.learned = state.limit;
            }
            state.limit = state.limit.map(|limit| limit * STRAY_STEP);
            state.calm_since = now;
            state.pace_bound = false;
            return;
        }
        // The cycle that ends here starts at the last reopening after a limit's pause (a
        // window's turn, a bucket's room): since then the server accepted all it would. Short
        // cycles (a bucket's) are averaged with the strong ones before them.
        let mut earlier = state.reopenings.iter().rev().skip(1).filter(|r| r.strong);
        let Some(mut from) = earlier.next().copied() else {
            return;
        };
        let cycle = now - from.at;
        // The shortest full cycle is a fixed window's length; longer ones span several.
        let shortest = state.cycle.map_or(cycle, |shortest| shortest.min(cycle));
        for before in earlier {
            if now - from.at >= AVERAGED_SPAN {
                break;
            }
            from = *before;
        }
        // Only the last window was surely full: a cycle of several windows (the pace had been
        // under the limit until a raise or someone else's burst) is measured over its last
        // one, or the rate learned would sink a little with every refusal.
        let start = from
            .at
            .max(now - shortest.max(AVERAGED_SPAN.min(now - from.at)));
        let span = (now - start).as_secs_f64();
        if span <= 0.0 {
            return;
        }
        let accepted = if start == from.at {
            reopening.accepted_before - from.accepted_before
        } else {
            let log = &state.accepted_log;
            // The probe's own acceptance is the last entry: the cycle ends before it.
            (log.len() - 1 - log.partition_point(|at| *at < start)) as u64
        } as f64;
        let rate = (accepted / span).max(1.0 / span);
        state.limit = Some(match self.told {
            Some(told) => rate.min(told),
            None => rate,
        });
        state.mode = RateMode::Learned;
        state.learned = state.limit;
        state.learned_at = now;
        state.cycle = Some(shortest);
        state.calm_since = now;
        state.pace_bound = false;
    }

    /// After a quiet spell at full pace, try a little faster, up to the rate told.
    fn maybe_raise(&self, state: &mut State, now: Instant) {
        if state.pause.is_some() || !state.pace_bound || state.learned.is_none() {
            return;
        }
        let Some(limit) = state.limit else { return };
        let calm = state
            .cycle
            .map_or(CALM_MIN, |cycle| cycle.mul_f64(CALM_CYCLES))
            .max(CALM_MIN);
        if now - state.calm_since < calm {
            return;
        }
        // A server that says when to come back makes a refusal cheap (no probing, no window
        // closed for everyone), and its whole-second `Retry-After` makes the rate learned low:
        // look past it sooner.
        let (cycles, least) = if state.retry_after_seen {
            (RETRY_AFTER_CALM_CYCLES, CALM_MIN)
        } else {
            (LONG_CALM_CYCLES, LONG_CALM_MIN)
        };
        let long_calm = state
            .cycle
            .map_or(least, |cycle| cycle.mul_f64(cycles))
            .max(least);
        let learned = state.learned.unwrap_or(limit);
        let raised = if limit < learned {
            // Back up to the rate learned, a lone refusal's step at a time.
            (limit / STRAY_STEP).min(learned)
        } else if now - state.learned_at >= long_calm {
            // Past it only after a long calm, when others on the IP may have left room; a
            // refusal then teaches the rate again.
            state.learned = Some(limit * RAISE);
            state.learned_at = now;
            limit * RAISE
        } else {
            return;
        };
        if raised <= limit {
            return;
        }
        state.limit = Some(self.told.map_or(raised, |told| raised.min(told)));
        state.calm_since = now;
        state.pace_bound = false;
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
            mode: state.mode,
            limit: state.limit,
            pace: self.pace(&state),
            cycle: state.cycle,
            waiting: state
                .pause
                .as_ref()
                .map(|pause| pause.next_probe.saturating_duration_since(now)),
            paused: state.paused
                + state
                    .pause
                    .as_ref()
                    .map_or(Duration::ZERO, |pause| now - pause.since),
            sent: state.sent,
            throttled: state.throttled,
            retry_after_seen: state.retry_after_seen,
        }
    }

    /// The local wall clock at `now`, in seconds since the epoch.
    fn wall(&self, now: Instant) -> f64 {
        self.wall_base + (now - self.base).as_secs_f64()
    }

    /// Server clock - local clock, in seconds: the middle of what the `Date` headers allow,
    /// or 0 when they agree with the local clock (or never came).
    fn offset(&self, state: &State) -> f64 {
        let (low, high) = (state.offset_low, state.offset_high);
        if !(low.is_finite() && high.is_finite()) || (low <= 0.0 && 0.0 <= high) {
            return 0.0;
        }
        (low + high) / 2.0
    }

    /// A random delay up to `spread`, so separate processes do not come back together.
    fn jitter(&self, state: &mut State, spread: Duration) -> Duration {
        spread.mul_f64(state.rng.unit())
    }
}

fn remember(recent: &mut VecDeque<bool>, refused: bool) {
    if recent.len() == RECENT {
        recent.pop_front();
    }
    recent.push_back(refused);
}

#[cfg(test)]
mod tests;
