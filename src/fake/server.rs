//! The fake Chatwoot HTTP server.
//!
//! Receives a `FakeServerConfig`; serves `GET /api/v1/accounts/{id}/contacts` (with the
//! `labels[]` filter and `include_contact_inboxes=false`),
//! `POST /api/v1/accounts/{id}/contacts/filter` (created_at and last_activity_at day ranges),
//! `GET /api/v1/accounts/{id}/custom_attribute_definitions`,
//! `GET /api/v1/accounts/{id}/labels` and `POST /_fake/day` (simulates a day, see `days`) on a
//! loopback port, with the faults
//! of `faults` and the drift of `listing` when asked. It follows the
//! real API (see shared/chatwoot-contacts-api.md): 15 contacts a page, `page` read like Ruby's
//! `to_i` and echoed back as a string in `meta.current_page` (the integer 1 when absent), a page
//! past the end is an empty payload, `sort` keys with `-` for descending and unknown keys
//! ignored, and the 401/404 bodies of each authentication failure. `legacy_inbox_secrets`
//! serves the inbox credentials that Chatwoot before PR #10888 embedded in contacts. One
//! server may serve several accounts of one user (`accounts`), each with contacts of its
//! own, behind one rate limit, as a real Chatwoot counts requests per client IP. A test can
//! revoke the token after some requests (`revoke_token_after`): a failure in the middle of a run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::data::FakeAccount;
use super::days::{DayPlan, DayReport};
use super::faults::{Fault, FaultConfig, Faults};
use super::listing::{Listing, simulate_day};
use crate::rng::Rng;

/// Contacts per page, as `RESULTS_PER_PAGE` in Chatwoot's contacts controller.
pub const PAGE_SIZE: u64 = 15;

/// What the fake server serves and how.
#[derive(Clone, Debug)]
pub struct FakeServerConfig {
    pub contacts: u64,
    pub seed: u64,
    /// The first account the token's user belongs to. The user belongs to `accounts` accounts
    /// in a row from this one; the next id exists but the user is not a member (401); any other
    /// id does not exist (404).
    pub account_id: u64,
    /// How many accounts (`account_id`, `account_id + 1`, ...) the user belongs to, each
    /// with `contacts` contacts of its own: account `account_id + k` has the data of seed
    /// `seed + k`.
    pub accounts: u64,
    /// The user token the server accepts.
    pub token: String,
    /// A token the server treats as an AgentBot's (401 "not authorized for bots").
    pub bot_token: String,
    /// Added to every answer.
    pub latency: Duration,
    /// Growth: after every this many contact requests, one new contact is created (with the
    /// newest `created_at`, so it lands at the end of an ascending walk and at the front of
    /// a descending one).
    pub grow_every: Option<u64>,
    /// Drift: after every this many contact requests, one contact is deleted (anywhere in the
    /// list, so later pages shift back) and one is created.
    pub drift_every: Option<u64>,
    /// Growth and drift happen only during this many first contact requests (None: always).
    pub drift_requests: Option<u64>,
    /// Rounds of deletions and creations at given contact requests: agents merging duplicates
    /// in bursts. "Behind" deletes contacts before the furthest list position served so far
    /// (pages a walk has passed, so later pages shift back), "ahead" after it.
    pub drift_rounds: Vec<DriftRound>,
    /// Drift while the repair runs: after every this many filter requests, one contact is
    /// deleted (anywhere) and one is created.
    pub filter_drift_every: Option<u64>,
    pub faults: FaultConfig,
    /// Embeds the whole inbox, credentials included, in `contact_inboxes`, as Chatwoot did
    /// for admin tokens before PR #10888.
    pub legacy_inbox_secrets: bool,
}

impl Default for FakeServerConfig {
    fn default() -> Self {
        Self {
            contacts: 1000,
            seed: 42,
            account_id: 1,
            accounts: 1,
            token: "fake-token".into(),
            bot_token: "fake-bot-token".into(),
            latency: Duration::ZERO,
            grow_every: None,
            drift_every: None,
            drift_requests: None,
            drift_rounds: Vec::new(),
            filter_drift_every: None,
            faults: FaultConfig::default(),
            legacy_inbox_secrets: false,
        }
    }
}

