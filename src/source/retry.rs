//! When and how long to wait before trying a page again.
//!
//! Receives a failed attempt (its error and the server's `Retry-After`, if any); emits whether
//! to retry and the delay: exponential backoff with full jitter (a random delay between zero
//! and `base * 2^attempt`, capped), so that many workers failing together do not come back
//! together. A `Retry-After` a proxy sends wins over the backoff.

use std::time::{Duration, SystemTime};

use super::error::{ConnectCause, FetchError};
use crate::rng::Rng;

/// How persistent to be.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt for errors that may pass (429s are not counted here:
    /// the rate governor owns them).
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 8,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The longest `Retry-After` honoured; a longer one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32, rng: &mut Rng) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max_delay);
        ceiling.mul_f64(rng.unit())
    }
}

impl FetchError {
    /// Whether a rate limit refused the request: 429, or 503, which nginx's `limit_req` answers
    /// by default (and an overloaded server means the same by it: slow down).
    pub fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            FetchError::RateLimited { .. } | FetchError::Status { status: 503, .. }
        )
    }

    /// Whether trying the same request again may succeed: connection trouble, time-outs, 5xx,
    /// 429, a body cut short or not JSON. Credentials, missing accounts, bad requests, DNS and
    /// TLS failures do not pass by themselves.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::RateLimited { .. }
            | FetchError::Timeout { .. }
            | FetchError::BodyDropped { .. }
            | FetchError::InvalidPage { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 408,
            FetchError::Connect { cause, .. } => {
                matches!(
                    cause,
                    ConnectCause::Refused | ConnectCause::TimedOut | ConnectCause::Other(_)
                )
            }
            FetchError::Unauthorized { .. }
            | FetchError::Forbidden { .. }
            | FetchError::AccountNotFound { .. }
            | FetchError::CrossOriginRedirect { .. }
            | FetchError::TooManyRedirects { .. }
            | FetchError::GaveUp { .. } => false,
        }
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = parse_http_date(value)?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// An HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`), as in `Date` and `Retry-After`.
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let secs = u64::try_from(at.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_an_exponential_cap() {
        let policy = RetryPolicy::default();
        let mut rng = Rng::new(1, 1);
        for retry in 1..12 {
            let cap =
                (Duration::from_millis(250) * 2u32.pow(retry - 1)).min(Duration::from_secs(30));
            let delays: Vec<Duration> = (0..200).map(|_| policy.backoff(retry, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= cap), "retry {retry}");
            assert!(
                delays.iter().any(|d| *d > cap / 2),
                "retry {retry}: spread up to the cap"
            );
            assert!(
                delays.iter().any(|d| *d < cap / 2),
                "retry {retry}: spread down to zero"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn transient_and_permanent_errors() {
        let transient = [
            FetchError::RateLimited { page: 1 },
            FetchError::Status {
                page: 1,
                status: 502,
                server_says: String::new(),
            },
            FetchError::BodyDropped {
                page: 1,
                detail: String::new(),
            },
            FetchError::InvalidPage {
                page: 1,
                detail: String::new(),
            },
            FetchError::Connect {
                page: 1,
                origin: String::new(),
                cause: ConnectCause::Refused,
            },
        ];
        let permanent = [
            FetchError::Unauthorized {
                page: 1,
                server_says: String::new(),
                hint: String::new(),
            },
            FetchError::AccountNotFound {
                page: 1,
                account_id: 1,
            },
            FetchError::Status {
                page: 1,
                status: 422,
                server_says: String::new(),
            },
            FetchError::Connect {
                page: 1,
                origin: String::new(),
                cause: ConnectCause::Dns,
            },
        ];
        assert!(transient.iter().all(FetchError::is_transient));
        assert!(!permanent.iter().any(FetchError::is_transient));
    }
}
