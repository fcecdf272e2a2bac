//! Pipeline files: TOML -> `--set` overrides -> `${VAR}` interpolation -> typed sections ->
//! pure validation that collects every problem -> a resolved `PipelineFile`.
//!
//! Receives the file's text, the `--set key=value` overrides and a way to read the
//! environment (a closure, so validation stays pure and testable); emits a `PipelineFile` or a
//! `ConfigErrors` that lists every problem with its key and, when it can be found, its line.
//! Invariants: unknown keys are errors; the token is never written in the file, only as
//! `${ENV_VAR}`; nothing here touches the network or the disk.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};
use url::Url;

use crate::options::{
    FetchKnobs, SinkConflict, SnapshotMode, TOKEN_ENV, check_sort, insecure_http, sink_conflicts,
};
use crate::secret::ApiToken;
use crate::sink::{ColumnNames, Compression, Format};
use crate::source::FetchOptions;
use crate::table::TABLES;

/// `base_url` that starts the built-in fake Chatwoot in-process (the demo pipeline).
pub const BUILTIN_FAKE: &str = "builtin:fake";
/// The placeholders a path template may use.
pub const PLACEHOLDERS: [&str; 4] = ["account_id", "table", "date", "run_id"];

/// One problem in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key (`sink.format`), or `(file)` for a syntax error.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}: ",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        let list: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{}; fix them and run `chatwoot-export validate FILE`",
            list.join("; ")
        )
    }
}

// ---- The file's shape (serde) ----

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    source: SourceSection,
    #[serde(default)]
    fetch: FetchKnobs,
    #[serde(default)]
    tables: TablesSection,
    sink: SinkSection,
    #[serde(default)]
    snapshot: SnapshotSection,
}

/// `[snapshot]`: whether runs keep what the next one builds on, and how they read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotSection {
    mode: Option<String>,
    full_refresh_every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSection {
    base_url: String,
    account_id: Option<u64>,
    accounts: Option<Vec<u64>>,
    #[expect(
        dead_code,
        reason = "declared so serde checks its type; its ${VAR} is read before interpolation"
    )]
    token: Option<String>,
    #[serde(default)]
    allow_insecure_http: bool,
}

/// `[tables.<name>]` sections by table name (`check_unknown_keys` reports names that are no
/// table of `crate::table::TABLES`).
type TablesSection = std::collections::BTreeMap<String, TableSection>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TableSection {
    enabled: bool,
    include: Option<Vec<String>>,
    exclude: Vec<String>,
}

impl Default for TableSection {
    fn default() -> Self {
        Self {
            enabled: true,
            include: None,
            exclude: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSection {
    #[serde(default = "default_format")]
    format: String,
    destination: String,
    path: Option<String>,
    #[serde(default)]
    csv_safe: bool,
    #[serde(default)]
    csv_excel: bool,
    #[serde(default)]
    keep_inbox_secrets: bool,
    #[serde(default)]
    overwrite: bool,
    compression: Option<String>,
    rows_per_file: Option<u64>,
    column_names: Option<String>,
}

fn default_format() -> String {
    "parquet".into()
}

/// Known keys per section, so that every unknown key is reported (serde stops at the first).
const KNOWN: &[(&str, &[&str])] = &[
    ("", &["source", "fetch", "tables", "sink", "snapshot"]),
    ("snapshot", &["mode", "full_refresh_every"]),
    (
        "source",
        &[
            "base_url",
            "account_id",
            "accounts",
            "token",
            "allow_insecure_http",
        ],
    ),
    (
        "fetch",
        &[
            "sort",
            "concurrency",
            "rate_limit",
            "rate_window_secs",
            "rate_share",
            "max_retries",
            "timeout_secs",
        ],
    ),
    (
        "sink",
        &[
            "format",
            "destination",
            "path",
            "csv_safe",
            "csv_excel",
            "keep_inbox_secrets",
            "overwrite",
            "compression",
            "rows_per_file",
            "column_names",
        ],
    ),
];

// ---- The resolved pipeline ----

/// Where the contacts come from.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceUrl {
    /// A Chatwoot server.
    Chatwoot(Url),
    /// The built-in fake server, started in-process.
    BuiltinFake,
}

/// Which columns of one table to write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ColumnFilter {
    pub enabled: bool,
    /// Only these columns (in the table's order), when given.
    pub include: Option<Vec<String>>,
    pub exclude: Vec<String>,
}

impl ColumnFilter {
    /// Every column.
    pub fn all() -> Self {
        Self {
            enabled: true,
            include: None,
            exclude: Vec::new(),
        }
    }

