//! Delta Lake destinations (`format = "delta"`): a finished export in a local staging folder ->
//! its Parquet files placed in the table's partition folder -> one Delta commit per table that
//! adds them and removes the files the partition held before -> the partition's manifest, at
//! `DEST/_chatwoot_export/<table folder>/<partition>/manifest.json` as for plain lakes.
//!
//! Receives an opened `Destination`, the partition path template, the run's placeholders and a
//! staging folder holding a complete Parquet export (the `parquet` sink's files, so the values
//! and types are exactly those of `format = "parquet"`). Emits, for each table, a Delta table
//! at `DEST/<the template's folders before {account_id} or {date}>/<table>` (the table name is
//! added when the template has no `{table}` there), partitioned by `account_id` (long) and, when
//! the template has `{date}`, `dt` (date), with data files
//! `account_id=<id>[/dt=<day>]/<table>-<run_id>[-<n>].parquet`.
//!
//! Invariants: the transaction log is the only commit marker, and the commit is atomic (the
//! log store writes version N+1 only if no one else did), so a reader sees the previous
//! version or the new one, never both and never half: a rerun of the same account and day
//! replaces its partition in one version whose rows are that run's. Files of earlier runs are
//! removed from the table, not deleted, so time travel can read them until `VACUUM`. A column
//! the table does not have yet is added by a metadata action in the same commit (schema
//! evolution); a column whose type differs from the table's is refused before anything is
//! committed. Tables are plain (reader 1, writer 2, no column mapping: Polars refuses column
//! mapping), and their columns keep the names of the other formats, attribute keys verbatim:
//! every reader reads them, while Spark refuses to write to columns whose names hold spaces or
//! `,;{}()=` (docs/delta.md). The run's manifest facts (run id, counts, drift) go into the commit's `commitInfo` under `chatwoot_export` and
//! into the partition's manifest (outside the table, where neither Delta readers nor `VACUUM`
//! meet it). Concurrent runs of
//! other accounts commit too: a lost race reloads the table and commits again.

use std::path::Path as LocalPath;

use super::lake::{Destination, LakeError, Published, RunVars};

/// A failure to commit an export to a Delta table.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(
        "this chatwoot-export was built without Delta Lake support: install a build with the default features (the `delta` feature), or choose another format"
    )]
    NotBuilt,
    #[error(
        "cannot commit to the Delta table {table}: {detail}; the table is unchanged (readers still see its previous version), run again"
    )]
    Commit { table: String, detail: String },
    #[error(
        "column {column:?} is {table_type} in the Delta table {table} but {run_type} in this run: no commit was made; export this account to a new table or drop the column from the table"
    )]
    TypeConflict {
        table: String,
        column: String,
        table_type: String,
        run_type: String,
    },
    #[error(
        "column {column:?} of table {table} has the type {data_type}, which has no Delta equivalent here; please report this"
    )]
    Unsupported {
        table: String,
        column: String,
        data_type: String,
    },
    #[error(
        "table {table} has a column named {column:?}, the name of a Delta partition column: exclude the column in tables.{table}.exclude"
    )]
    PartitionClash { table: String, column: String },
}

impl From<DeltaError> for LakeError {
    fn from(error: DeltaError) -> Self {
        LakeError::Delta(Box::new(error))
    }
}

/// Commits the complete export in `staging` to one Delta table per exported table.
#[cfg(not(feature = "delta"))]
pub async fn publish(
    _destination: &Destination,
    _staging: &LocalPath,
    _template: &str,
    _vars: &RunVars,
) -> Result<Published, LakeError> {
    Err(DeltaError::NotBuilt.into())
}

/// Commits the complete export in `staging` to one Delta table per exported table.
#[cfg(feature = "delta")]
pub async fn publish(
    destination: &Destination,
    staging: &LocalPath,
    template: &str,
    vars: &RunVars,
) -> Result<Published, LakeError> {
    imp::publish(destination, staging, template, vars).await
}

