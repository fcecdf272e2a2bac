//! Drift repair: find the contacts the walk missed while the account changed under it.
//!
//! With `sort=created_at`, new contacts land at the end (the walk goes on until an empty
//! page), but a deletion shifts every later page back by one, so the contact at the boundary
//! of the next page is skipped; imports with equal timestamps can also swap places between
//! requests. After the walk, if the distinct contacts fall short of the account's `meta.count`
//! (or duplicates showed that pages shifted), the repair compares counts per `created_at`
//! range with `POST /contacts/filter` (day granularity, both bounds exclusive), bisects the
//! ranges where the server has more than the export, and fetches the short ones whole,
//! keeping contacts not seen yet. It stops when the counts agree or its request bound is
//! spent, and reports what it recovered and what is still unresolved.
//!
//! Receives the fetcher, the collector (with its per-day counts) and the walk's final count;
//! emits recovered contacts into the collector and a `RepairReport`.

use chrono::NaiveDate;
use serde::Serialize;

use super::ExportError;
use super::collector::Collector;
use crate::progress::Progress;
use crate::source::{FetchError, Fetcher};

/// A range this small (in contacts on the server) is fetched whole instead of bisected.
const FETCH_WHOLE_PAGES: u64 = 4;
/// Rounds of compare-and-repair before giving up on a moving account.
const MAX_ROUNDS: u32 = 3;

/// What the repair did; part of the manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct RepairReport {
    /// Compare-and-repair rounds run (0: the walk was already consistent).
    pub rounds: u32,
    /// Requests the repair sent.
    pub requests: u64,
    /// Contacts found by the repair that the walk had missed.
    pub recovered: u64,
    /// Contacts the account lists that the export still lacks (0 when consistent).
    pub unresolved: u64,
    /// Contacts exported that the account no longer lists: deleted during the run.
    pub deleted_during_export: u64,
    /// Why the repair stopped early, if it did (the filter endpoint refused, say).
    pub stopped: Option<String>,
}

/// A `created_at` range in days since the epoch: both bounds exclusive, either open.
#[derive(Clone, Copy, Debug)]
struct Range {
    after: Option<i64>,
    before: Option<i64>,
    /// How many contacts the server lists in it.
    server: u64,
}

struct Repair<'a> {
    fetcher: &'a Fetcher,
    collector: &'a mut Collector,
    page_size: u64,
    max_requests: u64,
    report: RepairReport,
}

/// Runs the repair if the walk's numbers call for it.
pub async fn repair(
    fetcher: &Fetcher,
    collector: &mut Collector,
    final_count: Option<u64>,
    page_size: u64,
    max_requests: u64,
    progress: &Progress,
) -> Result<(RepairReport, Option<u64>), ExportError> {
    let Some(mut count) = final_count else {
        return Ok((RepairReport::default(), None));
    };
    let shifted = collector.duplicates > 0;
    let mut repair = Repair {
        fetcher,
        collector,
        page_size: page_size.max(1),
        max_requests,
        report: RepairReport::default(),
    };
    while repair.report.rounds < MAX_ROUNDS {
        let ours = repair.collector.unique();
        let suspicious = ours < count || (shifted && repair.report.rounds == 0);
        if !suspicious || repair.report.requests >= max_requests || repair.report.stopped.is_some()
        {
            break;
        }
        repair.report.rounds += 1;
        progress.phase(&format!("repairing drift (round {})", repair.report.rounds));
        let outcome = match repair.pass(count).await {
            Ok(()) => repair.recount().await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(fresh) => count = fresh.unwrap_or(count),
            // A Chatwoot without the filter endpoint, or one that keeps failing: the export
            // stays as the walk left it, and the report says why.
            Err(err) => repair.report.stopped = Some(err.to_string()),
        }
    }
    let ours = repair.collector.unique();
    repair.report.unresolved = count.saturating_sub(ours);
    repair.report.deleted_during_export = ours.saturating_sub(count);
    Ok((repair.report, Some(count)))
}

