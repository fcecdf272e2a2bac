//! Progress on stderr: receives the walk's plan (pages, contacts expected), each page done and
//! the fetcher's status; emits, on a terminal, a bar that fits the terminal's width and, when
//! stderr is not a terminal (cron, CI, systemd) or with `--log-format json`, one line every
//! 30 s or every 5% of the pages, whichever comes first. Both show pages and contacts against
//! the totals from `meta.count`, the current rate (the last 20 s, not an average since the
//! start), retries, 429s, what the export is waiting for, and an ETA that includes the rate
//! limit's pace and waits and counts down during a wait. Off with `--no-progress`.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{LINE_INTERVAL_ENV, ProgressFactory, ProgressSink};
use crate::source::{FetchStatus, RateMode};

/// The time between progress lines when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(30);
/// The least time between two lines that a 5% step prints early: a short run does not fill a
/// log with twenty lines.
const STEP_MIN_GAP: Duration = Duration::from_secs(5);
/// The span the shown rate is measured over.
const RATE_SPAN: Duration = Duration::from_secs(20);
/// The longest span the ETA's throughput is measured over (a fixed-window limit's whole
/// window, waits included, when it is known and longer than `RATE_SPAN`).
const THROUGHPUT_SPAN_MAX: Duration = Duration::from_secs(120);
/// Samples closer than this are merged, so the history stays small at any rate.
const SAMPLE_GAP: Duration = Duration::from_millis(100);

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Off,
    Bar,
    /// A line every `every`, or at every 5% step.
    Lines {
        every: Duration,
    },
}

/// A handle to the progress, cheap to clone; every method is a no-op when it is off.
#[derive(Clone)]
pub struct ProgressDisplay {
    bar: ProgressBar,
    line: Arc<Mutex<Line>>,
    mode: Mode,
    account_id: u64,
}

struct Line {
    /// What the bar counts: pages of the walk, or an incremental run's requests.
    unit: &'static str,
    expected_contacts: Option<u64>,
    contacts: u64,
    status: FetchStatus,
    phase: Option<String>,
    /// (when, pages done) since the plan, oldest first; the first is the plan itself, so
    /// the pages of a resumed export's earlier runs are not counted in the rate.
    samples: VecDeque<(Instant, u64)>,
    /// When the last progress line was printed, and how far the walk stood.
    last_line: (Instant, u64),
}

impl Default for Line {
    fn default() -> Self {
        Self {
            unit: "pages",
            expected_contacts: None,
            contacts: 0,
            status: FetchStatus::default(),
            phase: None,
            samples: VecDeque::new(),
            last_line: (Instant::now(), 0),
        }
    }
}

/// The rate and the ETA at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Rates {
    /// Pages a second over the last `RATE_SPAN`; none before a second of the walk has passed.
    pages_per_sec: Option<f64>,
    /// Seconds until the walk is done; none when nothing tells yet.
    eta_secs: Option<f64>,
}