    /// Whether `column` is written.
    pub fn keeps(&self, column: &str) -> bool {
        self.include
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == column))
            && !self.exclude.iter().any(|c| c == column)
    }
}

/// The tables and columns to write: one filter per table of `crate::table::TABLES`, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSelection {
    filters: Vec<ColumnFilter>,
}

impl Default for TableSelection {
    /// Every column of the tables written by default; the others off.
    fn default() -> Self {
        Self {
            filters: TABLES
                .iter()
                .map(|table| ColumnFilter {
                    enabled: table.default_enabled,
                    ..ColumnFilter::all()
                })
                .collect(),
        }
    }
}

impl TableSelection {
    /// The default selection plus the tables named in `extra` (`--table`), every column.
    pub fn with_tables(extra: &[String]) -> Self {
        let mut selection = Self::default();
        for name in extra {
            if let Some(index) = TABLES.iter().position(|table| table.name == *name) {
                selection.filters[index] = ColumnFilter::all();
            }
        }
        selection
    }

    /// The filter of table `name` (a table that is not described: none written).
    pub fn of(&self, name: &str) -> &ColumnFilter {
        static NONE: ColumnFilter = ColumnFilter {
            enabled: false,
            include: None,
            exclude: Vec::new(),
        };
        TABLES
            .iter()
            .position(|table| table.name == name)
            .and_then(|index| self.filters.get(index))
            .unwrap_or(&NONE)
    }

    /// Whether table `name` is written.
    pub fn enabled(&self, name: &str) -> bool {
        self.of(name).enabled
    }
}

/// Where and how the files go.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    pub format: Format,
    /// A local folder or an object store URL (`s3://`, `gs://`, `az://`, `file://`).
    pub destination: String,
    /// The partition path under the destination, with `{account_id}`, `{table}`, `{date}`,
    /// `{run_id}`.
    pub path: Option<String>,
    /// Neutralise formula-like text cells (set by `csv_excel` too).
    pub csv_safe: bool,
    /// CSV for spreadsheets: a UTF-8 byte-order mark and CRLF line ends.
    pub csv_excel: bool,
    pub keep_inbox_secrets: bool,
    pub overwrite: bool,
    /// Parquet: the pages' codec (the default when the file gives none).
    pub compression: Compression,
    /// Most rows in one file; a bigger table is written as numbered files. `None`: one file
    /// per table.
    pub rows_per_file: Option<u64>,
    /// Column names as the keys make them, or snake case.
    pub column_names: ColumnNames,
}

/// A validated pipeline, ready to run.
#[derive(Clone, Debug)]
pub struct PipelineFile {
    pub source: SourceUrl,
    pub accounts: Vec<u64>,
    /// `None` only for the built-in fake server.
    pub token: Option<ApiToken>,
    pub allow_insecure_http: bool,
    pub sort: String,
    pub timeout: Duration,
    pub fetch: FetchOptions,
    pub tables: TableSelection,
    pub sink: SinkSettings,
    /// `snapshot.mode`: plain (the default), full or incremental.
    pub snapshot: SnapshotMode,
    /// `snapshot.full_refresh_every` of an incremental schedule (`None`: never).
    pub full_refresh_every: Option<Duration>,
}

