//! Page requests that survive a real server: retries, the shared rate budget and adaptive
//! concurrency around the plain HTTP client.
//!
//! Receives page numbers (or filter pages, for drift repair); emits parsed pages, or a
//! `FetchError` once a permanent error arrives or retries are exhausted. Every attempt first
//! takes a place in flight (`concurrency`) and then a request from the window's budget
//! (`governor`); a rate limit's refusals (429, and 503, nginx's `limit_req` default) go back to
//! the governor, which pauses everyone and learns the server's rate, and do not use up the page's
//! retries; other transient errors back off with full jitter (`retry`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::client::{Attempt, ContactsClient};
use super::concurrency::AdaptiveConcurrency;
use super::definitions::AttributeDefinition;
use super::error::FetchError;
use super::governor::{GovernorStatus, RateGovernor};
use super::page::ContactsPage;
use super::retry::RetryPolicy;
use crate::rng::Rng;

/// Until the server has answered once, a connection error is retried only this often: a
/// server that never answered is more likely a wrong --base-url than a passing fault.
const RETRIES_BEFORE_FIRST_ANSWER: u32 = 2;

/// The attribute definitions are worth a retry or two, not the wait a page is worth: the
/// export goes on without them, and page 1's contacts wait for them.
const DEFINITIONS_RETRIES: u32 = 2;

/// A page gives up after this many 429s in a row: the server's limit is not one a window
/// can satisfy (another client on the same IP uses all of it, say).
const MAX_THROTTLES_PER_PAGE: u32 = 50;

/// How to fetch.
#[derive(Clone, Copy, Debug)]
pub struct FetchOptions {
    /// Most requests in flight.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Requests per window (None: learn from 429s).
    pub rate_limit: Option<u64>,
    pub rate_window: Duration,
    /// The part of the server's rate this run takes (the rest is left to the IP's other users).
    pub rate_share: f64,
}

/// What the fetcher is doing, for the progress bar, the summary and the manifest.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchStatus {
    /// The budget's state; `sent` and `throttled` count this fetcher's requests only, also
    /// when the governor is shared with other accounts.
    pub governor: GovernorStatus,
    pub concurrency: usize,
    /// Attempts repeated after a transient error (429s not counted).
    pub retries: u64,
}

/// Fetches pages with retries, a rate budget and adaptive concurrency.
#[derive(Debug)]
pub struct Fetcher {
    client: ContactsClient,
    retry: RetryPolicy,
    governor: Arc<RateGovernor>,
    concurrency: AdaptiveConcurrency,
    retries: AtomicU64,
    /// This fetcher's requests and 429s (the governor counts every fetcher sharing it).
    sent: AtomicU64,
    throttled: AtomicU64,
    answered: std::sync::atomic::AtomicBool,
}

impl Fetcher {
    /// A fetcher with its own request budget (`options.rate_limit` per `options.rate_window`).
    pub fn new(client: ContactsClient, options: FetchOptions) -> Self {
        let governor = Arc::new(RateGovernor::new(
            options.rate_limit,
            options.rate_window,
            options.rate_share,
        ));
        Self::with_governor(client, options, governor)
    }