/// The run id this tool recorded in the latest commit of `table` that touched account
/// `vars.account_id` (commits of this tool's runs of other accounts, which replace only their
/// own partitions, are passed over): `None` when the table does not exist or that commit was
/// made by another writer (no `commitInfo.chatwoot_export`). What an incremental run checks
/// before it builds on a snapshot: the table's latest version must be the snapshot's.
#[cfg(not(feature = "delta"))]
pub async fn latest_run(
    _destination: &Destination,
    _template: &str,
    _table: &str,
    _vars: &RunVars,
) -> Result<Option<String>, LakeError> {
    Err(DeltaError::NotBuilt.into())
}

/// The run id this tool recorded in the latest commit of `table` that touched account
/// `vars.account_id` (commits of this tool's runs of other accounts, which replace only their
/// own partitions, are passed over): `None` when the table does not exist or that commit was
/// made by another writer (no `commitInfo.chatwoot_export`). What an incremental run checks
/// before it builds on a snapshot: the table's latest version must be the snapshot's.
#[cfg(feature = "delta")]
pub async fn latest_run(
    destination: &Destination,
    template: &str,
    table: &str,
    vars: &RunVars,
) -> Result<Option<String>, LakeError> {
    imp::latest_run(
        destination,
        &Layout::of(template, table, vars),
        vars.account_id,
    )
    .await
}

/// Where a table goes: its folder under the destination and its partition, as
/// `(column, value)` pairs in folder order.
#[cfg(any(feature = "delta", test))]
#[derive(Debug, PartialEq)]
struct Layout {
    table_folder: Vec<String>,
    partition: Vec<(&'static str, String)>,
}

#[cfg(any(feature = "delta", test))]
impl Layout {
    /// The layout of `table` for a run: the template's folders before the first one holding
    /// `{account_id}` or `{date}` (`{run_id}` folders are dropped: a Delta table keeps its
    /// runs in its log, not in folders), then the table's name unless `{table}` was among them.
    fn of(template: &str, table: &str, vars: &RunVars) -> Self {
        let mut table_folder = Vec::new();
        let mut named = false;
        for part in template.split('/').filter(|part| !part.is_empty()) {
            if part.contains("{account_id}") || part.contains("{date}") {
                break;
            }
            if !part.contains("{run_id}") {
                named |= part.contains("{table}");
                table_folder.push(vars.render(part, table));
            }
        }
        if !named {
            table_folder.push(table.to_owned());
        }
        let mut partition = vec![("account_id", vars.account_id.to_string())];
        if template.contains("{date}") {
            partition.push(("dt", vars.date.clone()));
        }
        Self {
            table_folder,
            partition,
        }
    }

    /// The partition's folder under the table's, Hive style (`account_id=3/dt=2025-03-04`).
    fn partition_folder(&self) -> Vec<String> {
        self.partition
            .iter()
            .map(|(column, value)| format!("{column}={value}"))
            .collect()
    }
    /// The table's folder and then the partition's, from the destination's root: where the
    /// partition's files are, and (under `_chatwoot_export/`) its manifest.
    fn partition_path(&self) -> Vec<String> {
        self.table_folder
            .iter()
            .cloned()
            .chain(self.partition_folder())
            .collect()
    }
}

/// The Delta type of an Arrow column as the `parquet` sink writes it, or `None` when there is
/// none (the transform emits only the types below).
#[cfg(any(feature = "delta", test))]
fn delta_type(data_type: &arrow::datatypes::DataType) -> Option<String> {
    use arrow::datatypes::{DataType, TimeUnit};
    Some(match data_type {
        DataType::Utf8 | DataType::LargeUtf8 => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int64 => "long".into(),
        DataType::Int32 => "integer".into(),
        DataType::Float64 => "double".into(),
        DataType::Date32 => "date".into(),
        DataType::Decimal128(precision, scale) => format!("decimal({precision},{scale})"),
        // UTC instants: Delta's `timestamp` (microseconds, adjusted to UTC).
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "timestamp".into(),
        _ => return None,
    })
}

#[cfg(feature = "delta")]
mod imp {
    //! The delta-rs side: the table's log store, the schema merge and the commit.

    use std::collections::HashMap;
    use std::path::Path as LocalPath;
    use std::sync::Arc;

