//! The progress bar on stderr: pages and contacts against the totals from `meta.count`, the
//! rate, what the export is waiting for (the rate limit's next window), retries, 429s, the
//! current concurrency, and an ETA that accounts for the request budget. Hidden when stderr is
//! not a terminal or with `--no-progress`, so logs and CI output stay clean.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::source::{FetchStatus, RateMode};

/// A handle to the bar, cheap to clone; every method is a no-op when it is hidden.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    line: Arc<Mutex<Line>>,
}

#[derive(Default)]
struct Line {
    expected_contacts: Option<u64>,
    contacts: u64,
    /// Pages done before this run (a resumed export), not counted in the rate.
    resumed_pages: u64,
    status: FetchStatus,
    phase: Option<String>,
}

impl Progress {
    pub fn new(wanted: bool) -> Self {
        let visible = wanted && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} {bar:30.cyan/blue} {human_pos}/{human_len} pages  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(125));
        Self {
            bar,
            line: Arc::new(Mutex::new(Line::default())),
        }
    }

    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        self.line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the totals once page 1 has told them; `pages_done` and `contacts` are where the
    /// walk stands (more than one page when resuming).
    pub fn plan(&self, pages: u64, contacts_expected: Option<u64>, pages_done: u64, contacts: u64) {
        self.bar.set_length(pages);
        self.bar.set_position(pages_done);
        let mut line = self.line();
        line.expected_contacts = contacts_expected;
        line.contacts = contacts;
        line.resumed_pages = pages_done.saturating_sub(1);
        drop(line);
        self.redraw();
    }

    /// One more page done; `contacts` is the running count of distinct contacts.
    pub fn page_done(&self, contacts: u64) {
        if self.bar.position() + 1 > self.bar.length().unwrap_or(0) {
            // A page past the plan: the account grew during the export.
            self.bar.inc_length(1);
        }
        self.bar.inc(1);
        self.line().contacts = contacts;
        self.redraw();
    }

    /// The fetcher's state, refreshed a few times a second.
    pub fn set_status(&self, status: FetchStatus) {
        self.line().status = status;
        self.redraw();
    }

    /// A stage after the walk (drift repair, writing a table).
    pub fn phase(&self, phase: &str) {
        self.line().phase = Some(phase.to_owned());
        self.redraw();
    }

    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    fn redraw(&self) {
        if self.bar.is_hidden() {
            return;
        }
        let line = self.line();
        let message = match &line.phase {
            Some(phase) => phase.clone(),
            None => status_message(
                &line,
                self.bar.position(),
                self.bar.length().unwrap_or(0),
                self.bar.elapsed(),
            ),
        };
        self.bar.set_message(message);
    }
}

/// The text after the bar during the walk, from where it stands: `pages_done` of
/// `pages_planned` after `elapsed`.
fn status_message(line: &Line, pages_done: u64, pages_planned: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut parts = Vec::new();
    parts.push(match line.expected_contacts {
        Some(total) => format!(
            "{}/{} contacts",
            HumanCount(line.contacts),
            HumanCount(total)
        ),
        None => format!("{} contacts", HumanCount(line.contacts)),
    });
    let pages_this_run = pages_done.saturating_sub(line.resumed_pages + 1);
    let pages_per_sec = pages_this_run as f64 / secs;
    parts.push(format!("{pages_per_sec:.0} pages/s"));
    let status = &line.status;
    parts.push(format!("concurrency {}", status.concurrency));
    if status.retries > 0 {
        parts.push(format!("retries {}", status.retries));
    }
    if status.governor.throttled > 0 {
        parts.push(format!("429s {}", status.governor.throttled));
    }
    let governor = &status.governor;
    if governor.mode == RateMode::Learned
        && let Some(limit) = governor.limit
    {
        parts.push(format!(
            "limit {}/min",
            HumanCount((limit * 60.0).round() as u64)
        ));
    }
    let wait = governor.waiting.filter(|w| *w > Duration::from_millis(300));
    if let Some(wait) = wait {
        parts.push(format!(
            "rate limit: paused, next try in {} s",
            wait.as_secs_f64().ceil()
        ));
    }
    let remaining = pages_planned.saturating_sub(pages_done) as f64;
    let mut eta = if pages_per_sec > 0.0 {
        remaining / pages_per_sec
    } else {
        0.0
    };
    if let Some(pace) = governor.pace {
        // The pace caps the rate: at best `pace` requests a second, after any pause.
        eta = eta.max(remaining / pace);
    }
    eta += wait.map_or(0.0, |w| w.as_secs_f64());
    if eta > 0.0 {
        parts.push(format!(
            "ETA {}",
            HumanDuration(Duration::from_secs_f64(eta))
        ));
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{GovernorStatus, RateMode};

    fn line(contacts: u64, expected: Option<u64>, status: FetchStatus) -> Line {
        Line {
            expected_contacts: expected,
            contacts,
            status,
            ..Line::default()
        }
    }

    #[test]
    fn counts_have_thousands_separators_and_the_eta_follows_the_rate() {
        let status = FetchStatus {
            concurrency: 8,
            ..FetchStatus::default()
        };
        // Page 1 plus 1,000 pages in 10 s: 100 pages/s, 65,667 pages to go.
        let text = status_message(
            &line(15_015, Some(1_000_000), status),
            1_001,
            66_668,
            Duration::from_secs(10),
        );
        assert!(
            text.starts_with("15,015/1,000,000 contacts  100 pages/s  concurrency 8  ETA "),
            "{text}"
        );
        assert!(text.ends_with("ETA 11 minutes"), "{text}");
    }

    #[test]
    fn the_pace_caps_the_eta_and_pauses_and_429s_are_shown() {
        let status = FetchStatus {
            concurrency: 4,
            retries: 2,
            governor: GovernorStatus {
                mode: RateMode::Learned,
                limit: Some(50.0),
                pace: Some(45.0),
                waiting: Some(Duration::from_millis(41_200)),
                sent: 3_000,
                throttled: 3,
                ..GovernorStatus::default()
            },
        };
        // 300 pages/s so far, but 54,000 pages left at 45 a second take 20 minutes, and the
        // 41 s pause comes first: 20 min 41 s.
        let text = status_message(
            &line(45_015, None, status),
            3_001,
            57_001,
            Duration::from_secs(10),
        );
        assert_eq!(
            text,
            "45,015 contacts  300 pages/s  concurrency 4  retries 2  429s 3  limit 3,000/min  \
             rate limit: paused, next try in 42 s  ETA 21 minutes"
        );
    }
}