/// Loads, overrides, interpolates and validates a pipeline file's text.
pub fn parse(
    file: &Path,
    text: &str,
    sets: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineFile, ConfigErrors> {
    let fail = |problems| ConfigErrors {
        file: file.to_owned(),
        problems,
    };
    let mut table = parse_toml(text).map_err(|problem| fail(vec![problem]))?;
    let lines = KeyLines::new(text);
    let mut problems = Vec::new();
    let problem = |key: &str, message: String| ConfigProblem {
        key: key.to_owned(),
        line: lines.find(key),
        message,
    };
    for set in sets {
        if let Err(message) = apply_set(&mut table, set) {
            problems.push(ConfigProblem {
                key: "--set".into(),
                line: None,
                message,
            });
        }
    }
    check_unknown_keys(&table, "", &mut |key| {
        problems.push(problem(
            &key,
            "unknown key: remove it or check its spelling (see the README's pipeline keys)".into(),
        ));
    });
    let token_var = token_reference(&table, &mut |key, message| {
        problems.push(problem(key, message));
    });
    interpolate(&mut table, "", env, &mut |key, message| {
        problems.push(problem(&key, message));
    });
    let parsed = deserialize(table, &mut |key, message| {
        if !problems.iter().any(|p| p.key == key) {
            problems.push(problem(key, message));
        }
    });
    let Some(parsed) = parsed else {
        return Err(fail(problems));
    };
    let pipeline = resolve(parsed, token_var, env, &mut |key, message| {
        problems.push(problem(key, message));
    });
    match pipeline {
        Some(pipeline) if problems.is_empty() => Ok(pipeline),
        _ => Err(fail(problems)),
    }
}

/// The file's TOML, or its syntax error with the line.
fn parse_toml(text: &str) -> Result<Table, ConfigProblem> {
    text.parse().map_err(|err: toml::de::Error| {
        let line = err.span().map(|span| line_of_offset(text, span.start));
        let message = err.message().trim().to_owned();
        ConfigProblem {
            key: "(file)".into(),
            line,
            message: format!("not valid TOML: {message}"),
        }
    })
}

/// The environment variable `source.token` names. The token must be a reference to the
/// environment, checked before interpolation; `Err`: a literal token, reported.
fn token_reference(
    table: &Table,
    report: &mut dyn FnMut(&str, String),
) -> Result<Option<String>, ()> {
    match table
        .get("source")
        .and_then(|s| s.get("token"))
        .map(Value::as_str)
    {
        None => Ok(None),
        Some(Some(raw)) => match env_reference(raw) {
            Some(name) => Ok(Some(name.to_owned())),
            None => {
                report(
                    "source.token",
                    "write the token as ${ENV_VAR} (e.g. \"${CHATWOOT_API_TOKEN}\"), never the token itself: pipeline files get copied and committed".into(),
                );
                Err(())
            }
        },
        Some(None) => Ok(None), // wrong type: reported by the typed pass
    }
}

/// The typed pass: each failure names its key; the key is removed and the pass goes on, so
/// every type error is reported, not only the first. `None` if the file still has no shape.
fn deserialize(mut table: Table, report: &mut dyn FnMut(&str, String)) -> Option<RawFile> {
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, RawFile>(Value::Table(table.clone())) {
            Ok(file) => return Some(file),
            Err(err) => {
                let path = err.path().to_string();
                let message = err.inner().message().trim().to_owned();
                let key = if path == "." { String::new() } else { path };
                let missing = message.starts_with("missing field");
                let full = match (missing, key.is_empty()) {
                    (true, true) => missing_field(&message),
                    (true, false) => format!("{key}.{}", missing_field(&message)),
                    _ => key.clone(),
                };
                report(&full, describe(&message));
                if missing || !remove_key(&mut table, &key) {
                    return None;
                }
            }
        }
    }
    None
}

/// Semantic checks and resolution; reports through `report` and returns `None` if any failed.
fn resolve(
    file: RawFile,
    token_var: Result<Option<String>, ()>,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(&str, String),
) -> Option<PipelineFile> {
    let mut ok = true;
    let mut bad = |key: &str, message: String| {
        ok = false;
        report(key, message);
    };
    let RawFile {
        source,
        fetch,
        tables,
        sink,
        snapshot,
    } = file;
    let allow_insecure_http = source.allow_insecure_http;
    let (url, accounts, token) = resolve_source(source, token_var, env, &mut bad);
    check_fetch(&fetch, &mut bad);

    let selection = resolve_tables(tables, &mut bad);

    let sink = resolve_sink(sink, accounts.len(), &mut bad);
    let (snapshot, full_refresh_every) = resolve_snapshot(snapshot, &mut bad);

    if !ok {
        return None;
    }
    Some(PipelineFile {
        source: url?,
        accounts,
        token,
        allow_insecure_http,
        timeout: fetch.timeout(),
        fetch: fetch.fetch_options(),
        sort: fetch.sort,
        tables: selection,
        sink: sink?,
        snapshot: snapshot?,
        full_refresh_every: full_refresh_every?,
    })
}

/// `[snapshot]`: the mode, and how old the last full read of an incremental schedule may be.
fn resolve_snapshot(
    snapshot: SnapshotSection,
    bad: &mut dyn FnMut(&str, String),
) -> (Option<SnapshotMode>, Option<Option<Duration>>) {
    let mode = match snapshot.mode.as_deref() {
        None | Some("plain") => Some(SnapshotMode::Plain),
        Some("full") => Some(SnapshotMode::Full),
        Some("incremental") => Some(SnapshotMode::Incremental),
        Some(other) => {
            bad(
                "snapshot.mode",
                format!("must be plain, full or incremental, not {other:?}"),
            );
            None
        }
    };
    let every = match &snapshot.full_refresh_every {
        None => Some(Some(crate::options::DEFAULT_FULL_REFRESH_EVERY)),
        Some(_) if mode.is_some_and(|mode| mode != SnapshotMode::Incremental) => {
            bad(
                "snapshot.full_refresh_every",
                "applies only to mode = \"incremental\": set the mode or drop full_refresh_every"
                    .into(),
            );
            None
        }
        Some(text) => crate::options::parse_full_refresh_every(text)
            .map_err(|message| bad("snapshot.full_refresh_every", message))
            .ok(),
    };
    (mode, every)
}

