//! The fake Chatwoot HTTP server.
//!
//! Receives a `FakeServerConfig`; serves `GET /api/v1/accounts/{id}/contacts` and
//! `GET /api/v1/accounts/{id}/custom_attribute_definitions` on a loopback port. It follows the
//! real API (see shared/chatwoot-contacts-api.md): 15 contacts a page, `page` read like Ruby's
//! `to_i` and echoed back as a string in `meta.current_page` (the integer 1 when absent), a page
//! past the end is an empty payload, `sort` keys with `-` for descending and unknown keys
//! ignored, and the 401/404 bodies of each authentication failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::data::FakeAccount;

/// Contacts per page, as `RESULTS_PER_PAGE` in Chatwoot's contacts controller.
pub const PAGE_SIZE: u64 = 15;

/// What the fake server serves and how.
#[derive(Clone, Debug)]
pub struct FakeServerConfig {
    pub contacts: u64,
    pub seed: u64,
    /// The one account the token's user belongs to. `account_id + 1` exists but the user is
    /// not a member (401); any other id does not exist (404).
    pub account_id: u64,
    /// The user token the server accepts.
    pub token: String,
    /// A token the server treats as an AgentBot's (401 "not authorized for bots").
    pub bot_token: String,
    /// Added to every answer.
    pub latency: Duration,
    /// Drift: after every this many contact requests, one new contact is created (with the
    /// newest `created_at`, so it lands at the end of an ascending walk and at the front of
    /// a descending one).
    pub grow_every: Option<u64>,
    /// Answers this page once with a body that is not valid JSON.
    pub malformed_page: Option<u64>,
}

impl Default for FakeServerConfig {
    fn default() -> Self {
        Self {
            contacts: 1000,
            seed: 42,
            account_id: 1,
            token: "fake-token".into(),
            bot_token: "fake-bot-token".into(),
            latency: Duration::ZERO,
            grow_every: None,
            malformed_page: None,
        }
    }
}

struct Shared {
    config: FakeServerConfig,
    account: FakeAccount,
    /// Listing orders for sort keys other than created_at, built on first use.
    orders: Mutex<HashMap<String, Arc<Vec<u64>>>>,
    requests: AtomicU64,
    /// Contacts the account holds now (grows under `grow_every`).
    live: AtomicU64,
    malformed_served: std::sync::atomic::AtomicBool,
}

/// A running fake server; dropping it (or `shutdown`) stops it.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Binds `127.0.0.1:port` (0 picks a free port) and starts serving on the current runtime.
    pub async fn start(config: FakeServerConfig, port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            account: FakeAccount::new(config.seed, config.contacts),
            live: AtomicU64::new(config.contacts),
            config,
            orders: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            malformed_served: std::sync::atomic::AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/api/v1/accounts/{account_id}/contacts", get(list_contacts))
            .route(
                "/api/v1/accounts/{account_id}/custom_attribute_definitions",
                get(list_definitions),
            )
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                eprintln!("fake server stopped: {err}");
            }
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL to export from.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far, whatever their status.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    pub fn account(&self) -> &FakeAccount {
        &self.shared.account
    }

    /// How many contacts the account holds now (more than configured after growth).
    pub fn live_contacts(&self) -> u64 {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// Chatwoot's answers to a request that may not read `account_id`, or `None` when it may.
fn refuse(shared: &Shared, headers: &HeaderMap, account_id: &str) -> Option<Response> {
    let config = &shared.config;
    let Some(token) = headers.get("api_access_token") else {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"errors": ["You need to sign in or sign up before continuing."]}),
        ));
    };
    if token.as_bytes() == config.bot_token.as_bytes() {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "Access to this endpoint is not authorized for bots"}),
        ));
    }
    if token.as_bytes() != config.token.as_bytes() {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "Invalid Access Token"}),
        ));
    }
    match account_id.parse::<u64>() {
        Ok(id) if id == config.account_id => None,
        Ok(id) if id == config.account_id + 1 => Some(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "You are not authorized to access this account"}),
        )),
        _ => Some(json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "Resource could not be found"}),
        )),
    }
}

/// Ruby's `String#to_i`: leading white space, an optional sign, then digits; 0 when none.
fn ruby_to_i(text: &str) -> i64 {
    let text = text.trim_start();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse::<i64>().map(|n| sign * n).unwrap_or(0)
}

async fn list_contacts(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    // The latency counts from the request's arrival and includes the time spent building the
    // answer, as a real server's does; otherwise, with many requests in flight, the fake's own
    // CPU would add to it and the latency-bound benchmark would time the fake server.
    let answer_at = tokio::time::Instant::now() + shared.config.latency;
    let response = contacts_response(&shared, &account_id, &query, &headers);
    tokio::time::sleep_until(answer_at).await;
    response
}

