//! `contacts --plan` and `run --plan`: what an export will cost, before any of it is spent.
//!
//! Receives each account's resolved `ExportSettings`; sends the cheap requests (page 1 and the
//! custom attribute definitions; the last planned page when the account is large enough for
//! the drift check's ledger, which reads it too; with `contact_labels`, `GET /labels` and each
//! label's first page) and emits, per account, the contacts, pages, the requests a fresh export
//! that meets no drift will make (`pipeline::cost`), the time they take at the configured rate
//! and the columns each selected table will have. Printed for people on stderr, or as one JSON
//! document on stdout. Nothing is written anywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::config::TableSelection;
use crate::error::Error;
use crate::pipeline::cost::{self, WalkCost};
use crate::pipeline::{ExportSettings, SnapshotMode, incremental};
use crate::source::{ContactsClient, ContactsPage, Fetcher, public_base_url};
use crate::table::{Fill, TABLES};
use crate::transform::column_names::snake_names;
use crate::transform::flatten::{Flattener, flatten_record};
use crate::transform::inbox_secrets::InboxSecrets;
use crate::transform::schema::{ColumnDef, TableShape};

/// The plan of a command: every account's, and the time they take together at the rate they
/// share.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub accounts: Vec<AccountPlan>,
    /// Every account's requests sent for certain.
    pub requests: u64,
    /// The most every account's requests may be (see `Requests::at_most`).
    pub requests_at_most: u64,
    /// The pace the rate limit allows this export: `--rate-limit` x `--rate-share` per window
    /// (`None`: no limit told, requests go as fast as the server answers until it refuses).
    pub requests_per_minute: Option<f64>,
    /// The least time the requests take at that pace (the server's latency may add more).
    pub min_secs: Option<f64>,
}

/// One account's plan.
#[derive(Debug, Serialize)]
pub struct AccountPlan {
    pub account_id: u64,
    pub base_url: String,
    /// `meta.count` of page 1 (`None`: the server did not say).
    pub contacts: Option<u64>,
    pub page_size: u64,
    pub pages: u64,
    pub requests: Requests,
    /// The columns of each selected table, in output order.
    pub tables: BTreeMap<String, TablePlan>,
    /// An incremental run's estimate, when it has a snapshot to build on (`requests` is then
    /// what a full run would send).
    pub incremental: Option<IncrementalPlan>,
    /// The plan's own requests (not part of the export).
    pub plan_requests: u64,
    /// What the plan could not read, and what that means for the export.
    pub notes: Vec<String>,
}

/// The requests of a fresh export that meets no drift, stage by stage.
#[derive(Debug, Serialize)]
pub struct Requests {
    #[serde(flatten)]
    pub walk: WalkCost,
    /// `GET /labels`, when `labels` or `contact_labels` is selected.
    pub labels: u64,
    /// The `contact_labels` walk: every label's pages.
    pub label_pages: u64,
    /// The requests sent for certain.
    pub total: u64,
    /// The most that may be sent: `total` and the pages sent ahead of page 1 past the end.
    pub at_most: u64,
}

/// What an incremental run will send, predicted as the run predicts it (from page 1 of its
/// sets and its parts' counts).
#[derive(Debug, Serialize)]
pub struct IncrementalPlan {
    /// The run the snapshot is of.
    pub base_run: String,
    /// Every contact was read at or after this time (the last full read).
    pub verified_through: String,
    pub requests: u64,
    /// What a full run sends, about.
    pub full_requests: u64,
}

/// A table's columns, as the export will write them.
#[derive(Debug, Serialize)]
pub struct TablePlan {
    pub columns: Vec<ColumnDef>,
    /// Whether more columns may come: attributes (custom, additional, inbox fields) that no
    /// contact of the pages read holds are not known yet.
    pub at_least: bool,
}

