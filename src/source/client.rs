//! One HTTP request per page of `GET /api/v1/accounts/{id}/contacts`.
//!
//! Receives a page number; emits the parsed page or a `FetchError`. The token goes only in the
//! `api_access_token` header (marked sensitive) and only to the configured origin: redirects to
//! another origin are refused, because reqwest strips only its standard auth headers on such
//! redirects, not this custom one.

use std::error::Error as _;
use std::time::Duration;

use std::time::SystemTime;

use reqwest::header::{DATE, HeaderMap, HeaderValue, LOCATION, RETRY_AFTER, USER_AGENT};
use reqwest::{StatusCode, redirect};
use serde_json::Value;
use url::Url;

use super::definitions::{AttributeDefinition, parse_definitions};
use super::error::{ConnectCause, FetchError};
use super::page::ContactsPage;
use super::retry::{parse_http_date, parse_retry_after};
use crate::secret::ApiToken;

/// How to reach the account.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub base_url: Url,
    pub account_id: u64,
    pub token: ApiToken,
    /// The `sort` parameter (`created_at` unless the user picks another key).
    pub sort: String,
    /// Per-request time limit, body included.
    pub timeout: Duration,
}

/// One request's outcome (a page, unless said otherwise), with what the answer said about time.
#[derive(Debug)]
pub struct Attempt<T = ContactsPage> {
    pub outcome: Result<T, FetchError>,
    /// The answer's `Date` header.
    pub date: Option<SystemTime>,
    /// The answer's `Retry-After` header, as a delay.
    pub retry_after: Option<std::time::Duration>,
}

impl<T> Attempt<T> {
    fn failed(error: FetchError) -> Self {
        Self {
            outcome: Err(error),
            date: None,
            retry_after: None,
        }
    }
}

/// Fetches pages of one account's contact list.
#[derive(Debug)]
pub struct ContactsClient {
    http: reqwest::Client,
    url: Url,
    origin: String,
    options: ClientOptions,
}

impl ContactsClient {
    pub fn new(options: ClientOptions) -> Result<Self, reqwest::Error> {
        let mut headers = HeaderMap::new();
        headers.insert("api_access_token", options.token.header_value());
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("chatwoot-export/", env!("CARGO_PKG_VERSION"))),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(same_origin_redirects())
            .connect_timeout(Duration::from_secs(10))
            .timeout(options.timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        let url = account_url(&options.base_url, options.account_id, "contacts");
        let origin = options.base_url.origin().ascii_serialization();
        Ok(Self {
            http,
            url,
            origin,
            options,
        })
    }

    /// `scheme://host:port` of the server, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Fetches and parses one page (1-based) of the contact list.
    pub async fn page(&self, page: u64) -> Attempt {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("sort", &self.options.sort);
        self.send(page, self.http.get(url), parse_page).await
    }

    /// Fetches the account's custom attribute definitions. Errors name it as page 0: the
    /// caller words its own message.
    pub async fn attribute_definitions(&self) -> Attempt<Vec<AttributeDefinition>> {
        let url = account_url(
            &self.options.base_url,
            self.options.account_id,
            "custom_attribute_definitions",
        );
        self.send(0, self.http.get(url), |body| {
            parse_definitions(body).map_err(|err| err.to_string())
        })
        .await
    }

    /// Fetches the account's labels (`GET /labels`: `{"payload": [{...}, ...]}`), each as the
    /// JSON object the server sent. Errors name it as page 0.
    pub async fn labels(&self) -> Attempt<Vec<Value>> {
        let url = account_url(&self.options.base_url, self.options.account_id, "labels");
        self.send(0, self.http.get(url), parse_labels).await
    }

    /// Fetches one page of the contacts tagged `label` (`labels[]=TITLE`), without their
    /// inbox links, which the label walk does not need.
    pub async fn label_page(&self, label: &str, page: u64) -> Attempt {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("sort", &self.options.sort)
            .append_pair("labels[]", label)
            .append_pair("include_contact_inboxes", "false");
        self.send(page, self.http.get(url), parse_page).await
    }

    /// Fetches one page of the contacts created after `after_day` and before `before_day`
    /// (`YYYY-MM-DD`, both exclusive, either open), through `POST /contacts/filter`.
    pub async fn filter_page(
        &self,
        page: u64,
        after_day: Option<&str>,
        before_day: Option<&str>,
    ) -> Attempt {
        let conditions: Vec<(&str, &str, &str)> =
            [("is_greater_than", after_day), ("is_less_than", before_day)]
                .into_iter()
                .filter_map(|(operator, day)| Some(("created_at", operator, day?)))
                .collect();
        self.filter_days(page, &conditions).await
    }

