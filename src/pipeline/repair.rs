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
use super::checkpoint::WalkState;
use super::collector::{Collector, PageNote};
use crate::progress::Progress;
use crate::source::{Contacts, FetchError, Fetcher};
use std::collections::BTreeSet;

/// A range this small (in contacts on the server) is fetched whole instead of bisected.
const FETCH_WHOLE_PAGES: u64 = 4;
/// Rounds of compare-and-repair before giving up on a moving account.
const MAX_ROUNDS: u32 = 3;
/// Parts the first round compares the account in.
const SWEEP_RANGES: usize = 32;

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

impl Range {
    /// The first and last day inside the range (its bounds are exclusive; open ends are the
    /// extreme days).
    fn days(self) -> (i64, i64) {
        let low = self.after.map_or(i64::MIN, |after| after.saturating_add(1));
        let high = self
            .before
            .map_or(i64::MAX, |before| before.saturating_sub(1));
        (low, high)
    }
}

struct Repair<'a> {
    fetcher: &'a Fetcher,
    collector: &'a mut Collector,
    page_size: u64,
    max_requests: u64,
    report: RepairReport,
}

/// Runs the repair if the walk saw the account change: a `meta.count` that moved, duplicates
/// (pages shifted), or a total that differs from the contacts exported. The first round
/// compares every part of the account (deletions and creations can cancel out in the total);
/// later rounds look only where the total says contacts are still missing.
pub async fn repair(
    fetcher: &Fetcher,
    collector: &mut Collector,
    walk: &WalkState,
    max_requests: u64,
    progress: &Progress,
) -> Result<(RepairReport, Option<u64>), ExportError> {
    let Some(mut count) = walk.final_count else {
        return Ok((RepairReport::default(), None));
    };
    let changed = walk.count_changed || collector.duplicates > 0 || collector.unique() != count;
    let mut repair = Repair {
        fetcher,
        collector,
        page_size: walk.page_size.max(1),
        max_requests,
        report: RepairReport::default(),
    };
    while changed && repair.report.rounds < MAX_ROUNDS {
        let ours = repair.collector.unique();
        let first = repair.report.rounds == 0;
        let worth_it = first || ours < count;
        if !worth_it || repair.report.requests >= max_requests || repair.report.stopped.is_some() {
            break;
        }
        repair.report.rounds += 1;
        progress.phase(&format!("repairing drift (round {})", repair.report.rounds));
        let outcome = match repair.pass(count, first).await {
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
    /// One bisection over `created_at` ranges: from a sweep of the whole account in
    /// `SWEEP_RANGES` parts, or from the whole account as one range. The sweep starts by
    /// fetching the days around page boundaries the walk crossed while contacts were deleted,
    /// where a skipped contact hides even when the day's count does not show it (a deletion
    /// and a creation on the same day cancel out).
    async fn pass(&mut self, total: u64, sweep: bool) -> Result<(), FetchError> {
        let mut pending = if sweep {
            for (first, last) in suspect_days(self.collector.page_notes()) {
                let range = Range {
                    after: Some(first - 1),
                    before: Some(last + 1),
                    server: 0,
                };
                self.fetch_whole(range).await?;
            }
            self.sweep().await?
        } else {
            vec![Range {
                after: None,
                before: None,
                server: total,
            }]
        };
        while let Some(range) = pending.pop() {
            if self.report.requests >= self.max_requests {
                break;
            }
            let ours = self.ours(range);
            if range.server == ours {
                continue;
            }
            let pivot = self.pivot(range);
            if range.server < ours && pivot.is_none() {
                // Only deletions can explain it, and the range cannot be split further.
                continue;
            }
            let Some(pivot) = pivot.filter(|_| range.server > FETCH_WHOLE_PAGES * self.page_size)
            else {
                self.fetch_whole(range).await?;
                continue;
            };
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

    /// Cuts the account into up to `SWEEP_RANGES` ranges holding about as many of our
    /// contacts each, and asks the server how many it lists in each.
    async fn sweep(&mut self) -> Result<Vec<Range>, FetchError> {
        let days: Vec<(i64, u64)> = self
            .collector
            .days()
            .iter()
            .map(|(d, n)| (*d, *n))
            .collect();
        let total: u64 = days.iter().map(|(_, n)| n).sum();
        let pieces = (SWEEP_RANGES as u64).min(days.len() as u64).max(1);
        let mut cuts = Vec::new();
        let mut seen = 0;
        for (day, n) in &days {
            seen += n;
            if (cuts.len() as u64) + 1 < pieces && seen * pieces >= (cuts.len() as u64 + 1) * total
            {
                cuts.push(*day);
            }
        }
        let mut ranges = Vec::with_capacity(cuts.len() + 1);
        let mut after = None;
        for cut in cuts.into_iter().map(Some).chain([None]) {
            let mut range = Range {
                after,
                before: cut.map(|day| day + 1),
                server: 0,
            };
            let first = self.filter_page(range, 1).await?;
            range.server = first.meta.count.unwrap_or(0);
            self.keep(&first.payload)?;
            ranges.push(range);
            after = cut;
        }
        Ok(ranges)
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

    fn keep(&mut self, contacts: &Contacts) -> Result<(), FetchError> {
        for contact in contacts {
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

/// Day ranges (first, last; inclusive) around the page boundaries the walk crossed while the
/// account's count went down. A deletion before the walk's position shifts the list back by
/// one, so the contact just after the last page fetched moves onto that page and is skipped:
/// it lies between that page's last contact and the next page's first.
fn suspect_days(notes: &[PageNote]) -> Vec<(i64, i64)> {
    let mut arrivals: Vec<(u32, usize)> = notes
        .iter()
        .enumerate()
        .filter_map(|(page, note)| note.arrival.map(|arrival| (arrival, page)))
        .collect();
    arrivals.sort_unstable();
    let mut suspect = BTreeSet::new();
    for pair in arrivals.windows(2) {
        let (before, after) = (&notes[pair[0].1], &notes[pair[1].1]);
        if let (Some(then), Some(now)) = (before.count, after.count)
            && now < then
        {
            suspect.extend([pair[0].1, pair[1].1]);
        }
    }
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for page in suspect {
        for (left, right) in [(page.saturating_sub(1), page), (page, page + 1)] {
            let last = notes.get(left).and_then(|n| n.last_day);
            let first = notes.get(right).and_then(|n| n.first_day);
            if let (Some(last), Some(first)) = (last, first) {
                ranges.push((i64::from(last.min(first)), i64::from(last.max(first))));
            }
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(previous) if first <= previous.1 + 1 => previous.1 = previous.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
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
    fn boundaries_around_a_falling_count_are_suspect() {
        use super::{PageNote, suspect_days};
        let note = |arrival, count, first, last| PageNote {
            arrival: Some(arrival),
            count: Some(count),
            first_day: Some(first),
            last_day: Some(last),
        };
        let mut notes = vec![PageNote::default()];
        notes.push(note(0, 100, 1, 1));
        notes.push(note(1, 100, 2, 3));
        notes.push(note(2, 99, 5, 6)); // a deletion between pages 2 and 3
        notes.push(note(3, 99, 9, 9));
        notes.push(note(4, 99, 20, 20));
        // Around pages 2 and 3: boundaries 1|2, 2|3 and 3|4: days 1-2, 3-5 and 6-9, merged.
        assert_eq!(suspect_days(&notes), vec![(1, 9)]);
        for note in notes.iter_mut().skip(1) {
            note.count = Some(100);
        }
        assert_eq!(suspect_days(&notes), Vec::<(i64, i64)>::new());
    }

    #[test]
    fn day_numbers_become_dates() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(18_518), "2020-09-13");
        assert_eq!(day_text(-1), "1969-12-31");
    }
}
