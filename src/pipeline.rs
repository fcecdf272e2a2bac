//! The export, stage by stage: fetch pages -> flatten and dedupe -> spill -> write tables ->
//! manifest last.
//!
//! Receives resolved `ExportSettings`; emits the output folder's files and an `ExportSummary`.
//! Page 1 gives `meta.count` and the page size; pages 2..=planned are fetched concurrently
//! (at most `concurrency` in flight, each on its own task) and consumed in page order, so the
//! output order and the choice of which duplicate to keep are deterministic. Then pages past
//! the plan are fetched until an empty one, so contacts created during the run are not cut off.
//! Only the ids seen and the column shapes stay in memory; rows go to disk until the schemas
//! are final.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream;

use crate::idset::IdSet;
use crate::manifest::{Manifest, Source, TableEntry, Tool, public_base_url};
use crate::progress::Progress;
use crate::sink::{Format, SinkError, TableWriter};
use crate::source::{ClientOptions, ContactsClient, ContactsPage, FetchError};
use crate::store::{OutputDir, StoreError};
use crate::transform::batch::BatchBuilder;
use crate::transform::flatten::{EncodedContact, FlattenError, Flattener};
use crate::transform::schema::TableSchema;
use crate::transform::spill::{SpillReader, SpillWriter};

/// Everything an export needs, resolved from flags, environment and defaults.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    pub client: ClientOptions,
    pub format: Format,
    pub out: PathBuf,
    /// Most page requests in flight at once.
    pub concurrency: usize,
    pub overwrite: bool,
    pub progress: bool,
}

/// What a finished export reports.
#[derive(Debug)]
pub struct ExportSummary {
    pub contacts: u64,
    pub inbox_links: u64,
    pub pages: u64,
    pub duplicates_dropped: u64,
    pub expected_count: Option<u64>,
    pub final_count: Option<u64>,
    pub elapsed: Duration,
    pub out: PathBuf,
    pub manifest: Manifest,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "page {page} holds a contact that cannot be exported ({source}): check --base-url points at a Chatwoot server"
    )]
    Contact { page: u64, source: FlattenError },
    #[error("cannot write table {table}: {source}")]
    Sink {
        table: &'static str,
        source: SinkError,
    },
    #[error("cannot use the work folder {}: {source}{}", path.display(), crate::store::disk_hint(source))]
    Spill {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("internal error: a page task failed ({0}); please report this")]
    Task(#[from] tokio::task::JoinError),
}

impl ExportError {
    pub fn fetch(&self) -> Option<&FetchError> {
        match self {
            Self::Fetch(err) => Some(err),
            _ => None,
        }
    }
}

/// The two output tables, in the order they are written.
const CONTACTS: &str = "contacts";
const CONTACT_INBOXES: &str = "contact_inboxes";

