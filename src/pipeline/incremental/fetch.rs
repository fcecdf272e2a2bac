//! What an incremental run reads from the server: everything that can have changed since the
//! base snapshot, as far as the API lets us see.
//!
//! Receives the fetcher and the base (its facts and the index of its raw contacts); emits the
//! contacts read (by id, as JSON text), the base's contacts found deleted, and the requests
//! predicted and spent. Three sets, all through `POST /contacts/filter` (day granularity,
//! strict comparisons, shared/chatwoot-contacts-api.md section 6):
//! 1. created since the base's newest `created_at` day (that day included);
//! 2. active since the base's newest `last_activity_at` day (that day included) and created
//!    before the first set's range (the newer ones are in it already): activity
//!    after the base read a contact happened after the base run began, and the base's newest
//!    activity is no later than its end, so both days differ by at most the days the base run
//!    spanned, which both filters go back by as well;
//! 3. deletions before the created range: the base's count of every part of the account
//!    against the server's (one request each). A part whose count differs is bisected at the
//!    day that halves the base's contacts in it: the left half is counted, the right half is
//!    the parent's count less the left's (no request). A part of one day, or a small one, is
//!    listed whole: the base's contacts there that the listing lacks are deleted. This is the
//!    drift repair's machinery (`repair`, `ledger`) with the base in place of the walk.
//!
//! The fetch runs in two stages, `listed` (the probes, 1 and 2) and `deletions` (3), so that an
//! interrupted run keeps what the first read and a resumed one goes on with the second. The
//! second tells the merge, which runs meanwhile, what it has settled part by part (`Settled`),
//! so that the merge of the base follows close behind instead of starting at the end.
//!
//! What it cannot see: an edit without activity to a contact in none of those sets (no
//! `updated_at` in the API), and a deletion and a new old-dated contact (an anonymous contact
//! that gained an email) in the same part, which cancel out in the counts. The full refresh
//! bounds both (docs/incremental.md).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use super::base::{Base, Index, Listed};
use super::raw::Key;
use crate::pipeline::repair::day_text;
use crate::pipeline::{Notice, Notices};
use crate::progress::Progress;
use crate::source::{ContactsPage, FetchError, Fetcher};

/// At most this many parts are counted for the deletion check...
const MAX_PARTS: u64 = 32;
/// ...each of at least this many pages of the base.
const PAGES_PER_PART: u64 = 25;
/// A part this small (in pages, by the base's count) is listed whole instead of bisected.
const WHOLE_PAGES: u64 = 4;
/// Listings of one range before it is given up as moving too fast.
const LISTING_TRIES: u32 = 3;

/// A filter: `created_at` day after / before (exclusive), `last_activity_at` day after.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Filter {
    created_after: Option<i64>,
    created_before: Option<i64>,
    active_after: Option<i64>,
}

impl Filter {
    fn conditions(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut conditions = Vec::new();
        if let Some(day) = self.created_after {
            conditions.push(("created_at", "is_greater_than", day_text(day)));
        }
        if let Some(day) = self.created_before {
            conditions.push(("created_at", "is_less_than", day_text(day)));
        }
        if let Some(day) = self.active_after {
            conditions.push(("last_activity_at", "is_greater_than", day_text(day)));
        }
        conditions
    }

    /// The first and last `created_at` day inside.
    fn days(&self) -> (i64, i64) {
        (
            self.created_after.map_or(i64::MIN, |d| d.saturating_add(1)),
            self.created_before
                .map_or(i64::MAX, |d| d.saturating_sub(1)),
        )
    }
}

/// What the incremental fetch found.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Every contact read, by id (the last version read).
    /// Shared with the merge's copy (`Settled`): one text in memory, however many hold it.
    pub contacts: HashMap<i64, Arc<str>>,
    /// Contacts of the base that the server lists no more.
    pub deleted: HashSet<i64>,
    /// Requests predicted before the fetch began.
    pub predicted: u64,
    /// Requests sent (attempts of retries not included; the fetcher counts those).
    pub requests: u64,
    /// Ranges whose listing never held still (the account changed too fast): contacts there
    /// may be missing or stale.
    pub unsettled: u64,
    /// The account's count at the end (`meta.count` of the list's page 1).
    pub final_count: Option<u64>,
    /// The server's count of each part of the deletion check, from the probes.
    pub part_counts: Vec<u64>,
}

