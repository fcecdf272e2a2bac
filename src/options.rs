//! The export's knobs that flags and pipeline files share: every default, and the rules that
//! span more than one option.
//!
//! Receives option values (from `cli` flags or a pipeline file's keys); emits `FetchOptions`,
//! the request timeout and typed rule breaks (`SinkConflict`) that each front end words for its
//! own syntax (`--csv-safe` or `sink.csv_safe`). A leaf module: `cli`, `config` and the command
//! layer all read it, and it reads neither of them, so a default changes here and nowhere else.

use std::time::Duration;

use serde::Deserialize;
use url::{Host, Url};

use crate::sink::Format;
use crate::source::{FetchOptions, RetryPolicy};

/// The environment variable that holds the API token.
pub const TOKEN_ENV: &str = "CHATWOOT_API_TOKEN";

/// The part of the rate limit an export takes by default: 10% is left to the other users of
/// the IP (a dashboard tab makes a request every few seconds; 10% of Chatwoot's 3,000 a minute
/// is 300, of the 300 some installs use, 30).
pub const DEFAULT_RATE_SHARE: f64 = 0.9;
/// The list's sort key: `created_at` is the only stable one.
pub const DEFAULT_SORT: &str = "created_at";
/// Most page requests in flight at once.
pub const DEFAULT_CONCURRENCY: u16 = 8;
/// Time limit for one page request, body included.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Retries of a page after a transient error.
pub const DEFAULT_MAX_RETRIES: u32 = 8;
/// Requests per window (Chatwoot's default: 3000 a minute per IP).
pub const DEFAULT_RATE_LIMIT: u64 = 3000;
/// The window of the rate limit (Chatwoot: 60 s).
pub const DEFAULT_RATE_WINDOW_SECS: u64 = 60;
/// The output format.
pub const DEFAULT_FORMAT: Format = Format::Parquet;
/// How old the last full read of an incremental schedule may be before a run reads everything
/// again: the bound on how long an edit without activity stays unseen.
pub const DEFAULT_FULL_REFRESH_EVERY: Duration = Duration::from_secs(7 * 86_400);

/// `full_refresh_every` / `--full-refresh-every`: a duration as people write it (`7d`, `36h`,
/// `1w`, `0s` for a full read every run), or `never` (`None`: an incremental schedule never
/// reads everything again by itself).
pub fn parse_full_refresh_every(text: &str) -> Result<Option<Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    humantime::parse_duration(text).map(Some).map_err(|err| {
        format!(
            "{text:?} is not a duration ({err}): write e.g. \"7d\", \"36h\", \"0s\" or \"never\""
        )
    })
}

/// How a run makes its snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Every contact read, and nothing kept for later runs: a one-off export pays nothing for
    /// the snapshot machinery (the raw contacts cost about half again the export's CPU).
    #[default]
    Plain,
    /// Every contact read (`--full`), the raw contacts kept for the next incremental run, and,
    /// with a base in the folder, the change feed compared with it.
    Full,
    /// The base merged with what can have changed (`--incremental`); a full run when there is
    /// no base.
    Incremental,
}

impl SnapshotMode {
    /// Whether the run keeps its raw contacts and looks for a base.
    pub fn keeps_snapshot(self) -> bool {
        self != SnapshotMode::Plain
    }
}

/// How pages are fetched, as the user gives it (`--concurrency`, `[fetch]`), with the defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FetchKnobs {
    pub sort: String,
    pub concurrency: u16,
    pub rate_limit: u64,
    pub rate_window_secs: u64,
    pub rate_share: f64,
    pub max_retries: u32,
    pub timeout_secs: u64,
}

impl Default for FetchKnobs {
    fn default() -> Self {
        Self {
            sort: DEFAULT_SORT.into(),
            concurrency: DEFAULT_CONCURRENCY,
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_window_secs: DEFAULT_RATE_WINDOW_SECS,
            rate_share: DEFAULT_RATE_SHARE,
            max_retries: DEFAULT_MAX_RETRIES,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }
}

impl FetchKnobs {
    /// The fetcher's options. A rate limit of 0 starts unpaced and learns the limit; a window
    /// of 0 s (refused by pipeline validation, possible on the command line) is taken as 1 s.
    pub fn fetch_options(&self) -> FetchOptions {
        FetchOptions {
            concurrency: usize::from(self.concurrency),
            retry: RetryPolicy {
                max_retries: self.max_retries,
                ..RetryPolicy::default()
            },
            rate_limit: (self.rate_limit > 0).then_some(self.rate_limit),
            rate_window: Duration::from_secs(self.rate_window_secs.max(1)),
            rate_share: self.rate_share,
        }
    }