    /// Fetches one page of `POST /contacts/filter` with day `conditions` (attribute key,
    /// operator, `YYYY-MM-DD`) joined by AND: `created_at` or `last_activity_at` with
    /// `is_greater_than` or `is_less_than`.
    pub async fn filter_days(&self, page: u64, conditions: &[(&str, &str, &str)]) -> Attempt {
        let mut url = self.url.clone();
        let path = format!("{}/filter", url.path());
        url.set_path(&path);
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("sort", &self.options.sort);
        let mut conditions: Vec<Value> = conditions
            .iter()
            .map(|(key, operator, day)| {
                serde_json::json!({
                    "attribute_key": key, "filter_operator": operator,
                    "values": [day], "query_operator": "AND"
                })
            })
            .collect();
        if let Some(last) = conditions.last_mut() {
            last["query_operator"] = Value::Null;
        }
        let body = serde_json::json!({ "payload": conditions }).to_string();
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(page, request, parse_page).await
    }

    async fn send<T>(
        &self,
        page: u64,
        request: reqwest::RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Attempt<T> {
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return Attempt::failed(self.transport_error(page, &err)),
        };
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let date = header(DATE).and_then(parse_http_date);
        let retry_after = header(RETRY_AFTER).and_then(|v| parse_retry_after(v, SystemTime::now()));
        let outcome = if status.is_redirection() {
            // Only where it points, without its query: a signed URL may carry secrets.
            let location = header(LOCATION)
                .and_then(|l| response.url().join(l).ok())
                .map_or_else(
                    || "an unreadable location".to_owned(),
                    |target| public_base_url(&target),
                );
            Err(FetchError::CrossOriginRedirect {
                page,
                status: status.as_u16(),
                location: self.options.token.scrub(&location),
            })
        } else {
            match response.bytes().await {
                Err(err) => Err(self.transport_error(page, &err)),
                Ok(body) if !status.is_success() => Err(self.status_error(page, status, &body)),
                // A parser's message may quote the body, and a broken server may echo anything.
                Ok(body) => parse(&body).map_err(|detail| FetchError::InvalidPage {
                    page,
                    detail: self.options.token.scrub(&detail),
                }),
            }
        };
        Attempt {
            outcome,
            date,
            retry_after,
        }
    }

    fn status_error(&self, page: u64, status: StatusCode, body: &[u8]) -> FetchError {
        let server_says = quote_server(&self.options.token, body);
        match status {
            StatusCode::UNAUTHORIZED => {
                let hint = unauthorized_hint(&server_says, self.options.account_id);
                FetchError::Unauthorized {
                    page,
                    server_says,
                    hint,
                }
            }
            StatusCode::FORBIDDEN => FetchError::Forbidden { page, server_says },
            StatusCode::NOT_FOUND => FetchError::AccountNotFound {
                page,
                account_id: self.options.account_id,
            },
            StatusCode::TOO_MANY_REQUESTS => FetchError::RateLimited { page },
            _ => FetchError::Status {
                page,
                status: status.as_u16(),
                server_says,
            },
        }
    }

    fn transport_error(&self, page: u64, err: &reqwest::Error) -> FetchError {
        let chain = self.options.token.scrub(&error_chain(err));
        if err.is_redirect() {
            return FetchError::TooManyRedirects { page };
        }
        if err.is_timeout() && !err.is_connect() {
            return FetchError::Timeout {
                page,
                secs: self.options.timeout.as_secs(),
            };
        }
        if err.is_body() || err.is_decode() {
            return FetchError::BodyDropped {
                page,
                detail: chain,
            };
        }
        let refused = chain_has(err, |e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        });
        let tls = chain_has(err, |e| e.is::<rustls::Error>());
        let lower = chain.to_lowercase();
        let cause = if refused {
            ConnectCause::Refused
        } else if lower.contains("dns")
            || lower.contains("lookup address")
            || lower.contains("name or service")
        {
            ConnectCause::Dns
        } else if tls
            || lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
        {
            ConnectCause::Tls(chain)
        } else if err.is_timeout() {
            ConnectCause::TimedOut
        } else if err.is_connect() {
            ConnectCause::Other(chain)
        } else {
            return FetchError::BodyDropped {
                page,
                detail: chain,
            };
        };
        FetchError::Connect {
            page,
            origin: self.origin.clone(),
            cause,
        }
    }
}

/// The base URL with anything that could hold a secret removed.
pub fn public_base_url(url: &Url) -> String {
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.set_query(None);
    clean.set_fragment(None);
    clean.as_str().trim_end_matches('/').to_owned()
}

/// The objects of a `{"payload": [...]}` body (items that are not objects are skipped).
fn parse_labels(body: &[u8]) -> Result<Vec<Value>, String> {
    #[derive(serde::Deserialize)]
    struct Labels {
        payload: Vec<Value>,
    }
    let labels: Labels = serde_json::from_slice(body).map_err(|err| err.to_string())?;
    Ok(labels
        .payload
        .into_iter()
        .filter(Value::is_object)
        .collect())
}

fn parse_page(body: &[u8]) -> Result<ContactsPage, String> {
    ContactsPage::from_body(body).map_err(|err| err.to_string())
}

/// `{base}/api/v1/accounts/{id}/{resource}`, keeping any path prefix of the base URL (Chatwoot
/// served under `/chatwoot`, say).
fn account_url(base: &Url, account_id: u64, resource: &str) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}/api/v1/accounts/{account_id}/{resource}"));
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// Redirects followed within the origin before a page fails.
const MAX_REDIRECTS: usize = 5;

