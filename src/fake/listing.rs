//! Which contacts the fake account lists right now, and in what order.
//!
//! Receives the configured contact count and drift events (contacts created at the end,
//! contacts deleted anywhere); emits the contact index at a listing position and the index
//! ranges of `created_at` day filters. Contacts are identified by their index in `created_at`
//! order (see `data::FakeAccount`); new ones always get the next index, so they sort last.

use std::collections::BTreeSet;

use serde_json::Value;

use super::data::FakeAccount;
use super::days::{DAY, DayPlan, DayReport, Days};
use crate::rng::Rng;

/// The live contacts: `0..created` minus `deleted`.
#[derive(Debug, Default)]
pub struct Listing {
    created: u64,
    deleted: BTreeSet<u64>,
    /// Drift rounds (`FakeServerConfig::drift_rounds`) already applied.
    pub rounds_done: usize,
    /// What simulated days changed (`days::simulate_day`).
    pub days: Days,
    /// The last activity filter's answer: every page of one listing asks the same, and at a
    /// million contacts each answer renders thousands of contacts (while the server's lock is
    /// held), which would make the fake, not the exporter, the bottleneck of a benchmark.
    active_memo: std::sync::Mutex<Option<(ActiveKey, std::sync::Arc<Vec<u64>>)>>,
}

/// An activity filter and the state of the account it was answered for.
type ActiveKey = (Option<i64>, Option<i64>, u64, usize, u64, usize);

impl Listing {
    pub fn new(contacts: u64) -> Self {
        Self {
            created: contacts,
            deleted: BTreeSet::new(),
            rounds_done: 0,
            days: Days::new(contacts),
            active_memo: std::sync::Mutex::default(),
        }
    }

    /// The index the next contact created gets.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// Deletes contact `index`.
    pub fn delete_index(&mut self, index: u64) {
        if index < self.created {
            self.deleted.insert(index);
        }
    }

    /// Whether contact `index` is listed.
    pub fn is_live(&self, index: u64) -> bool {
        index < self.created && !self.deleted.contains(&index)
    }

    /// Contact `index` as the API renders it now (simulated days included).
    pub fn render(&self, account: &FakeAccount, index: u64) -> Value {
        self.days.render(account, index)
    }

    /// Live indices whose `last_activity_at` day (UTC) is after `after_day` and before
    /// `before_day` (both exclusive, either open), ascending: the filter on
    /// `last_activity_at`, which never matches a contact that never wrote.
    pub fn active_between_days(
        &self,
        account: &FakeAccount,
        after_day: Option<i64>,
        before_day: Option<i64>,
    ) -> std::sync::Arc<Vec<u64>> {
        let key = (
            after_day,
            before_day,
            self.created,
            self.deleted.len(),
            self.days.simulated,
            self.days.activity.len(),
        );
        let mut memo = self
            .active_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, answer)) = memo.as_ref()
            && *known == key
        {
            return std::sync::Arc::clone(answer);
        }
        let matches = |&index: &u64| {
            self.days
                .active_between(account, index, after_day, before_day)
        };
        let answer: std::sync::Arc<Vec<u64>> = std::sync::Arc::new(
            self.days
                .candidates(account, after_day, before_day)
                .into_iter()
                .filter(|&index| self.is_live(index))
                .filter(matches)
                .collect(),
        );
        *memo = Some((key, std::sync::Arc::clone(&answer)));
        answer
    }

    /// How many contacts are listed.
    pub fn len(&self) -> u64 {
        self.created - self.deleted.len() as u64
    }

    /// Creates a contact; it has the newest `created_at`.
    pub fn create(&mut self) {
        self.created += 1;
    }

    /// Deletes the contact at listing `position` (ascending), if there is one.
    pub fn delete_at(&mut self, position: u64) {
        if let Some(index) = self.index_at(position) {
            self.deleted.insert(index);
        }
    }

    /// Every deleted contact index, ascending.
    pub fn deleted(&self) -> impl Iterator<Item = u64> + '_ {
        self.deleted.iter().copied()
    }

    /// Every live contact index, ascending.
    pub fn live(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.created).filter(|index| !self.deleted.contains(index))
    }

    /// The contact index at `position` of the ascending `created_at` listing.
    pub fn index_at(&self, position: u64) -> Option<u64> {
        if position >= self.len() {
            return None;
        }
        // The answer is the smallest fixpoint of i = position + |deleted <= i| (a deleted
        // fixpoint always has a smaller one below it), reached by iterating up from position.
        let mut index = position;
        loop {
            let next = position + self.deleted.range(..=index).count() as u64;
            if next == index {
                return Some(index);
            }
            index = next;
        }
    }

    /// Live indices whose `created_at` day (UTC) is after `after_day` and before `before_day`
    /// (both exclusive, either open): Chatwoot's `is_greater_than`/`is_less_than` date filter.
    pub fn created_between_days(
        &self,
        after_day: Option<i64>,
        before_day: Option<i64>,
    ) -> Vec<u64> {
        let day = |index: u64| self.days.created_at(index).div_euclid(86_400);
        // created_at never decreases with the index, so each bound is a partition point.
        let first = after_day.map_or(0, |after| {
            partition_point(self.created, |i| day(i) <= after)
        });
        let end = before_day.map_or(self.created, |before| {
            partition_point(self.created, |i| day(i) < before)
        });
        (first..end.max(first))
            .filter(|i| !self.deleted.contains(i))
            .collect()
    }
}