/// Runs one export. On failure the folder holds no manifest that says complete, and no file
/// of this run under a final name.
pub async fn export(settings: &ExportSettings) -> Result<ExportSummary, ExportError> {
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let dir = OutputDir::prepare(&settings.out, settings.overwrite)?;
    let mut progress = Progress::new(settings.progress);
    let result = run(settings, &dir, &mut progress).await;
    progress.clear();
    let walk = match result {
        Ok(walk) => walk,
        Err(err) => {
            dir.abandon();
            return Err(err);
        }
    };
    let (tables, written) = match write_tables(settings.format, &dir, &walk, &progress) {
        Ok(done) => done,
        Err(err) => {
            dir.abandon();
            return Err(err);
        }
    };
    let unique = walk.rows[0];
    let manifest = Manifest {
        complete: true,
        format: settings.format,
        expected_count: walk.expected_count,
        final_count: walk.final_count,
        unique_contacts: unique,
        duplicates_dropped: walk.duplicates,
        count_difference: walk.final_count.map(|count| unique as i64 - count as i64),
        pages_fetched: walk.pages,
        page_size: walk.page_size,
        tables,
        source: Source {
            base_url: public_base_url(&settings.client.base_url),
            account_id: settings.client.account_id,
            sort: settings.client.sort.clone(),
        },
        tool: Tool::current(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_secs: (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|err| StoreError::Write {
        path: dir.root().join(crate::store::MANIFEST_FILE),
        source: err.into(),
    });
    if let Err(err) = bytes.and_then(|bytes| dir.write_manifest(&bytes)) {
        dir.abandon();
        return Err(err.into());
    }
    let out = dir.root().to_owned();
    dir.finish(&written)?;
    Ok(ExportSummary {
        contacts: unique,
        inbox_links: walk.rows[1],
        pages: walk.pages,
        duplicates_dropped: walk.duplicates,
        expected_count: walk.expected_count,
        final_count: walk.final_count,
        elapsed: clock.elapsed(),
        out,
        manifest,
    })
}

/// What the walk over the pages produced.
struct Walk {
    flattener: Flattener,
    spills: [PathBuf; 2],
    rows: [u64; 2],
    duplicates: u64,
    pages: u64,
    page_size: u64,
    expected_count: Option<u64>,
    final_count: Option<u64>,
}

/// Flattens pages in page order, drops contacts already seen, spills the rows.
struct Collector {
    flattener: Flattener,
    /// The contact being added, reused so that the walk allocates nothing per contact.
    flat: EncodedContact,
    seen: IdSet,
    spills: [SpillWriter; 2],
    paths: [PathBuf; 2],
    duplicates: u64,
    pages: u64,
}

impl Collector {
    fn create(dir: &OutputDir) -> Result<Self, ExportError> {
        let paths = [
            dir.work_path("contacts.rows"),
            dir.work_path("contact_inboxes.rows"),
        ];
        let open = |path: &PathBuf| {
            SpillWriter::create(path).map_err(|source| ExportError::Spill {
                path: path.clone(),
                source,
            })
        };
        Ok(Self {
            flattener: Flattener::default(),
            flat: EncodedContact::default(),
            seen: IdSet::default(),
            spills: [open(&paths[0])?, open(&paths[1])?],
            paths,
            duplicates: 0,
            pages: 0,
        })
    }

    fn add(&mut self, number: u64, page: &ContactsPage) -> Result<(), ExportError> {
        self.pages += 1;
        for contact in &page.payload {
            self.flattener
                .flatten_json(contact, &mut self.flat)
                .map_err(|source| match source {
                    // Text the page parse let through but that is not JSON after all.
                    FlattenError::Json(detail) => ExportError::Fetch(FetchError::InvalidPage {
                        page: number,
                        detail,
                    }),
                    source => ExportError::Contact {
                        page: number,
                        source,
                    },
                })?;
            if !self.seen.insert(self.flat.id) {
                self.duplicates += 1;
                continue;
            }
            self.spill(0)?;
            self.spill(1)?;
        }
        Ok(())
    }

    /// Appends the current contact's rows of `table` (0: contacts, 1: contact_inboxes).
    fn spill(&mut self, table: usize) -> Result<(), ExportError> {
        let rows = [&self.flat.contact, &self.flat.inboxes][table];
        if rows.is_empty() {
            return Ok(());
        }
        self.spills[table]
            .write(rows)
            .map_err(|source| ExportError::Spill {
                path: self.paths[table].clone(),
                source,
            })
    }

    fn unique(&self) -> u64 {
        self.seen.len()
    }
}

async fn run(
    settings: &ExportSettings,
    dir: &OutputDir,
    progress: &mut Progress,
) -> Result<Walk, ExportError> {
    let client = Arc::new(ContactsClient::new(settings.client.clone())?);
    let mut collector = Collector::create(dir)?;

    let first = client.page(1).await?;
    let expected_count = first.meta.count;
    let page_size = first.payload.len() as u64;
    let mut final_count = expected_count;
    collector.add(1, &first)?;
    let planned = match (expected_count, page_size) {
        (Some(count), size) if size > 0 => count.div_ceil(size).max(1),
        _ => 1,
    };
    progress.plan(planned, expected_count);
    progress.page_done(collector.unique());

    if page_size > 0 {
        let mut pages = stream::iter(2..=planned)
            .map(|number| {
                let client = Arc::clone(&client);
                tokio::spawn(async move { (number, client.page(number).await) })
            })
            .buffered(settings.concurrency.max(1));
        while let Some(joined) = pages.next().await {
            let (number, page) = joined?;
            let page = page?;
            final_count = page.meta.count.or(final_count);
            collector.add(number, &page)?;
            progress.page_done(collector.unique());
        }
        // Past the plan until an empty page: contacts created during the run land at the end.
        let mut number = planned + 1;
        loop {
            let page = client.page(number).await?;
            final_count = page.meta.count.or(final_count);
            if page.payload.is_empty() {
                collector.pages += 1;
                break;
            }
            collector.add(number, &page)?;
            progress.page_done(collector.unique());
            number += 1;
        }
    }

    let Collector {
        flattener,
        spills,
        paths,
        duplicates,
        pages,
        ..
    } = collector;
    let mut rows = [0u64; 2];
    for (table, spill) in spills.into_iter().enumerate() {
        rows[table] = spill.finish().map_err(|source| ExportError::Spill {
            path: paths[table].clone(),
            source,
        })?;
    }
    Ok(Walk {
        flattener,
        spills: paths,
        rows,
        duplicates,
        pages,
        page_size,
        expected_count,
        final_count,
    })
}

/// Writes both tables from their spills; returns their manifest entries and the final paths.
fn write_tables(
    format: Format,
    dir: &OutputDir,
    walk: &Walk,
    progress: &Progress,
) -> Result<(BTreeMap<String, TableEntry>, Vec<PathBuf>), ExportError> {
    let schemas = [
        walk.flattener.contacts.finish(),
        walk.flattener.inboxes.finish(),
    ];
    let mut tables = BTreeMap::new();
    let mut written = Vec::new();
    for (index, (table, schema)) in [CONTACTS, CONTACT_INBOXES]
        .into_iter()
        .zip(schemas)
        .enumerate()
    {
        progress.writing(table);
        let file_name = format!("{table}.{}", format.extension());
        let rows = write_table(format, dir, table, &file_name, &schema, &walk.spills[index])?;
        debug_assert_eq!(rows, walk.rows[index]);
        tables.insert(
            table.to_owned(),
            TableEntry::new(vec![file_name.clone()], rows, &schema),
        );
        written.push(dir.root().join(&file_name));
    }
    Ok((tables, written))
}

fn write_table(
    format: Format,
    dir: &OutputDir,
    table: &'static str,
    file_name: &str,
    schema: &TableSchema,
    spill: &std::path::Path,
) -> Result<u64, ExportError> {
    let sink_error = |source: SinkError| ExportError::Sink { table, source };
    let spill_error = |source| ExportError::Spill {
        path: spill.to_owned(),
        source,
    };
    let (file, temp) = dir.create_temp(file_name)?;
    let mut writer =
        TableWriter::create(format, file, Arc::clone(&schema.arrow)).map_err(sink_error)?;
    let mut reader = SpillReader::open(spill).map_err(spill_error)?;
    let mut batch = BatchBuilder::new(schema.clone());
    let mut rows = 0u64;
    let mut batches = 0u64;
    while let Some(row) = reader.next_row().map_err(spill_error)? {
        batch.push_encoded(row).map_err(spill_error)?;
        rows += 1;
        if batch.is_full() {
            writer
                .write(
                    &batch
                        .finish()
                        .map_err(SinkError::from)
                        .map_err(sink_error)?,
                )
                .map_err(sink_error)?;
            batches += 1;
        }
    }
    // The last partial batch, or an empty one so an empty table still gets a CSV header.
    if !batch.is_empty() || batches == 0 {
        writer
            .write(
                &batch
                    .finish()
                    .map_err(SinkError::from)
                    .map_err(sink_error)?,
            )
            .map_err(sink_error)?;
    }
    writer.finish().map_err(|source| match source {
        SinkError::Io(source) => ExportError::Store(StoreError::Write {
            path: temp.clone(),
            source,
        }),
        other => sink_error(other),
    })?;
    dir.commit(&temp, file_name)?;
    Ok(rows)
}