/// Plans every account of `jobs` and prints the plan (JSON on stdout with `json`).
pub async fn plan(jobs: &[ExportSettings], json: bool) -> Result<(), Error> {
    let mut accounts = Vec::with_capacity(jobs.len());
    for settings in jobs {
        accounts.push(plan_account(settings).await?);
    }
    // An incremental account sends its prediction instead of a full run's requests.
    let sends = |a: &AccountPlan, full: u64| a.incremental.as_ref().map_or(full, |i| i.requests);
    let requests = accounts.iter().map(|a| sends(a, a.requests.total)).sum();
    let requests_at_most = accounts.iter().map(|a| sends(a, a.requests.at_most)).sum();
    // Every account of a run shares one budget (one governor), so their time adds up.
    let per_minute = jobs.first().and_then(|settings| {
        let fetch = settings.fetch;
        let limit = fetch.rate_limit? as f64;
        Some(limit * fetch.rate_share * 60.0 / fetch.rate_window.as_secs_f64())
    });
    let plan = Plan {
        accounts,
        requests,
        requests_at_most,
        requests_per_minute: per_minute.map(|rate| (rate * 10.0).round() / 10.0),
        min_secs: per_minute.map(|rate| (requests as f64 * 600.0 / rate).round() / 10.0),
    };
    if json {
        let text = serde_json::to_string_pretty(&plan)
            .map_err(|err| Error::Usage(format!("cannot encode the plan: {err}")))?;
        println!("{text}");
    } else {
        for line in plan_lines(&plan) {
            eprintln!("chatwoot-export: {line}");
        }
    }
    Ok(())
}

/// Reads what the plan needs from one account and counts what its export will send.
async fn plan_account(settings: &ExportSettings) -> Result<AccountPlan, Error> {
    let client =
        ContactsClient::new(settings.client.clone()).map_err(|err| Error::Export(err.into()))?;
    let fetcher = Arc::new(match &settings.governor {
        Some(governor) => Fetcher::with_governor(client, settings.fetch, Arc::clone(governor)),
        None => Fetcher::new(client, settings.fetch),
    });
    let sort = settings.client.sort.as_str();
    let (first, definitions) = tokio::join!(fetcher.page(1), fetcher.attribute_definitions());
    let first = first.map_err(|err| Error::Export(err.into()))?;
    let last = match cost::ledger_last_page(&first, sort) {
        Some(page) => Some(
            fetcher
                .page(page)
                .await
                .map_err(|err| Error::Export(err.into()))?,
        ),
        None => None,
    };
    let walk = cost::walk_cost(&first, last.as_ref(), sort, settings.speculate);
    let selection = &settings.tables;
    let wants = |fill: Fill| {
        TABLES
            .iter()
            .any(|table| table.fill == fill && selection.enabled(table.name))
    };
    let labels = if wants(Fill::Labels) || wants(Fill::LabelWalk) {
        fetcher
            .labels()
            .await
            .map_err(|err| Error::Export(err.into()))?
    } else {
        Vec::new()
    };
    let label_firsts = if wants(Fill::LabelWalk) {
        let titles: Vec<&str> = labels
            .iter()
            .filter_map(|label| label.get("title")?.as_str())
            .collect();
        futures::future::try_join_all(titles.iter().map(|title| fetcher.label_page(title, 1)))
            .await
            .map_err(|err| Error::Export(err.into()))?
    } else {
        Vec::new()
    };
    let label_requests = u64::from(wants(Fill::Labels) || wants(Fill::LabelWalk));
    let label_pages = cost::label_walk_requests(&label_firsts);
    let mut notes = Vec::new();
    let definitions = definitions.unwrap_or_else(|err| {
        notes.push(format!(
            "the custom attribute definitions could not be read ({}): the export goes on and types those columns from their values",
            err.short_cause()
        ));
        Vec::new()
    });
    let pages: Vec<&ContactsPage> = std::iter::once(&first).chain(last.as_ref()).collect();
    let tables = table_plans(settings, &pages, &definitions, &labels);
    let incremental = if settings.snapshot == SnapshotMode::Incremental {
        match incremental_plan(settings, &fetcher).await? {
            Ok(plan) => Some(plan),
            Err(note) => {
                notes.push(note);
                None
            }
        }
    } else {
        None
    };
    Ok(AccountPlan {
        account_id: settings.client.account_id,
        base_url: public_base_url(&settings.client.base_url),
        contacts: first.meta.count,
        page_size: first.payload.len() as u64,
        pages: walk.planned_pages,
        requests: Requests {
            walk,
            labels: label_requests,
            label_pages,
            total: walk.total() + label_requests + label_pages,
            at_most: walk.at_most() + label_requests + label_pages,
        },
        tables,
        incremental,
        plan_requests: fetcher.status().governor.sent,
        notes,
    })
}