/// Moves the clock a day on and applies `plan` to `listing`; returns what happened.
pub fn simulate_day(listing: &mut Listing, seed: u64, plan: DayPlan) -> DayReport {
    let day = listing.days.simulated;
    listing.days.simulated += 1;
    let mut rng = Rng::new(seed ^ 0xDA75_0000, day);
    let start = listing.days.clock;
    let end = start + DAY;
    let mut report = DayReport::default();
    for k in 0..plan.created {
        let at = start + (DAY * (k as i64 + 1)) / (plan.created as i64 + 1);
        let index = listing.created();
        listing.days.born.push(at);
        listing.create();
        report.created.push(FakeAccount::id_of(index));
    }
    // Deletions first, so that no id is both active and deleted in the report.
    let initial = listing.days.initial;
    let pick = |listing: &Listing, rng: &mut Rng, old: Option<bool>| -> Option<u64> {
        for _ in 0..1000 {
            let index = listing.index_at(rng.below(listing.len().max(1)))?;
            if old.is_none_or(|old| old == (index < initial)) {
                return Some(index);
            }
        }
        None
    };
    for (count, old) in [(plan.deleted_old, true), (plan.deleted_new, false)] {
        for _ in 0..count {
            if let Some(index) = pick(listing, &mut rng, Some(old)) {
                listing.delete_index(index);
                report.deleted.push(FakeAccount::id_of(index));
            }
        }
    }
    for _ in 0..plan.active {
        if let Some(index) = pick(listing, &mut rng, None) {
            let created = listing.days.created_at(index);
            let at = (start + rng.below(DAY as u64) as i64).max(created);
            listing.days.activity.insert(index, at);
            report.active.push(FakeAccount::id_of(index));
        }
    }
    for _ in 0..plan.edited {
        if let Some(index) = pick(listing, &mut rng, None) {
            let created = listing.days.created_at(index);
            let at = (start + rng.below(DAY as u64) as i64).max(created);
            let edit = listing.days.edits.entry(index).or_insert((0, at));
            *edit = (edit.0 + 1, at.max(edit.1));
            report.edited.push(FakeAccount::id_of(index));
        }
    }
    listing.days.clock = end;
    for ids in [
        &mut report.created,
        &mut report.active,
        &mut report.deleted,
        &mut report.edited,
    ] {
        ids.sort_unstable();
        ids.dedup();
    }
    report.clock = end;
    report
}

