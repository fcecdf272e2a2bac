//! The command line (clap derive): subcommands, flags, help text and examples.
//!
//! Emits raw arguments; `commands::settings` resolves them (with the environment and the
//! defaults of `options`) into settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::options::{
    DEFAULT_CONCURRENCY, DEFAULT_FORMAT, DEFAULT_MAX_RETRIES, DEFAULT_RATE_LIMIT,
    DEFAULT_RATE_SHARE, DEFAULT_RATE_WINDOW_SECS, DEFAULT_SORT, DEFAULT_TIMEOUT_SECS,
    parse_rate_share,
};
use crate::sink::{ColumnNames, Compression, Format};

const EXIT_CODES: &str = "\
Exit codes:
  0  the export is complete (manifest.json says \"complete\": true)
  1  the export failed: network, server, bad page or disk (no complete manifest is left)
  2  bad usage or configuration (a flag, the token, the output folder, a pipeline file)
  3  authentication or access refused (HTTP 401/403)
  4  the account does not exist (HTTP 404)
  5  complete, but the account changed during the export and some contacts could not be
     reconciled (see \"drift\" in manifest.json)
  130 interrupted (Ctrl-C or SIGTERM); run the same command with --resume to continue
With several accounts (run), the code is the failed accounts' own when they agree, else 1;
the others are exported all the same.";

const CONTACTS_EXAMPLES: &str = "\
Examples:
  CHATWOOT_API_TOKEN=... chatwoot-export contacts \\
      --base-url https://app.chatwoot.com --account-id 12 --format parquet --out ./contacts

  chatwoot-export contacts --token-file ~/.chatwoot-token \\
      --base-url https://online.99digital.co.il --account-id 3 --format csv --out ./export

Read the result:
  duckdb -c \"SELECT * FROM read_parquet('contacts/contacts.parquet') LIMIT 5\"";

/// Export every contact of a Chatwoot account to Parquet, CSV or NDJSON.
#[derive(Debug, Parser)]
#[command(name = "chatwoot-export", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Format of everything on stderr (summaries, notices, progress, the run's events, the
    /// error): text for people, json (one object a line) for log collectors. The token is
    /// never logged.
    #[arg(long, global = true, value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log events are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export every contact of an account (token from CHATWOOT_API_TOKEN or --token-file).
    #[command(after_help = format!("{CONTACTS_EXAMPLES}\n\n{EXIT_CODES}"))]
    Contacts(ContactsArgs),
    /// Export from the built-in fake Chatwoot server: try the tool with no account.
    #[command(
        after_help = "Example:\n  chatwoot-export demo --contacts 5000 --format csv --out ./demo"
    )]
    Demo(DemoArgs),
    /// Serve the fake Chatwoot API on 127.0.0.1 for trying the tool or building against it.
    #[command(
        after_help = "Example:\n  chatwoot-export fake-server --port 3000 --contacts 10000 --seed 7\n  \
                      CHATWOOT_API_TOKEN=fake-token chatwoot-export contacts --base-url http://127.0.0.1:3000 \\\n      \
                      --account-id 1 --out ./fake-export"
    )]
    FakeServer(FakeServerArgs),
    /// Run a pipeline file: its accounts, fetch options, tables and destination.
    #[command(after_help = format!("{RUN_EXAMPLES}\n\n{EXIT_CODES}"))]
    Run(RunArgs),
    /// Check a pipeline file and list every problem with its key and line (exit 2 if any).
    #[command(
        after_help = "Example:\n  chatwoot-export validate pipelines/nightly-s3.toml --set sink.format=csv"
    )]
    Validate(ValidateArgs),
    /// Print a shell completion script on stdout.
    #[command(
        hide = true,
        after_help = "Examples:\n  chatwoot-export completions bash > ~/.local/share/bash-completion/completions/chatwoot-export\n  \
                      chatwoot-export completions zsh > ~/.zfunc/_chatwoot-export\n  \
                      chatwoot-export completions fish > ~/.config/fish/completions/chatwoot-export.fish"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout, or write one page per command into a folder.
    #[command(
        hide = true,
        after_help = "Examples:\n  chatwoot-export man | man -l -\n  \
                      chatwoot-export man --out-dir ~/.local/share/man/man1"
    )]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, ignore_case = true)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write chatwoot-export.1 and a page per command (chatwoot-export-contacts.1, ...) into
    /// this folder instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

