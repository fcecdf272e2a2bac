//! Drift repair and the completeness proof: find the contacts the walk missed while the
//! account changed under it, and prove that nothing else is missing before the manifest says
//! `"complete": true`.
//!
//! With `sort=created_at`, new contacts land at the end (the walk goes on until an empty
//! page), but a deletion shifts every later page back by one, so the contact at the boundary
//! of the next page is skipped. Counting alone cannot show that: a skipped contact and a
//! deleted one in the same part of the account cancel out. So the proof rests on a ledger
//! taken before the walk (`take_ledger`): the server's count of every part of the account
//! (`POST /contacts/filter` by `created_at` day range), at a moment before any contact the
//! export keeps was fetched.
//!
//! The argument, for a part whose days all lie before the newest contact's day at the ledger
//! (a "past" part): `created_at` cannot be set through the API, so contacts created later land
//! on that day or after, never in a past part; a past part only loses contacts. Every contact
//! the export holds there existed at the ledger, so the contacts missing now are at most the
//! ledger's count minus the contacts held. A part is proven when that bound is 0. A part with
//! a positive bound is bisected: counting both halves now bounds each half's own ledger count
//! (the parent's bound minus what the other half had at least, its count or its held contacts,
//! whichever is larger), and a half proven that way costs nothing more. A part of one day, or a
//! small one, is listed whole: a listing whose count did not move between its first and last
//! page is a snapshot, and every contact in it is then held. The newest part, where contacts
//! are created, is proven by such a listing unless nothing moved at all.
//!
//! Without a ledger (a small account, where the walk needs no more than a few pages, or an
//! export resumed from a checkpoint of a version that did not keep the ledger), a walk whose count never moved, that saw no duplicate and that holds
//! exactly that many contacts is taken as proof; otherwise the whole list is walked again until
//! a listing is a snapshot.
//!
//! Receives the fetcher, the collector (with its per-day counts), the walk's final state and
//! the ledger; emits recovered contacts into the collector and a `RepairReport` whose
//! `unresolved` counts every contact the proof could not rule out (never 0 when the repair
//! stopped early, for its request bound or because the server refused).

use std::collections::BTreeSet;

use chrono::NaiveDate;

use super::ExportError;
use super::checkpoint::WalkState;
use super::collector::Collector;
use super::ledger::{Ledger, Part, Range};
use crate::manifest::RepairReport;
use crate::progress::Progress;
use crate::source::{Contacts, ContactsPage, FetchError, Fetcher};

/// A part this small (in contacts, by its bound) is listed whole instead of bisected.
const FETCH_WHOLE_PAGES: u64 = 4;
/// The ledger cuts the account into one part per this many planned pages...
const PAGES_PER_PART: u64 = 25;
/// ...and into at most this many parts.
const MAX_PARTS: u64 = 32;
/// Listings of one part before it is given up as moving too fast.
const LISTING_TRIES: u32 = 3;
/// Set to a number of requests to override the repair's bound (for tests and diagnosis).
pub const MAX_REQUESTS_ENV: &str = "CHATWOOT_EXPORT_REPAIR_MAX_REQUESTS";

/// Whether an export of `planned_pages` takes a ledger: a small account is checked by its walk.
pub fn wants_ledger(planned_pages: u64, small: u64) -> bool {
    planned_pages > small
}

