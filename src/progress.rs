//! The progress bar on stderr: pages and contacts against the totals from `meta.count`, with
//! rate and ETA. Hidden when stderr is not a terminal or with `--no-progress`, so logs and CI
//! output stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A handle to the bar; every method is a no-op when it is hidden.
pub struct Progress {
    bar: ProgressBar,
    expected_contacts: Option<u64>,
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
                "{spinner:.green} {bar:30.cyan/blue} {pos}/{len} pages  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(125));
        Self {
            bar,
            expected_contacts: None,
        }
    }

    /// Sets the totals once page 1 has told them.
    pub fn plan(&mut self, pages: u64, contacts: Option<u64>) {
        self.expected_contacts = contacts;
        self.bar.set_length(pages);
    }

    /// One more page done; `contacts` is the running count of distinct contacts.
    pub fn page_done(&self, contacts: u64) {
        if self.bar.position() + 1 > self.bar.length().unwrap_or(0) {
            // A page past the plan: the account grew during the export.
            self.bar.inc_length(1);
        }
        self.bar.inc(1);
        let secs = self.bar.elapsed().as_secs_f64().max(0.001);
        let rate = (contacts as f64 / secs).round();
        match self.expected_contacts {
            Some(total) => self
                .bar
                .set_message(format!("{contacts}/{total} contacts  {rate} contacts/s")),
            None => self
                .bar
                .set_message(format!("{contacts} contacts  {rate} contacts/s")),
        }
    }

    /// Switches to the writing stage.
    pub fn writing(&self, table: &str) {
        self.bar.set_message(format!("writing {table}"));
    }

    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }
}
