//! What a fresh export that meets no drift will send, from the answers a plan reads first.
//!
//! Receives page 1 of the list (and, for an account large enough to take a ledger, the last
//! planned page, which the ledger reads too), and each label's first page; emits the request
//! counts, stage by stage, by the same rules the walk, the ledger, the repair and the label
//! walk follow (their own functions and constants, so a change there changes the plan too).

use super::{repair, side_tables, walk};
use crate::source::ContactsPage;

/// The requests of the contacts walk and what it sends before and after it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalkCost {
    /// Pages `meta.count` plans.
    pub planned_pages: u64,
    /// Contact list pages sent for certain: the planned ones, the empty one past them (and,
    /// with a ledger, those sent with page 1; see `walk`).
    pub pages: u64,
    /// Pages past the end sent ahead with page 1 (a small account): as many as this, or fewer
    /// when the walk ends before the rate budget lets them go out.
    pub ahead: u64,
    /// The custom attribute definitions (one request).
    pub definitions: u64,
    /// The drift check's ledger, taken before the walk keeps a contact (large accounts).
    pub ledger: u64,
    /// The repair's requests after a walk that met no drift.
    pub repair: u64,
}

impl WalkCost {
    /// Every request of the walk's stages sent for certain.
    pub fn total(&self) -> u64 {
        self.pages + self.definitions + self.ledger + self.repair
    }

    /// The most requests the walk's stages may send (`ahead` included).
    pub fn at_most(&self) -> u64 {
        self.total() + self.ahead
    }
}

/// The page the ledger reads besides page 1 (the last planned one), if this account takes a
/// ledger that reads it: a plan fetches it too, to count the ledger's parts exactly.
pub fn ledger_last_page(first: &ContactsPage, sort: &str) -> Option<u64> {
    let planned = planned_pages(first);
    (takes_ledger(first) && repair::ledger_reads_last_page(sort)).then_some(planned)
}

/// What a fresh walk of the account sends, from its page 1 and (see `ledger_last_page`) its
/// last page; `speculate` as `ExportSettings::speculate`.
pub fn walk_cost(
    first: &ContactsPage,
    last: Option<&ContactsPage>,
    sort: &str,
    speculate: bool,
) -> WalkCost {
    let planned = planned_pages(first);
    let ledger = takes_ledger(first);
    let (pages, ahead) =
        walk::clean_walk_requests(planned, first.payload.is_empty(), speculate, ledger);
    WalkCost {
        planned_pages: planned,
        pages,
        ahead,
        definitions: 1,
        ledger: if ledger {
            repair::ledger_requests(sort, first, last, planned)
        } else {
            0
        },
        repair: if ledger {
            repair::CLEAN_REPAIR_REQUESTS
        } else {
            0
        },
    }
}

/// The `contact_labels` walk's requests, from every label's first page (those included).
pub fn label_walk_requests(firsts: &[ContactsPage]) -> u64 {
    firsts.iter().map(side_tables::planned_pages).sum()
}

fn planned_pages(first: &ContactsPage) -> u64 {
    walk::planned_pages(first.meta.count, first.payload.len() as u64)
}

/// The walk's rule: a known count planning more pages than it sends with page 1.
fn takes_ledger(first: &ContactsPage) -> bool {
    first.meta.count.is_some()
        && repair::wants_ledger(planned_pages(first), walk::SPECULATIVE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of `n` contacts created on consecutive days from `day`, announcing `count`.
    fn page(count: u64, n: u64, day: i64) -> ContactsPage {
        let contacts: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":{i},"created_at":{}}}"#, (day + i as i64) * 86_400))
            .collect();
        let body = format!(
            r#"{{"meta":{{"count":{count}}},"payload":[{}]}}"#,
            contacts.join(",")
        );
        ContactsPage::from_body(body.as_bytes()).expect("a page")
    }

    #[test]
    fn small_accounts_walk_their_pages_and_the_empty_one() {
        // 40 contacts, 15 a page: 3 pages and the empty 4th; with page 1, 8 may go out at once.
        let first = page(40, 15, 19_000);
        assert_eq!(ledger_last_page(&first, "created_at"), None);
        let alone = walk_cost(&first, None, "created_at", false);
        assert_eq!(
            (alone.pages, alone.ahead, alone.ledger, alone.repair),
            (4, 0, 0, 0)
        );
        assert_eq!((alone.total(), alone.at_most()), (5, 5));
        let ahead = walk_cost(&first, None, "created_at", true);
        assert_eq!((ahead.pages, ahead.ahead), (4, 4));
        assert_eq!((ahead.total(), ahead.at_most()), (5, 9));
        // 8 pages exactly: the empty 9th goes out after the 8 sent with page 1.
        let eight = walk_cost(&page(120, 15, 19_000), None, "x", true);
        assert_eq!((eight.pages, eight.ahead), (9, 0));
        // An empty account: page 1 alone (and maybe the speculative ones).
        let empty = page(0, 0, 0);
        assert_eq!(walk_cost(&empty, None, "created_at", false).at_most(), 2);
        let empty = walk_cost(&empty, None, "created_at", true);
        assert_eq!((empty.pages, empty.ahead), (1, 7));
    }

    #[test]
    fn large_accounts_take_a_ledger_and_walk_again() {
        // 300 contacts: 20 pages, more than the 8 sent with page 1, so a ledger.
        let first = page(300, 15, 19_000);
        assert_eq!(ledger_last_page(&first, "created_at"), Some(20));
        assert_eq!(ledger_last_page(&first, "email"), None);
        let last = page(300, 15, 19_400);
        let cost = walk_cost(&first, Some(&last), "created_at", true);
        // 8 with page 1, then pages 1 to 20 and the empty 21st.
        assert_eq!((cost.pages, cost.ahead), (8 + 21, 0));
        // The last page, one past part (20 pages make one part) and the open part.
        assert_eq!(cost.ledger, 3);
        assert_eq!(cost.repair, 2);
        assert_eq!(
            walk_cost(&first, Some(&last), "created_at", false).pages,
            1 + 21
        );
        // Not sorted by creation: no last page, one past part before yesterday, the open one.
        assert_eq!(walk_cost(&first, None, "email", true).ledger, 2);
    }
}