/// What the merge may take, as the fetch settles it: contacts read (by id, the last version
/// read last) and base contacts found deleted since the last message, after which nothing the
/// fetch reads can change a base contact whose `created_at` day is `through` or earlier. The
/// last message has `through = i64::MAX`.
#[derive(Debug, Default)]
pub struct Settled {
    pub contacts: Vec<(i64, Arc<str>)>,
    pub deleted: Vec<i64>,
    pub through: i64,
}

impl Settled {
    /// Everything `fetched` holds, settled through `through`.
    pub fn all_of(fetched: &Fetched, through: i64) -> Self {
        Self {
            contacts: fetched
                .contacts
                .iter()
                .map(|(id, text)| (*id, Arc::clone(text)))
                .collect(),
            deleted: fetched.deleted.iter().copied().collect(),
            through,
        }
    }
}

/// Where `deletions` tells the merge what it settled.
pub type MergeFeed = std::sync::mpsc::Sender<Settled>;

struct Run<'a> {
    fetcher: &'a Fetcher,
    /// Told of every request done: the bar counts them against the prediction.
    progress: &'a Progress,
    concurrency: usize,
    page_size: u64,
    out: Fetched,
    /// The merge, and the ids read and found deleted since its last message (`deletions`).
    merge: Option<(&'a MergeFeed, Settled)>,
}

/// The filters of an incremental fetch, from the base alone: every attempt of a run (a
/// resumed one too) makes the same.
struct Plan {
    /// The first `created_at` day of the created set.
    created_from: Option<i64>,
    created: Filter,
    active: Option<Filter>,
    /// The parts of the deletion check, before `created_from`.
    parts: Vec<Filter>,
}

impl Plan {
    fn of(base: &Base, index: &Index) -> Self {
        let page_size = base.page_size.max(1);
        let day = |secs: i64| secs.div_euclid(86_400);
        let created_from = base
            .snapshot
            .newest_created_at
            .map(|t| day(t) - base.span_days);
        let seen = base
            .snapshot
            .newest_activity_at
            .max(base.snapshot.newest_created_at);
        let created = Filter {
            created_after: created_from.map(|d| d - 1),
            ..Filter::default()
        };
        // Active contacts created before the created range: the newer ones are all read as
        // created (a contact that wrote in through the widget is both, and would be read twice).
        let active = seen.map(|t| Filter {
            active_after: Some(day(t) - base.span_days - 1),
            created_before: created_from,
            ..Filter::default()
        });
        let parts = created_from.map_or_else(Vec::new, |from| parts(index, from, page_size));
        Self {
            created_from,
            created,
            active,
            parts,
        }
    }
}

/// The first stage of the fetch (see the module header): the probes, the prediction, then
/// sets 1 and 2 whole, and the base's contacts in the created range that it lists no more.
/// The part counts are kept in `Fetched` for `deletions`, the second stage.
pub async fn listed(
    fetcher: &Fetcher,
    base: &Base,
    index: &Index,
    concurrency: usize,
    progress: &Progress,
    notices: &Notices,
) -> Result<Fetched, FetchError> {
    let mut run = Run::new(fetcher, progress, concurrency, base, Fetched::default());
    let Probed {
        plan,
        created_first,
        active_first,
        part_counts,
        predicted,
    } = run.probe(base, index).await?;
    run.out.predicted = predicted;
    run.out.part_counts = part_counts;
    notices.tell(Notice::IncrementalCost {
        predicted,
        full: full_requests(base, index),
    });
    progress.plan_requests(predicted, run.out.requests);

    // 1 and 2: the created and the active contacts, whole.
    run.list(plan.created, Some(created_first), true).await?;
    if let (Some(active), Some(first)) = (plan.active, active_first) {
        run.list(active, Some(first), true).await?;
    }
    // Base contacts in the created range that it no longer lists are deleted.
    if let Some(from) = plan.created_from {
        let gone: Vec<i64> = index
            .ids(from, i64::MAX)
            .filter(|id| !run.out.contacts.contains_key(id))
            .collect();
        run.out.deleted.extend(gone);
    }
    Ok(run.out)
}

