//! What the commands tell people on stderr: receives an `ExportSummary` and prints the
//! summary (counts, the pace of the rate limit, drift repair, credentials left out, count
//! difference), and words an export's `Notice`s. The one place that reports runs to people;
//! the library below returns values and events and prints nothing. Every line goes through
//! `log::say`, so `--log-format json` turns it into a JSON event.

use indicatif::HumanCount;

use crate::commands::log;
use crate::manifest::RateReport;
use crate::pipeline::{ExportSummary, Notice, Notices};

/// What the summary says of the rate limit: the time spent waiting for it (always: a run
/// that spent most of its time waiting must say so), and the limit when it was learned.
fn pace_note(rate: &RateReport) -> String {
    let mut note = format!(", {:.0} s waiting for the rate limit", rate.paused_secs);
    if rate.mode == "learned"
        && let Some(limit) = rate.limit_per_minute
    {
        note += &format!(", limit learned {}/min", HumanCount(limit.round() as u64));
    }
    note
}

/// The human summary on stderr, naming the export's own folder.
pub fn print_summary(summary: &ExportSummary) {
    print_summary_to(summary, &summary.out.display().to_string());
}

/// The human summary on stderr, naming `destination` as where the files went.
pub fn print_summary_to(summary: &ExportSummary, destination: &str) {
    for line in summary_lines(summary, destination) {
        log::say("summary", &line);
    }
}

/// The summary of one account of a run of several: each line names the account, as their
/// summaries come out mixed.
pub fn print_account_summary_to(summary: &ExportSummary, destination: &str) {
    let account_id = summary.manifest.source.account_id;
    for line in summary_lines(summary, destination) {
        log::say("summary", &format!("account {account_id}: {line}"));
    }
}

/// The summary's lines, without the `chatwoot-export: ` prefix.
fn summary_lines(summary: &ExportSummary, destination: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let listed = summary.final_count.map_or_else(
        || "an unknown number".to_owned(),
        |n| HumanCount(n).to_string(),
    );
    let fetch = &summary.fetch;
    // Counts with thousands separators: this is for people; programs read the manifest.
    lines.push(format!(
        "exported {} contacts and {} inbox links from {} pages in {:.1} s \
         ({} duplicates dropped, {} retries, {} 429s{}; the account lists {listed}) -> {destination}",
        HumanCount(summary.contacts),
        HumanCount(summary.inbox_links),
        HumanCount(summary.pages),
        summary.elapsed.as_secs_f64(),
        summary.duplicates_dropped,
        fetch.retries,
        fetch.governor.throttled,
        pace_note(&summary.manifest.rate),
    ));
    let drift = &summary.drift;
    if drift.rounds > 0 {
        lines.push(format!(
            "drift: the account changed during the export; the repair recovered {} contacts \
             in {} requests ({} deleted during the export, {} unresolved){}",
            drift.recovered,
            drift.requests,
            drift.deleted_during_export,
            drift.unresolved,
            drift
                .stopped
                .as_ref()
                .map_or(String::new(), |why| format!("; it stopped early: {why}"))
        ));
    }
    let dropped = &summary.manifest.inbox_fields_dropped;
    if !dropped.is_empty() {
        let values: u64 = dropped.values().sum();
        let names: Vec<&str> = dropped.keys().map(String::as_str).collect();
        lines.push(format!(
            "note: left out {values} values of inbox fields that look like credentials \
             ({}): this server embeds inbox secrets in contacts; see inbox_fields_dropped in manifest.json, \
             or pass --keep-inbox-secrets to keep them",
            names.join(", ")
        ));
    }
    if let Some(difference) = summary.manifest.count_difference.filter(|d| *d != 0) {
        lines.push(format!(
            "warning: {} contacts exported but the account lists {listed} ({difference:+}): \
             contacts were added or deleted during the export; see count_difference in manifest.json",
            HumanCount(summary.contacts)
        ));
    }
    lines
}

/// Notices that an export prints on stderr as it runs.
pub fn notices() -> Notices {
    Notices::new(|notice| log::say("notice", &notice_text(notice)))
}

/// A notice as people read it, after the `chatwoot-export: ` prefix.
fn notice_text(notice: &Notice) -> String {
    match notice {
        Notice::DiscardedInterrupted { out } => format!(
            "note: discarded an interrupted export in {} (pass --resume to continue one)",
            out.display()
        ),
        Notice::NoAttributeDefinitions { cause } => format!(
            "warning: cannot read the custom attribute definitions ({cause}); custom_attributes columns are typed from their values alone"
        ),
        Notice::IncrementalCost { predicted, full } => {
            format!("incremental run: about {predicted} requests (a full run: about {full})")
        }
        Notice::NoSnapshot { why } => {
            format!("note: no snapshot to build on ({why}): this run reads every contact")
        }
        Notice::FullRefreshDue { last_full, every } => {
            format!(
                "note: the last full read was at {last_full}, {} ago or more (full_refresh_every): this run reads every contact, so that edits without activity are caught",
                spoken_duration(*every)
            )
        }
        Notice::LabelWalkCost {
            labels,
            tagged,
            requests,
            sent,
        } => format!(
            "note: contact_labels: {labels} labels tag {tagged} contacts: {requests} requests ({sent} sent, {} to go)",
            requests - sent
        ),
    }
}

/// Says how a dashboard URL given as `--base-url` was read.
pub fn dashboard_url_note(base_url: &str, account_id: u64) {
    log::say(
        "notice",
        &format!(
            "note: --base-url is a dashboard URL: exporting account {account_id} of {base_url}"
        ),
    );
}

/// Says where a fake Chatwoot (the demo's, or a pipeline's `builtin:fake`) serves.
pub fn fake_serving(text: &str) {
    log::say("fake_server", text);
}

/// A duration as a note says it: `7 days`, `36 hours`, else humantime's `1h 30m`.
pub(crate) fn spoken_duration(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        0 => "0 seconds".into(),
        s if s % 86_400 == 0 => plural(s / 86_400, "day"),
        s if s % 3_600 == 0 => plural(s / 3_600, "hour"),
        _ => humantime::format_duration(duration).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::spoken_duration;
    use std::time::Duration;

    #[test]
    fn durations_as_a_note_says_them() {
        let secs = Duration::from_secs;
        assert_eq!(spoken_duration(secs(7 * 86_400)), "7 days");
        assert_eq!(spoken_duration(secs(86_400)), "1 day");
        assert_eq!(spoken_duration(secs(36 * 3_600)), "36 hours");
        assert_eq!(spoken_duration(secs(5_400)), "1h 30m");
        assert_eq!(spoken_duration(secs(0)), "0 seconds");
    }
}
