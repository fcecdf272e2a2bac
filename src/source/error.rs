//! Why a page could not be fetched, in words a user can act on.
//!
//! Every variant names the page and ends with what to do. None of them holds the token: server
//! text quoted here has been scrubbed by the client first.

/// A failed page request.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("authentication failed on page {page} (HTTP 401: {server_says}): {hint}")]
    Unauthorized {
        page: u64,
        server_says: String,
        hint: String,
    },
    #[error(
        "access denied on page {page} (HTTP 403: {server_says}): the token's user may lack access, or a proxy blocks the request"
    )]
    Forbidden { page: u64, server_says: String },
    #[error(
        "account {account_id} not found (HTTP 404 on page {page}): check --account-id and that --base-url is the Chatwoot you mean"
    )]
    AccountNotFound { page: u64, account_id: u64 },
    #[error(
        "rate limited (HTTP 429) on page {page}: lower --concurrency, or wait a minute and run again"
    )]
    RateLimited { page: u64 },
    #[error(
        "the server answered HTTP {status} on page {page} ({server_says}): run again later, or check the server's logs"
    )]
    Status {
        page: u64,
        status: u16,
        server_says: String,
    },
    #[error(
        "the server redirected page {page} (HTTP {status}) to another origin ({location}), where the token is never sent: pass that address as --base-url if it is the real Chatwoot"
    )]
    CrossOriginRedirect {
        page: u64,
        status: u16,
        location: String,
    },
    #[error(
        "page {page} was redirected more than 5 times within the server: check --base-url and the server's proxy settings"
    )]
    TooManyRedirects { page: u64 },
    #[error("cannot connect to {origin} for page {page}: {cause}")]
    Connect {
        page: u64,
        origin: String,
        cause: ConnectCause,
    },
    #[error(
        "page {page} timed out after {secs} s: the server is slow; raise --timeout-secs or lower --concurrency"
    )]
    Timeout { page: u64, secs: u64 },
    #[error("the connection dropped while reading page {page} ({detail}): run again")]
    BodyDropped { page: u64, detail: String },
    #[error(
        "page {page} is not a valid contacts page ({detail}): the server or a proxy sent something else; run again, and check --base-url if it persists"
    )]
    InvalidPage { page: u64, detail: String },
    #[error("gave up on page {page} after {attempts} attempts; the last: {last}")]
    GaveUp {
        page: u64,
        attempts: u32,
        last: Box<FetchError>,
    },
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectCause {
    #[error(
        "connection refused: is the server running, and are the host and port in --base-url right?"
    )]
    Refused,
    #[error("the host name does not resolve (DNS): check the host in --base-url")]
    Dns,
    #[error(
        "TLS failed ({0}): check that --base-url is the right https address and that its certificate is valid"
    )]
    Tls(String),
    #[error("the connection timed out: check the network and the host in --base-url")]
    TimedOut,
    #[error("{0}: check the network and --base-url")]
    Other(String),
}

impl FetchError {
    /// The page the error happened on.
    pub fn page(&self) -> u64 {
        match self {
            Self::Unauthorized { page, .. }
            | Self::Forbidden { page, .. }
            | Self::AccountNotFound { page, .. }
            | Self::RateLimited { page }
            | Self::Status { page, .. }
            | Self::CrossOriginRedirect { page, .. }
            | Self::TooManyRedirects { page }
            | Self::Connect { page, .. }
            | Self::Timeout { page, .. }
            | Self::BodyDropped { page, .. }
            | Self::InvalidPage { page, .. }
            | Self::GaveUp { page, .. } => *page,
        }
    }

    /// Whether the failure is about credentials or access (exit code 3).
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Forbidden { .. })
    }

    /// What went wrong in a few words, without the page or advice: for a request that is not
    /// a page (the attribute definitions), whose failure is a warning, not the run's error.
    pub fn short_cause(&self) -> String {
        match self.last() {
            Self::Unauthorized { server_says, .. } => format!("HTTP 401: {server_says}"),
            Self::Forbidden { server_says, .. } => format!("HTTP 403: {server_says}"),
            Self::AccountNotFound { .. } => "HTTP 404".into(),
            Self::RateLimited { .. } => "HTTP 429".into(),
            Self::Status {
                status,
                server_says,
                ..
            } => format!("HTTP {status}: {server_says}"),
            Self::CrossOriginRedirect { status, .. } => {
                format!("HTTP {status}, a redirect to another origin")
            }
            Self::TooManyRedirects { .. } => "too many redirects".into(),
            Self::Connect { .. } => "cannot connect".into(),
            Self::Timeout { secs, .. } => format!("timed out after {secs} s"),
            Self::BodyDropped { .. } => "the connection dropped".into(),
            Self::InvalidPage { detail, .. } => format!("not the expected JSON: {detail}"),
            Self::GaveUp { attempts, .. } => format!("gave up after {attempts} attempts"),
        }
    }

    /// The error behind retries, if this is one that gave up.
    pub fn last(&self) -> &FetchError {
        match self {
            Self::GaveUp { last, .. } => last,
            other => other,
        }
    }
}