/// The second stage: set 3, the deletions in the past, from the part counts `listed` kept in
/// `fetched`, and the account's count at the end; adds to `fetched`. Tells `merge` what it
/// settles, part by part in `created_at` order, ending with `through = i64::MAX`; everything
/// `fetched` held before goes with the first message.
pub async fn deletions(
    fetcher: &Fetcher,
    base: &Base,
    index: &Index,
    concurrency: usize,
    progress: &Progress,
    fetched: Fetched,
    merge: &MergeFeed,
) -> Result<Fetched, FetchError> {
    let first = Settled::all_of(&fetched, i64::MIN);
    let mut run = Run::new(fetcher, progress, concurrency, base, fetched);
    run.merge = Some((merge, first));
    // A resumed run's bar starts here.
    progress.plan_requests(run.out.predicted, run.out.requests);
    let count_of = |page: &ContactsPage| page.meta.count.unwrap_or(0);
    let parts = Plan::of(base, index).parts;
    let part_counts = run.out.part_counts.clone();
    // 3: deletions in the past (the bar goes on counting requests). A stack with the oldest
    // part on top: a part is bisected into its halves, the left on top, so parts are settled
    // in `created_at` order and the merge can follow.
    let mut pending: Vec<(Filter, u64)> = parts.into_iter().zip(part_counts).rev().collect();
    while let Some((part, now)) = pending.pop() {
        let (low, high) = part.days();
        // Every part left is after this one: the days before it are settled.
        run.settle(low.saturating_sub(1));
        let ours = index.count(low, high);
        if ours == now {
            continue;
        }
        // One contact gone and nothing new: find it by a binary search over the pages.
        if now + 1 == ours
            && ours > WHOLE_PAGES * run.page_size
            && let Some(gone) = run.find_one(part, index.listed(low, high), now).await?
        {
            run.deleted([gone]);
            continue;
        }
        let pivot = index.pivot(low, high);
        if pivot.is_none() || ours.max(now) <= WHOLE_PAGES * run.page_size {
            run.list(part, None, false).await?;
            let gone: Vec<i64> = index
                .ids(low, high)
                .filter(|id| !run.out.contacts.contains_key(id))
                .collect();
            run.deleted(gone);
            continue;
        }
        let pivot = pivot.unwrap_or(low);
        let left = Filter {
            created_before: Some(pivot + 1),
            ..part
        };
        let right = Filter {
            created_after: Some(pivot),
            ..part
        };
        let left_now = run.pages(&[left]).await?;
        let left_now = left_now.first().map_or(0, count_of);
        pending.push((right, now.saturating_sub(left_now)));
        pending.push((left, left_now));
    }
    run.settle(i64::MAX);
    // The account's count now. Its contacts are not kept: the merge has passed them.
    run.out.requests += 1;
    let last = fetcher.page(1).await?;
    progress.page_done(run.out.contacts.len() as u64);
    run.out.final_count = last.meta.count;
    Ok(run.out)
}

/// What a full run costs now, about: the base's own requests when it was one, else its pages
/// and the drift check's.
pub fn full_requests(base: &Base, index: &Index) -> u64 {
    base.full_requests
        .unwrap_or_else(|| index.contacts.div_ceil(base.page_size.max(1)).max(1) + MAX_PARTS)
}

/// The run's filters, page 1 of each set (read) and the parts' counts, and the requests
/// predicted.
struct Probed {
    plan: Plan,
    created_first: ContactsPage,
    active_first: Option<ContactsPage>,
    part_counts: Vec<u64>,
    predicted: u64,
}

/// What an incremental run on `base` will cost, from page 1 of its sets and of its parts (the
/// run's first requests, which `--plan` sends and the run sends again): the requests
/// predicted, for `contacts --plan --incremental`.
pub async fn predict(
    fetcher: &Fetcher,
    base: &Base,
    index: &Index,
    concurrency: usize,
) -> Result<u64, FetchError> {
    let progress = crate::progress::ProgressFactory::silent().make(false, 0);
    let mut run = Run::new(fetcher, &progress, concurrency, base, Fetched::default());
    Ok(run.probe(base, index).await?.predicted)
}

