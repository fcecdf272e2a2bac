//! Where contacts come from: the Chatwoot list API over HTTP.
//!
//! `client` sends one page request and turns every failure into a `FetchError` that names the
//! page, the cause and what to do; `page` is the response model, lenient where Chatwoot
//! versions and forks differ.

mod client;
mod error;
mod page;

pub use client::{ClientOptions, ContactsClient};
pub use error::FetchError;
pub use page::{ContactsPage, Meta};
