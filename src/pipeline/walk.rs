//! The walk over the list's pages.
//!
//! Receives the fetcher, the collector and where the walk stands (fresh, or from a
//! checkpoint); emits pages into the collector in page order. Page 1 gives `meta.count` and
//! the page size; the planned pages are fetched concurrently (each on its own task, at most
//! `lookahead` ahead of the oldest unfinished one) and consumed in order, so the output order
//! and which duplicate is kept do not depend on timing. Then pages past the plan until an
//! empty one, so contacts created during the run are not cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream;

use super::ExportError;
use super::checkpoint::WalkState;
use super::collector::Collector;
use super::saver::Saver;
use crate::progress::Progress;
use crate::source::Fetcher;

pub async fn walk(
    fetcher: &Arc<Fetcher>,
    collector: &mut Collector,
    state: &mut WalkState,
    progress: &Progress,
    lookahead: usize,
    saver: &mut Saver,
) -> Result<(), ExportError> {
    // The order answers arrive in, for the repair's notes.
    let arrivals = Arc::new(AtomicU64::new(0));
    let arrived = |arrivals: &AtomicU64| arrivals.fetch_add(1, Ordering::SeqCst);
    if state.next_page <= 1 {
        let first = fetcher.page(1).await?;
        let arrival = arrived(&arrivals);
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
    } else {
        progress.plan(
            state.planned_pages,
            state.expected_count,
            state.next_page - 1,
            collector.unique(),
        );
    }
    if state.done {
        return Ok(());
    }

    if state.next_page <= state.planned_pages {
        let mut pages = stream::iter(state.next_page..=state.planned_pages)
            .map(|number| {
                let (fetcher, arrivals) = (Arc::clone(fetcher), Arc::clone(&arrivals));
                tokio::spawn(async move {
                    let page = fetcher.page(number).await;
                    (number, arrived(&arrivals), page)
                })
            })
            .buffered(lookahead.max(1));
        while let Some(joined) = pages.next().await {
            let (number, arrival, page) = joined?;
            let page = page?;
            state.saw_count(page.meta.count);
            collector.add_page(number, arrival, &page)?;
            state.next_page = number + 1;
            progress.page_done(collector.unique());
            saver.save(collector, state, false)?;
        }
    }

    // Past the plan until an empty page: contacts created during the run land at the end.
    loop {
        let number = state.next_page;
        let page = fetcher.page(number).await?;
        let arrival = arrived(&arrivals);
        state.saw_count(page.meta.count);
        if page.payload.is_empty() {
            collector.pages += 1;
            state.done = true;
            break;
        }
        collector.add_page(number, arrival, &page)?;
        state.next_page = number + 1;
        progress.page_done(collector.unique());
        saver.save(collector, state, false)?;
    }
    saver.save(collector, state, true)
}