/// The parts of the base before day `from`, cut at days so that each holds about as many of
/// its contacts (at most `MAX_PARTS`, each of at least `PAGES_PER_PART` pages).
fn parts(index: &Index, from: i64, page_size: u64) -> Vec<Filter> {
    let past = index.count(i64::MIN, from - 1);
    let pieces = (past / (PAGES_PER_PART * page_size)).clamp(1, MAX_PARTS);
    let per = past.div_ceil(pieces).max(1);
    let mut parts = Vec::new();
    let mut after = None;
    let mut held = 0;
    for (&day, &n) in index.days.range(..from) {
        held += n;
        if held >= per && day + 1 < from {
            parts.push(Filter {
                created_after: after,
                created_before: Some(day + 1),
                active_after: None,
            });
            after = Some(day);
            held = 0;
        }
    }
    parts.push(Filter {
        created_after: after,
        created_before: Some(from),
        active_after: None,
    });
    parts
}

impl<'a> Run<'a> {
    fn new(
        fetcher: &'a Fetcher,
        progress: &'a Progress,
        concurrency: usize,
        base: &Base,
        out: Fetched,
    ) -> Self {
        Self {
            fetcher,
            progress,
            concurrency: concurrency.max(1),
            page_size: base.page_size.max(1),
            out,
            merge: None,
        }
    }

    /// Page 1 of both sets and of every part, together, and the prediction they give.
    async fn probe(&mut self, base: &Base, index: &Index) -> Result<Probed, FetchError> {
        let plan = Plan::of(base, index);

        // Probes: page 1 of both sets and of every part, together.
        self.progress.phase("incremental: counting what changed");
        let mut probes: Vec<Filter> = vec![plan.created];
        probes.extend(plan.active);
        probes.extend(plan.parts.iter().copied());
        let firsts = self.pages(&probes).await?;
        let mut firsts = firsts.into_iter();
        let created_first = one(firsts.by_ref().take(1).collect())?;
        let active_first = match plan.active {
            Some(_) => firsts.next(),
            None => None,
        };
        let part_counts: Vec<u64> = firsts.map(|page| page.meta.count.unwrap_or(0)).collect();

        let pages = |count: u64| count.div_ceil(self.page_size).max(1);
        let count_of = |page: &ContactsPage| page.meta.count.unwrap_or(0);
        let mut predicted = probes.len() as u64 + pages(count_of(&created_first)) - 1
            + active_first.as_ref().map_or(0, |p| pages(count_of(p)) - 1)
            + 1; // the final count
        for (part, now) in plan.parts.iter().zip(&part_counts) {
            let (low, high) = part.days();
            let ours = index.count(low, high);
            let differ = ours.abs_diff(*now);
            if differ == 0 {
                continue;
            }
            // Each contact gone costs about a binary search over the part's pages (bisecting by
            // counts, then by pages), and the part's first page was counted already.
            let depth = u64::from(64 - pages(ours).leading_zeros());
            predicted += (differ * (depth + 1)).min(3 * pages(ours));
        }
        Ok(Probed {
            plan,
            created_first,
            active_first,
            part_counts,
            predicted,
        })
    }

