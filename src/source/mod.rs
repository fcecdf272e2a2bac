//! Where contacts come from: the Chatwoot list API over HTTP.
//!
//! `client` sends one request and turns every failure into a `FetchError` that names the page, the
//! cause and what to do; `page` is the response model, lenient where Chatwoot versions and forks
//! differ, and `definitions` the custom attribute definitions' model. `fetcher` makes requests
//! survive a real server: `retry` (backoff with jitter), `governor` (the shared per-window request
//! budget) and `concurrency` (adaptive, AIMD).

mod client;
mod concurrency;
mod definitions;
mod error;
mod fetcher;
mod governor;
mod page;
mod retry;

pub use client::{Attempt, ClientOptions, ContactsClient, public_base_url};
pub use definitions::AttributeDefinition;
pub use error::{ConnectCause, FetchError};
pub use fetcher::{FetchOptions, FetchStatus, Fetcher};
pub use governor::{GovernorStatus, RateGovernor, RateMode};
pub use page::{Contacts, ContactsPage, Meta};
pub use retry::RetryPolicy;