/// An incremental run's estimate: from the snapshot in a local `--out` (`Err`: why the run
/// will read every contact instead, or why the plan cannot tell).
async fn incremental_plan(
    settings: &ExportSettings,
    fetcher: &Fetcher,
) -> Result<Result<IncrementalPlan, String>, Error> {
    let local = settings
        .out
        .to_str()
        .is_some_and(|out| !crate::store::is_url(out))
        && settings.format != crate::sink::Format::Delta;
    if !local {
        return Ok(Err("the incremental run's requests depend on the snapshot kept at the destination, which the plan does not download: the run prints them before it spends them".into()));
    }
    let base = match incremental::base::find(
        &settings.out,
        &public_base_url(&settings.client.base_url),
        settings.client.account_id,
        settings.keep_inbox_secrets,
    ) {
        Ok(base) => base,
        Err(why) => {
            return Ok(Err(format!(
                "no snapshot to build on ({why}): the run reads every contact"
            )));
        }
    };
    if let Some(last_full) =
        incremental::base::full_refresh_due(&base, settings.full_refresh_every, chrono::Utc::now())
    {
        return Ok(Err(format!(
            "the last full read was at {last_full}, longer ago than full_refresh_every: the run reads every contact"
        )));
    }
    let index = incremental::base::Index::read(&base.raw).map_err(Error::Export)?;
    let requests = incremental::fetch::predict(fetcher, &base, &index, settings.fetch.concurrency)
        .await
        .map_err(|err| Error::Export(err.into()))?;
    Ok(Ok(IncrementalPlan {
        full_requests: incremental::fetch::full_requests(&base, &index),
        verified_through: base.snapshot.verified_through.clone(),
        base_run: base.run_id,
        requests,
    }))
}

/// The columns of every selected table: the walk's tables from the definitions and the
/// contacts read, the side tables from what the plan read (labels) or their description.
fn table_plans(
    settings: &ExportSettings,
    pages: &[&ContactsPage],
    definitions: &[crate::source::AttributeDefinition],
    labels: &[Value],
) -> BTreeMap<String, TablePlan> {
    let mut flattener = Flattener::default();
    if settings.keep_inbox_secrets {
        flattener.inbox_secrets = InboxSecrets::keep_all();
    }
    flattener.declare_custom_attributes(
        definitions
            .iter()
            .map(|d| (d.key.as_str(), d.display_type.as_str())),
    );
    for contact in pages.iter().flat_map(|page| page.payload.iter()) {
        // A contact the export could not flatten fails the export itself; the plan only
        // counts columns, so it is skipped here.
        if let Ok(value) = serde_json::from_str::<Value>(contact) {
            let _ = flattener.flatten(&value);
        }
    }
    let mut plans = BTreeMap::new();
    let walk_shapes = crate::table::walk_tables().zip(flattener.shapes());
    for (table, shape) in walk_shapes {
        plans.insert(table.name, (shape.finish().columns, true));
    }
    for table in TABLES
        .iter()
        .filter(|table| table.fill != Fill::ContactsWalk)
    {
        let mut shape = TableShape::new(table.columns, table.groups);
        let records: Vec<&Value> = match table.fill {
            Fill::Definitions => definitions.iter().map(|d| &d.raw).collect(),
            Fill::Labels => labels.iter().collect(),
            _ => Vec::new(),
        };
        for object in records.iter().filter_map(|record| record.as_object()) {
            flatten_record(&mut shape, object);
        }
        plans.insert(table.name, (shape.finish().columns, false));
    }
    plans
        .into_iter()
        .filter(|(name, _)| settings.tables.enabled(name))
        .map(|(name, (columns, at_least))| {
            let columns = written_columns(&settings.tables, name, columns, settings);
            (name.to_owned(), TablePlan { columns, at_least })
        })
        .collect()
}