/// Follows redirects within the origin; stops at one to another origin, which `page` then
/// reports. The token header must never reach a host the user did not name.
fn same_origin_redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().map(Url::origin);
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if first.as_ref() == Some(&attempt.url().origin()) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// What the server said, for an error message, without the token: scrubbed before the text
/// is cut short (so no piece of it survives the cut) and after JSON unescaping (so an escaped
/// copy does not survive either).
fn quote_server(token: &ApiToken, body: &[u8]) -> String {
    let raw = token.scrub(&String::from_utf8_lossy(body));
    token.scrub(&server_message(raw.as_bytes()))
}

/// The error text of a Chatwoot error body (`{"error": ...}` or `{"errors": [...]}`), else the
/// start of the body on one line.
fn server_message(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        if let Some(text) = json.get("error").and_then(Value::as_str) {
            return text.to_owned();
        }
        if let Some(Value::Array(items)) = json.get("errors") {
            let texts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if !texts.is_empty() {
                return texts.join("; ");
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None if line.is_empty() => "empty body".to_owned(),
        None => line,
    }
}

/// What to do about a 401, from Chatwoot's message (see the API notes, section 4).
fn unauthorized_hint(server_says: &str, account_id: u64) -> String {
    let says = server_says.to_lowercase();
    if says.contains("invalid access token") {
        "the token is not valid: copy it again from Profile settings > Access Token into CHATWOOT_API_TOKEN".into()
    } else if says.contains("bots") {
        "this is a bot or platform-app token, which cannot list contacts: use a user's access token"
            .into()
    } else if says.contains("not authorized to access this account") {
        format!("the token's user is not a member of account {account_id}: check --account-id")
    } else if says.contains("suspended") {
        "the account is suspended: ask the Chatwoot administrator".into()
    } else if says.contains("sign in") {
        "no token reached the server: a proxy may drop headers with underscores (nginx needs underscores_in_headers on)".into()
    } else {
        "check CHATWOOT_API_TOKEN and --account-id".into()
    }
}

/// Whether `test` holds for the error or any cause, looking inside `io::Error` wrappers too
/// (their `source()` skips the wrapped error itself).
fn chain_has(
    err: &reqwest::Error,
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = err.source().into_iter().collect();
    while let Some(cause) = pending.pop() {
        if test(cause) {
            return true;
        }
        if let Some(inner) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        pending.extend(cause.source());
    }
    false
}

/// An error and its causes on one line.
fn error_chain(err: &reqwest::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_loses_credentials_and_query() {
        let url =
            Url::parse("https://user:pw@chat.example.com/cw/?api_access_token=x#f").expect("valid");
        assert_eq!(public_base_url(&url), "https://chat.example.com/cw");
    }

    #[test]
    fn account_urls_keep_a_path_prefix() {
        let cases = [
            (
                "https://app.chatwoot.com",
                "https://app.chatwoot.com/api/v1/accounts/7/contacts",
            ),
            (
                "https://x.example/chatwoot/",
                "https://x.example/chatwoot/api/v1/accounts/7/contacts",
            ),
            (
                "http://127.0.0.1:3000/?a=b",
                "http://127.0.0.1:3000/api/v1/accounts/7/contacts",
            ),
        ];
        for (base, expected) in cases {
            let base = Url::parse(base).expect("valid url");
            assert_eq!(account_url(&base, 7, "contacts").as_str(), expected);
        }
    }

    #[test]
    fn server_messages_from_both_error_shapes() {
        assert_eq!(
            server_message(br#"{"error":"Invalid Access Token"}"#),
            "Invalid Access Token"
        );
        assert_eq!(
            server_message(br#"{"errors":["You need to sign in or sign up before continuing."]}"#),
            "You need to sign in or sign up before continuing."
        );
        assert_eq!(server_message(b"Retry later\n"), "Retry later");
        assert_eq!(server_message(b""), "empty body");
    }

    #[test]
    fn each_401_gets_its_own_hint() {
        for (says, needle) in [
            ("Invalid Access Token", "not valid"),
            ("Access to this endpoint is not authorized for bots", "bot"),
            (
                "You are not authorized to access this account",
                "not a member of account 9",
            ),
            ("Account is suspended", "suspended"),
            ("You need to sign in or sign up before continuing.", "proxy"),
        ] {
            assert!(unauthorized_hint(says, 9).contains(needle), "{says}");
        }
    }

    #[test]
    fn quoted_server_text_holds_no_piece_of_the_token() {
        let token = ApiToken::new("it-s3cret-token-7f3a9c2e").expect("token");
        // The token straddles the 120-character cut of a long body.
        let body = format!("{}it-s3cret-token-7f3a9c2e and more", "x".repeat(110));
        let quoted = quote_server(&token, body.as_bytes());
        assert!(!quoted.contains("it-s3cret"), "{quoted}");
        // A JSON-escaped copy turns into the token once parsed.
        let quoted = quote_server(&token, br#"{"error":"bad \u0069t-s3cret-token-7f3a9c2e"}"#);
        assert_eq!(quoted, "bad ****");
    }
}
