//! Which contacts the fake account lists right now, and in what order.
//!
//! Receives the configured contact count and drift events (contacts created at the end,
//! contacts deleted anywhere); emits the contact index at a listing position and the index
//! ranges of `created_at` day filters. Contacts are identified by their index in `created_at`
//! order (see `data::FakeAccount`); new ones always get the next index, so they sort last.

use std::collections::BTreeSet;

use super::data::FakeAccount;

/// The live contacts: `0..created` minus `deleted`.
#[derive(Debug, Default)]
pub struct Listing {
    created: u64,
    deleted: BTreeSet<u64>,
    /// Drift rounds (`FakeServerConfig::drift_rounds`) already applied.
    pub rounds_done: usize,
}

impl Listing {
    pub fn new(contacts: u64) -> Self {
        Self {
            created: contacts,
            deleted: BTreeSet::new(),
            rounds_done: 0,
        }
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
        let day = |index: u64| FakeAccount::created_at_of(index).div_euclid(86_400);
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