    /// Base contacts the server lists no more.
    fn deleted(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            if self.out.deleted.insert(id)
                && let Some((_, unsent)) = &mut self.merge
            {
                unsent.deleted.push(id);
            }
        }
    }

    /// Tells the merge what was read and found deleted since last time, and that base
    /// contacts of days up to `through` will not change any more.
    fn settle(&mut self, through: i64) {
        let Some((merge, unsent)) = &mut self.merge else {
            return;
        };
        let through = through.max(unsent.through);
        let news = !unsent.contacts.is_empty() || !unsent.deleted.is_empty();
        if !news && through == unsent.through {
            return;
        }
        let settled = Settled {
            contacts: std::mem::take(&mut unsent.contacts),
            deleted: std::mem::take(&mut unsent.deleted),
            through,
        };
        unsent.through = through;
        // A send fails only when the merge stopped on an error: that error is the run's.
        let _ = merge.send(settled);
    }

    /// Page 1 of each filter, together; their contacts are kept.
    async fn pages(&mut self, filters: &[Filter]) -> Result<Vec<ContactsPage>, FetchError> {
        let pages = self
            .fetch(filters.iter().map(|f| (*f, 1)).collect())
            .await?;
        for page in &pages {
            self.keep(page);
        }
        Ok(pages)
    }

    /// Fetches (filter, page) pairs, `concurrency` at a time, in order.
    async fn fetch(&mut self, wanted: Vec<(Filter, u64)>) -> Result<Vec<ContactsPage>, FetchError> {
        self.out.requests += wanted.len() as u64;
        let fetcher = self.fetcher;
        let mut pages = futures::stream::iter(wanted)
            .map(|(filter, page)| async move {
                let conditions = filter.conditions();
                let refs: Vec<(&str, &str, &str)> = conditions
                    .iter()
                    .map(|(key, operator, day)| (*key, *operator, day.as_str()))
                    .collect();
                fetcher.filter_days(page, &refs).await
            })
            .buffered(self.concurrency);
        let mut done = Vec::new();
        while let Some(page) = pages.next().await {
            done.push(page?);
            // Contacts kept so far (this batch's are kept by the caller).
            self.progress.page_done(self.out.contacts.len() as u64);
        }
        Ok(done)
    }

    /// Lists `filter` whole, keeping every contact, until a listing held still: for a past
    /// range (`open` false) the same count on every page and as many contacts as that count;
    /// for an open one (contacts join at its end, or anywhere for activity, which shifts later
    /// pages forward and repeats a contact rather than skipping one) a count that never fell.
    async fn list(
        &mut self,
        filter: Filter,
        first: Option<ContactsPage>,
        open: bool,
    ) -> Result<(), FetchError> {
        let mut first = first;
        for _ in 0..LISTING_TRIES {
            let first_page = match first.take() {
                Some(page) => page,
                None => one(self.pages(&[filter]).await?)?,
            };
            let mut counts = vec![first_page.meta.count];
            let mut listed: BTreeSet<i64> = ids(&first_page);
            let count = first_page.meta.count.unwrap_or(0);
            let planned = count.div_ceil(self.page_size).max(1);
            let rest = self
                .fetch((2..=planned).map(|page| (filter, page)).collect())
                .await?;
            let mut last_len = first_page.payload.len() as u64;
            for page in &rest {
                self.keep(page);
                counts.push(page.meta.count);
                listed.extend(ids(page));
                last_len = page.payload.len() as u64;
            }
            // More than planned (contacts joined): on until a short page.
            let mut next = planned + 1;
            while last_len >= self.page_size {
                let page = one(self.fetch(vec![(filter, next)]).await?)?;
                self.keep(&page);
                counts.push(page.meta.count);
                listed.extend(ids(&page));
                last_len = page.payload.len() as u64;
                next += 1;
            }
            let still = if open {
                counts.windows(2).all(|pair| pair[0] <= pair[1])
            } else {
                counts.windows(2).all(|pair| pair[0] == pair[1])
                    && counts.last().copied().flatten() == Some(listed.len() as u64)
            };
            if still {
                return Ok(());
            }
        }
        self.out.unsettled += 1;
        Ok(())
    }

    /// The one contact of `listed` (the base's contacts of `filter`, in listing order) that
    /// the server lists no more, when `count` (its count now) says exactly one is gone: a
    /// binary search over the pages. Page `k` lists the base's contacts from position
    /// `size * (k - 1)` on, one further along past the gone one; which one of the 16 it lacks
    /// says whether the gone one is before, in, or after it. `None` when a page does not fit
    /// that (the account moved, or the server ordered contacts with the same `created_at`
    /// otherwise) or the one found shares its `created_at` with a neighbour (a reordering
    /// would look the same): the caller lists the range whole.
    async fn find_one(
        &mut self,
        filter: Filter,
        listed: &[Listed],
        count: u64,
    ) -> Result<Option<i64>, FetchError> {
        let size = self.page_size as usize;
        let n = listed.len();
        let (mut low, mut high) = (1, (count as usize).div_ceil(size));
        let gone = loop {
            if low > high {
                break (size * (low - 1)).min(n.saturating_sub(1));
            }
            let k = (low + high) / 2;
            let page = one(self.fetch(vec![(filter, k as u64)]).await?)?;
            self.keep(&page);
            let start = size * (k - 1);
            let shown = ids(&page);
            let want = size.min((count as usize).saturating_sub(start));
            if page.meta.count != Some(count) || shown.len() != want || want == 0 {
                return Ok(None);
            }
            let window = &listed[start.min(n)..(start + want + 1).min(n)];
            let missing: Vec<usize> = window
                .iter()
                .enumerate()
                .filter(|(_, key)| !shown.contains(&key.1))
                .map(|(at, _)| at)
                .collect();
            let extra = shown
                .iter()
                .any(|id| !window.iter().any(|key| key.1 == *id));
            match missing.as_slice() {
                [at] if !extra && *at + 1 == window.len() => low = k + 1,
                [0] if !extra => high = k - 1,
                [at] if !extra => break start + at,
                _ => return Ok(None),
            }
        };
        let tied = |other: Option<&Listed>| {
            other.is_some_and(|o| Some(o.0) == listed.get(gone).map(|g| g.0))
        };
        let neighbour = gone.checked_sub(1).and_then(|at| listed.get(at));
        if gone >= n || tied(neighbour) || tied(listed.get(gone + 1)) {
            return Ok(None);
        }
        Ok(listed.get(gone).map(|key| key.1))
    }

    fn keep(&mut self, page: &ContactsPage) {
        for contact in &page.payload {
            if let Some(key) = Key::of(contact) {
                let text: Arc<str> = Arc::from(contact);
                if let Some((_, unsent)) = &mut self.merge {
                    unsent.contacts.push((key.id, Arc::clone(&text)));
                }
                self.out.contacts.insert(key.id, text);
            }
        }
    }
}