    use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
    use deltalake_core::kernel::{Action, Add, Metadata, Protocol, Remove};
    use deltalake_core::logstore::{StorageConfig, default_logstore};
    use deltalake_core::protocol::{DeltaOperation, SaveMode};
    use deltalake_core::{DeltaTable, DeltaTableError};
    use futures::TryStreamExt;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::{DeltaError, Layout, delta_type};
    use crate::manifest::Manifest;
    use crate::store::MANIFEST_FILE;
    use crate::store::lake::{
        Destination, LakeError, PARTITION_MANIFEST, Published, RunVars, manifest_partition,
        read_staged_manifest,
    };
    use crate::store::local::CHANGES_TABLE;

    /// Commits lost to a concurrent writer (another account's run) before giving up.
    const COMMIT_ATTEMPTS: usize = 10;
    /// Key of this tool's facts in each commit's `commitInfo`.
    const COMMIT_INFO_KEY: &str = "chatwoot_export";
    const MAPPING_MODE: &str = "delta.columnMapping.mode";
    const MAPPING_MAX_ID: &str = "delta.columnMapping.maxColumnId";
    const MAPPING_ID: &str = "delta.columnMapping.id";
    const MAPPING_NAME: &str = "delta.columnMapping.physicalName";

    /// A data file of the run, placed in the partition folder but not yet in the table.
    struct Placed {
        name: String,
        size: i64,
        rows: i64,
    }

    pub async fn publish(
        destination: &Destination,
        staging: &LocalPath,
        template: &str,
        vars: &RunVars,
    ) -> Result<Published, LakeError> {
        let staged = staging.join(MANIFEST_FILE);
        let staging_error = |detail: String| LakeError::Staging {
            path: staged.clone(),
            detail,
        };
        let manifest: Manifest = read_staged_manifest(staging)?;
        let mut published = Published::default();
        for (table, entry) in &manifest.tables {
            let layout = Layout::of(template, table, vars);
            let partition = layout.partition_path();
            let shown_table = destination.show(&layout.table_folder, "");

            // 1. The run's files, under names no earlier run used: invisible to Delta readers
            // until the commit lists them.
            let mut fields: Option<Vec<(String, String)>> = None;
            let mut placed = Vec::new();
            for file in &entry.files {
                let local = staging.join(file);
                let rest = file
                    .strip_prefix(table.as_str())
                    .ok_or_else(|| staging_error(format!("unexpected file {file} in {table}")))?;
                let (columns, rows) = read_footer(&local, table).map_err(|e| match e {
                    Footer::Io(detail) => staging_error(format!("{file}: {detail}")),
                    Footer::Delta(error) => error.into(),
                })?;
                if fields.is_none() {
                    fields = Some(columns);
                }
                let name = format!("{table}-{}{rest}", vars.run_id);
                let size = std::fs::metadata(&local)
                    .map_err(|e| staging_error(format!("{file}: {e}")))?
                    .len();
                published
                    .files
                    .push(destination.place(&local, &partition, &name).await?);
                placed.push(Placed {
                    name,
                    size: i64::try_from(size).unwrap_or(i64::MAX),
                    rows,
                });
            }
            let fields = fields.unwrap_or_default();
            for (column, _) in &layout.partition {
                if fields.iter().any(|(name, _)| name == column) {
                    return Err(DeltaError::PartitionClash {
                        table: table.clone(),
                        column: (*column).to_owned(),
                    }
                    .into());
                }
            }

            // 2. One commit: the new files in, the partition's earlier files out.
            let facts = commit_facts(&manifest, table, entry.rows, vars);
            let (version, removed) = commit(
                destination,
                &layout,
                &shown_table,
                &fields,
                &placed,
                facts.clone(),
            )
            .await?;
            published.replaced.extend(
                removed
                    .iter()
                    .map(|path| destination.show(&layout.table_folder, path)),
            );

            // 3. The partition's manifest, after the commit: this table's entry, the version.
            let mut own = serde_json::to_value(&manifest).unwrap_or_default();
            if let Some(tables) = own["tables"].as_object_mut() {
                tables.retain(|name, _| name == table);
                if let Some(own_entry) = tables.get_mut(table) {
                    own_entry["files"] =
                        Value::from(placed.iter().map(|p| p.name.clone()).collect::<Vec<_>>());
                }
            }
            own["run_id"] = Value::from(vars.run_id.as_str());
            own["delta"] = json!({"table": shown_table, "version": version});
            let bytes = serde_json::to_vec_pretty(&own).unwrap_or_default();
            let manifest_at = manifest_partition(&partition);
            destination
                .put(&manifest_at, PARTITION_MANIFEST, bytes)
                .await?;
            published
                .files
                .push(destination.show(&manifest_at, PARTITION_MANIFEST));

            // 4. Temporary files of runs killed while placing their files.
            for name in destination.list(&partition).await? {
                if super::super::lake::is_leftover(&name) {
                    destination.delete(&partition, &name).await?;
                }
            }
        }
        if !manifest.tables.contains_key(CHANGES_TABLE) {
            clear_stale_feed(destination, template, vars, &manifest, &mut published).await?;
        }
        Ok(published)
    }