/// Takes the ledger, given page 1 of the walk (its `meta.count` planned `planned_pages`):
/// finds the oldest and newest `created_at` day (page 1 and the last page, when the list is
/// sorted by `created_at`; otherwise the newest day is taken as yesterday, UTC), cuts the days
/// between into parts and counts each. `None` when the server will not say (no filter
/// endpoint): the repair then falls back on walking the list again.
pub async fn take_ledger(
    fetcher: &Fetcher,
    sort: &str,
    first: &ContactsPage,
    planned_pages: u64,
) -> Option<Ledger> {
    let mut requests = 0;
    let sorted = is_sorted_by_creation(sort);
    let mut days: Vec<i64> = first.payload.iter().filter_map(contact_day).collect();
    if sorted {
        requests += 1;
        let last = fetcher.page(planned_pages).await.ok()?;
        days.extend(last.payload.iter().filter_map(contact_day));
    }
    let ranges = ledger_ranges(sorted, &days, planned_pages);
    let open = *ranges.last()?;
    requests += ranges.len() as u64;
    let counts = futures::future::join_all(
        ranges
            .iter()
            .map(|range| filter_request(fetcher, *range, 1)),
    )
    .await;
    let mut parts = Vec::with_capacity(ranges.len());
    for (range, answer) in ranges.into_iter().zip(counts) {
        let bound = answer.ok()?.meta.count?;
        parts.push(Part { range, bound });
    }
    let open_count = parts.pop()?.bound;
    Some(Ledger {
        parts,
        open,
        open_count,
        requests,
    })
}

/// Whether the ledger reads the oldest and newest days from page 1 and the last page.
fn is_sorted_by_creation(sort: &str) -> bool {
    matches!(sort.trim(), "created_at" | "-created_at")
}

/// The ledger's parts for the `created_at` days seen on page 1 and the last page: the past
/// parts, then the open one (from the newest day on).
fn ledger_ranges(sorted: bool, days: &[i64], planned_pages: u64) -> Vec<Range> {
    let today = chrono::Utc::now().timestamp().div_euclid(86_400);
    let (oldest, newest) = match (days.iter().min(), days.iter().max()) {
        (Some(&oldest), Some(&newest)) if sorted => (Some(oldest), newest),
        _ => (None, today - 1),
    };
    let pieces = (planned_pages / PAGES_PER_PART).clamp(1, MAX_PARTS);
    let mut cuts: Vec<i64> = Vec::new();
    if let Some(oldest) = oldest {
        let span = newest - oldest;
        for i in 1..pieces as i64 {
            let cut = oldest + span * i / pieces as i64;
            if cut > oldest && cut < newest && cuts.last() != Some(&cut) {
                cuts.push(cut);
            }
        }
    }
    // Parts: days before cut 1, cut 1 to the day before cut 2, ..., up to the day before the
    // newest; then the open part from the newest day on.
    let mut ranges = Vec::with_capacity(cuts.len() + 2);
    let mut after = None;
    for cut in cuts.into_iter().chain([newest]) {
        ranges.push(Range {
            after,
            before: Some(cut),
        });
        after = Some(cut - 1);
    }
    ranges.push(Range {
        after: Some(newest - 1),
        before: None,
    });
    ranges
}

/// Whether the ledger reads the last page (`planned_pages`) besides page 1.
pub(super) fn ledger_reads_last_page(sort: &str) -> bool {
    is_sorted_by_creation(sort)
}

/// The requests `take_ledger` sends, given page 1 and (when it reads it) the last page.
pub(super) fn ledger_requests(
    sort: &str,
    first: &ContactsPage,
    last: Option<&ContactsPage>,
    planned_pages: u64,
) -> u64 {
    let sorted = is_sorted_by_creation(sort);
    let days: Vec<i64> = first
        .payload
        .iter()
        .chain(last.into_iter().flat_map(|page| page.payload.iter()))
        .filter_map(contact_day)
        .collect();
    u64::from(sorted) + ledger_ranges(sorted, &days, planned_pages).len() as u64
}

/// The requests the repair sends after a walk that met no drift, with a ledger: the open
/// part's count, and page 1 for the account's final count (without a ledger: none).
pub(super) const CLEAN_REPAIR_REQUESTS: u64 = 2;

/// The `created_at` day of a contact's JSON text (unix seconds, or RFC 3339 text in forks).
fn contact_day(contact: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Created {
        created_at: serde_json::Value,
    }
    let created: Created = serde_json::from_str(contact).ok()?;
    let secs = match created.created_at {
        serde_json::Value::Number(n) => n.as_i64()?,
        serde_json::Value::String(text) => chrono::DateTime::parse_from_rfc3339(&text)
            .ok()?
            .timestamp(),
        _ => return None,
    };
    Some(secs.div_euclid(86_400))
}