/// The first index in `0..len` for which `below` is false (`below` is true then false).
fn partition_point(len: u64, below: impl Fn(u64) -> bool) -> u64 {
    let (mut low, mut high) = (0, len);
    while low < high {
        let mid = low + (high - low) / 2;
        if below(mid) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_skip_deleted_contacts() {
        let mut listing = Listing::new(10);
        listing.delete_at(3); // index 3
        listing.delete_at(3); // index 4
        listing.delete_at(0); // index 0
        let live: Vec<u64> = listing.live().collect();
        assert_eq!(live, [1, 2, 5, 6, 7, 8, 9]);
        let by_position: Vec<u64> = (0..listing.len())
            .filter_map(|p| listing.index_at(p))
            .collect();
        assert_eq!(by_position, live);
        assert_eq!(listing.index_at(7), None);
        listing.create();
        assert_eq!(listing.index_at(7), Some(10));
    }

    #[test]
    fn day_filters_are_exclusive_on_both_ends() {
        let listing = Listing::new(1000);
        let day = |i: u64| FakeAccount::created_at_of(i).div_euclid(86_400);
        let middle = day(500);
        let on_day = listing.created_between_days(Some(middle - 1), Some(middle + 1));
        assert!(!on_day.is_empty());
        assert!(on_day.iter().all(|&i| day(i) == middle));
        assert_eq!(
            on_day.len() as u64,
            (0..1000).filter(|&i| day(i) == middle).count() as u64
        );
        assert_eq!(listing.created_between_days(None, None).len(), 1000);
    }
}

#[cfg(test)]
mod brute_force {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn index_at_matches_counting_live_contacts() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed, 3);
            let mut listing = Listing::new(700);
            for _ in 0..60 {
                let len = listing.len();
                listing.delete_at(rng.below(len));
                if rng.chance(50) {
                    listing.create();
                }
                let live: Vec<u64> = listing.live().collect();
                for (position, index) in live.iter().enumerate() {
                    assert_eq!(
                        listing.index_at(position as u64),
                        Some(*index),
                        "seed {seed} position {position} deleted {:?}",
                        listing.deleted
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod days {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_day_creates_deletes_activates_and_edits() {
        let account = FakeAccount::new(7, 300);
        let mut listing = Listing::new(300);
        let before = listing.days.clock;
        let plan = DayPlan {
            created: 20,
            active: 10,
            deleted_old: 3,
            deleted_new: 2,
            edited: 5,
        };
        let report = simulate_day(&mut listing, 7, plan);
        assert_eq!(report.clock, before + DAY);
        assert_eq!(report.created.len(), 20);
        assert_eq!(report.deleted.len(), 5);
        assert_eq!(listing.len(), 300 + 20 - 5);
        // New contacts are born during the day, in index order.
        let times: Vec<i64> = (300..320).map(|i| listing.days.created_at(i)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times.iter().all(|t| (before..before + DAY).contains(t)));
        // Activity shows in last_activity_at and in the activity filter from the day on.
        let today = before.div_euclid(DAY);
        let active = listing.active_between_days(&account, Some(today - 1), None);
        let active_ids: BTreeSet<i64> = active.iter().map(|&i| FakeAccount::id_of(i)).collect();
        for id in &report.active {
            if !report.deleted.contains(id) {
                assert!(active_ids.contains(id), "{id} active");
            }
        }
        // The full scan (a filter reaching into generated activity) agrees on the day.
        let scanned = listing.active_between_days(&account, Some(today - 200), None);
        let recent: Vec<u64> = scanned
            .iter()
            .copied()
            .filter(|&i| listing.days.last_activity(&account, i).unwrap_or(0) >= today * DAY)
            .collect();
        assert_eq!(recent, *active);
        // Silent edits change the name, not last_activity_at.
        let edited = report.edited[0];
        let index = ((edited - 100) / 7) as u64;
        let now = listing.days.render(&account, index);
        assert!(now["name"].as_str().unwrap_or("").starts_with("edited 1 "));
        let silent = listing
            .days
            .silently_edited(&account, |i| listing.is_live(i));
        assert!(!silent.is_empty());
        assert!(silent.iter().all(|id| report.edited.contains(id)));
    }
}