    /// A run without a base (none to compare with, or no `--full`/`--incremental`) writes no
    /// change feed: the account's partition of the feed's table, if there is one, is emptied by
    /// a commit (and its manifest removed), so that an earlier run's rows do not pass for this
    /// run's.
    async fn clear_stale_feed(
        destination: &Destination,
        template: &str,
        vars: &RunVars,
        manifest: &Manifest,
        published: &mut Published,
    ) -> Result<(), LakeError> {
        let layout = Layout::of(template, CHANGES_TABLE, vars);
        let shown = destination.show(&layout.table_folder, "");
        let exists = table_at(destination, &layout)?
            .log_store()
            .is_delta_table_location()
            .await
            .map_err(|e| commit_error(shown.clone(), e))?;
        if !exists {
            return Ok(());
        }
        let facts = commit_facts(manifest, CHANGES_TABLE, 0, vars);
        let (_, removed) = commit(destination, &layout, &shown, &[], &[], facts).await?;
        published.replaced.extend(
            removed
                .iter()
                .map(|path| destination.show(&layout.table_folder, path)),
        );
        let partition = layout.partition_path();
        destination
            .delete(&manifest_partition(&partition), PARTITION_MANIFEST)
            .await
    }

    /// Commits read back from the latest before giving up on finding this account's: more
    /// than a night's runs of every account of a lake.
    const HISTORY_LIMIT: usize = 512;

    pub async fn latest_run(
        destination: &Destination,
        layout: &Layout,
        account_id: u64,
    ) -> Result<Option<String>, LakeError> {
        let shown = destination.show(&layout.table_folder, "");
        let fail = |e| commit_error(shown.clone(), e);
        let mut table = table_at(destination, layout)?;
        if !table
            .log_store()
            .is_delta_table_location()
            .await
            .map_err(fail)?
        {
            return Ok(None);
        }
        table.load().await.map_err(fail)?;
        let Some(latest) = table.version() else {
            return Ok(None);
        };
        let log = table.log_store();
        for version in (0..=latest).rev().take(HISTORY_LIMIT) {
            let Some(bytes) = log.read_commit_entry(version).await.map_err(fail)? else {
                // Cleaned from the log: nothing older is readable either.
                return Ok(None);
            };
            let info = String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find_map(|action| action.get("commitInfo").cloned());
            let facts = info.as_ref().and_then(|info| info.get(COMMIT_INFO_KEY));
            let Some(facts) = facts else {
                return Ok(None);
            };
            if facts["account_id"].as_u64() == Some(account_id) {
                return Ok(facts["run_id"].as_str().map(str::to_owned));
            }
        }
        Ok(None)
    }

    enum Footer {
        Io(String),
        Delta(DeltaError),
    }