impl ProgressDisplay {
    /// Progress for `account_id`'s export; `wanted` is false with `--no-progress`.
    pub fn new(wanted: bool, account_id: u64) -> Self {
        let mode = if !wanted {
            Mode::Off
        } else if std::io::stderr().is_terminal() && !crate::commands::log::json() {
            Mode::Bar
        } else {
            Mode::Lines {
                every: line_interval(std::env::var(LINE_INTERVAL_ENV).ok().as_deref()),
            }
        };
        let target = if mode == Mode::Bar {
            ProgressDrawTarget::stderr_with_hz(8)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        // `wide_msg` takes what the terminal's width leaves and cuts the rest: no wrap.
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} {bar:20.cyan/blue} {human_pos}/{human_len} {prefix}  {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix("pages");
        if mode == Mode::Bar {
            bar.enable_steady_tick(Duration::from_millis(125));
        }
        Self {
            bar,
            line: Arc::new(Mutex::new(Line::default())),
            mode,
            account_id,
        }
    }

    fn line(&self) -> std::sync::MutexGuard<'_, Line> {
        self.line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Redraws the bar, or prints a line when one is due.
    fn update(&self) {
        match self.mode {
            Mode::Off => {}
            Mode::Bar => {
                let line = self.line();
                let message = match &line.phase {
                    Some(phase) => phase.clone(),
                    None => status_message(&line, self.rates(&line, Instant::now())),
                };
                self.bar.set_message(message);
            }
            Mode::Lines { every } => self.print_if_due(every),
        }
    }

    fn rates(&self, line: &Line, now: Instant) -> Rates {
        rates(
            &line.samples,
            now,
            self.bar.length().unwrap_or(0),
            &line.status,
        )
    }

    /// Prints a progress line when `every` has passed since the last one, or when the walk
    /// crossed a 5% step (and a few seconds have passed).
    fn print_if_due(&self, every: Duration) {
        let now = Instant::now();
        let (done, planned) = (self.bar.position(), self.bar.length().unwrap_or(0));
        let mut line = self.line();
        // Nothing to say before the plan (0/0 pages) unless a phase says what goes on.
        if line.samples.is_empty() && line.phase.is_none() {
            return;
        }
        let (at, pages_then) = line.last_line;
        let since = now.duration_since(at);
        let step = (planned / 20).max(1);
        let stepped = done / step > pages_then / step;
        if !(since >= every || (stepped && since >= every.min(STEP_MIN_GAP))) {
            return;
        }
        line.last_line = (now, done);
        let rates = self.rates(&line, now);
        let account_id = self.account_id;
        let text = match &line.phase {
            Some(phase) => format!("progress: account {account_id}: {phase}"),
            None => format!(
                "progress: account {account_id}: {}/{} {} ({}%)  {}",
                HumanCount(done),
                HumanCount(planned),
                line.unit,
                (done * 100).checked_div(planned).unwrap_or(0),
                status_message(&line, rates)
            ),
        };
        if crate::commands::log::json() {
            let status = &line.status;
            tracing::info!(
                event = "progress",
                account_id,
                phase = line.phase.as_deref(),
                unit = line.unit,
                pages_done = done,
                pages_planned = planned,
                contacts = line.contacts,
                contacts_expected = line.expected_contacts,
                pages_per_sec = rates.pages_per_sec.map(|r| (r * 10.0).round() / 10.0),
                eta_secs = rates.eta_secs.map(f64::round),
                waiting_secs = status.governor.waiting.map(|w| w.as_secs_f64().round()),
                retries = status.retries,
                throttled = status.governor.throttled,
                "{text}"
            );
        } else {
            eprintln!("chatwoot-export: {text}");
        }
    }
}

/// The time between progress lines: `LINE_INTERVAL_ENV`'s milliseconds when set and valid.
fn line_interval(env: Option<&str>) -> Duration {
    env.and_then(|ms| ms.trim().parse().ok())
        .filter(|ms| *ms > 0)
        .map_or(LINE_INTERVAL, Duration::from_millis)
}

/// The latest sample at or before `cutoff`, else the first (none before it).
fn sample_before(samples: &VecDeque<(Instant, u64)>, cutoff: Option<Instant>) -> (Instant, u64) {
    let first = samples.front().copied().unwrap_or((Instant::now(), 0));
    match cutoff {
        Some(cutoff) => samples
            .iter()
            .rev()
            .find(|(at, _)| *at <= cutoff)
            .copied()
            .unwrap_or(first),
        None => first,
    }
}

/// The rate and the ETA from the walk's samples at `now`, with `pages_planned` in all.
///
/// The rate is the pages of the last `RATE_SPAN`. The ETA is the rest of the pages at the
/// throughput up to the last page, measured over a whole window of the rate limit when one
/// was seen (so its waits are in it), less the time since that page: it counts down while
/// the export waits. It is never less than the wait still to come plus the rest at the pace.
fn rates(
    samples: &VecDeque<(Instant, u64)>,
    now: Instant,
    pages_planned: u64,
    status: &FetchStatus,
) -> Rates {
    let (Some(&(first_at, _)), Some(&(last_at, done))) = (samples.front(), samples.back()) else {
        return Rates::default();
    };
    let pages_per_sec = (now.duration_since(first_at) >= Duration::from_secs(1)).then(|| {
        let (at, pages) = sample_before(samples, now.checked_sub(RATE_SPAN));
        done.saturating_sub(pages) as f64 / now.duration_since(at).as_secs_f64().max(0.001)
    });
    let governor = &status.governor;
    let span = governor
        .cycle
        .map_or(RATE_SPAN, |cycle| cycle.max(RATE_SPAN))
        .min(THROUGHPUT_SPAN_MAX);
    let (at, pages) = sample_before(samples, last_at.checked_sub(span));
    let measured = last_at.duration_since(at).as_secs_f64();
    let remaining = pages_planned.saturating_sub(done) as f64;
    let by_throughput = (measured >= 1.0 && done > pages).then(|| {
        let throughput = (done - pages) as f64 / measured;
        remaining / throughput - now.duration_since(last_at).as_secs_f64()
    });
    let wait = governor.waiting.map_or(0.0, |w| w.as_secs_f64());
    let by_pace = governor.pace.map(|pace| wait + remaining / pace);
    // The wait alone is no estimate (the pages after it take time too): it only bounds one.
    let eta_secs = [by_throughput, by_pace]
        .into_iter()
        .flatten()
        .reduce(f64::max)
        .map(|eta| eta.max(wait));
    Rates {
        pages_per_sec,
        eta_secs,
    }
}

/// The text after the bar during the walk (and in progress lines after the pages).
fn status_message(line: &Line, rates: Rates) -> String {
    let mut parts = Vec::new();
    parts.push(match line.expected_contacts {
        Some(total) => format!(
            "{}/{} contacts",
            HumanCount(line.contacts),
            HumanCount(total)
        ),
        None => format!("{} contacts", HumanCount(line.contacts)),
    });
    if let Some(rate) = rates.pages_per_sec {
        let unit = line.unit;
        parts.push(if rate < 10.0 {
            format!("{rate:.1} {unit}/s")
        } else {
            format!("{rate:.0} {unit}/s")
        });
    }
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
    if let Some(wait) = governor.waiting.filter(|w| *w > Duration::from_millis(300)) {
        parts.push(format!(
            "rate limit: paused, next try in {} s",
            wait.as_secs_f64().ceil()
        ));
    }
    if let Some(eta) = rates.eta_secs.filter(|eta| *eta >= 1.0) {
        parts.push(format!(
            "ETA {}",
            HumanDuration(Duration::from_secs_f64(eta))
        ));
    }
    parts.join("  ")
}

impl ProgressSink for ProgressDisplay {
    /// Sets the totals once page 1 has told them; `pages_done` and `contacts` are where the
    /// walk stands (more than one page when resuming).
    fn plan(&self, pages: u64, contacts_expected: Option<u64>, pages_done: u64, contacts: u64) {
        self.bar.set_length(pages);
        self.bar.set_position(pages_done);
        let mut line = self.line();
        line.expected_contacts = contacts_expected;
        line.contacts = contacts;
        // The walk (re)starts: a phase before it ("counting the account's parts") is over.
        line.phase = None;
        line.samples.clear();
        line.samples.push_back((Instant::now(), pages_done));
        drop(line);
        self.update();
    }