/// One burst of drift (see `FakeServerConfig::drift_rounds`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DriftRound {
    /// Happens with the first contact request numbered this or higher that is answered.
    pub at_request: u64,
    /// Contacts deleted before the furthest list position served so far.
    pub delete_behind: u64,
    /// Contacts deleted at or after it.
    pub delete_ahead: u64,
    /// Contacts created (the newest `created_at`, so they sort last).
    pub create: u64,
}

/// What the server has answered so far.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// API requests (contact list, filter and attribute definitions), whatever their answer:
    /// what rack-attack counts.
    pub requests: AtomicU64,
    /// Of those, contact list and filter requests: what growth and drift count.
    pub contact_requests: AtomicU64,
    /// Of those, answered 429.
    pub throttled: AtomicU64,
    /// Filter requests answered: what `filter_drift_every` counts.
    pub filter_requests: AtomicU64,
}

struct Shared {
    config: FakeServerConfig,
    /// The user's accounts: index `k` is account `config.account_id + k`.
    accounts: Vec<Served>,
    /// One rate limit for the whole server (Chatwoot's is per client IP).
    faults: Faults,
    stats: ServerStats,
    /// API requests numbered above this are refused as with a revoked token (401), until
    /// restored (`FakeServer::revoke_token_after`); `u64::MAX`: never.
    revoked_after: AtomicU64,
}

/// One account's contacts and its listing.
struct Served {
    account: FakeAccount,
    listing: Mutex<Listing>,
    /// Listing orders for sort keys other than created_at, built on first use.
    orders: Mutex<HashMap<String, Arc<Vec<u64>>>>,
    /// The furthest list position any page served so far reached: where a walk stands.
    frontier: AtomicU64,
}

