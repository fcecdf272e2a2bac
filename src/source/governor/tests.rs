//! The governor against simulated limiters on tokio's paused clock: hours of fixed windows,
//! buckets and sliding windows run in milliseconds. The real limiters (rack-attack on Redis,
//! nginx) are in the integration tests; these cover the long windows and the many starts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

/// Where the simulated clocks start: a whole hour, so window phases are the test's choice.
const WALL: f64 = 1_800_000_000.0;

/// A server-side limit, judged at each request's arrival by the server's wall clock.
enum Limiter {
    /// rack-attack: `limit` a window, windows aligned to the epoch, refusals counted too.
    Fixed {
        limit: u64,
        window: f64,
        counts: HashMap<i64, u64>,
        retry_after: bool,
    },
    /// nginx `limit_req`: a bucket leaking `rate` a second with room for `burst`; refusals do
    /// not fill it.
    Bucket {
        rate: f64,
        burst: f64,
        level: f64,
        last: f64,
    },
    /// A CDN's sliding window: `limit` accepted in any `window`, `Retry-After` when refused.
    Sliding {
        limit: usize,
        window: f64,
        accepted: VecDeque<f64>,
    },
    /// No limit; every `every`-th request refused all the same (a stray 503).
    Stray { every: u64, seen: u64 },
}

impl Limiter {
    fn fixed(limit: u64, window: f64) -> Self {
        Limiter::Fixed {
            limit,
            window,
            counts: HashMap::new(),
            retry_after: false,
        }
    }