async fn filter_request(
    fetcher: &Fetcher,
    range: Range,
    page: u64,
) -> Result<ContactsPage, FetchError> {
    let after = range.after.map(day_text);
    let before = range.before.map(day_text);
    fetcher
        .filter_page(page, after.as_deref(), before.as_deref())
        .await
}

struct Repair<'a> {
    fetcher: &'a Fetcher,
    collector: &'a mut Collector,
    page_size: u64,
    max_requests: u64,
    report: RepairReport,
}

/// Why a bound was reached, for `stopped`.
fn bound_reached(max: u64) -> String {
    format!(
        "the repair's request bound ({max} requests) was reached: run again, or raise it with {MAX_REQUESTS_ENV}"
    )
}

/// Checks the export against the server and repairs what the walk missed (see the module
/// header). Returns the report and the account's latest count.
pub async fn repair(
    fetcher: &Fetcher,
    collector: &mut Collector,
    walk: &WalkState,
    ledger: Option<&Ledger>,
    max_requests: Option<u64>,
    progress: &Progress,
) -> Result<(RepairReport, Option<u64>), ExportError> {
    let Some(count) = walk.final_count else {
        return Ok((RepairReport::default(), None));
    };
    let quiet = !walk.count_changed
        && collector.duplicates == 0
        && collector.unique() == count
        && walk.expected_count == Some(count);
    let mut repair = Repair {
        fetcher,
        collector,
        page_size: walk.page_size.max(1),
        max_requests: u64::MAX,
        report: RepairReport::default(),
    };
    let (unresolved, fresh) = match ledger {
        Some(ledger) => {
            repair.report.requests = ledger.requests;
            repair.max_requests = max_requests
                .unwrap_or_else(|| ledger.requests + repair.allowance(ledger, walk.planned_pages));
            let outcome = repair.prove(ledger, quiet, progress).await;
            repair.settle(outcome, count).await
        }
        None if quiet => (0, Some(count)),
        None => {
            // Walked again whole: three times a small account, once a large one.
            let pages = walk.planned_pages + 2;
            repair.max_requests =
                max_requests.unwrap_or(if pages <= 12 { 3 * pages } else { pages });
            repair.report.rounds = 1;
            progress.phase("checking the export against the account");
            let outcome = repair.relist().await;
            repair.settle(outcome, count).await
        }
    };
    let count = fresh.unwrap_or(count);
    let ours = repair.collector.unique();
    let mut report = repair.report;
    report.unresolved = unresolved;
    if report.stopped.is_some() {
        // A repair that stopped early proved nothing it had not finished.
        report.unresolved = report.unresolved.max(1);
    }
    report.deleted_during_export = ours.saturating_sub(count);
    Ok((report, Some(count)))
}

/// What a check left unproven: contacts it could not rule out as missing.
type Unproven = Result<u64, (u64, FetchError)>;