impl Served {
    fn listing(&self) -> std::sync::MutexGuard<'_, Listing> {
        self.listing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Shared {
    /// The user's account with this id, if it is one of theirs.
    fn served(&self, account_id: u64) -> Option<&Served> {
        let index = account_id.checked_sub(self.config.account_id)?;
        self.accounts.get(usize::try_from(index).ok()?)
    }
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
        let accounts = (0..config.accounts.max(1))
            .map(|k| Served {
                account: FakeAccount::new(config.seed.wrapping_add(k), config.contacts)
                    .with_legacy_inbox_secrets(config.legacy_inbox_secrets),
                listing: Mutex::new(Listing::new(config.contacts)),
                orders: Mutex::new(HashMap::new()),
                frontier: AtomicU64::new(0),
            })
            .collect();
        let shared = Arc::new(Shared {
            accounts,
            faults: Faults::new(config.faults.clone(), config.seed),
            config,
            stats: ServerStats::default(),
            revoked_after: AtomicU64::new(u64::MAX),
        });
        let app = Router::new()
            .route("/api/v1/accounts/{account_id}/contacts", get(list_contacts))
            .route(
                "/api/v1/accounts/{account_id}/contacts/filter",
                post(filter_contacts),
            )
            .route(
                "/api/v1/accounts/{account_id}/custom_attribute_definitions",
                get(list_definitions),
            )
            .route("/api/v1/accounts/{account_id}/labels", get(list_labels))
            .route("/_fake/day", post(day_endpoint))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                // Logged, not printed: the server is library code, and this is a diagnosis.
                tracing::error!(error = %err, "fake server stopped");
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

    /// Contact list and filter requests answered so far, whatever their status.
    pub fn requests(&self) -> u64 {
        self.shared.stats.requests.load(Ordering::SeqCst)
    }

    /// Refuses every API request after the next `requests` with a 401, as Chatwoot answers a
    /// token revoked (or rotated) in the middle of a run: a failure that comes after some
    /// work is done. `None` accepts the token again.
    pub fn revoke_token_after(&self, requests: Option<u64>) {
        let after = requests.map_or(u64::MAX, |n| self.requests().saturating_add(n));
        self.shared.revoked_after.store(after, Ordering::SeqCst);
    }

    /// Of those, how many were answered 429.
    pub fn throttled(&self) -> u64 {
        self.shared.stats.throttled.load(Ordering::SeqCst)
    }

    /// The most requests the rate limit counted in one window (0 without a rate limit).
    pub fn busiest_window(&self) -> u64 {
        self.shared.faults.busiest_window()
    }

    /// The first account's data.
    pub fn account(&self) -> &FakeAccount {
        &self.first().account
    }

    /// How many contacts the first account lists now.
    pub fn live_contacts(&self) -> u64 {
        self.first().listing().len()
    }

    /// The contacts the first account lists now, in `created_at` order: the ground truth.
    pub fn live_truth(&self) -> Vec<Value> {
        self.live_truth_of(self.shared.config.account_id)
            .unwrap_or_default()
    }

    /// The ground truth of account `account_id`, if the user belongs to it.
    pub fn live_truth_of(&self, account_id: u64) -> Option<Vec<Value>> {
        let served = self.shared.served(account_id)?;
        let indices: Vec<u64> = served.listing().live().collect();
        let listing = served.listing();
        Some(
            indices
                .into_iter()
                .map(|i| listing.render(&served.account, i))
                .collect(),
        )
    }

    /// Moves the first account's clock a day on and applies `plan` (see `days`).
    pub fn simulate_day(&self, plan: DayPlan) -> DayReport {
        day_of(&self.shared, plan)
    }

    /// The ids of the first account's live contacts edited since their last activity
    /// (ascending): what an export that did not re-read them holds in their old version.
    pub fn silently_edited(&self) -> Vec<i64> {
        let served = self.first();
        let listing = served.listing();
        listing
            .days
            .silently_edited(&served.account, |index| listing.is_live(index))
    }

    /// The ids of the first account's contacts deleted so far (by drift), ascending: they
    /// existed when the run began or were created during it, and are listed no more.
    pub fn deleted_ids(&self) -> Vec<i64> {
        self.first()
            .listing()
            .deleted()
            .map(FakeAccount::id_of)
            .collect()
    }

    /// The custom attribute definitions the first account serves.
    pub fn live_definitions(&self) -> Value {
        self.definitions_of(self.shared.config.account_id)
            .unwrap_or_default()
    }

    /// The custom attribute definitions account `account_id` serves, as the API renders them.
    pub fn definitions_of(&self, account_id: u64) -> Option<Value> {
        let served = self.shared.served(account_id)?;
        Some(served.account.custom_attribute_definitions())
    }

    /// The first account's labels, as `GET /labels` renders them in its `payload`.
    pub fn live_labels(&self) -> Value {
        self.first().account.labels()
    }

    /// The (contact id, label title) pairs of the first account's contacts listed now, in
    /// `created_at` order and, per contact, label order: the truth of `contact_labels`.
    pub fn live_contact_labels(&self) -> Vec<(i64, String)> {
        let served = self.first();
        let indices: Vec<u64> = served.listing().live().collect();
        indices
            .into_iter()
            .flat_map(|index| {
                served
                    .account
                    .labels_of(index)
                    .into_iter()
                    .map(move |label| (FakeAccount::id_of(index), label.to_owned()))
            })
            .collect()
    }

    fn first(&self) -> &Served {
        &self.shared.accounts[0]
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
        Ok(id) if shared.served(id).is_some() => None,
        Ok(id) if id == config.account_id + config.accounts.max(1) => Some(json_response(
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

/// A day range of the filter endpoint: both bounds exclusive, either open.
type DayRange = (Option<i64>, Option<i64>);

/// The filter endpoint's conditions (joined by AND): a `created_at` day range, and a
/// `last_activity_at` one if given.
#[derive(Clone, Copy, Debug, Default)]
struct DayFilter {
    created: DayRange,
    active: Option<DayRange>,
}

/// `POST /_fake/day` with a `DayPlan` as JSON: simulates a day on the first account and
/// answers its `DayReport` (for the benchmarks, which run the fake in its own process).
async fn day_endpoint(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<DayPlan>(&body) {
        Ok(plan) => json_response(StatusCode::OK, &json!(day_of(&shared, plan))),
        Err(err) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"error": err.to_string()}),
        ),
    }
}

fn day_of(shared: &Shared, plan: DayPlan) -> DayReport {
    let served = &shared.accounts[0];
    let report = simulate_day(&mut served.listing(), shared.config.seed, plan);
    // Orders by other keys were built from the old contacts.
    served
        .orders
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clear();
    report
}

async fn list_contacts(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    // `labels[]` repeats, which the map above keeps one of.
    let labels: Vec<String> = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "labels[]")
        .map(|(_, value)| value.into_owned())
        .collect();
    let filter = (!labels.is_empty()).then_some(Filter::Labels(labels));
    serve_page(&shared, &headers, &account_id, &query, filter).await
}

async fn filter_contacts(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let range = match serde_json::from_slice::<Value>(&body)
        .ok()
        .as_ref()
        .and_then(day_range)
    {
        Some(range) => range,
        None => {
            return json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"error": "Invalid filter: only created_at and last_activity_at with is_greater_than/is_less_than are supported here"}),
            );
        }
    };
    serve_page(
        &shared,
        &headers,
        &account_id,
        &query,
        Some(Filter::Days(range)),
    )
    .await
}