/// `[source]`: where the contacts come from, which accounts, and the token (read from the
/// environment variable the file names).
fn resolve_source(
    source: SourceSection,
    token_var: Result<Option<String>, ()>,
    env: &dyn Fn(&str) -> Option<String>,
    bad: &mut dyn FnMut(&str, String),
) -> (Option<SourceUrl>, Vec<u64>, Option<ApiToken>) {
    let url = if source.base_url == BUILTIN_FAKE {
        Some(SourceUrl::BuiltinFake)
    } else {
        match Url::parse(&source.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(SourceUrl::Chatwoot(url)),
            Ok(url) => {
                bad(
                    "source.base_url",
                    format!(
                        "must be http(s)://... or {BUILTIN_FAKE}, not {}:",
                        url.scheme()
                    ),
                );
                None
            }
            Err(err) => {
                bad(
                    "source.base_url",
                    format!("not a URL ({err}): write e.g. https://app.chatwoot.com"),
                );
                None
            }
        }
    };
    let accounts: Vec<u64> = match (source.account_id, source.accounts) {
        (Some(_), Some(_)) => {
            bad(
                "source.accounts",
                "give account_id or accounts, not both".into(),
            );
            Vec::new()
        }
        (Some(id), None) => vec![id],
        (None, Some(list)) if !list.is_empty() => {
            let unique: BTreeSet<u64> = list.iter().copied().collect();
            if unique.len() != list.len() {
                bad(
                    "source.accounts",
                    "lists an account twice: remove the duplicate".into(),
                );
            }
            list
        }
        (None, _) => {
            bad(
                "source.accounts",
                "no account: set account_id = N or accounts = [N, M]".into(),
            );
            Vec::new()
        }
    };
    let token = match (&url, token_var) {
        (Some(SourceUrl::BuiltinFake), _) | (_, Err(())) => None,
        (_, Ok(var)) => {
            let var = var.unwrap_or_else(|| TOKEN_ENV.to_owned());
            match env(&var).map(|raw| ApiToken::new(&raw)) {
                Some(Ok(token)) => Some(token),
                Some(Err(err)) => {
                    bad("source.token", format!("${{{var}}}: {err}"));
                    None
                }
                None => {
                    bad(
                        "source.token",
                        format!(
                            "the environment variable {var} is not set: export it before running"
                        ),
                    );
                    None
                }
            }
        }
    };
    if let Some(SourceUrl::Chatwoot(url)) = &url
        && insecure_http(url, source.allow_insecure_http)
    {
        bad(
            "source.base_url",
            "plain http would send the token unencrypted: use https, or set allow_insecure_http = true".into(),
        );
    }
    (url, accounts, token)
}

/// `[tables.<name>]`: which tables are written, with which columns. A table the file does not
/// name keeps its default; one it names is written unless `enabled = false`.
fn resolve_tables(tables: TablesSection, bad: &mut dyn FnMut(&str, String)) -> TableSelection {
    let mut selection = TableSelection::default();
    let mut sections = tables;
    for (index, described) in TABLES.iter().enumerate() {
        let name = described.name;
        let Some(table) = sections.remove(name) else {
            continue;
        };
        if let Some(include) = &table.include
            && include.is_empty()
        {
            bad(
                &format!("tables.{name}.include"),
                "is empty: list columns, or set enabled = false to skip the table".into(),
            );
        }
        if let Some(key) = described.parent_key
            && table
                .include
                .as_ref()
                .is_some_and(|list| !list.iter().any(|c| c == key))
        {
            bad(
                &format!("tables.{name}.include"),
                format!("must keep {key}, the key that joins the table to contacts"),
            );
        }
        let first_column = described.columns.first().map_or("", |(column, _)| *column);
        if described.required && (!table.enabled || table.exclude.iter().any(|c| c == first_column))
        {
            bad(
                &format!("tables.{name}"),
                format!("the {name} table and its {first_column} column are always written"),
            );
        }
        selection.filters[index] = ColumnFilter {
            enabled: table.enabled,
            include: table.include,
            exclude: table.exclude,
        };
    }
    selection
}

