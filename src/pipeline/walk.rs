//! The walk over the list's pages.
//!
//! Receives the fetcher, the collector and where the walk stands (fresh, or from a
//! checkpoint); emits pages into the collector in page order, so the output order and which
//! duplicate is kept do not depend on timing. Page 1 gives `meta.count` and the page size, and
//! so the plan; the walk then goes on past the plan until an empty page, so contacts created
//! during the run are not cut off. A fresh walk also asks for the custom attribute definitions
//! with page 1 and types the custom attribute columns from them before page 1 is flattened.
//!
//! Pages are fetched ahead of the one being consumed, each on its own task (the fetcher's
//! adaptive concurrency and rate budget bound what is really in flight), so a latency-bound
//! export keeps its requests in flight all the way:
//! - before page 1 has answered, pages 2 to `SPECULATIVE_START` go out with it (a small
//!   account answers them with empty pages, a few requests wasted once), unless several
//!   accounts share one request budget: there many small accounts would multiply the waste;
//! - the first page past the plan, usually the empty one that ends the walk, goes out with
//!   the last planned pages instead of after them;
//! - past the plan, one page at a time: each non-empty one allows the next.
//!
//! An account of more than `SPECULATIVE_START` pages gets a ledger before the walk keeps any
//! contact (see `repair`): once page 1 has given the plan, the pages sent with it are dropped,
//! the ledger counts every part of the account, and the walk starts again from page 1, so every
//! contact kept was fetched after the counts the completeness proof rests on.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::checkpoint::WalkState;
use super::collector::Collector;
use super::ledger::Ledger;
use super::repair;
use super::saver::Saver;
use super::{ExportError, Notice, Notices};
use crate::progress::Progress;
use crate::source::{AttributeDefinition, ContactsPage, FetchError, Fetcher};

/// Pages requested together with page 1, before the plan is known (as many as the adaptive
/// concurrency starts with).
pub(super) const SPECULATIVE_START: u64 = 8;

type Fetched = Result<ContactsPage, FetchError>;

/// Page fetches in flight, in page order.
struct Window {
    fetcher: Arc<Fetcher>,
    tasks: VecDeque<(u64, JoinHandle<Fetched>)>,
    /// The next page number to request.
    next: u64,
    /// Most pages requested but not consumed.
    lookahead: usize,
}

impl Window {
    /// Requests pages up to `last` (inclusive), within the lookahead.
    fn fill(&mut self, last: u64) {
        while self.next <= last && self.tasks.len() < self.lookahead {
            let number = self.next;
            let fetcher = Arc::clone(&self.fetcher);
            let task = tokio::spawn(async move { fetcher.page(number).await });
            self.tasks.push_back((number, task));
            self.next += 1;
        }
    }

    /// The oldest page requested: its number and the page.
    async fn next_page(&mut self) -> Option<Result<(u64, ContactsPage), ExportError>> {
        let (number, task) = self.tasks.pop_front()?;
        Some(match task.await {
            Ok(Ok(page)) => Ok((number, page)),
            Ok(Err(error)) => Err(error.into()),
            Err(error) => Err(error.into()),
        })
    }
}