/// What narrows a listing: the filter endpoint's day ranges, or the list's `labels[]` (contacts
/// tagged with any of them, `tagged_with(labels, any: true)`).
enum Filter {
    Days(DayFilter),
    Labels(Vec<String>),
}

/// Reads `{"payload": [{"attribute_key": "created_at", "filter_operator": ..., "values": ["YYYY-MM-DD"]}, ...]}`
/// (`attribute_key` `created_at` or `last_activity_at`; all conditions joined by AND).
fn day_range(body: &Value) -> Option<DayFilter> {
    let mut filter = DayFilter::default();
    for condition in body.get("payload")?.as_array()? {
        let range = match condition.get("attribute_key")?.as_str()? {
            "created_at" => &mut filter.created,
            "last_activity_at" => filter.active.get_or_insert((None, None)),
            _ => return None,
        };
        let date = condition.get("values")?.get(0)?.as_str()?;
        let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let day = day
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp()
            .div_euclid(86_400);
        match condition.get("filter_operator")?.as_str()? {
            "is_greater_than" => range.0 = Some(day),
            "is_less_than" => range.1 = Some(day),
            _ => return None,
        }
    }
    Some(filter)
}

async fn serve_page(
    shared: &Shared,
    headers: &HeaderMap,
    account_id: &str,
    query: &HashMap<String, String>,
    filter: Option<Filter>,
) -> Response {
    // The latency counts from the request's arrival and includes the time spent building the
    // answer, as a real server's does; otherwise, with many requests in flight, the fake's own
    // CPU would add to it and the latency-bound benchmark would time the fake server.
    let answer_at = tokio::time::Instant::now() + shared.config.latency;
    let response = page_response(shared, headers, account_id, query, filter.as_ref());
    tokio::time::sleep_until(answer_at).await;
    response
}