    /// The incremental run's requests, predicted: the bar counts requests from here on.
    fn plan_requests(&self, requests: u64, done: u64) {
        self.bar.set_prefix("requests");
        self.line().unit = "requests";
        let contacts = self.line().contacts;
        self.plan(requests.max(done), None, done, contacts);
    }

    /// One more page done; `contacts` is the running count of distinct contacts.
    fn page_done(&self, contacts: u64) {
        if self.bar.position() + 1 > self.bar.length().unwrap_or(0) {
            // A page past the plan: the account grew during the export.
            self.bar.inc_length(1);
        }
        self.bar.inc(1);
        let position = self.bar.position();
        let mut line = self.line();
        line.contacts = contacts;
        let now = Instant::now();
        // The plan's sample stays: it is where the rate starts.
        let merge = line.samples.len() > 1;
        match line.samples.back_mut() {
            Some(last) if merge && now.duration_since(last.0) < SAMPLE_GAP => {
                *last = (now, position);
            }
            _ => line.samples.push_back((now, position)),
        }
        while line
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) > THROUGHPUT_SPAN_MAX)
        {
            line.samples.pop_front();
        }
        drop(line);
        self.update();
    }

    /// The fetcher's state, refreshed a few times a second.
    fn set_status(&self, status: FetchStatus) {
        self.line().status = status;
        self.update();
    }

    /// A stage after the walk (drift repair, writing a table).
    fn phase(&self, phase: &str) {
        self.line().phase = Some(phase.to_owned());
        self.update();
    }

    fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