fn contacts_response(
    shared: &Shared,
    account_id: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    let served = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(refusal) = refuse(shared, headers, account_id) {
        return refusal;
    }
    let (current_page, page) = match query.get("page") {
        Some(raw) => (Value::from(raw.as_str()), ruby_to_i(raw)),
        None => (Value::from(1), 1),
    };
    let page = page.max(1) as u64;
    if shared.config.malformed_page == Some(page)
        && !shared.malformed_served.swap(true, Ordering::SeqCst)
    {
        let truncated = r#"{"meta": {"count": 1, "current_page": "1"}, "payl"#;
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            truncated,
        )
            .into_response();
    }
    if shared
        .config
        .grow_every
        .is_some_and(|every| every > 0 && served.is_multiple_of(every))
    {
        shared.live.fetch_add(1, Ordering::SeqCst);
    }
    let offset = PAGE_SIZE * (page - 1);
    let total = shared.live.load(Ordering::SeqCst);
    let sort = query.get("sort").map(String::as_str).unwrap_or("");
    // Newest first is computed, not cached, so it follows growth.
    let newest_first = sort.split(',').any(|key| key.trim() == "-created_at");
    let order = if newest_first {
        None
    } else {
        listing_order(shared, sort)
    };
    let payload: Vec<Value> = (offset..total.min(offset.saturating_add(PAGE_SIZE)))
        .filter_map(|position| {
            let index = match &order {
                Some(order) => *order.get(position as usize)?,
                None if newest_first => total - 1 - position,
                None => position,
            };
            Some(shared.account.contact(index))
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"meta": {"count": total, "current_page": current_page}, "payload": payload}),
    )
}

async fn list_definitions(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(refusal) = refuse(&shared, &headers, &account_id) {
        return refusal;
    }
    json_response(
        StatusCode::OK,
        &shared.account.custom_attribute_definitions(),
    )
}

/// The listing order for a `sort` parameter, or `None` for index order (`created_at`
/// ascending, which is also what an unknown key gives here).
fn listing_order(shared: &Shared, sort: &str) -> Option<Arc<Vec<u64>>> {
    // Sift walks the controller's declared keys in order and uses the first one given.
    const KEYS: [&str; 8] = [
        "email",
        "name",
        "phone_number",
        "last_activity_at",
        "created_at",
        "company",
        "city",
        "country",
    ];
    let given: Vec<&str> = sort.split(',').map(str::trim).collect();
    let (key, descending) = KEYS.iter().find_map(|key| {
        given.iter().find_map(|g| match g.strip_prefix('-') {
            Some(rest) if rest == *key => Some((*key, true)),
            None if g == key => Some((*key, false)),
            _ => None,
        })
    })?;
    if key == "created_at" && !descending {
        return None;
    }
    let cache_key = format!("{}{key}", if descending { "-" } else { "" });
    let mut orders = shared
        .orders
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let order = orders.entry(cache_key).or_insert_with(|| {
        let account = &shared.account;
        let mut keyed: Vec<(Option<String>, u64)> = (0..account.len())
            .map(|index| (sort_value(&account.contact(index), key), index))
            .collect();
        // NULLS LAST for ascending; Postgres puts them first for descending.
        keyed.sort_by(|a, b| match (&a.0, &b.0) {
            (None, None) => a.1.cmp(&b.1),
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (Some(x), Some(y)) => x.cmp(y).then(a.1.cmp(&b.1)),
        });
        if descending {
            keyed.reverse();
        }
        Arc::new(keyed.into_iter().map(|(_, index)| index).collect())
    });
    Some(Arc::clone(order))
}

fn sort_value(contact: &Value, key: &str) -> Option<String> {
    let value = match key {
        "company" => &contact["additional_attributes"]["company_name"],
        "city" | "country" => &contact["additional_attributes"][key],
        _ => &contact[key],
    };
    match value {
        Value::String(s) => Some(s.to_lowercase()),
        // Zero-padded so that text order is number order.
        Value::Number(n) => n.as_i64().map(|n| format!("{n:020}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::ruby_to_i;

    #[test]
    fn page_parameter_is_read_like_ruby_to_i() {
        for (text, expected) in [
            ("2", 2),
            ("12abc", 12),
            ("abc", 0),
            ("-3", -3),
            ("", 0),
            (" 7", 7),
        ] {
            assert_eq!(ruby_to_i(text), expected, "{text:?}");
        }
    }
}