const RUN_EXAMPLES: &str = "\
Examples:
  chatwoot-export run pipelines/demo.toml                       # no account needed
  CHATWOOT_API_TOKEN=... chatwoot-export run pipelines/nightly-s3.toml --json
  chatwoot-export run pipelines/oneoff-parquet.toml --set sink.format=csv --set fetch.concurrency=4";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (TOML; see pipelines/ and the README's pipeline keys).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Override a key of the file, e.g. --set sink.format=csv (repeatable; the value is read as
    /// TOML, else as text).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print a machine-readable run report (JSON) on stdout; human messages stay on stderr.
    #[arg(long)]
    pub json: bool,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Continue every account whose last run failed or was interrupted (its work is kept in
    /// its staging folder, or in its output folder) without fetching its finished pages again;
    /// the other accounts start afresh. The pipeline must be the same.
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Discard the work failed or interrupted runs kept and start every account over (without
    /// --resume or --restart, kept work stops the run: exit 2).
    #[arg(long)]
    pub restart: bool,
    /// Read every contact this run and keep the snapshot, whatever the file's snapshot.mode:
    /// the full refresh of an incremental schedule, on demand.
    #[arg(long)]
    pub full: bool,
    /// Print what the run will cost and write nothing: per account, the contacts, pages,
    /// requests, the time at the rate limit and each table's columns, from a few cheap
    /// requests (page 1 and the attribute definitions; the labels' first pages with
    /// contact_labels). With --json, as one JSON document on stdout.
    #[arg(long)]
    pub plan: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Override a key of the file, as `run --set` does.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Check the file alone: no environment variable is read (each ${VAR} is reported as set
    /// at run time) and nothing is contacted; for CI without the secrets.
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct ContactsArgs {
    /// The Chatwoot server, e.g. https://app.chatwoot.com (a path prefix is kept). A URL pasted
    /// from the dashboard (https://HOST/app/accounts/3/contacts) gives the account id too.
    #[arg(
        long,
        env = "CHATWOOT_BASE_URL",
        value_name = "URL",
        help_heading = "Source"
    )]
    pub base_url: String,
    /// The account's numeric id (in the dashboard URL: /app/accounts/ID/...).
    #[arg(
        long,
        env = "CHATWOOT_ACCOUNT_ID",
        value_name = "N",
        help_heading = "Source"
    )]
    pub account_id: Option<u64>,
    /// Read the API token from this file; without it, the token is read from the environment
    /// [env: CHATWOOT_API_TOKEN]
    #[arg(long, value_name = "PATH", help_heading = "Source")]
    pub token_file: Option<PathBuf>,
    /// Print what the export will cost and write nothing: the contacts, pages, requests, the
    /// time at the rate limit and each table's columns, from a few cheap requests (page 1 and
    /// the attribute definitions; the labels' first pages with --table contact_labels).
    #[arg(long)]
    pub plan: bool,
    /// With --plan: the plan as one JSON document on stdout.
    #[arg(long, requires = "plan")]
    pub json: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub safety: SafetyArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Output file format.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DEFAULT_FORMAT)]
    pub format: Format,
    /// Output folder (contacts.<ext>, contact_inboxes.<ext>, manifest.json), or an object store
    /// URL: s3://bucket/prefix, gs://..., az://..., file:///... (credentials from AWS_*,
    /// GOOGLE_*, AZURE_* variables).
    #[arg(short = 'o', long, value_name = "DIR")]
    pub out: PathBuf,
    /// Do not draw the progress bar (nor print progress lines when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Parquet only: the pages' codec, zstd (the default), zstd:LEVEL (1 to 22), snappy or
    /// none.
    #[arg(long, value_name = "CODEC", value_parser = Compression::parse)]
    pub compression: Option<Compression>,
    /// Split each table into files of at most N rows: contacts-00000.parquet,
    /// contacts-00001.parquet, ... (a table that fits keeps its one file, contacts.parquet).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rows_per_file: Option<u64>,
    /// Also write this table (repeatable): labels (the account's labels, one request),
    /// custom_attribute_definitions (the custom attributes' data dictionary, no extra
    /// request), contact_labels (contact_id, label: one walk of the list per label, its
    /// request count printed before it starts).
    #[arg(long = "table", value_name = "NAME", value_parser = parse_table)]
    pub tables: Vec<String>,
    /// Column names as the attribute keys make them (verbatim), or lowercase ASCII letters,
    /// digits and _ for Athena, Glue and unquoted SQL (snake; the manifest keeps each
    /// original name).
    #[arg(long, value_enum, ignore_case = true, default_value_t = ColumnNames::Verbatim)]
    pub column_names: ColumnNames,
    /// Build on the previous complete export in --out: read only the contacts created or
    /// active since, and check for deletions by counts. Edits without activity are missed
    /// until the next full run (see docs/incremental.md). Without a previous export, a full
    /// run.
    #[arg(long, conflicts_with = "full")]
    pub incremental: bool,
    /// Read every contact, and keep them (compressed, under _chatwoot_export/) for the next
    /// --incremental run: the weekly refresh of an incremental schedule. Without --full or
    /// --incremental nothing is kept for later runs.
    #[arg(long)]
    pub full: bool,
    /// With --incremental: read every contact instead when the last full read is older than
    /// this (e.g. 7d, 36h, 0s for every run, never). Edits without activity are caught by
    /// the full reads only. [default: 7d]
    #[arg(long, value_name = "DURATION", requires = "incremental")]
    pub full_refresh_every: Option<String>,
    /// CSV only: files for people who open them in a spreadsheet (Excel, LibreOffice,
    /// Numbers): a UTF-8 byte-order mark so Hebrew and other non-Latin text show right, CRLF
    /// line ends, and --csv-safe's protection (phone numbers such as +972... stay text and no
    /// cell runs as a formula). Not lossless, as --csv-safe.
    #[arg(long)]
    pub csv_excel: bool,
}