/// How exports show their progress: the bar on a terminal, lines otherwise (see above).
pub fn display() -> ProgressFactory {
    ProgressFactory::new(|wanted, account_id| Arc::new(ProgressDisplay::new(wanted, account_id)))
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

    /// Samples at `(seconds after t0, pages done)`.
    fn samples(t0: Instant, points: &[(f64, u64)]) -> VecDeque<(Instant, u64)> {
        points
            .iter()
            .map(|(secs, pages)| (t0 + Duration::from_secs_f64(*secs), *pages))
            .collect()
    }

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn counts_have_thousands_separators_and_the_eta_follows_the_rate() {
        let status = FetchStatus {
            concurrency: 8,
            ..FetchStatus::default()
        };
        let text = status_message(
            &line(15_015, Some(1_000_000), status),
            Rates {
                pages_per_sec: Some(100.0),
                eta_secs: Some(656.67),
            },
        );
        assert_eq!(
            text,
            "15,015/1,000,000 contacts  100 pages/s  concurrency 8  ETA 11 minutes"
        );
    }

    #[test]
    fn the_rate_is_the_last_twenty_seconds_not_the_average_since_the_start() {
        let t0 = Instant::now();
        // 1,000 pages in the first 10 s, then 10 pages a second for 30 s.
        let walk = samples(t0, &[(0.0, 0), (10.0, 1_000), (20.0, 1_100), (40.0, 1_300)]);
        let rates = rates(&walk, at(t0, 40.0), 2_300, &FetchStatus::default());
        assert_eq!(rates.pages_per_sec, Some(10.0));
        // 1,000 pages to go at 10 a second.
        assert_eq!(rates.eta_secs, Some(100.0));
    }

    #[test]
    fn the_eta_counts_down_during_a_wait_and_includes_it() {
        let t0 = Instant::now();
        // A fixed window of 60 s: 300 pages in its first 5 s, then refused for 55 s.
        let walk = samples(t0, &[(0.0, 0), (5.0, 300), (60.0, 300), (65.0, 600)]);
        let waiting = |secs: u64| FetchStatus {
            governor: GovernorStatus {
                mode: RateMode::Learned,
                cycle: Some(Duration::from_secs(60)),
                waiting: Some(Duration::from_secs(secs)),
                ..GovernorStatus::default()
            },
            ..FetchStatus::default()
        };
        // 600 pages in 65 s over the last window: about 5 a second with the waits, so the
        // 3,000 pages to go take about 10 minutes, not the 50 s the burst's rate says.
        let early = rates(&walk, at(t0, 70.0), 3_600, &waiting(50))
            .eta_secs
            .expect("eta");
        let later = rates(&walk, at(t0, 100.0), 3_600, &waiting(20))
            .eta_secs
            .expect("eta");
        assert!((550.0..650.0).contains(&early), "{early}");
        assert!(
            (later - (early - 30.0)).abs() < 0.01,
            "{early} then {later}"
        );
        // Nothing fetched in the last 20 s: the current rate says so.
        assert_eq!(
            rates(&walk, at(t0, 100.0), 3_600, &waiting(20)).pages_per_sec,
            Some(0.0)
        );
    }

    #[test]
    fn the_pace_and_the_pause_bound_the_eta_and_are_shown() {
        let t0 = Instant::now();
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
        let walk = samples(t0, &[(0.0, 1), (10.0, 3_001)]);
        let rates = rates(&walk, at(t0, 10.0), 57_001, &status);
        let eta = rates.eta_secs.expect("eta");
        assert!((eta - (41.2 + 54_000.0 / 45.0)).abs() < 1e-6, "{eta}");
        assert_eq!(
            status_message(&line(45_015, None, status), rates),
            "45,015 contacts  300 pages/s  concurrency 4  retries 2  429s 3  limit 3,000/min  \
             rate limit: paused, next try in 42 s  ETA 21 minutes"
        );
    }

    #[test]
    fn no_rate_in_the_first_second_and_the_interval_comes_from_the_environment() {
        let t0 = Instant::now();
        let walk = samples(t0, &[(0.0, 0), (0.5, 10)]);
        assert_eq!(
            rates(&walk, at(t0, 0.5), 100, &FetchStatus::default()).pages_per_sec,
            None
        );
        // Refused in the first second, before any pace is known: a wait of 2 s says nothing
        // of the 90 pages after it, so no ETA rather than "ETA 2 seconds".
        let paused = FetchStatus {
            governor: GovernorStatus {
                waiting: Some(Duration::from_secs(2)),
                ..GovernorStatus::default()
            },
            ..FetchStatus::default()
        };
        assert_eq!(rates(&walk, at(t0, 0.6), 100, &paused).eta_secs, None);
        assert_eq!(line_interval(None), Duration::from_secs(30));
        assert_eq!(line_interval(Some("250")), Duration::from_millis(250));
        assert_eq!(line_interval(Some("soon")), Duration::from_secs(30));
        assert_eq!(line_interval(Some("0")), Duration::from_secs(30));
    }
}