impl Drop for Window {
    /// Pages no longer needed (past the empty page, or after an error) are not waited for.
    fn drop(&mut self) {
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

/// How the walk goes: pages in flight, and what it needs for the drift check.
pub struct WalkOptions<'a> {
    pub lookahead: usize,
    /// Where the walk's notices go (the command layer shows them).
    pub notices: &'a Notices,
    pub speculate: bool,
    /// The list's sort key (the ledger reads the oldest and newest days from it).
    pub sort: &'a str,
}

pub async fn walk(
    fetcher: &Arc<Fetcher>,
    collector: &mut Collector,
    state: &mut WalkState,
    progress: &Progress,
    options: &WalkOptions<'_>,
    ledger: &mut Option<Ledger>,
    saver: &mut Saver,
) -> Result<(), ExportError> {
    let (lookahead, speculate) = (options.lookahead, options.speculate);
    if state.done {
        return Ok(());
    }
    let mut window = Window {
        fetcher: Arc::clone(fetcher),
        tasks: VecDeque::new(),
        next: state.next_page.max(1),
        lookahead: lookahead.max(1),
    };
    if state.next_page <= 1 {
        // Asked for before page 1 and with it: the definitions must type the columns before
        // page 1's contacts are flattened, and this way waiting for them costs no round trip.
        let definitions = tokio::spawn({
            let fetcher = Arc::clone(fetcher);
            async move { fetcher.attribute_definitions().await }
        });
        window.fill(if speculate { SPECULATIVE_START } else { 1 });
        let first = window.next_page().await.unwrap_or_else(no_page);
        if first.is_err() {
            definitions.abort();
        }
        let (_, first) = first?;
        state.attribute_definitions =
            declare_definitions(collector, definitions.await?, options.notices);
        state.expected_count = first.meta.count;
        state.final_count = first.meta.count;
        state.page_size = first.payload.len() as u64;
        state.planned_pages = planned_pages(state.expected_count, state.page_size);
        if state.expected_count.is_some()
            && repair::wants_ledger(state.planned_pages, SPECULATIVE_START)
        {
            // The pages sent with page 1 were answered before the ledger's counts: dropped,
            // and fetched again after them (at most `SPECULATIVE_START` requests).
            // Awaited, not aborted: each was sent, and the request count must say so.
            for (_, task) in window.tasks.drain(..) {
                let _ = task.await;
            }
            progress.phase("counting the account's parts");
            *ledger = repair::take_ledger(fetcher, options.sort, &first, state.planned_pages).await;
            // In every checkpoint from here: a resumed run proves completeness with it.
            saver.keep_ledger(ledger.clone());
            window.next = 1;
            progress.plan(state.planned_pages, state.expected_count, 0, 0);
            return walk_pages(&mut window, collector, state, progress, saver).await;
        }
        collector.add_page(1, &first)?;
        state.next_page = 2;
        state.done = first.payload.is_empty();
        progress.plan(
            state.planned_pages,
            state.expected_count,
            1,
            collector.unique(),
        );
        saver.save(collector, state, false)?;
        if state.done {
            return Ok(());
        }
    } else {
        progress.plan(
            state.planned_pages,
            state.expected_count,
            state.next_page - 1,
            collector.unique(),
        );
    }

    walk_pages(&mut window, collector, state, progress, saver).await
}

/// The walk from `state.next_page` to the empty page past the plan.
async fn walk_pages(
    window: &mut Window,
    collector: &mut Collector,
    state: &mut WalkState,
    progress: &Progress,
    saver: &mut Saver,
) -> Result<(), ExportError> {
    // The planned pages and the first one past the plan; past it, one more per non-empty page.
    let mut last_wanted = (state.planned_pages + 1).max(state.next_page);
    loop {
        window.fill(last_wanted);
        let (number, page) = window.next_page().await.unwrap_or_else(no_page)?;
        state.saw_count(page.meta.count);
        if page.payload.is_empty() && number > state.planned_pages {
            collector.pages += 1;
            state.done = true;
            break;
        }
        collector.add_page(number, &page)?;
        state.next_page = number + 1;
        last_wanted = last_wanted.max(number + 1);
        progress.page_done(collector.unique());
        saver.save(collector, state, false)?;
    }
    saver.save(collector, state, true)
}

/// The pages a walk plans from page 1: its `meta.count` over its size (1 when it says too
/// little to plan by).
pub(super) fn planned_pages(count: Option<u64>, page_size: u64) -> u64 {
    match count {
        Some(count) if page_size > 0 => count.div_ceil(page_size).max(1),
        _ => 1,
    }
}

/// The list requests of a fresh walk that meets no drift, the ledger's own not counted (`plan`
/// predicts with it): the pages it sends for certain, and the pages past the end sent ahead
/// with page 1, which go out only if the rate budget lets them before the walk ends (it cancels
/// them then). With a ledger, the pages sent with page 1 (awaited, so all sent), then every
/// planned page and the empty one past them; without, the planned pages and the empty one.
pub(super) fn clean_walk_requests(
    planned_pages: u64,
    first_empty: bool,
    speculate: bool,
    ledger: bool,
) -> (u64, u64) {
    let with_first = if speculate { SPECULATIVE_START } else { 1 };
    if ledger {
        (with_first + planned_pages + 1, 0)
    } else if first_empty {
        (1, with_first - 1)
    } else {
        let needed = planned_pages + 1;
        (needed, with_first.saturating_sub(needed))
    }
}

/// Types the custom attribute columns from the definitions; without them (an old server, a
/// proxy that blocks the path, a failed request) the export goes on, typed from values, and
/// says so. Returns how many definitions typed a column.
pub(super) fn declare_definitions(
    collector: &mut Collector,
    fetched: Result<Vec<AttributeDefinition>, FetchError>,
    notices: &Notices,
) -> Option<u64> {
    match fetched {
        Ok(definitions) => {
            let declared = collector.flattener.declare_custom_attributes(
                definitions
                    .iter()
                    .map(|d| (d.key.as_str(), d.display_type.as_str())),
            );
            collector.definitions = Some(definitions.into_iter().map(|d| d.raw).collect());
            Some(declared)
        }
        Err(error) => {
            notices.tell(Notice::NoAttributeDefinitions {
                cause: error.short_cause(),
            });
            None
        }
    }
}

/// `fill` always requests the page `next_page` waits for; an error rather than a panic if not.
fn no_page<T>() -> Result<T, ExportError> {
    Err(ExportError::Internal(
        "the walk ran out of pages to wait for",
    ))
}