fn page_response(
    shared: &Shared,
    headers: &HeaderMap,
    account_id: &str,
    query: &HashMap<String, String>,
    filter: Option<&Filter>,
) -> Response {
    let (current_page, page) = match query.get("page") {
        Some(raw) => (Value::from(raw.as_str()), ruby_to_i(raw)),
        None => (Value::from(1), 1),
    };
    let page = page.max(1) as u64;
    let contact_request = shared.stats.contact_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let (fault, served) = match admit(shared, headers, account_id, page) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
    if fault == Fault::Malformed {
        let truncated = r#"{"meta": {"count": 1, "current_page": "1"}, "payl"#;
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            truncated,
        )
            .into_response();
    }
    let body = {
        let mut listing = served.listing();
        drift(shared, served, &mut listing, contact_request);
        if matches!(filter, Some(Filter::Days(_))) {
            filter_drift(shared, &mut listing);
        }
        let sort = query.get("sort").map(String::as_str).unwrap_or("");
        let descending = sort.split(',').any(|key| key.trim() == "-created_at");
        let (total, payload) = match filter {
            Some(Filter::Labels(labels)) => {
                let matching: Vec<u64> = listing
                    .live()
                    .filter(|&index| {
                        served
                            .account
                            .labels_of(index)
                            .iter()
                            .any(|label| labels.iter().any(|wanted| wanted == label))
                    })
                    .collect();
                let indices = page_of(matching.len() as u64, page, |p| {
                    matching.get(p as usize).copied()
                });
                (matching.len() as u64, indices)
            }
            Some(Filter::Days(filter)) => {
                let (after, before) = filter.created;
                let matching = match filter.active {
                    None => listing.created_between_days(after, before),
                    Some((active_after, active_before)) => {
                        let created = |index: u64| {
                            let day = listing.days.created_at(index).div_euclid(86_400);
                            after.is_none_or(|a| day > a) && before.is_none_or(|b| day < b)
                        };
                        listing
                            .active_between_days(&served.account, active_after, active_before)
                            .iter()
                            .copied()
                            .filter(|&index| created(index))
                            .collect()
                    }
                };
                let indices = page_of(matching.len() as u64, page, |p| {
                    matching.get(p as usize).copied()
                });
                (matching.len() as u64, indices)
            }
            None => {
                let total = listing.len();
                let order = if descending {
                    None
                } else {
                    listing_order(served, &listing, sort)
                };
                served
                    .frontier
                    .fetch_max(PAGE_SIZE.saturating_mul(page).min(total), Ordering::SeqCst);
                let indices = page_of(total, page, |p| match &order {
                    Some(order) => order.get(p as usize).copied(),
                    None if descending => listing.index_at(total - 1 - p),
                    None => listing.index_at(p),
                });
                (total, indices)
            }
        };
        let without_inboxes = query
            .get("include_contact_inboxes")
            .is_some_and(|value| value == "false");
        let payload: Vec<Value> = payload
            .into_iter()
            .map(|i| {
                let mut contact = listing.render(&served.account, i);
                if without_inboxes && let Some(fields) = contact.as_object_mut() {
                    fields.remove("contact_inboxes");
                }
                contact
            })
            .collect();
        json!({"meta": {"count": total, "current_page": current_page}, "payload": payload})
            .to_string()
    };
    json_answer(fault, body)
}

/// What every API request meets before the controller: the request count, rack-attack and
/// the fault plan, then the token and the account. `Err` is the answer that ends it there.
fn admit<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    account_id: &str,
    page: u64,
) -> Result<(Fault, &'a Served), Box<Response>> {
    let request = shared.stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
    // Rack-attack answers before the application looks at the token.
    let fault = shared.faults.decide(request, page);
    if fault == Fault::Throttle {
        shared.stats.throttled.fetch_add(1, Ordering::SeqCst);
        return Err(Box::new(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "text/plain")],
                "Retry later\n",
            )
                .into_response(),
        ));
    }
    if let Fault::ServerError(status) = fault {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(Box::new(
            (
                status,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>We're sorry, but something went wrong.</h1></body></html>",
            )
                .into_response(),
        ));
    }
    if request > shared.revoked_after.load(Ordering::SeqCst) {
        return Err(Box::new(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "Invalid Access Token"}),
        )));
    }
    if let Some(refusal) = refuse(shared, headers, account_id) {
        return Err(Box::new(refusal));
    }
    let Some(served) = account_id.parse().ok().and_then(|id| shared.served(id)) else {
        return Err(Box::new(StatusCode::NOT_FOUND.into_response()));
    };
    Ok((fault, served))
}