impl Repair<'_> {
    /// One bisection over `created_at` ranges, starting from the whole account.
    async fn pass(&mut self, total: u64) -> Result<(), FetchError> {
        let mut pending = vec![Range {
            after: None,
            before: None,
            server: total,
        }];
        while let Some(range) = pending.pop() {
            if self.report.requests >= self.max_requests {
                break;
            }
            let ours = self.ours(range);
            if range.server <= ours {
                continue;
            }
            let pivot = self.pivot(range);
            if range.server <= FETCH_WHOLE_PAGES * self.page_size || pivot.is_none() {
                self.fetch_whole(range).await?;
                continue;
            }
            let Some(pivot) = pivot else { continue };
            // Left: up to and including the pivot day; its count costs one request, whose
            // first page is kept too. Right: the rest, by difference.
            let left = Range {
                after: range.after,
                before: Some(pivot + 1),
                server: 0,
            };
            let first = self.filter_page(left, 1).await?;
            let left_count = first.meta.count.unwrap_or(0);
            self.keep(&first.payload)?;
            pending.push(Range {
                after: Some(pivot),
                before: range.before,
                server: range.server.saturating_sub(left_count),
            });
            if left_count > self.page_size {
                pending.push(Range {
                    server: left_count,
                    ..left
                });
            }
        }
        Ok(())
    }

    /// A fresh `meta.count` (page 1 of the list; its contacts are kept too).
    async fn recount(&mut self) -> Result<Option<u64>, FetchError> {
        self.report.requests += 1;
        let page = self.fetcher.page(1).await?;
        self.keep(&page.payload)
            .map_err(|err| FetchError::InvalidPage {
                page: 1,
                detail: err.to_string(),
            })?;
        Ok(page.meta.count)
    }

    /// Contacts the export holds in `range`.
    fn ours(&self, range: Range) -> u64 {
        let low = range
            .after
            .map_or(i64::MIN, |after| after.saturating_add(1));
        let high = range
            .before
            .map_or(i64::MAX, |before| before.saturating_sub(1));
        if low > high {
            return 0;
        }
        self.collector
            .days()
            .range(low..=high)
            .map(|(_, n)| n)
            .sum()
    }

    /// The day that splits our contacts in `range` in half, if the range spans several days.
    fn pivot(&self, range: Range) -> Option<i64> {
        let low = range
            .after
            .map_or(i64::MIN, |after| after.saturating_add(1));
        let high = range
            .before
            .map_or(i64::MAX, |before| before.saturating_sub(1));
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

    /// Fetches every page of `range`, keeping unseen contacts.
    async fn fetch_whole(&mut self, range: Range) -> Result<(), FetchError> {
        let mut page = 1;
        while self.report.requests < self.max_requests {
            let answer = self.filter_page(range, page).await?;
            self.keep(&answer.payload)?;
            if (answer.payload.len() as u64) < self.page_size {
                break;
            }
            page += 1;
        }
        Ok(())
    }

    async fn filter_page(
        &mut self,
        range: Range,
        page: u64,
    ) -> Result<crate::source::ContactsPage, FetchError> {
        self.report.requests += 1;
        let after = range.after.map(day_text);
        let before = range.before.map(day_text);
        self.fetcher
            .filter_page(page, after.as_deref(), before.as_deref())
            .await
    }

    fn keep(&mut self, contacts: &[serde_json::Value]) -> Result<(), FetchError> {
        for contact in contacts {
            let id = contact.get("id").and_then(serde_json::Value::as_i64);
            if id.is_some_and(|id| self.collector.contains(id)) {
                continue;
            }
            match self.collector.add(0, contact) {
                Ok(true) => self.report.recovered += 1,
                Ok(false) => {}
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

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn day_text(day: i64) -> String {
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
    use super::day_text;

    #[test]
    fn day_numbers_become_dates() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(18_518), "2020-09-13");
        assert_eq!(day_text(-1), "1969-12-31");
    }
}