    /// The columns (name, Delta type) and row count of a staged Parquet file.
    fn read_footer(path: &LocalPath, table: &str) -> Result<(Vec<(String, String)>, i64), Footer> {
        let file = std::fs::File::open(path).map_err(|e| Footer::Io(e.to_string()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Footer::Io(e.to_string()))?;
        let rows = reader.metadata().file_metadata().num_rows();
        let mut columns = Vec::new();
        for field in reader.schema().fields() {
            let data_type = delta_type(field.data_type()).ok_or_else(|| {
                Footer::Delta(DeltaError::Unsupported {
                    table: table.to_owned(),
                    column: field.name().clone(),
                    data_type: field.data_type().to_string(),
                })
            })?;
            columns.push((field.name().clone(), data_type));
        }
        Ok((columns, rows))
    }

    /// What the commit records of the run: `commitInfo.chatwoot_export`.
    fn commit_facts(manifest: &Manifest, table: &str, rows: u64, vars: &RunVars) -> Value {
        json!({
            "run_id": vars.run_id,
            "account_id": vars.account_id,
            "date": vars.date,
            "table": table,
            "rows": rows,
            "unique_contacts": manifest.unique_contacts,
            "expected_count": manifest.expected_count,
            "final_count": manifest.final_count,
            "count_difference": manifest.count_difference,
            "duplicates_dropped": manifest.duplicates_dropped,
            "drift": manifest.drift,
            "started_at": manifest.started_at,
            "finished_at": manifest.finished_at,
            "tool": manifest.tool,
        })
    }

    /// The table at `layout.table_folder`, through this tool's object store: the store built
    /// from the destination (and its credentials), its root and the table's URL as delta-rs
    /// wants them.
    fn table_at(destination: &Destination, layout: &Layout) -> Result<DeltaTable, LakeError> {
        let (root, url) = destination.store_for(&layout.table_folder)?;
        let config = StorageConfig::default();
        let prefixed = config
            .decorate_store(Arc::clone(&root), &url)
            .map_err(|e| commit_error(destination.show(&layout.table_folder, ""), e))?;
        let log_store = default_logstore(Arc::new(prefixed), root, &url, &config);
        Ok(DeltaTable::new(log_store))
    }

    fn commit_error(table: String, error: DeltaTableError) -> LakeError {
        DeltaError::Commit {
            table,
            detail: error.to_string(),
        }
        .into()
    }

    /// Whether another writer committed the version this commit wanted: reload and retry.
    fn lost_race(error: &DeltaTableError) -> bool {
        use deltalake_core::kernel::transaction::TransactionError;
        matches!(
            error,
            DeltaTableError::VersionAlreadyExists(_)
                | DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(_)
                        | TransactionError::MaxCommitAttempts(_)
                        | TransactionError::VersionAlreadyExists(_)
                }
        )
    }