/// `[fetch]`: the bounds of each knob (its defaults are `FetchKnobs`').
fn check_fetch(fetch: &FetchKnobs, bad: &mut dyn FnMut(&str, String)) {
    for (key, value, min) in [
        ("fetch.concurrency", u64::from(fetch.concurrency), 1),
        ("fetch.rate_window_secs", fetch.rate_window_secs, 1),
        ("fetch.timeout_secs", fetch.timeout_secs, 1),
    ] {
        if value < min {
            bad(key, format!("must be at least {min}"));
        }
    }
    if let Err(why) = crate::options::check_rate_share(fetch.rate_share) {
        bad("fetch.rate_share", why);
    }
    if fetch.concurrency > 256 {
        bad("fetch.concurrency", "must be at most 256".into());
    }
    if fetch.sort.trim_start_matches('-').is_empty() {
        bad(
            "fetch.sort",
            "is empty: use created_at (the default)".into(),
        );
    } else if let Err(why) = check_sort(&fetch.sort) {
        bad("fetch.sort", why);
    }
}

/// `[sink]`: the format, the options that fit it, and where the files go.
fn resolve_sink(
    sink: SinkSection,
    accounts: usize,
    bad: &mut dyn FnMut(&str, String),
) -> Option<SinkSettings> {
    let format = match sink.format.as_str() {
        "parquet" => Some(Format::Parquet),
        "csv" => Some(Format::Csv),
        "ndjson" => Some(Format::Ndjson),
        "delta" => Some(Format::Delta),
        other => {
            bad(
                "sink.format",
                format!("must be parquet, csv, ndjson or delta, not {other:?}"),
            );
            None
        }
    };
    let conflicts = format.map_or_else(Vec::new, |format| {
        // csv_excel includes csv_safe's protection, and is for CSV alone as it is.
        sink_conflicts(
            format,
            sink.csv_safe || sink.csv_excel,
            sink.compression.is_some(),
        )
    });
    for conflict in &conflicts {
        match conflict {
            SinkConflict::CsvSafeNotCsv => {
                for (key, set) in [("csv_safe", sink.csv_safe), ("csv_excel", sink.csv_excel)] {
                    if set {
                        bad(
                            &format!("sink.{key}"),
                            format!(
                                "applies only to format = \"csv\": set the format or drop {key}"
                            ),
                        );
                    }
                }
            }
            SinkConflict::CompressionNotParquet => bad(
                "sink.compression",
                "applies only to format = \"parquet\" or \"delta\": set the format or drop compression".into(),
            ),
        }
    }
    let compression = match &sink.compression {
        None => Some(Compression::default()),
        Some(_) if conflicts.contains(&SinkConflict::CompressionNotParquet) => None,
        Some(text) => Compression::parse(text)
            .map_err(|message| bad("sink.compression", message))
            .ok(),
    };
    let column_names = match sink.column_names.as_deref() {
        None | Some("verbatim") => Some(ColumnNames::Verbatim),
        Some("snake") => Some(ColumnNames::Snake),
        Some(other) => {
            bad(
                "sink.column_names",
                format!("must be verbatim or snake, not {other:?}"),
            );
            None
        }
    };
    if sink.rows_per_file == Some(0) {
        bad(
            "sink.rows_per_file",
            "must be at least 1: leave it out for one file per table".into(),
        );
    }
    if sink.destination.trim().is_empty() {
        bad(
            "sink.destination",
            "is empty: a folder or s3://, gs://, az://, file:// URL".into(),
        );
    }
    if let Some(template) = &sink.path {
        for problem in template_problems(template) {
            bad("sink.path", problem);
        }
        if accounts > 1 && !template.contains("{account_id}") {
            bad(
                "sink.path",
                "several accounts would write to the same place: put {account_id} in the path"
                    .into(),
            );
        }
    } else if accounts > 1 {
        bad(
            "sink.path",
            "several accounts need a path template with {account_id}, e.g. \"account_id={account_id}\"".into(),
        );
    }
    Some(SinkSettings {
        format: format?,
        destination: sink.destination,
        path: sink.path,
        csv_safe: sink.csv_safe || sink.csv_excel,
        csv_excel: sink.csv_excel,
        keep_inbox_secrets: sink.keep_inbox_secrets,
        overwrite: sink.overwrite,
        compression: compression?,
        rows_per_file: sink.rows_per_file,
        column_names: column_names?,
    })
}