    /// A fetcher that takes its requests from `governor`, shared with other fetchers to the
    /// same host: Chatwoot limits requests per client IP, not per account, so exports of
    /// several accounts in one run must share one budget. The governor's own limit and
    /// window apply; `options.rate_limit` and `options.rate_window` are not used.
    pub fn with_governor(
        client: ContactsClient,
        options: FetchOptions,
        governor: Arc<RateGovernor>,
    ) -> Self {
        Self {
            client,
            retry: options.retry,
            governor,
            concurrency: AdaptiveConcurrency::new(options.concurrency),
            retries: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            answered: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Page `page` (1-based) of the contact list.
    pub async fn page(&self, page: u64) -> Result<ContactsPage, FetchError> {
        self.with_retries(page, self.retry.max_retries, || self.client.page(page))
            .await
    }

    /// Page `page` of the contacts created between two days (exclusive, either open).
    pub async fn filter_page(
        &self,
        page: u64,
        after_day: Option<&str>,
        before_day: Option<&str>,
    ) -> Result<ContactsPage, FetchError> {
        self.with_retries(page, self.retry.max_retries, || {
            self.client.filter_page(page, after_day, before_day)
        })
        .await
    }

    /// Page `page` of `POST /contacts/filter` with day conditions (see
    /// `ContactsClient::filter_days`).
    pub async fn filter_days(
        &self,
        page: u64,
        conditions: &[(&str, &str, &str)],
    ) -> Result<ContactsPage, FetchError> {
        self.with_retries(page, self.retry.max_retries, || {
            self.client.filter_days(page, conditions)
        })
        .await
    }

    /// The account's custom attribute definitions (contact attributes only), through the same
    /// budget, concurrency and retries as the pages.
    pub async fn attribute_definitions(&self) -> Result<Vec<AttributeDefinition>, FetchError> {
        let retries = self.retry.max_retries.min(DEFINITIONS_RETRIES);
        self.with_retries(0, retries, || self.client.attribute_definitions())
            .await
    }

    /// The account's labels, each as the JSON object the server sent.
    pub async fn labels(&self) -> Result<Vec<serde_json::Value>, FetchError> {
        self.with_retries(0, self.retry.max_retries, || self.client.labels())
            .await
    }

    /// Page `page` of the contacts tagged `label`, through the same budget and retries.
    pub async fn label_page(&self, label: &str, page: u64) -> Result<ContactsPage, FetchError> {
        self.with_retries(page, self.retry.max_retries, || {
            self.client.label_page(label, page)
        })
        .await
    }

    pub fn status(&self) -> FetchStatus {
        FetchStatus {
            governor: GovernorStatus {
                sent: self.sent.load(Ordering::Relaxed),
                throttled: self.throttled.load(Ordering::Relaxed),
                ..self.governor.status()
            },
            concurrency: self.concurrency.limit(),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    async fn with_retries<T, F, Fut>(
        &self,
        page: u64,
        max_retries: u32,
        attempt: F,
    ) -> Result<T, FetchError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let mut rng = Rng::from_entropy();
        let (mut retries, mut throttles) = (0u32, 0u32);
        loop {
            let permit = self.concurrency.acquire().await;
            let ticket = self.governor.acquire().await;
            self.sent.fetch_add(1, Ordering::Relaxed);
            let answer = attempt().await;
            if let Some(date) = answer.date {
                self.governor.observe_date(date, SystemTime::now());
            }
            let connect_error = matches!(answer.outcome, Err(FetchError::Connect { .. }));
            if !connect_error {
                self.answered.store(true, Ordering::Relaxed);
            }
            let error = match answer.outcome {
                Ok(page) => {
                    self.governor.succeeded(ticket);
                    permit.done(false);
                    return Ok(page);
                }
                Err(error) => error,
            };
            if error.is_rate_limit() {
                drop(permit);
                self.governor.throttled(ticket, answer.retry_after);
                self.throttled.fetch_add(1, Ordering::Relaxed);
                throttles += 1;
                if throttles >= MAX_THROTTLES_PER_PAGE {
                    return Err(self.gave_up(page, retries + throttles, error));
                }
                continue;
            }
            self.governor.succeeded(ticket);
            throttles = 0;
            if !error.is_transient() {
                drop(permit);
                return Err(error);
            }
            permit.done(true);
            let max_retries = if connect_error && !self.answered.load(Ordering::Relaxed) {
                max_retries.min(RETRIES_BEFORE_FIRST_ANSWER)
            } else {
                max_retries
            };
            if retries >= max_retries {
                return Err(self.gave_up(page, retries + 1, error));
            }
            retries += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            let delay = answer
                .retry_after
                .unwrap_or_else(|| self.retry.backoff(retries, &mut rng));
            tokio::time::sleep(delay).await;
        }
    }

    fn gave_up(&self, page: u64, attempts: u32, last: FetchError) -> FetchError {
        FetchError::GaveUp {
            page,
            attempts,
            last: Box::new(last),
        }
    }
}