/// The columns the table's filter keeps, named as the sink names them.
fn written_columns(
    selection: &TableSelection,
    table: &str,
    columns: Vec<ColumnDef>,
    settings: &ExportSettings,
) -> Vec<ColumnDef> {
    let filter = selection.of(table);
    let mut kept: Vec<ColumnDef> = columns
        .into_iter()
        .filter(|column| filter.keeps(&column.name))
        .collect();
    if settings.column_names == crate::sink::ColumnNames::Snake {
        let names: Vec<&str> = kept.iter().map(|c| c.name.as_str()).collect();
        let snake = snake_names(&names);
        for (column, name) in kept.iter_mut().zip(snake) {
            column.name = name;
        }
    }
    kept
}

/// The plan for people, one line each, without the `chatwoot-export: ` prefix.
fn plan_lines(plan: &Plan) -> Vec<String> {
    use indicatif::HumanCount;
    let mut lines = Vec::new();
    for account in &plan.accounts {
        let r = &account.requests;
        let contacts = account.contacts.map_or_else(
            || "an unknown number of".to_owned(),
            |n| HumanCount(n).to_string(),
        );
        lines.push(format!(
            "plan: account {} at {}: {contacts} contacts, {} pages of {}",
            account.account_id,
            account.base_url,
            HumanCount(account.pages),
            account.page_size
        ));
        let mut parts = vec![
            format!("{} list pages", r.walk.pages),
            format!("{} definitions", r.walk.definitions),
        ];
        if r.walk.ledger > 0 {
            parts.push(format!("{} drift ledger", r.walk.ledger));
            parts.push(format!("{} completeness check", r.walk.repair));
        }
        if r.labels > 0 {
            parts.push(format!("{} labels", r.labels));
        }
        if r.label_pages > 0 {
            parts.push(format!("{} contact_labels pages", r.label_pages));
        }
        let ahead = if r.walk.ahead > 0 {
            format!(
                "; up to {} more pages past the end sent ahead with page 1",
                r.walk.ahead
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "plan: account {}: {} requests ({}{ahead}), more if the account changes during the export",
            account.account_id,
            HumanCount(r.total),
            parts.join(" + ")
        ));
        if let Some(incremental) = &account.incremental {
            lines.push(format!(
                "plan: account {}: incremental, on the snapshot of run {} (every contact read at or after {}): about {} requests instead of a full run's {}",
                account.account_id,
                incremental.base_run,
                incremental.verified_through,
                HumanCount(incremental.requests),
                HumanCount(incremental.full_requests)
            ));
        }
        for note in &account.notes {
            lines.push(format!(
                "plan: account {}: note: {note}",
                account.account_id
            ));
        }
        for (name, table) in &account.tables {
            let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
            let bound = if table.at_least {
                "at least, from the definitions and the contacts read; attributes none of them holds add columns"
            } else {
                "as described"
            };
            lines.push(format!(
                "plan: account {}: table {name}: {} columns ({bound}): {}",
                account.account_id,
                names.len(),
                names.join(", ")
            ));
        }
    }
    let time = match (plan.requests_per_minute, plan.min_secs) {
        (Some(rate), Some(secs)) => format!(
            "at least {secs:.1} s at the rate limit's {} requests a minute (--rate-limit x --rate-share)",
            HumanCount(rate.round() as u64)
        ),
        _ => "no rate limit told (--rate-limit 0): as fast as the server answers until it refuses"
            .to_owned(),
    };
    lines.push(format!(
        "plan: {} requests in all, {time}; nothing was written",
        HumanCount(plan.requests)
    ));
    lines
}