    /// The time limit of one page request (at least 1 s).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }
}

/// The keys Chatwoot sorts the contact list by (`sort=-KEY` descending). Chatwoot ignores any
/// other key without an error and lists in no stable order, so an unknown key is refused.
/// `company_name` is what the dashboard sends and some forks register instead of `company`.
pub const SORT_KEYS: [&str; 9] = [
    "created_at",
    "email",
    "name",
    "phone_number",
    "last_activity_at",
    "company",
    "company_name",
    "city",
    "country",
];

/// A `sort` value (keys joined by commas, each with an optional leading `-`), or why Chatwoot
/// would not sort by it.
pub fn check_sort(sort: &str) -> Result<(), String> {
    let unknown: Vec<&str> = sort
        .split(',')
        .map(|key| key.trim().trim_start_matches('-'))
        .filter(|key| !SORT_KEYS.contains(key))
        .collect();
    match unknown.as_slice() {
        [] => Ok(()),
        keys => Err(format!(
            "unknown sort key {}: use {} (a leading - sorts descending; created_at is the only stable one)",
            keys.iter()
                .map(|key| format!("{key:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            SORT_KEYS.join(", ")
        )),
    }
}

/// `--rate-share`: a fraction from 0.1 to 1.0.
pub fn parse_rate_share(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| rate_share_range(text))
        .and_then(|share| check_rate_share(share).map_err(|_| rate_share_range(text)))
}

/// A rate share (`--rate-share`, `fetch.rate_share`) as it is, or why it is not one.
pub fn check_rate_share(share: f64) -> Result<f64, String> {
    if (0.1..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(rate_share_range(&share.to_string()))
    }
}

fn rate_share_range(text: &str) -> String {
    format!(
        "{text:?} is not a fraction from 0.1 to 1.0 (0.9 leaves 10% of the limit to others on the IP)"
    )
}

/// An output option given with a format it does not apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkConflict {
    /// Formula protection is for CSV only.
    CsvSafeNotCsv,
    /// A codec is for Parquet only.
    CompressionNotParquet,
}

/// The output options that do not fit `format`, in the order they are reported.
pub fn sink_conflicts(format: Format, csv_safe: bool, compression: bool) -> Vec<SinkConflict> {
    let mut conflicts = Vec::new();
    if csv_safe && format != Format::Csv {
        conflicts.push(SinkConflict::CsvSafeNotCsv);
    }
    if compression && !matches!(format, Format::Parquet | Format::Delta) {
        conflicts.push(SinkConflict::CompressionNotParquet);
    }
    conflicts
}

/// Whether plain http to `url` is refused: it would carry the token unencrypted off this
/// machine, unless the user allowed it.
pub fn insecure_http(url: &Url, allow_insecure_http: bool) -> bool {
    url.scheme() == "http" && !allow_insecure_http && !is_loopback(url)
}

/// Whether the URL points at this machine, where plain http does not leave it.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_shares() {
        assert_eq!(parse_rate_share(" 0.5 "), Ok(0.5));
        assert_eq!(parse_rate_share("1"), Ok(1.0));
        assert!(parse_rate_share("0.05").is_err());
        assert!(parse_rate_share("half").is_err());
    }

    #[test]
    fn full_refresh_durations() {
        let days = |n: u64| Some(Duration::from_secs(n * 86_400));
        assert_eq!(parse_full_refresh_every("7d"), Ok(days(7)));
        assert_eq!(parse_full_refresh_every(" 1w "), Ok(days(7)));
        assert_eq!(
            parse_full_refresh_every("36h"),
            Ok(Some(Duration::from_secs(36 * 3600)))
        );
        assert_eq!(parse_full_refresh_every("0s"), Ok(Some(Duration::ZERO)));
        assert_eq!(parse_full_refresh_every("Never"), Ok(None));
        let bad = parse_full_refresh_every("weekly").expect_err("not a duration");
        assert!(bad.contains("\"weekly\" is not a duration"), "{bad}");
        assert_eq!(Some(DEFAULT_FULL_REFRESH_EVERY), days(7));
    }

    #[test]
    fn sort_keys() {
        for good in [
            "created_at",
            "-created_at",
            "email,-name",
            " city , country",
        ] {
            assert_eq!(check_sort(good), Ok(()), "{good}");
        }
        let nme = check_sort("nme").expect_err("unknown");
        assert!(
            nme.starts_with("unknown sort key \"nme\": use created_at, email,"),
            "{nme}"
        );
        let two = check_sort("created_at,id,-x").expect_err("unknown");
        assert!(two.starts_with("unknown sort key \"id\", \"x\": "), "{two}");
    }

    #[test]
    fn conflicts_follow_the_format() {
        use SinkConflict::*;
        for (format, csv_safe, compression, want) in [
            (Format::Csv, true, false, vec![]),
            (Format::Parquet, false, true, vec![]),
            (Format::Parquet, true, false, vec![CsvSafeNotCsv]),
            (Format::Csv, false, true, vec![CompressionNotParquet]),
            (
                Format::Ndjson,
                true,
                true,
                vec![CsvSafeNotCsv, CompressionNotParquet],
            ),
        ] {
            assert_eq!(sink_conflicts(format, csv_safe, compression), want);
        }
    }

    #[test]
    fn the_defaults_make_the_documented_fetch_options() {
        let options = FetchKnobs::default().fetch_options();
        assert_eq!(options.concurrency, 8);
        assert_eq!(options.rate_limit, Some(3000));
        assert_eq!(options.rate_window, Duration::from_secs(60));
        assert_eq!(options.retry.max_retries, 8);
        assert_eq!(FetchKnobs::default().timeout(), Duration::from_secs(60));
    }
}