    /// Commits the placed files as the partition's only files; returns the new version and the
    /// paths (relative to the table) of the files removed.
    async fn commit(
        destination: &Destination,
        layout: &Layout,
        shown: &str,
        fields: &[(String, String)],
        placed: &[Placed],
        facts: Value,
    ) -> Result<(i64, Vec<String>), LakeError> {
        let fail = |e| commit_error(shown.to_owned(), e);
        let partition_values: HashMap<String, Option<String>> = layout
            .partition
            .iter()
            .map(|(column, value)| ((*column).to_owned(), Some(value.clone())))
            .collect();
        let folder = layout.partition_folder().join("/");
        let now = chrono::Utc::now().timestamp_millis();
        let adds: Vec<Action> = placed
            .iter()
            .map(|file| {
                Action::Add(Add {
                    path: format!("{folder}/{}", file.name),
                    partition_values: partition_values.clone(),
                    size: file.size,
                    modification_time: now,
                    data_change: true,
                    stats: Some(json!({"numRecords": file.rows}).to_string()),
                    ..Add::default()
                })
            })
            .collect();
        let partition_columns: Vec<String> = layout
            .partition
            .iter()
            .map(|(column, _)| (*column).to_owned())
            .collect();
        let predicate = layout
            .partition
            .iter()
            .map(|(column, value)| match *column {
                "account_id" => format!("{column} = {value}"),
                _ => format!("{column} = '{value}'"),
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut table = table_at(destination, layout)?;
        let mut last_error = None;
        for _ in 0..COMMIT_ATTEMPTS {
            let exists = table
                .log_store()
                .is_delta_table_location()
                .await
                .map_err(fail)?;
            let mut actions = Vec::new();
            let mut removed = Vec::new();
            if exists {
                table.load().await.map_err(fail)?;
            }
            let state = if exists {
                Some(table.snapshot().map_err(fail)?)
            } else {
                None
            };
            match state {
                None => {
                    let protocol: Protocol = serde_json::from_value(
                        json!({"minReaderVersion": 1, "minWriterVersion": 2}),
                    )
                    .map_err(|e| fail(e.into()))?;
                    actions.push(Action::Protocol(protocol));
                    actions.push(Action::Metadata(new_metadata(
                        shown,
                        fields,
                        &layout.partition,
                        &partition_columns,
                    )?));
                }
                Some(state) => {
                    if let Some(metadata) = evolved_metadata(shown, state.metadata(), fields)? {
                        actions.push(Action::Metadata(metadata));
                    }
                    let files: Vec<_> = state
                        .snapshot()
                        .file_views(&*table.log_store(), None)
                        .try_collect()
                        .await
                        .map_err(fail)?;
                    for file in files {
                        if file.partition_values_map() == partition_values {
                            let remove: Remove = file.remove_action(true);
                            removed.push(remove.path.clone());
                            actions.push(Action::Remove(remove));
                        }
                    }
                }
            }
            actions.extend(adds.iter().cloned());
            let properties = CommitProperties::default()
                .with_metadata([(COMMIT_INFO_KEY.to_owned(), facts.clone())])
                .with_max_retries(0);
            let operation = DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: Some(partition_columns.clone()),
                predicate: Some(predicate.clone()),
            };
            let reference = state.map(|s| s as &dyn TableReference);
            let committed = CommitBuilder::from(properties)
                .with_actions(actions)
                .build(reference, table.log_store(), operation)
                .await;
            match committed {
                Ok(done) => {
                    let version = i64::try_from(done.version()).unwrap_or(i64::MAX);
                    return Ok((version, removed));
                }
                Err(error) if lost_race(&error) => last_error = Some(error),
                Err(error) => return Err(fail(error)),
            }
        }
        Err(DeltaError::Commit {
            table: shown.to_owned(),
            detail: format!(
                "{COMMIT_ATTEMPTS} attempts lost to concurrent writers (last: {})",
                last_error.map(|e| e.to_string()).unwrap_or_default()
            ),
        }
        .into())
    }

    /// A schema field: nullable; in a table with column mapping (one another engine created
    /// or converted), with its id and a physical name equal to its name.
    fn field(name: &str, data_type: &str, id: Option<i64>) -> Value {
        let metadata = match id {
            Some(id) => json!({MAPPING_ID: id, MAPPING_NAME: name}),
            None => json!({}),
        };
        json!({"name": name, "type": data_type, "nullable": true, "metadata": metadata})
    }

    /// The metadata of a new table: the run's columns, then the partition columns. No column
    /// mapping: Polars refuses tables that use it, and the Parquet files keep the names every
    /// other format uses (docs/delta.md says what that means for Spark writers).
    fn new_metadata(
        shown: &str,
        fields: &[(String, String)],
        partition: &[(&'static str, String)],
        partition_columns: &[String],
    ) -> Result<Metadata, LakeError> {
        let partition_types = partition.iter().map(|(column, _)| {
            let data_type = if *column == "dt" { "date" } else { "long" };
            ((*column).to_owned(), data_type.to_owned())
        });
        let schema: Vec<Value> = fields
            .iter()
            .cloned()
            .chain(partition_types)
            .map(|(name, data_type)| field(&name, &data_type, None))
            .collect();
        let table_name = shown.rsplit('/').next().unwrap_or(shown);
        let value = json!({
            "id": Uuid::new_v4().to_string(),
            "name": table_name,
            "description": "Chatwoot contacts exported by chatwoot-export",
            "format": {"provider": "parquet", "options": {}},
            "schemaString": json!({"type": "struct", "fields": schema}).to_string(),
            "partitionColumns": partition_columns,
            "configuration": {},
            "createdTime": chrono::Utc::now().timestamp_millis(),
        });
        serde_json::from_value(value).map_err(|e| {
            DeltaError::Commit {
                table: shown.to_owned(),
                detail: format!("cannot build the table's metadata: {e}"),
            }
            .into()
        })
    }

    /// The table's metadata with the run's new columns appended, or `None` when it has every
    /// one of them already. A column of another type is refused.
    fn evolved_metadata(
        shown: &str,
        metadata: &Metadata,
        fields: &[(String, String)],
    ) -> Result<Option<Metadata>, LakeError> {
        let broken = |detail: String| -> LakeError {
            DeltaError::Commit {
                table: shown.to_owned(),
                detail,
            }
            .into()
        };
        let mut value = serde_json::to_value(metadata)
            .map_err(|e| broken(format!("cannot read the table's metadata: {e}")))?;
        let mut schema: Value = value["schemaString"]
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .ok_or_else(|| broken("the table's schema is unreadable".into()))?;
        let mapped = value["configuration"][MAPPING_MODE].as_str() == Some("name");
        let mut max_id: i64 = value["configuration"][MAPPING_MAX_ID]
            .as_str()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let existing = schema["fields"]
            .as_array_mut()
            .ok_or_else(|| broken("the table's schema has no fields".into()))?;
        let mut added = false;
        for (name, data_type) in fields {
            match existing.iter().find(|f| f["name"] == name.as_str()) {
                Some(current) if current["type"] == data_type.as_str() => {}
                Some(current) => {
                    return Err(DeltaError::TypeConflict {
                        table: shown.to_owned(),
                        column: name.clone(),
                        table_type: current["type"].to_string(),
                        run_type: data_type.clone(),
                    }
                    .into());
                }
                None => {
                    let id = mapped.then(|| {
                        max_id += 1;
                        max_id
                    });
                    existing.push(field(name, data_type, id));
                    added = true;
                }
            }
        }
        if !added {
            return Ok(None);
        }
        value["schemaString"] = Value::from(schema.to_string());
        if mapped {
            value["configuration"][MAPPING_MAX_ID] = Value::from(max_id.to_string());
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| broken(format!("cannot build the table's new metadata: {e}")))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
            list.iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect()
        }

        fn schema_of(metadata: &Metadata) -> Vec<(String, String, Value)> {
            let value = serde_json::to_value(metadata).expect("json");
            let schema: Value =
                serde_json::from_str(value["schemaString"].as_str().expect("schema"))
                    .expect("json");
            schema["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .map(|f| {
                    (
                        f["name"].as_str().expect("name").to_owned(),
                        f["type"].as_str().expect("type").to_owned(),
                        f["metadata"].clone(),
                    )
                })
                .collect()
        }

        #[test]
        fn new_columns_are_appended_and_types_never_change() {
            let partition = [("account_id", "3".to_owned())];
            let created = new_metadata(
                "lake/contacts",
                &columns(&[
                    ("id", "long"),
                    ("custom_attributes__signup source", "string"),
                ]),
                &partition,
                &["account_id".to_owned()],
            )
            .expect("metadata");
            let fields = schema_of(&created);
            let names: Vec<&str> = fields.iter().map(|f| f.0.as_str()).collect();
            assert_eq!(
                names,
                ["id", "custom_attributes__signup source", "account_id"]
            );
            assert_eq!(fields[2].1, "long");
            assert_eq!(fields[1].2, json!({}), "no column mapping");

            // The same columns again, in another order: nothing to change.
            let same = columns(&[
                ("custom_attributes__signup source", "string"),
                ("id", "long"),
            ]);
            assert!(
                evolved_metadata("t", &created, &same)
                    .expect("ok")
                    .is_none()
            );
            // A new attribute: appended, the table's id and partitioning kept.
            let wider = columns(&[("id", "long"), ("custom_attributes__vip", "boolean")]);
            let evolved = evolved_metadata("t", &created, &wider)
                .expect("ok")
                .expect("a new schema");
            let fields = schema_of(&evolved);
            assert_eq!(fields.len(), 4);
            assert_eq!(fields[3].0, "custom_attributes__vip");
            assert_eq!(fields[3].1, "boolean");
            let (old, new) = (
                serde_json::to_value(&created).expect("json"),
                serde_json::to_value(&evolved).expect("json"),
            );
            assert_eq!(new["id"], old["id"]);
            assert_eq!(new["partitionColumns"], old["partitionColumns"]);
            // A column of another type: refused, naming it.
            let retyped = columns(&[("id", "string")]);
            let error = evolved_metadata("t", &created, &retyped).expect_err("a conflict");
            let message = error.to_string();
            assert!(
                message.contains("\"id\"")
                    && message.contains("long")
                    && message.contains("string"),
                "{message}"
            );
        }

        #[test]
        fn a_table_with_column_mapping_gets_the_next_column_ids() {
            let mut value = serde_json::to_value(
                new_metadata("t", &columns(&[("id", "long")]), &[], &[]).expect("metadata"),
            )
            .expect("json");
            value["schemaString"] = Value::from(
                json!({"type": "struct", "fields": [field("id", "long", Some(1))]}).to_string(),
            );
            value["configuration"] = json!({MAPPING_MODE: "name", MAPPING_MAX_ID: "1"});
            let mapped: Metadata = serde_json::from_value(value).expect("metadata");
            let evolved = evolved_metadata("t", &mapped, &columns(&[("plan", "string")]))
                .expect("ok")
                .expect("a new schema");
            let fields = schema_of(&evolved);
            assert_eq!(fields[1].2, json!({MAPPING_ID: 2, MAPPING_NAME: "plan"}));
            let config = serde_json::to_value(&evolved).expect("json")["configuration"].clone();
            assert_eq!(config[MAPPING_MAX_ID], "2");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> RunVars {
        let started = chrono::DateTime::parse_from_rfc3339("2025-03-04T05:06:07Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        RunVars::now(3, started, 0xabc)
    }

    #[test]
    fn templates_name_the_table_and_its_partition_columns() {
        /// A template, the table's folder, its partition columns and values.
        type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
        let cases: [Case; 5] = [
            (
                "{table}/account_id={account_id}/dt={date}",
                &["contacts"],
                &[("account_id", "3"), ("dt", "2025-03-04")],
            ),
            ("", &["contacts"], &[("account_id", "3")]),
            (
                "chatwoot/account_id={account_id}",
                &["chatwoot", "contacts"],
                &[("account_id", "3")],
            ),
            (
                "raw/{table}_delta/{date}/{run_id}",
                &["raw", "contacts_delta"],
                &[("account_id", "3"), ("dt", "2025-03-04")],
            ),
            ("{run_id}", &["contacts"], &[("account_id", "3")]),
        ];
        for (template, folder, partition) in cases {
            let layout = Layout::of(template, "contacts", &vars());
            assert_eq!(layout.table_folder, folder, "{template}");
            let expected: Vec<(&str, String)> = partition
                .iter()
                .map(|(c, v)| (*c, (*v).to_owned()))
                .collect();
            assert_eq!(layout.partition, expected, "{template}");
        }
        assert_eq!(
            Layout::of(
                "{table}/account_id={account_id}/dt={date}",
                "contacts",
                &vars()
            )
            .partition_folder(),
            vec!["account_id=3".to_owned(), "dt=2025-03-04".to_owned()]
        );
    }

    #[test]
    fn every_type_the_transform_emits_has_a_delta_type() {
        use arrow::datatypes::{DataType, TimeUnit};
        let cases = [
            (DataType::Utf8, "string"),
            (DataType::Boolean, "boolean"),
            (DataType::Int64, "long"),
            (DataType::Float64, "double"),
            (DataType::Decimal128(38, 18), "decimal(38,18)"),
            (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                "timestamp",
            ),
        ];
        for (arrow, delta) in cases {
            assert_eq!(delta_type(&arrow).as_deref(), Some(delta), "{arrow}");
        }
        assert_eq!(
            delta_type(&DataType::Timestamp(TimeUnit::Microsecond, None)),
            None
        );
    }
}
