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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::JoinHandle;

use super::ExportError;
use super::checkpoint::WalkState;
use super::collector::Collector;
use super::saver::Saver;
use crate::progress::Progress;
use crate::source::{AttributeDefinition, ContactsPage, FetchError, Fetcher};

/// Pages requested together with page 1, before the plan is known (as many as the adaptive
/// concurrency starts with).
const SPECULATIVE_START: u64 = 8;

type Fetched = (u64, Result<ContactsPage, FetchError>);

/// Page fetches in flight, in page order.
struct Window {
    fetcher: Arc<Fetcher>,
    arrivals: Arc<AtomicU64>,
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
            let (fetcher, arrivals) = (Arc::clone(&self.fetcher), Arc::clone(&self.arrivals));
            let task = tokio::spawn(async move {
                let page = fetcher.page(number).await;
                (arrivals.fetch_add(1, Ordering::SeqCst), page)
            });
            self.tasks.push_back((number, task));
            self.next += 1;
        }
    }

    /// The oldest page requested: its number, its arrival order and the page.
    async fn next_page(&mut self) -> Option<Result<(u64, u64, ContactsPage), ExportError>> {
        let (number, task) = self.tasks.pop_front()?;
        Some(match task.await {
            Ok((arrival, Ok(page))) => Ok((number, arrival, page)),
            Ok((_, Err(error))) => Err(error.into()),
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

pub async fn walk(
    fetcher: &Arc<Fetcher>,
    collector: &mut Collector,
    state: &mut WalkState,
    progress: &Progress,
    lookahead: usize,
    speculate: bool,
    saver: &mut Saver,
) -> Result<(), ExportError> {
    if state.done {
        return Ok(());
    }
    let mut window = Window {
        fetcher: Arc::clone(fetcher),
        // The order answers arrive in, for the repair's notes.
        arrivals: Arc::new(AtomicU64::new(0)),
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
        let (_, arrival, first) = first?;
        state.attribute_definitions = declare_definitions(collector, definitions.await?);
        state.expected_count = first.meta.count;
        state.final_count = first.meta.count;
        state.page_size = first.payload.len() as u64;
        state.planned_pages = match state.expected_count {
            Some(count) if state.page_size > 0 => count.div_ceil(state.page_size).max(1),
            _ => 1,
        };
        collector.add_page(1, arrival, &first)?;
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

    // The planned pages and the first one past the plan; past it, one more per non-empty page.
    let mut last_wanted = (state.planned_pages + 1).max(state.next_page);
    loop {
        window.fill(last_wanted);
        let (number, arrival, page) = window.next_page().await.unwrap_or_else(no_page)?;
        state.saw_count(page.meta.count);
        if page.payload.is_empty() && number > state.planned_pages {
            collector.pages += 1;
            state.done = true;
            break;
        }
        collector.add_page(number, arrival, &page)?;
        state.next_page = number + 1;
        last_wanted = last_wanted.max(number + 1);
        progress.page_done(collector.unique());
        saver.save(collector, state, false)?;
    }
    saver.save(collector, state, true)
}

/// Types the custom attribute columns from the definitions; without them (an old server, a
/// proxy that blocks the path, a failed request) the export goes on, typed from values, and
/// says so. Returns how many definitions typed a column.
fn declare_definitions(
    collector: &mut Collector,
    fetched: Result<Vec<AttributeDefinition>, FetchError>,
) -> Option<u64> {
    match fetched {
        Ok(definitions) => Some(
            collector.flattener.declare_custom_attributes(
                definitions
                    .iter()
                    .map(|d| (d.key.as_str(), d.display_type.as_str())),
            ),
        ),
        Err(error) => {
            eprintln!(
                "chatwoot-export: warning: cannot read the custom attribute definitions ({}); custom_attributes columns are typed from their values alone",
                error.short_cause()
            );
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