/// A `--table` name: one of the described tables.
fn parse_table(name: &str) -> Result<String, String> {
    match crate::table::find(name) {
        Some(table) => Ok(table.name.to_owned()),
        None => Err(format!(
            "no table {name:?}: use one of {}",
            crate::table::names().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// What protects the token, the data and earlier work (last in `contacts --help`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Safety")]
pub struct SafetyArgs {
    /// Allow plain http:// to a host other than loopback (the token would cross the network
    /// unencrypted).
    #[arg(long)]
    pub allow_insecure_http: bool,
    /// Use the output folder even if it holds files other than a previous export.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue the interrupted export in --out (after Ctrl-C, a crash or a failure) without
    /// fetching its finished pages again. The other options must be the same. With an object
    /// store --out, the work is kept in a staging folder under ~/.cache/chatwoot-export/staging.
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Discard the work an interrupted or failed export kept for --resume and start over
    /// (without either flag, kept work stops the run: exit 2).
    #[arg(long)]
    pub restart: bool,
    /// CSV only: prefix text cells starting with = + - @ tab or CR with ' so spreadsheets do
    /// not run them as formulas (not lossless: -5 in a text column becomes '-5).
    #[arg(long)]
    pub csv_safe: bool,
    /// Keep inbox fields that look like credentials (imap_password, hmac_token,
    /// provider_config...), which Chatwoot before PR #10888 sent to admin tokens. Off: they
    /// are dropped and counted in manifest.json.
    #[arg(long)]
    pub keep_inbox_secrets: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Fetching")]
pub struct FetchArgs {
    /// Most page requests in flight at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    pub concurrency: u16,
    /// The list's sort key (created_at is the only stable one; a leading - sorts descending):
    /// created_at, email, name, phone_number, last_activity_at, company, company_name, city or
    /// country, or several joined by commas.
    #[arg(
        long,
        default_value = DEFAULT_SORT,
        value_name = "KEY",
        allow_hyphen_values = true
    )]
    pub sort: String,
    /// Time limit for one page request, body included.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS, value_name = "SECS")]
    pub timeout_secs: u64,
    /// Retries of a page after a transient error (5xx, dropped connection, time-out, bad JSON);
    /// 429s are handled by the rate governor and not counted here.
    #[arg(long, default_value_t = DEFAULT_MAX_RETRIES, value_name = "N")]
    pub max_retries: u32,
    /// Requests allowed per window (Chatwoot's default is 3000 a minute per IP; some installs
    /// use 300): where the pace starts and the fastest it goes. A slower limit (rack-attack,
    /// nginx, a CDN) is learned from the server's refusals; 0 starts unpaced and learns it.
    #[arg(long, default_value_t = DEFAULT_RATE_LIMIT, value_name = "N")]
    pub rate_limit: u64,
    /// The window of --rate-limit (Chatwoot: 60 s).
    #[arg(long, default_value_t = DEFAULT_RATE_WINDOW_SECS, value_name = "SECS")]
    pub rate_window_secs: u64,
    /// The part of the server's rate limit this export takes, 0.1 to 1.0. The limit is per
    /// client IP, so the rest is left to the agents' dashboards and integrations on the same
    /// IP; 1.0 takes it all, when the IP is the export's alone.
    #[arg(long, default_value_t = DEFAULT_RATE_SHARE, value_name = "FRACTION", value_parser = parse_rate_share)]
    pub rate_share: f64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many contacts the fake account holds.
    #[arg(long, default_value_t = 1500)]
    pub contacts: u64,
    /// Output file format.
    #[arg(long, value_enum, ignore_case = true, default_value_t = DEFAULT_FORMAT)]
    pub format: Format,
    /// Output folder, or an object store URL as for `contacts --out`.
    #[arg(
        short = 'o',
        long,
        value_name = "DIR",
        default_value = "chatwoot-export-demo"
    )]
    pub out: PathBuf,
    /// Seed of the fake data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Delay the fake server adds to every answer.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    pub latency_ms: u64,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct FakeServerArgs {
    /// Port on 127.0.0.1 (0 picks a free one and prints it).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// How many contacts the fake account holds.
    #[arg(long, default_value_t = 1000)]
    pub contacts: u64,
    /// Seed of the fake data: the same seed serves the same contacts.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Delay added to every answer.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,
    /// The (first) account id the token may read.
    #[arg(long, default_value_t = 1)]
    pub account_id: u64,
    /// Serve this many accounts of the token's user (--account-id, the next id, ...), each
    /// with --contacts contacts of its own (account --account-id + K has the data of seed
    /// --seed + K) and all behind the one --rate-limit.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub accounts: u64,
    /// The token the server accepts.
    #[arg(long, default_value = "fake-token")]
    pub token: String,
    /// Growth: create one new contact after every N contact requests.
    #[arg(long, value_name = "N")]
    pub grow_every: Option<u64>,
    /// Drift: delete one contact (anywhere) and create one after every --drift-every requests.
    #[arg(long)]
    pub drift: bool,
    /// How many requests between drift events.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub drift_every: u64,
    /// Share of requests answered 500, 502 or 503 (0.0 to 1.0).
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of requests whose connection drops halfway through the body (0.0 to 1.0).
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub drop_rate: f64,
    /// At most N requests per window, as Chatwoot's rack-attack: more get a plain-text 429
    /// without Retry-After.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u64>,
    /// The rate limit's window, aligned to the Unix epoch.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub rate_window_secs: u64,
    /// Answer page K once with a body that is not valid JSON.
    #[arg(long, value_name = "K")]
    pub malformed_page: Option<u64>,
    /// Embed whole inboxes, credentials included (imap_password, hmac_token, provider_config...),
    /// in contact_inboxes, as Chatwoot did for admin tokens before PR #10888.
    #[arg(long)]
    pub legacy_inbox_secrets: bool,
    /// Write the account's contacts (the ground truth), one JSON object a line, and exit.
    #[arg(long, value_name = "PATH")]
    pub dump_truth: Option<PathBuf>,
}