impl Repair<'_> {
    /// The request bound: the ledger's, the newest part listed three times, and for every
    /// contact a past part may lack (its bound minus its held contacts), a bisection down to a
    /// day and that day's listing, at most three listings of the part.
    fn allowance(&self, ledger: &Ledger, planned_pages: u64) -> u64 {
        let ps = self.page_size;
        let open = LISTING_TRIES as u64 * (ledger.open_count / ps + 2);
        let mut drift = 0;
        for part in &ledger.parts {
            let ours = self.ours(part.range);
            let slack = part.bound.saturating_sub(ours);
            if slack == 0 {
                continue;
            }
            let pages = part.bound / ps + 1;
            let days = self.days_with_contacts(part.range).max(1);
            let day_pages = (pages / days + 1).max(FETCH_WHOLE_PAGES);
            let depth = 64 - u64::from(pages.leading_zeros());
            let per_contact = 2 * depth + 2 * day_pages;
            drift += (slack * per_contact).min(LISTING_TRIES as u64 * pages);
        }
        // Past parts that had drift get at most three listings each; never more than three
        // walks of the account.
        (4 + open + drift).min(3 * (planned_pages + 2) + open)
    }

    /// The ledger's proof: every past part, then the open part.
    async fn prove(&mut self, ledger: &Ledger, quiet: bool, progress: &Progress) -> Unproven {
        let mut pending: Vec<Part> = ledger.parts.clone();
        pending.reverse();
        let mut unresolved = 0;
        let mut announced = false;
        while let Some(part) = pending.pop() {
            let ours = self.ours(part.range);
            if part.bound == ours {
                continue;
            }
            if !announced {
                announced = true;
                self.report.rounds = 1;
                progress.phase("repairing drift");
            }
            if !self.affords(2) {
                let rest: u64 = std::iter::once(part)
                    .chain(pending.iter().copied())
                    .map(|p| p.bound.saturating_sub(self.ours(p.range)).max(1))
                    .sum();
                return Ok(unresolved + rest);
            }
            let (low, high) = part.range.days();
            let single_day = low >= high || self.pivot(part.range).is_none();
            // More held than the ledger counted: a contact appeared with an old created_at
            // (say, an anonymous contact that gained an email), which the bound cannot cover.
            let appeared = ours > part.bound;
            if single_day || appeared || part.bound <= FETCH_WHOLE_PAGES * self.page_size {
                match self.list_whole(part.range, Some(part.bound)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        unresolved += part.bound.saturating_sub(self.ours(part.range)).max(1)
                    }
                    Err(err) => {
                        return Err((unresolved + self.rest(&pending, part), err));
                    }
                }
                continue;
            }
            match self.split(part).await {
                Ok(halves) => pending.extend(halves),
                Err(err) => return Err((unresolved + self.rest(&pending, part), err)),
            }
        }
        // The newest part: contacts are created there, so only a snapshot proves it, unless
        // nothing moved at all.
        if !self.affords(1) {
            return Ok(unresolved + 1);
        }
        let now = match self.count(ledger.open).await {
            Ok(now) => now,
            Err(err) => return Err((unresolved + 1, err)),
        };
        let ours = self.ours(ledger.open);
        if quiet && now == ledger.open_count && now == ours {
            return Ok(unresolved);
        }
        if !announced {
            self.report.rounds = 1;
            progress.phase("repairing drift");
        }
        match self.list_whole(ledger.open, None).await {
            Ok(true) => Ok(unresolved),
            Ok(false) => Ok(unresolved + self.count_gap(ledger.open, now)),
            Err(err) => Err((unresolved + self.count_gap(ledger.open, now), err)),
        }
    }

    /// Whether `requests` more fit in the bound, one kept for the final count; if not, the
    /// repair stops and says why.
    fn affords(&mut self, requests: u64) -> bool {
        let fits = self.report.requests + requests < self.max_requests;
        if !fits {
            self.report.stopped = Some(bound_reached(self.max_requests));
        }
        fits
    }

    fn count_gap(&self, range: Range, count: u64) -> u64 {
        count.saturating_sub(self.ours(range)).max(1)
    }

    /// What the parts left unchecked may lack, when the repair cannot go on.
    fn rest(&self, pending: &[Part], current: Part) -> u64 {
        std::iter::once(current)
            .chain(pending.iter().copied())
            .map(|p| p.bound.saturating_sub(self.ours(p.range)).max(1))
            .sum::<u64>()
            + 1 // the open part, not checked either
    }

    /// Splits a part at the day that halves our contacts in it and counts both halves (their
    /// first pages are kept too). Each half's ledger count is at most the parent's bound less
    /// what the other half had at least at the ledger: its count now or its held contacts
    /// (both only shrink or stay since then), whichever is larger.
    async fn split(&mut self, part: Part) -> Result<Vec<Part>, FetchError> {
        let pivot = self
            .pivot(part.range)
            .ok_or_else(|| FetchError::InvalidPage {
                page: 0,
                detail: "a part of one day cannot be split".into(),
            })?;
        let left = Range {
            after: part.range.after,
            before: Some(pivot + 1),
        };
        let right = Range {
            after: Some(pivot),
            before: part.range.before,
        };
        let left_now = self.count(left).await?;
        let right_now = self.count(right).await?;
        let left_least = left_now.max(self.ours(left));
        let right_least = right_now.max(self.ours(right));
        Ok(vec![
            Part {
                range: right,
                bound: part.bound.saturating_sub(left_least).max(self.ours(right)),
            },
            Part {
                range: left,
                bound: part.bound.saturating_sub(right_least).max(self.ours(left)),
            },
        ])
    }

    /// The count of `range` now (page 1; its contacts are kept).
    async fn count(&mut self, range: Range) -> Result<u64, FetchError> {
        let page = self.filter_page(range, 1).await?;
        self.keep(&page.payload)?;
        Ok(page.meta.count.unwrap_or(0))
    }

    /// Lists `range` whole, keeping every contact, until a listing is a snapshot (its count
    /// the same on every page, and as many distinct contacts as that count) or the tries run
    /// out. For a past part (`bound` given) a listing also proves it when the held contacts
    /// have reached the bound. Returns whether the part is proven.
    async fn list_whole(&mut self, range: Range, bound: Option<u64>) -> Result<bool, FetchError> {
        for _ in 0..LISTING_TRIES {
            let mut counts = Vec::new();
            let mut listed = BTreeSet::new();
            let mut page = 1;
            loop {
                if !self.affords(1) {
                    return Ok(false);
                }
                let answer = self.filter_page(range, page).await?;
                self.keep(&answer.payload)?;
                counts.push(answer.meta.count);
                listed.extend(answer.payload.iter().filter_map(contact_id));
                if (answer.payload.len() as u64) < self.page_size {
                    break;
                }
                page += 1;
            }
            // A past part only loses contacts: a count that held still means none left during
            // the listing. The newest part also gains them, at its end (ascending
            // `created_at`), where they shift nothing: there a count that never fell is
            // taken as no deletion (a deletion and a creation between the same two pages
            // would cancel out; see the README).
            let last = counts.last().copied().flatten();
            let still = if bound.is_some() {
                counts.windows(2).all(|pair| pair[0] == pair[1])
            } else {
                counts.windows(2).all(|pair| pair[0] <= pair[1])
            };
            let snapshot = still && last == Some(listed.len() as u64);
            if snapshot || bound.is_some_and(|bound| bound <= self.ours(range)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Without a ledger: walks the list again (as the export sorts it), keeping every contact,
    /// until a walk is a snapshot; then every contact listed is held.
    async fn relist(&mut self) -> Unproven {
        let mut last_gap = 1;
        for _ in 0..LISTING_TRIES {
            let mut counts = BTreeSet::new();
            let mut listed = BTreeSet::new();
            let mut page = 1;
            loop {
                if !self.affords(1) {
                    return Ok(last_gap);
                }
                self.report.requests += 1;
                let answer = match self.fetcher.page(page).await {
                    Ok(answer) => answer,
                    Err(err) => return Err((last_gap, err)),
                };
                self.keep(&answer.payload).map_err(|err| (last_gap, err))?;
                counts.insert(answer.meta.count);
                let before = listed.len();
                listed.extend(answer.payload.iter().filter_map(contact_id));
                if answer.payload.is_empty() || listed.len() == before {
                    break;
                }
                page += 1;
            }
            let count = counts.first().copied().flatten();
            if counts.len() == 1 && count == Some(listed.len() as u64) {
                return Ok(0);
            }
            last_gap = count
                .unwrap_or(0)
                .saturating_sub(listed.len() as u64)
                .max(1);
        }
        Ok(last_gap)
    }

    /// Turns the outcome into (unresolved, fresh count): a fresh `meta.count` from page 1 of
    /// the list (its contacts are kept too), unless the repair already failed.
    async fn settle(&mut self, outcome: Unproven, count: u64) -> (u64, Option<u64>) {
        let unresolved = match outcome {
            Ok(unresolved) => unresolved,
            Err((unresolved, err)) => {
                // A Chatwoot without the filter endpoint, or one that keeps failing: the
                // export stays as it is, and the report says why.
                self.report.stopped = Some(err.to_string());
                return (unresolved.max(1), None);
            }
        };
        self.report.requests += 1;
        match self.fetcher.page(1).await {
            Ok(page) => match self.keep(&page.payload) {
                Ok(()) => (unresolved, page.meta.count.or(Some(count))),
                Err(err) => {
                    self.report.stopped = Some(err.to_string());
                    (unresolved.max(1), None)
                }
            },
            Err(err) => {
                self.report.stopped = Some(err.to_string());
                (unresolved.max(1), None)
            }
        }
    }

    /// Contacts the export holds in `range`.
    fn ours(&self, range: Range) -> u64 {
        let (low, high) = range.days();
        if low > high {
            return 0;
        }
        self.collector
            .days()
            .range(low..=high)
            .map(|(_, n)| n)
            .sum()
    }

    /// Days in `range` on which the export holds contacts.
    fn days_with_contacts(&self, range: Range) -> u64 {
        let (low, high) = range.days();
        if low > high {
            return 0;
        }
        self.collector.days().range(low..=high).count() as u64
    }

    /// The day that splits our contacts in `range` in half, if the range spans several days.
    fn pivot(&self, range: Range) -> Option<i64> {
        let (low, high) = range.days();
        if low >= high {
            return None;
        }
        let days: Vec<(i64, u64)> = self
            .collector
            .days()
            .range(low..=high)
            .map(|(d, n)| (*d, *n))
            .collect();
        let (first, last) = (days.first()?.0, days.last()?.0);
        if first == last {
            // All our contacts on one day: split around it unless the range is just that day.
            return (low < first)
                .then(|| first - 1)
                .or((high > last).then_some(last));
        }
        let half = days.iter().map(|(_, n)| n).sum::<u64>() / 2;
        let mut seen = 0;
        for (day, n) in &days {
            seen += n;
            if seen >= half {
                return Some((*day).min(last - 1));
            }
        }
        Some(last - 1)
    }

    async fn filter_page(&mut self, range: Range, page: u64) -> Result<ContactsPage, FetchError> {
        self.report.requests += 1;
        filter_request(self.fetcher, range, page).await
    }

    fn keep(&mut self, contacts: &Contacts) -> Result<(), FetchError> {
        for contact in contacts {
            if contact_id(contact).is_some_and(|id| self.collector.holds(id)) {
                continue;
            }
            match self.collector.add(0, contact) {
                Ok((true, _)) => self.report.recovered += 1,
                Ok((false, _)) => {}
                Err(err) => {
                    return Err(FetchError::InvalidPage {
                        page: 0,
                        detail: err.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A contact's id from its JSON text.
fn contact_id(contact: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: i64,
    }
    serde_json::from_str::<Id>(contact).ok().map(|c| c.id)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01), as the filter endpoint takes it.
pub(super) fn day_text(day: i64) -> String {
    const UNIX_EPOCH_FROM_CE: i64 = 719_163;
    i32::try_from(day + UNIX_EPOCH_FROM_CE)
        .ok()
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .map_or_else(
            || "1970-01-01".to_owned(),
            |date| date.format("%Y-%m-%d").to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::{contact_day, day_text};

    #[test]
    fn day_numbers_become_dates() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(18_518), "2020-09-13");
        assert_eq!(day_text(-1), "1969-12-31");
    }

    #[test]
    fn created_at_days_from_seconds_or_text() {
        assert_eq!(contact_day(r#"{"id":1,"created_at":86400}"#), Some(1));
        assert_eq!(contact_day(r#"{"created_at":86399}"#), Some(0));
        assert_eq!(
            contact_day(r#"{"created_at":"1970-01-03T10:00:00Z"}"#),
            Some(2)
        );
        assert_eq!(contact_day(r#"{"id":1}"#), None);
    }
}
