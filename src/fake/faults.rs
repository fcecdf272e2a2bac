//! The trouble the fake server makes on purpose: rate limiting, server errors, dropped
//! connections, one malformed page.
//!
//! Receives each request's sequence number and the time; emits what to do with it. Decisions
//! come from the seed and the request number, so a run with one request in flight at a time
//! meets the same faults every time. The rate limit copies rack-attack's `req/ip` throttle:
//! fixed windows aligned to the Unix epoch, every request counted (throttled ones too), and a
//! plain-text `Retry later` 429 without `Retry-After`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::rng::Rng;

/// How the fake server misbehaves.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Share of requests answered 500, 502 or 503.
    pub fail_rate: f64,
    /// Share of requests whose connection is closed halfway through the body.
    pub drop_rate: f64,
    /// At most this many requests per window; more get a 429.
    pub rate_limit: Option<u64>,
    pub rate_window_secs: u64,
    /// Answer this page once with a body that is not valid JSON.
    pub malformed_page: Option<u64>,
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
pub enum Fault {
    None,
    Throttle,
    ServerError(u16),
    DropConnection,
    Malformed,
}

/// The fault state of one server.
#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    seed: u64,
    /// (window number, requests counted in it).
    window: Mutex<(u64, u64)>,
    /// The most requests counted in one window so far.
    busiest: AtomicU64,
    malformed_served: AtomicBool,
}

impl Faults {
    pub fn new(config: FaultConfig, seed: u64) -> Self {
        Self {
            config,
            seed,
            window: Mutex::new((0, 0)),
            busiest: AtomicU64::new(0),
            malformed_served: AtomicBool::new(false),
        }
    }

    /// Decides the fate of request number `request` for `page`.
    pub fn decide(&self, request: u64, page: u64) -> Fault {
        if let Some(limit) = self.config.rate_limit {
            let window_secs = self.config.rate_window_secs.max(1);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            if window.0 != now / window_secs {
                *window = (now / window_secs, 0);
            }
            window.1 += 1;
            self.busiest.fetch_max(window.1, Ordering::SeqCst);
            if window.1 > limit {
                return Fault::Throttle;
            }
        }
        if self.config.malformed_page == Some(page)
            && !self.malformed_served.swap(true, Ordering::SeqCst)
        {
            return Fault::Malformed;
        }
        let mut rng = Rng::new(self.seed ^ 0xFA17_5EED, request);
        let roll = rng.below(1_000_000) as f64 / 1_000_000.0;
        if roll < self.config.fail_rate {
            return Fault::ServerError(*rng.pick(&[500, 502, 503]));
        }
        if roll < self.config.fail_rate + self.config.drop_rate {
            return Fault::DropConnection;
        }
        Fault::None
    }

    /// The most requests the rate limit counted in one window (0 without a rate limit).
    pub fn busiest_window(&self) -> u64 {
        self.busiest.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_roughly_honoured_and_repeatable() {
        let config = FaultConfig {
            fail_rate: 0.1,
            drop_rate: 0.05,
            ..FaultConfig::default()
        };
        let faults = Faults::new(config.clone(), 7);
        let decisions: Vec<Fault> = (0..10_000).map(|n| faults.decide(n, 2)).collect();
        let errors = decisions
            .iter()
            .filter(|d| matches!(d, Fault::ServerError(_)))
            .count();
        let drops = decisions
            .iter()
            .filter(|d| **d == Fault::DropConnection)
            .count();
        assert!((800..1200).contains(&errors), "{errors}");
        assert!((350..650).contains(&drops), "{drops}");
        let again = Faults::new(config, 7);
        assert!((0..10_000).all(|n| again.decide(n, 2) == decisions[n as usize]));
    }

    #[test]
    fn the_window_throttles_past_the_limit() {
        let faults = Faults::new(
            FaultConfig {
                rate_limit: Some(5),
                rate_window_secs: 3600,
                ..FaultConfig::default()
            },
            1,
        );
        let throttled = (0..8)
            .filter(|n| faults.decide(*n, 1) == Fault::Throttle)
            .count();
        // Exactly the three past the limit, unless the hour turned during the test.
        assert!((1..=3).contains(&throttled), "{throttled}");
        assert!((6..=8).contains(&faults.busiest_window()));
    }

    #[test]
    fn the_malformed_page_is_malformed_once() {
        let faults = Faults::new(
            FaultConfig {
                malformed_page: Some(3),
                ..FaultConfig::default()
            },
            1,
        );
        assert_eq!(faults.decide(1, 3), Fault::Malformed);
        assert_eq!(faults.decide(2, 3), Fault::None);
    }
}
