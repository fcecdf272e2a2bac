//! Simulated days between exports: the fake clock, and what people did to the account
//! while it moved on.
//!
//! Receives a `DayPlan` (contacts to create, to make active, to delete, to edit silently);
//! emits the changes into the listing (`Listing::days` holds them) and a `DayReport`, the
//! ground truth of that day. Contacts stay a pure function of (seed, index): this module only
//! keeps what differs from the generated contact, namely the `created_at` of contacts born
//! on a simulated day, `last_activity_at` moved by activity, and silent edits (name and
//! `blocked` changed, `last_activity_at` untouched: what Chatwoot's list API cannot show
//! without re-reading the contact, see shared/chatwoot-contacts-api.md section 6).
//!
//! The clock starts at 02:00 UTC on the day after every generated `last_activity_at`, so the
//! generated account is "yesterday's" state; each simulated day moves it 24 hours and every
//! event of the day happens in between.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::data::FakeAccount;

pub(super) const DAY: i64 = 86_400;
/// Generated contacts were last active at most this long after they were created.
const GENERATED_ACTIVITY_SPAN: i64 = 90 * DAY;

/// What happens on one simulated day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DayPlan {
    /// New contacts (their `created_at` is during the day, so they sort last).
    pub created: u64,
    /// Contacts (any, the new ones included) that send a message: `last_activity_at` moves.
    pub active: u64,
    /// Contacts deleted among those that existed before the simulation began.
    pub deleted_old: u64,
    /// Contacts deleted among those created on simulated days.
    pub deleted_new: u64,
    /// Contacts whose name and `blocked` change without any activity.
    pub edited: u64,
}

/// The ground truth of one simulated day: contact ids, ascending.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DayReport {
    pub created: Vec<i64>,
    pub active: Vec<i64>,
    pub deleted: Vec<i64>,
    pub edited: Vec<i64>,
    /// The fake clock at the end of the day (unix seconds).
    pub clock: i64,
}

/// What the simulated days changed, on top of the generated contacts.
#[derive(Debug, Default)]
pub struct Days {
    /// Contacts generated before the first day: indices `0..initial`.
    pub(super) initial: u64,
    /// The fake clock (unix seconds).
    pub(super) clock: i64,
    /// `created_at` of contact `initial + k`, for those born on simulated days.
    pub(super) born: Vec<i64>,
    /// `last_activity_at` set by simulated activity, by contact index.
    pub(super) activity: HashMap<u64, i64>,
    /// Silent edits by contact index: how many, and the time of the last one.
    pub(super) edits: HashMap<u64, (u32, i64)>,
    /// Days simulated so far (the seed of each day's choices).
    pub(super) simulated: u64,
    /// The generated contacts' `last_activity_at` and index, sorted: built on the first
    /// activity filter, so that each filter costs a binary search, not a million renders.
    generated: std::sync::OnceLock<Vec<(i64, u64)>>,
}

impl Days {
    pub fn new(initial: u64) -> Self {
        let newest = FakeAccount::created_at_of(initial.saturating_sub(1));
        let first_day = (newest + GENERATED_ACTIVITY_SPAN).div_euclid(DAY) + 1;
        Self {
            initial,
            clock: first_day * DAY + 2 * 3600,
            ..Self::default()
        }
    }

    /// `created_at` of contact `index`: never decreases with the index.
    pub fn created_at(&self, index: u64) -> i64 {
        index
            .checked_sub(self.initial)
            .and_then(|k| self.born.get(usize::try_from(k).ok()?))
            .copied()
            .unwrap_or_else(|| FakeAccount::created_at_of(index))
    }

    /// The contact at `index` as the API renders it now.
    pub fn render(&self, account: &FakeAccount, index: u64) -> Value {
        let mut contact = account.contact(index);
        let Some(fields) = contact.as_object_mut() else {
            return contact;
        };
        if index >= self.initial && (index - self.initial) < self.born.len() as u64 {
            let created_at = self.created_at(index);
            fields.insert("created_at".into(), created_at.into());
            // A contact born on a simulated day wrote at once, or not yet.
            if fields.contains_key("last_activity_at") {
                fields.insert("last_activity_at".into(), created_at.into());
            }
        }
        if let Some(&seen) = self.activity.get(&index) {
            fields.insert("last_activity_at".into(), seen.into());
        }
        if let Some(&(times, _)) = self.edits.get(&index) {
            let id = FakeAccount::id_of(index);
            fields.insert("name".into(), format!("edited {times} {id}").into());
            let blocked = fields.get("blocked").and_then(Value::as_bool) == Some(true);
            fields.insert("blocked".into(), (blocked ^ (times % 2 == 1)).into());
        }
        contact
    }

    /// `last_activity_at` of contact `index` now, if it ever wrote.
    pub(super) fn last_activity(&self, account: &FakeAccount, index: u64) -> Option<i64> {
        self.render(account, index)
            .get("last_activity_at")
            .and_then(Value::as_i64)
    }

    /// The ids of live contacts edited after their last activity: what an export that did not
    /// re-read them still holds in their old version.
    pub fn silently_edited(
        &self,
        account: &FakeAccount,
        is_live: impl Fn(u64) -> bool,
    ) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .edits
            .iter()
            .filter(|(index, (_, at))| {
                is_live(**index)
                    && self
                        .last_activity(account, **index)
                        .is_none_or(|seen| seen < *at)
            })
            .map(|(index, _)| FakeAccount::id_of(*index))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether contact `index`'s `last_activity_at` day (UTC) is after `after` and before
    /// `before` (both exclusive, either open). A contact that never wrote matches neither, as
    /// SQL's comparisons with NULL.
    pub fn active_between(
        &self,
        account: &FakeAccount,
        index: u64,
        after: Option<i64>,
        before: Option<i64>,
    ) -> bool {
        self.last_activity(account, index).is_some_and(|seen| {
            let day = seen.div_euclid(DAY);
            after.is_none_or(|a| day > a) && before.is_none_or(|b| day < b)
        })
    }

    /// The indices (ascending; live or not) whose `last_activity_at` day may lie after
    /// `after` and before `before`: the contacts the simulation touched, and the generated
    /// ones whose generated activity does (found by binary search in a sorted cache).
    pub fn candidates(
        &self,
        account: &FakeAccount,
        after: Option<i64>,
        before: Option<i64>,
    ) -> BTreeSet<u64> {
        let generated = self.generated.get_or_init(|| {
            let mut seen: Vec<(i64, u64)> = (0..self.initial)
                .filter_map(|index| {
                    account
                        .contact(index)
                        .get("last_activity_at")
                        .and_then(Value::as_i64)
                        .map(|seen| (seen, index))
                })
                .collect();
            seen.sort_unstable();
            seen
        });
        let from = after.map_or(i64::MIN, |a| (a + 1).saturating_mul(DAY));
        let until = before.map_or(i64::MAX, |b| b.saturating_mul(DAY));
        let start = generated.partition_point(|&(seen, _)| seen < from);
        let mut found: BTreeSet<u64> = generated[start..]
            .iter()
            .take_while(|&&(seen, _)| seen < until)
            .map(|&(_, index)| index)
            .collect();
        found.extend(self.activity.keys().copied());
        found.extend(self.initial..self.initial + self.born.len() as u64);
        found
    }
}