    /// Ok, or the refusal with its `Retry-After`.
    fn admit(&mut self, server: f64) -> Result<(), Option<Duration>> {
        match self {
            Limiter::Fixed {
                limit,
                window,
                counts,
                retry_after,
            } => {
                let key = (server / *window).floor() as i64;
                let count = counts.entry(key).or_default();
                *count += 1;
                if *count <= *limit {
                    return Ok(());
                }
                let left = (key + 1) as f64 * *window - server;
                Err(retry_after.then(|| Duration::from_secs_f64(left.ceil())))
            }
            Limiter::Bucket {
                rate,
                burst,
                level,
                last,
            } => {
                let drained = (*level - (server - *last) * *rate).max(0.0);
                if drained + 1.0 > *burst + 1.0 {
                    *level = drained;
                    *last = server;
                    return Err(None);
                }
                *level = drained + 1.0;
                *last = server;
                Ok(())
            }
            Limiter::Sliding {
                limit,
                window,
                accepted,
            } => {
                while accepted.front().is_some_and(|at| *at <= server - *window) {
                    accepted.pop_front();
                }
                if accepted.len() < *limit {
                    accepted.push_back(server);
                    return Ok(());
                }
                let free = accepted.front().expect("full") + *window - server;
                Err(Some(Duration::from_secs(free.ceil().max(1.0) as u64)))
            }
            Limiter::Stray { every, seen } => {
                *seen += 1;
                if (*seen).is_multiple_of(*every) {
                    Err(None)
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// One simulated export.
struct Run {
    limiter: Limiter,
    /// Requests the export needs answered.
    requests: u64,
    /// Told rate (limit, window s); None: `--rate-limit 0`.
    told: Option<(u64, u64)>,
    share: f64,
    /// Seconds into the server's current minute when the export starts.
    phase: f64,
    /// Server clock - local clock.
    offset: f64,
    /// Whether answers carry `Date`.
    date: bool,
    /// Requests another client sent in the current window just before the export.
    used_before: u64,
    /// Another client on the same IP: one request every this often.
    tab: Option<Duration>,
    workers: usize,
    latency: Duration,
}

impl Default for Run {
    fn default() -> Self {
        Self {
            limiter: Limiter::fixed(300, 60.0),
            requests: 600,
            told: Some((3000, 60)),
            share: 0.9,
            phase: 0.0,
            offset: 0.0,
            date: false,
            used_before: 0,
            tab: None,
            workers: 8,
            latency: Duration::from_millis(100),
        }
    }
}

#[derive(Debug)]
struct Outcome {
    secs: f64,
    sent: u64,
    refused: u64,
    tab_sent: u64,
    tab_refused: u64,
    /// The other client's requests after the first three minutes, and its refusals then.
    tab_late: (u64, u64),
    status: GovernorStatus,
}

impl Outcome {
    fn refused_share(&self) -> f64 {
        self.refused as f64 / self.sent as f64
    }
}

async fn simulate(run: Run) -> Outcome {
    let local0 = WALL + run.phase - run.offset;
    let (limit, window) = run.told.map_or((None, 60), |(l, w)| (Some(l), w));
    let governor = Arc::new(RateGovernor::with_wall_clock(
        limit,
        Duration::from_secs(window),
        run.share,
        local0,
    ));
    let base = Instant::now();
    let server_now = move || WALL + run.phase + (Instant::now() - base).as_secs_f64();
    let limiter = Arc::new(Mutex::new(run.limiter));
    for _ in 0..run.used_before {
        let _ = limiter.lock().expect("limiter").admit(server_now() - 0.5);
    }
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let tab = run.tab.map(|every| {
        let (limiter, done) = (Arc::clone(&limiter), Arc::clone(&done));
        tokio::spawn(async move {
            let (mut sent, mut refused, mut late) = (0u64, 0u64, (0u64, 0u64));
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                let refusal = u64::from(
                    limiter
                        .lock()
                        .expect("limiter")
                        .admit(server_now())
                        .is_err(),
                );
                sent += 1;
                refused += refusal;
                if start.elapsed() > Duration::from_secs(180) {
                    late = (late.0 + 1, late.1 + refusal);
                }
                tokio::time::sleep(every).await;
            }
            (sent, refused, late)
        })
    });
    let mut workers = Vec::new();
    for _ in 0..run.workers {
        let (governor, limiter) = (Arc::clone(&governor), Arc::clone(&limiter));
        let (next, refused) = (Arc::clone(&next), Arc::clone(&refused));
        let (latency, date) = (run.latency, run.date);
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < run.requests {
                loop {
                    let ticket = governor.acquire().await;
                    tokio::time::sleep(latency / 2).await;
                    let verdict = limiter.lock().expect("limiter").admit(server_now());
                    let stamped = server_now().floor();
                    tokio::time::sleep(latency / 2).await;
                    if date {
                        let received = local0 + (Instant::now() - base).as_secs_f64();
                        let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
                        governor.observe_date(at(stamped), at(received));
                    }
                    match verdict {
                        Ok(()) => {
                            governor.succeeded(ticket);
                            break;
                        }
                        Err(retry_after) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            governor.throttled(ticket, retry_after);
                        }
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    let secs = (Instant::now() - base).as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (tab_sent, tab_refused, tab_late) = match tab {
        Some(tab) => tab.await.expect("tab"),
        None => (0, 0, (0, 0)),
    };
    let status = governor.status();
    Outcome {
        secs,
        sent: status.sent,
        refused: refused.load(Ordering::Relaxed),
        tab_sent,
        tab_refused,
        tab_late,
        status,
    }
}

/// The export's throughput against what the limiter sustains (`rate` a second).
fn efficiency(outcome: &Outcome, requests: u64, rate: f64) -> f64 {
    requests as f64 / rate / outcome.secs
}

#[tokio::test(start_paused = true)]
async fn paces_a_told_limit_without_a_refusal() {
    let outcome = simulate(Run {
        told: Some((300, 60)),
        phase: 37.0,
        ..Run::default()
    })
    .await;
    assert_eq!(outcome.refused, 0, "{outcome:?}");
    let efficiency = efficiency(&outcome, 600, 5.0);
    assert!(
        (0.87..=0.91).contains(&efficiency),
        "{efficiency} {outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn takes_the_whole_limit_when_told_the_ip_is_its_own() {
    let outcome = simulate(Run {
        told: Some((300, 60)),
        share: 1.0,
        requests: 1200,
        ..Run::default()
    })
    .await;
    assert!(efficiency(&outcome, 1200, 5.0) >= 0.95, "{outcome:?}");
    assert!(outcome.refused_share() < 0.02, "{outcome:?}");
}

/// Chatwoot's default (3,000 a minute) told, 300 real, from several starts: the rate is
/// learned within a couple of windows and never collapses.
#[tokio::test(start_paused = true)]
async fn learns_a_smaller_fixed_window_from_any_start() {
    for (phase, used_before, offset, date) in [
        (0.0, 0, 0.0, false),
        (20.0, 0, 0.0, false),
        (10.0, 290, 0.0, false),
        (10.0, 0, 20.0, false),
        (10.0, 0, 20.0, true),
        (50.0, 0, -7.3, true),
    ] {
        let outcome = simulate(Run {
            requests: 1500,
            phase,
            used_before,
            offset,
            date,
            ..Run::default()
        })
        .await;
        let label = format!("phase {phase} used {used_before} offset {offset} date {date}");
        let efficiency = efficiency(&outcome, 1500, 5.0);
        assert!(efficiency >= 0.8, "{label}: {efficiency} {outcome:?}");
        assert!(
            outcome.refused_share() < 0.03,
            "{label}: {} {outcome:?}",
            outcome.refused_share()
        );
        // Learned, then raised a little now and then to find room others left.
        let limit = outcome.status.limit.expect("learned") * 60.0;
        assert!((270.0..=400.0).contains(&limit), "{label}: {limit}");
    }
}

#[tokio::test(start_paused = true)]
async fn learns_a_window_it_was_not_told() {
    let outcome = simulate(Run {
        limiter: Limiter::fixed(100, 10.0),
        requests: 1500,
        phase: 3.0,
        ..Run::default()
    })
    .await;
    let efficiency = efficiency(&outcome, 1500, 10.0);
    assert!(efficiency >= 0.8, "{efficiency} {outcome:?}");
    assert!(outcome.refused_share() < 0.03, "{outcome:?}");
    assert_eq!(
        outcome.status.cycle.map(|c| c.as_secs_f64().round()),
        Some(10.0)
    );
}

#[tokio::test(start_paused = true)]
async fn paces_a_leaky_bucket_instead_of_bursting() {
    for workers in [1, 8] {
        let outcome = simulate(Run {
            limiter: Limiter::Bucket {
                rate: 20.0,
                burst: 10.0,
                level: 0.0,
                last: 0.0,
            },
            requests: 2000,
            workers,
            latency: Duration::from_millis(20),
            ..Run::default()
        })
        .await;
        let efficiency = efficiency(&outcome, 2000, 20.0);
        assert!(efficiency >= 0.8, "{workers}: {efficiency} {outcome:?}");
        assert!(outcome.refused_share() < 0.02, "{workers}: {outcome:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn honours_retry_after_of_a_sliding_window() {
    let outcome = simulate(Run {
        limiter: Limiter::Sliding {
            limit: 10,
            window: 1.0,
            accepted: VecDeque::new(),
        },
        requests: 1000,
        latency: Duration::from_millis(20),
        ..Run::default()
    })
    .await;
    // Whole-second `Retry-After`s make each refusal a long pause and the rate learned low;
    // the pace climbs back past it between refusals.
    let efficiency = efficiency(&outcome, 1000, 10.0);
    assert!(efficiency >= 0.75, "{efficiency} {outcome:?}");
    assert!(outcome.refused_share() < 0.02, "{outcome:?}");
    assert!(outcome.status.retry_after_seen);
}

/// An agent's dashboard on the same IP, one request a second, keeps working: from the start
/// when the limit is told, and once it is learned (two windows) when a larger one was told.
#[tokio::test(start_paused = true)]
async fn leaves_room_for_a_dashboard_on_the_same_ip() {
    for told in [(300, 60), (3000, 60)] {
        let outcome = simulate(Run {
            told: Some(told),
            requests: 1500,
            tab: Some(Duration::from_secs(1)),
            phase: 12.0,
            ..Run::default()
        })
        .await;
        let tab = outcome.tab_refused as f64 / outcome.tab_sent as f64;
        let late = outcome.tab_late.1 as f64 / outcome.tab_late.0 as f64;
        // What the export can have: the limit less the dashboard's minute, 0.9 of it.
        let efficiency = efficiency(&outcome, 1500, 4.0 * 0.9);
        let label =
            format!("told {told:?}: tab {tab:.3}, late {late:.3}, efficiency {efficiency:.3}");
        if told.0 == 300 {
            assert!(tab < 0.05, "{label} {outcome:?}");
        }
        assert!(late < 0.02, "{label} {outcome:?}");
        assert!(efficiency >= 0.85, "{label} {outcome:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn stray_refusals_do_not_lower_the_rate() {
    let outcome = simulate(Run {
        limiter: Limiter::Stray { every: 97, seen: 0 },
        told: Some((600, 60)),
        requests: 1000,
        ..Run::default()
    })
    .await;
    // Each stray steps the pace down 10%, and the calm after it brings it back.
    assert_eq!(outcome.status.mode, RateMode::Told, "{outcome:?}");
    assert!(outcome.status.limit >= Some(9.0), "{outcome:?}");
    // The polite pace is 0.9 of the limit; each stray costs its pause and 2 s at 90%.
    assert!(efficiency(&outcome, 1000, 10.0) >= 0.83, "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn learns_from_nothing_told() {
    let outcome = simulate(Run {
        told: None,
        requests: 1500,
        phase: 30.0,
        ..Run::default()
    })
    .await;
    assert_eq!(outcome.status.mode, RateMode::Learned);
    let efficiency = efficiency(&outcome, 1500, 5.0);
    assert!(efficiency >= 0.8, "{efficiency} {outcome:?}");
    assert!(outcome.refused_share() < 0.03, "{outcome:?}");
}

#[test]
fn date_headers_narrow_the_clock_offset() {
    let governor = RateGovernor::new(Some(10), Duration::from_secs(60), 1.0);
    let at = |secs: f64| UNIX_EPOCH + Duration::from_secs_f64(secs);
    // The server is 10.3 s ahead; Date headers truncate to the second.
    governor.observe_date(at(1010.0), at(1000.0));
    governor.observe_date(at(1010.0), at(999.75));
    governor.observe_date(at(1011.0), at(1000.71));
    governor.observe_date(at(1010.0), at(1000.69));
    let state = governor.lock();
    assert!(state.offset_low <= 10.3 && state.offset_high >= 10.3);
    assert!(state.offset_high - state.offset_low < 0.1);
}