/// What is wrong with a path template: unknown placeholders, unbalanced braces, `..`.
pub fn template_problems(template: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            problems.push("has a { without its }".into());
            break;
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            problems.push(format!(
                "unknown placeholder {{{name}}}: use {{account_id}}, {{table}}, {{date}} or {{run_id}}"
            ));
        }
        rest = &after[close + 1..];
    }
    if template.split('/').any(|part| part == "..") {
        problems.push("must not climb out of the destination with ..".into());
    }
    problems
}

/// `${NAME}` -> `NAME` when the whole value is one reference.
fn env_reference(raw: &str) -> Option<&str> {
    let name = raw.strip_prefix("${")?.strip_suffix('}')?;
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

/// Replaces `${NAME}` in every string value (not the token: it is read at resolution, so its
/// value never sits in the table).
fn interpolate(
    table: &mut Table,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut dyn FnMut(String, String),
) {
    for (key, value) in table.iter_mut() {
        let path = join(prefix, key);
        if path == "source.token" {
            continue;
        }
        match value {
            Value::String(text) => match expand(text, env) {
                Ok(expanded) => *text = expanded,
                Err(message) => report(path, message),
            },
            Value::Table(inner) => interpolate(inner, &path, env, report),
            Value::Array(items) => {
                for item in items {
                    if let Value::String(text) = item {
                        match expand(text, env) {
                            Ok(expanded) => *text = expanded,
                            Err(message) => report(path.clone(), message),
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `text` with each `${NAME}` replaced by the variable's value.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("has ${ without its }".into());
        };
        let name = &after[..end];
        match env(name) {
            Some(value) => out.push_str(&value),
            None => {
                return Err(format!(
                    "uses ${{{name}}} but the environment variable {name} is not set: export it"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies one `--set key.path=value`; the value is read as TOML (`8`, `true`, `["a"]`),
/// else taken as a string.
fn apply_set(table: &mut Table, set: &str) -> Result<(), String> {
    let Some((key, raw)) = set.split_once('=') else {
        return Err(format!("{set:?} is not key=value (e.g. sink.format=csv)"));
    };
    let key = key.trim();
    let value = format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop().filter(|k| !k.is_empty()) else {
        return Err(format!("{set:?} has an empty key"));
    };
    let mut node = table;
    for part in parts {
        let entry = node
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| format!("--set {key}: {part} is not a table"))?;
    }
    node.insert(last.to_owned(), value);
    Ok(())
}

fn check_unknown_keys(table: &Table, prefix: &str, report: &mut dyn FnMut(String)) {
    // The `[tables]` keys come from the table descriptions.
    const TABLE_KEYS: &[&str] = &["enabled", "include", "exclude"];
    let names: Vec<&str>;
    let known: &[&str] = if prefix == "tables" {
        names = crate::table::names().collect();
        &names
    } else if prefix
        .strip_prefix("tables.")
        .is_some_and(|name| crate::table::find(name).is_some())
    {
        TABLE_KEYS
    } else {
        match KNOWN.iter().find(|(section, _)| *section == prefix) {
            Some((_, known)) => known,
            None => return,
        }
    };
    for (key, value) in table {
        let path = join(prefix, key);
        if !known.contains(&key.as_str()) {
            report(path);
        } else if let Value::Table(inner) = value {
            check_unknown_keys(inner, &path, report);
        }
    }
}

/// Removes the dotted `key` from the table; false if it was not there.
fn remove_key(table: &mut Table, key: &str) -> bool {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut node = table;
    for part in parts {
        match node.get_mut(part).and_then(Value::as_table_mut) {
            Some(inner) => node = inner,
            None => return false,
        }
    }
    node.remove(last).is_some()
}

fn missing_field(message: &str) -> String {
    message
        .trim_start_matches("missing field")
        .trim()
        .trim_matches('`')
        .to_owned()
}

/// serde's message, with the fix spelled out for the common cases.
fn describe(message: &str) -> String {
    if message.starts_with("missing field") {
        "is required".into()
    } else {
        format!("wrong type: {message}")
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line of a dotted key in the file's text: `[section]` headers are tracked and
/// `key =` lines matched. Good enough for the plain layout pipeline files use; a key set
/// inline (`sink = { format = ... }`) gets no line.
struct KeyLines {
    keys: Vec<(String, usize)>,
}

impl KeyLines {
    fn new(text: &str) -> Self {
        let mut section = String::new();
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = header.trim().to_owned();
                keys.push((section.clone(), index + 1));
            } else if let Some((key, _)) = line.split_once('=')
                && !line.starts_with('#')
            {
                keys.push((join(&section, key.trim().trim_matches('"')), index + 1));
            }
        }
        Self { keys }
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, line)| *line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "CHATWOOT_API_TOKEN" => Some("tok".into()),
            "LAKE" => Some("s3://lake".into()),
            _ => None,
        }
    }

    fn load(text: &str, sets: &[&str]) -> Result<PipelineFile, Vec<ConfigProblem>> {
        let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
        parse(Path::new("p.toml"), text, &sets, &env).map_err(|e| e.problems)
    }

    const GOOD: &str = r#"
[source]
base_url = "https://app.chatwoot.com"
accounts = [1, 2]
token = "${CHATWOOT_API_TOKEN}"

[sink]
destination = "${LAKE}/chatwoot"
path = "{table}/account_id={account_id}/dt={date}"
"#;

    #[test]
    fn a_good_file_resolves_with_defaults() {
        let p = load(GOOD, &[]).expect("valid");
        assert_eq!(p.accounts, vec![1, 2]);
        assert_eq!(p.sink.destination, "s3://lake/chatwoot");
        assert_eq!(p.sink.format, Format::Parquet);
        assert_eq!(p.fetch.concurrency, 8);
        assert_eq!(p.fetch.rate_limit, Some(3000));
        assert!(p.token.is_some());
        assert!(p.tables.of("contacts").enabled);
    }

    #[test]
    fn tables_are_selected_by_their_descriptions() {
        let p = load(GOOD, &[]).expect("valid");
        assert!(p.tables.enabled("contacts") && p.tables.enabled("contact_inboxes"));
        for name in ["labels", "custom_attribute_definitions", "contact_labels"] {
            assert!(!p.tables.enabled(name), "{name} is asked for, not default");
        }
        // Naming a table turns it on; its columns are filtered like the contacts'.
        let p = load(
            GOOD,
            &[
                r#"tables.labels.include=["title"]"#,
                "tables.contact_labels.enabled=true",
            ],
        )
        .expect("valid");
        assert!(p.tables.enabled("labels") && p.tables.enabled("contact_labels"));
        assert!(p.tables.of("labels").keeps("title") && !p.tables.of("labels").keeps("color"));
        assert!(!p.tables.enabled("custom_attribute_definitions"));
        assert_eq!(
            TableSelection::with_tables(&["labels".into()]),
            load(GOOD, &["tables.labels.enabled=true"])
                .expect("valid")
                .tables
        );

        let problems = load(
            GOOD,
            &[
                r#"tables.contact_labels.include=["label"]"#,
                "tables.nope.enabled=true",
                "tables.labels.colour=1",
            ],
        )
        .expect_err("invalid");
        for (key, message) in [
            ("tables.contact_labels.include", "must keep contact_id"),
            ("tables.nope", "unknown key"),
            ("tables.labels.colour", "unknown key"),
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.key == key && p.message.contains(message)),
                "{key}: {problems:#?}"
            );
        }
    }

    #[test]
    fn set_overrides_the_file() {
        let p = load(GOOD, &["sink.format=csv", "fetch.concurrency=3"]).expect("valid");
        assert_eq!(p.sink.format, Format::Csv);
        assert_eq!(p.fetch.concurrency, 3);
    }

    #[test]
    fn every_problem_is_reported_with_its_key_and_line() {
        let text = r#"
[source]
base_url = "https://app.chatwoot.com"
account_id = 3
token = "abc123literal"
colour = "blue"

[fetch]
concurrency = "many"
timeout_secs = 0

[sink]
format = "xlsx"
destination = "out"
path = "{table}/{month}"
csv_safe = true
"#;
        let problems = load(text, &[]).expect_err("invalid");
        let keys: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        for want in [
            ("source.token", Some(5)),
            ("source.colour", Some(6)),
            ("fetch.concurrency", Some(9)),
            ("sink.format", Some(13)),
            ("sink.path", Some(15)),
        ] {
            assert!(keys.contains(&want), "{want:?} missing from {problems:#?}");
        }
        // A wrong type does not hide later checks: timeout 0 is reported too.
        assert!(
            keys.contains(&("fetch.timeout_secs", Some(10))),
            "{problems:#?}"
        );
        assert!(
            !problems.iter().any(|p| p.message.contains("abc123literal")),
            "the literal token is not echoed"
        );
    }

    #[test]
    fn missing_sections_and_env_vars_are_reported() {
        let problems = load("[source]\nbase_url = \"https://x\"\n", &[]).expect_err("invalid");
        assert!(problems.iter().any(|p| p.key == "sink"), "{problems:#?}");
        let text = GOOD.replace("${LAKE}", "${NOPE}");
        let problems = load(&text, &[]).expect_err("invalid");
        assert_eq!(problems[0].key, "sink.destination");
        assert!(problems[0].message.contains("NOPE"));
    }

    #[test]
    fn a_syntax_error_has_a_line() {
        let problems = load("[source]\nbase_url = \n", &[]).expect_err("invalid");
        assert_eq!(problems[0].key, "(file)");
        assert_eq!(problems[0].line, Some(2));
    }

    #[test]
    fn templates_know_their_placeholders() {
        assert!(template_problems("{table}/account_id={account_id}/dt={date}/{run_id}").is_empty());
        assert_eq!(template_problems("{tabel}").len(), 1);
        assert_eq!(template_problems("a/{table").len(), 1);
        assert_eq!(template_problems("../x").len(), 1);
    }

    #[test]
    fn compression_and_rows_per_file_resolve() {
        let p = load(GOOD, &[]).expect("valid");
        assert_eq!(p.sink.compression, Compression::default());
        assert_eq!(p.sink.rows_per_file, None);
        for (text, want) in [
            ("zstd", Compression::default()),
            ("zstd:9", Compression::Zstd { level: 9 }),
            ("snappy", Compression::Snappy),
            ("none", Compression::None),
        ] {
            let set = format!("sink.compression={text}");
            let p = load(GOOD, &[&set, "sink.rows_per_file=50000"]).expect(text);
            assert_eq!(p.sink.compression, want, "{text}");
            assert_eq!(p.sink.rows_per_file, Some(50_000));
        }
    }

    #[test]
    fn csv_excel_sets_the_formula_protection_and_is_for_csv_only() {
        let p = load(GOOD, &["sink.format=csv", "sink.csv_excel=true"]).expect("valid");
        assert!(p.sink.csv_excel && p.sink.csv_safe);
        let p = load(GOOD, &["sink.format=csv"]).expect("valid");
        assert!(!p.sink.csv_excel && !p.sink.csv_safe);
        let problems = load(GOOD, &["sink.csv_excel=true"]).expect_err("parquet");
        assert!(
            problems.iter().any(|p| p.key == "sink.csv_excel"
                && p.message
                    == "applies only to format = \"csv\": set the format or drop csv_excel"),
            "{problems:#?}"
        );
        assert!(
            !problems.iter().any(|p| p.key == "sink.csv_safe"),
            "{problems:#?}"
        );
    }

    #[test]
    fn bad_compression_and_rows_per_file_are_all_reported() {
        let cases: [(&[&str], &str, &str); 6] = [
            (
                &["sink.compression=lz4"],
                "sink.compression",
                "zstd, zstd:LEVEL (1 to 22), snappy or none, not \"lz4\"",
            ),
            (&["sink.compression=zstd:99"], "sink.compression", "1 to 22"),
            (&["sink.compression=zstd:x"], "sink.compression", "1 to 22"),
            (
                &["sink.format=csv", "sink.compression=snappy"],
                "sink.compression",
                "applies only to format = \"parquet\"",
            ),
            (
                &["sink.rows_per_file=0"],
                "sink.rows_per_file",
                "at least 1",
            ),
            (
                &["sink.rows_per_file=-5"],
                "sink.rows_per_file",
                "wrong type",
            ),
        ];
        for (sets, key, message) in cases {
            let problems = load(GOOD, sets).expect_err("invalid");
            assert!(
                problems
                    .iter()
                    .any(|p| p.key == key && p.message.contains(message)),
                "{sets:?}: {problems:#?}"
            );
        }
        // Both at once, with another problem: every one is listed.
        let problems = load(
            GOOD,
            &[
                "sink.compression=brotli",
                "sink.rows_per_file=0",
                "fetch.concurrency=0",
            ],
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "fetch.concurrency",
                "sink.compression",
                "sink.rows_per_file"
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn the_keys_have_lines() {
        let text = format!("{GOOD}compression = \"gzip\"\nrows_per_file = 0\n");
        let problems = load(&text, &[]).expect_err("invalid");
        let lines: Vec<(&str, Option<usize>)> =
            problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            lines,
            [
                ("sink.compression", Some(10)),
                ("sink.rows_per_file", Some(11))
            ]
        );
    }

    #[test]
    fn column_filters() {
        let f = ColumnFilter {
            enabled: true,
            include: Some(vec!["id".into(), "email".into()]),
            exclude: vec!["email".into()],
        };
        assert!(f.keeps("id"));
        assert!(!f.keeps("email"));
        assert!(!f.keeps("name"));
        assert!(ColumnFilter::all().keeps("anything"));
    }
}
