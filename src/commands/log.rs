//! The one way a line for people reaches stderr: receives an event name and its text (and
//! the process's log format, set once at start) and writes either `chatwoot-export: TEXT` or,
//! with `--log-format json`, one JSON object through `tracing` like every other log event.
//!
//! Summaries, notices and progress lines all go through here, so `--log-format json` makes
//! everything on stderr JSON for every command. A leaf module: it reads no other module.

use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// Makes every later line a JSON event (`--log-format json`); called once by `main`.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Whether stderr carries JSON events only (no bar, no plain lines).
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Writes one line: `event` names it for log collectors (`summary`, `notice`, `progress`...);
/// a text starting with `warning:` or `error:` is logged at that level.
pub fn say(event: &str, text: &str) {
    if !json() {
        eprintln!("chatwoot-export: {text}");
    } else if let Some(rest) = text.strip_prefix("warning: ") {
        tracing::warn!(event, "{rest}");
    } else if let Some(rest) = text.strip_prefix("error: ") {
        tracing::error!(event, "{rest}");
    } else {
        tracing::info!(event, "{text}");
    }
}