/// A 200 JSON answer, or half of it and a dropped connection when the fault plan says so.
fn json_answer(fault: Fault, body: String) -> Response {
    if fault == Fault::DropConnection {
        // Half the body, then the connection goes away.
        let half = Bytes::from(body.into_bytes()).slice(..);
        let cut = half.len() / 2;
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(half.slice(..cut)),
            Err(std::io::Error::other(
                "connection dropped by the fake server",
            )),
        ];
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The contact indices on `page` of a listing of `total`, given each position's index.
fn page_of(total: u64, page: u64, index_at: impl Fn(u64) -> Option<u64>) -> Vec<u64> {
    let offset = PAGE_SIZE.saturating_mul(page - 1);
    (offset..total.min(offset.saturating_add(PAGE_SIZE)))
        .filter_map(index_at)
        .collect()
}

/// Growth and drift, decided by the contact request's number.
fn drift(shared: &Shared, served: &Served, listing: &mut Listing, request: u64) {
    rounds(shared, served, listing, request);
    if shared
        .config
        .drift_requests
        .is_some_and(|last| request > last)
    {
        return;
    }
    let every = |n: Option<u64>| n.is_some_and(|n| n > 0 && request.is_multiple_of(n));
    if every(shared.config.grow_every) {
        listing.create();
    }
    // Drift deletes on one request and creates on the next, as two people would: the count
    // moves, and deletions anywhere shift the later pages back.
    if every(shared.config.drift_every) {
        let mut rng = Rng::new(shared.config.seed ^ 0xD81F_7000, request);
        let len = listing.len();
        if len > 0 {
            listing.delete_at(rng.below(len));
        }
    }
    if shared
        .config
        .drift_every
        .is_some_and(|n| n > 0 && request % n == 1 % n)
    {
        listing.create();
    }
}

/// The drift rounds due by contact request `request` that have not happened yet. A round is
/// tied to the first answered request at or past its number, so a failed request (5xx) does not
/// skip it.
fn rounds(shared: &Shared, served: &Served, listing: &mut Listing, request: u64) {
    while let Some(round) = shared.config.drift_rounds.get(listing.rounds_done) {
        if round.at_request > request {
            return;
        }
        let mut rng = Rng::new(shared.config.seed ^ 0xB0B5_0000, listing.rounds_done as u64);
        listing.rounds_done += 1;
        for _ in 0..round.delete_behind {
            let behind = served.frontier.load(Ordering::SeqCst).min(listing.len());
            if behind > 0 {
                listing.delete_at(rng.below(behind));
            }
        }
        for _ in 0..round.delete_ahead {
            let (len, frontier) = (listing.len(), served.frontier.load(Ordering::SeqCst));
            if len > frontier {
                listing.delete_at(frontier + rng.below(len - frontier));
            }
        }
        for _ in 0..round.create {
            listing.create();
        }
    }
}

/// Drift while the repair runs: every `filter_drift_every`-th filter request deletes one
/// contact anywhere and creates one.
fn filter_drift(shared: &Shared, listing: &mut Listing) {
    let number = shared.stats.filter_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let Some(every) = shared.config.filter_drift_every.filter(|n| *n > 0) else {
        return;
    };
    if number.is_multiple_of(every) {
        let mut rng = Rng::new(shared.config.seed ^ 0xF117_0000, number);
        let len = listing.len();
        if len > 0 {
            listing.delete_at(rng.below(len));
        }
        listing.create();
    }
}

/// The definitions, behind the same count, rate limit, faults and latency as the pages (a
/// real server's rack-attack counts every request).
async fn list_definitions(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer_at = tokio::time::Instant::now() + shared.config.latency;
    let response = match admit(&shared, &headers, &account_id, 0) {
        Ok((fault, served)) => json_answer(
            fault,
            served.account.custom_attribute_definitions().to_string(),
        ),
        Err(refusal) => *refusal,
    };
    tokio::time::sleep_until(answer_at).await;
    response
}

/// The labels, behind the same count, rate limit, faults and latency as the pages.
async fn list_labels(
    State(shared): State<Arc<Shared>>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer_at = tokio::time::Instant::now() + shared.config.latency;
    let response = match admit(&shared, &headers, &account_id, 0) {
        Ok((fault, served)) => json_answer(
            fault,
            json!({"payload": served.account.labels()}).to_string(),
        ),
        Err(refusal) => *refusal,
    };
    tokio::time::sleep_until(answer_at).await;
    response
}

/// The listing order for a `sort` parameter, or `None` for index order (`created_at`
/// ascending, which is also what an unknown key gives here). Orders by other keys are built
/// once, from the contacts listed at that moment.
fn listing_order(served: &Served, listing: &Listing, sort: &str) -> Option<Arc<Vec<u64>>> {
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
    let mut orders = served
        .orders
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let order = orders.entry(cache_key).or_insert_with(|| {
        let account = &served.account;
        let mut keyed: Vec<(Option<String>, u64)> = listing
            .live()
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