/// The one page of a fetch of one.
fn one(pages: Vec<ContactsPage>) -> Result<ContactsPage, FetchError> {
    pages.into_iter().next().ok_or(FetchError::InvalidPage {
        page: 0,
        detail: "no answer".into(),
    })
}

fn ids(page: &ContactsPage) -> BTreeSet<i64> {
    page.payload
        .iter()
        .filter_map(|contact| Key::of(contact).map(|key| key.id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(days: &[(i64, u64)]) -> Index {
        let mut index = Index::default();
        let mut id = 0;
        for &(day, n) in days {
            for _ in 0..n {
                id += 1;
                index.keys.push((day * 86_400 + id, id));
            }
            index.days.insert(day, n);
            index.contacts += n;
        }
        index
    }

    #[test]
    fn parts_cover_the_past_without_gaps() {
        let index = index(&[(10, 400), (11, 400), (12, 400), (13, 400), (20, 5)]);
        let parts = parts(&index, 20, 15);
        assert_eq!(parts.first().map(|p| p.created_after), Some(None));
        assert_eq!(parts.last().map(|p| p.created_before), Some(Some(20)));
        for pair in parts.windows(2) {
            // Exclusive bounds: the next part starts the day after the last one's end.
            assert_eq!(pair[0].created_before.map(|d| d - 1), pair[1].created_after);
        }
        let total: u64 = parts
            .iter()
            .map(|p| {
                let (low, high) = p.days();
                index.count(low, high)
            })
            .sum();
        assert_eq!(total, 1600);
    }

    #[test]
    fn filters_become_conditions() {
        let filter = Filter {
            created_after: Some(0),
            created_before: None,
            active_after: Some(18_518),
        };
        assert_eq!(
            filter.conditions(),
            vec![
                ("created_at", "is_greater_than", "1970-01-01".to_owned()),
                (
                    "last_activity_at",
                    "is_greater_than",
                    "2020-09-13".to_owned()
                ),
            ]
        );
    }
}
