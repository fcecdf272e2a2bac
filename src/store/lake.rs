//! Object store destinations (`s3://`, `gs://`, `az://`, `file://`, or a local lake folder):
//! a finished export in a local staging folder -> data files put in place under fixed names ->
//! this tool's stale files in the partitions removed -> manifests last.
//!
//! Receives a destination, a partition path template and a staging folder holding a complete
//! export (`<table>.<ext>`, or `<table>-00000.<ext>`, ... when split by `rows_per_file`, and
//! `manifest.json`); emits objects under `DEST/<template rendered for the table>/` with the
//! staged names, and one manifest per partition at `DEST/_chatwoot_export/<partition>/manifest.json`,
//! listing its files and the run's facts.
//!
//! Engines read the lake as folders (Spark, DuckDB and Polars globs, pyarrow datasets), not
//! through our manifests, so the layout is made for them:
//! - **A partition holds data files only**, the same names every run: a rerun *replaces* each
//!   file, which is atomic for a reader of the folder (a rename over the old file in a local
//!   folder; one PUT of the same key in an object store). A reader of a partition of one file
//!   per table (the default) sees the old run or the new one, never both and never half.
//!   Split partitions (`rows_per_file`) are replaced file by file: while one is published, a
//!   reader may see some files of each run (use `format = "delta"` where that matters).
//! - **Manifests live apart**, under `DEST/_chatwoot_export/`, so that no glob of a table's
//!   data (`contacts/**/*.parquet`, a Polars or pyarrow read of a partition folder) meets a
//!   JSON file. A partition's manifest is removed before its files are replaced and written
//!   once they all are: a manifest says its files are complete.
//! - A local file being written has a hidden name (`.<name>.tmp`) that no engine reads, so a
//!   `kill -9` mid-publish leaves nothing an engine counts; the next run of the partition
//!   removes such leftovers, the files of the layout earlier versions wrote
//!   (`<table>-<run_id>.<ext>` and a `_manifest.json` inside the partition), and split files a
//!   shorter run no longer has. Only files named like this tool's are ever deleted.
//!
//! Every local file and folder is created owner-only whatever the umask. Credentials and
//! endpoints come from the usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), read by
//! `object_store`.

use std::collections::BTreeMap;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::buffered::BufWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::local::CHANGES_TABLE;
use super::{MANIFEST_FILE, owner_only, owner_only_dir};

/// The folder under the destination that holds the manifests, one per partition under the
/// partition's own path. The leading `_` is the Hadoop convention for what is not data (Spark,
/// Hive, Athena and Trino skip it); it sits beside the tables' folders, never inside one.
pub const MANIFESTS_FOLDER: &str = "_chatwoot_export";
/// A partition's manifest, in its folder under `MANIFESTS_FOLDER`.
pub const PARTITION_MANIFEST: &str = "manifest.json";
/// Where earlier versions wrote a partition's manifest: inside the partition, which Polars
/// and DuckDB globs trip over. Removed by the next run of the partition.
const OLD_PARTITION_MANIFEST: &str = "_manifest.json";

/// A failure to reach or write the destination.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error(
        "cannot use destination {destination}: {source}: check the URL and the credentials in the environment (AWS_*, GOOGLE_*, AZURE_*)"
    )]
    Open {
        destination: String,
        source: object_store::Error,
    },
    #[error(
        "destination {0} is not a folder nor an s3://, gs://, az:// or file:// URL: fix --out or sink.destination"
    )]
    Unsupported(String),
    #[error(
        "cannot write to destination {destination} ({cause}): check that it exists, that it is reachable and that the credentials in the environment (AWS_*, GOOGLE_*, AZURE_*) may write there; nothing was fetched"
    )]
    NotWritable { destination: String, cause: String },
    #[error("cannot create the local destination {}: {source}", path.display())]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot upload {object} to {destination}: {source}; the partition's manifest stays absent until a run publishes it whole, run again"
    )]
    Upload {
        destination: String,
        object: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot read {object} from {destination}: {source}; nothing was fetched from Chatwoot, check that the destination is reachable and run again"
    )]
    Download {
        destination: String,
        object: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{source}; the finished export is kept in {}: run the same command with --resume to publish it", folder.display())]
    Kept {
        source: Box<LakeError>,
        folder: PathBuf,
    },
    #[error(
        "cannot remove the stale snapshot {object}: {source}; the tables are published, but the next --incremental run would build on an older snapshot: run again"
    )]
    Snapshot {
        object: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A failure to commit to a Delta table (store/delta.rs's `DeltaError`, boxed so that this
    /// module does not import that one).
    #[error(transparent)]
    Delta(Box<dyn std::error::Error + Send + Sync>),
    #[error("the staged export in {} is unreadable ({detail}); please report this", path.display())]
    Staging { path: PathBuf, detail: String },
    #[error(
        "cannot replace {object} in {destination}: {source}; nothing there was changed, run again"
    )]
    Unreachable {
        destination: String,
        object: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "cannot remove the stale {object} from {destination}: {source}; readers of the folder would count its rows too, so the partition's manifest is not written: run again, or delete it by hand"
    )]
    Cleanup {
        destination: String,
        object: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Whether `destination` names an object store rather than a local folder.
pub fn is_url(destination: &str) -> bool {
    destination.contains("://")
}

/// What the run's placeholders stand for.
#[derive(Clone, Debug)]
pub struct RunVars {
    pub account_id: u64,
    /// UTC day the run started, `YYYY-MM-DD`.
    pub date: String,
    /// Unique per run: `YYYYMMDDTHHMMSSZ-xxxxxx`.
    pub run_id: String,
}

impl RunVars {
    /// Vars for a run starting now.
    pub fn now(account_id: u64, started: chrono::DateTime<chrono::Utc>, nonce: u64) -> Self {
        Self {
            account_id,
            date: started.format("%Y-%m-%d").to_string(),
            run_id: format!(
                "{}-{:06x}",
                started.format("%Y%m%dT%H%M%SZ"),
                nonce & 0xff_ffff
            ),
        }
    }

    /// `template` with `{account_id}`, `{table}`, `{date}` and `{run_id}` replaced.
    pub fn render(&self, template: &str, table: &str) -> String {
        template
            .replace("{account_id}", &self.account_id.to_string())
            .replace("{table}", table)
            .replace("{date}", &self.date)
            .replace("{run_id}", &self.run_id)
    }
}

/// What a publish wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Published {
    /// Every object written, manifests last, as `DEST/...` URLs or paths.
    pub files: Vec<String>,
    /// Objects of earlier runs removed from the partitions.
    pub replaced: Vec<String>,
}

/// Test hook, for the tests only: milliseconds to wait once a local lake folder holds the run's
/// data files under their temporary names, before they are renamed, so that a test can
/// `kill -9` the run at that point for certain. Unset (always, outside the tests): no wait.
pub const TEST_PAUSE_ENV: &str = "CHATWOOT_EXPORT_TEST_PUBLISH_PAUSE_MS";

/// An opened destination.
#[derive(Debug)]
pub struct Destination {
    backend: Backend,
    display: String,
}

/// Where the objects go.
#[derive(Debug)]
enum Backend {
    /// A local folder, written directly: files owner-only (0600) and folders 0700 whatever
    /// the umask, each data file written under a hidden temporary name (`.<name>.tmp`, which
    /// every engine skips) and renamed into place only once all of them are complete.
    Folder(PathBuf),
    /// An object store: an object becomes visible only once its upload completes, so data
    /// files go straight to their names.
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    },
}

/// A partition, as the folders under the destination.
pub(super) type Partition = Vec<String>;

impl Destination {
    /// A local folder (created owner-only if missing).
    fn local_folder(path: PathBuf, display: String) -> Result<Self, LakeError> {
        owner_only_dir()
            .recursive(true)
            .create(&path)
            .map_err(|source| LakeError::Local {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            backend: Backend::Folder(path),
            display,
        })
    }

    /// Opens `destination` (no request is sent yet).
    pub fn open(destination: &str) -> Result<Self, LakeError> {
        let display = destination.trim_end_matches('/').to_owned();
        let open_error = |source| LakeError::Open {
            destination: display.clone(),
            source,
        };
        if !is_url(destination) {
            return Self::local_folder(PathBuf::from(destination), display);
        }
        let url =
            Url::parse(destination).map_err(|_| LakeError::Unsupported(destination.into()))?;
        let prefix = Path::from_url_path(url.path()).map_err(|source| LakeError::Open {
            destination: display.clone(),
            source: source.into(),
        })?;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_url(destination)
                    .build()
                    .map_err(open_error)?,
            ),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(destination)
                    .build()
                    .map_err(open_error)?,
            ),
            "az" | "azure" | "abfs" | "abfss" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(destination)
                    .build()
                    .map_err(open_error)?,
            ),
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| LakeError::Unsupported(destination.into()))?;
                return Self::local_folder(path, display);
            }
            _ => return Err(LakeError::Unsupported(destination.into())),
        };
        Ok(Self {
            backend: Backend::Store { store, prefix },
            display,
        })
    }

    /// Creates and deletes a small marker object, `_chatwoot_export/.write-check-<run_id>`, so
    /// that a destination that is unreachable, missing or read-only (or whose credentials are
    /// wrong) fails before the export spends any request on Chatwoot, not after the fetch.
    pub async fn check_writable(&self, run_id: &str) -> Result<(), LakeError> {
        let marker = format!(".write-check-{run_id}");
        let folder: Partition = vec![MANIFESTS_FOLDER.to_owned()];
        let created_folder = match &self.backend {
            Backend::Folder(root) => !folder_of(root, &folder).exists(),
            Backend::Store { .. } => false,
        };
        let checked = match self.put(&folder, &marker, b"write check".to_vec()).await {
            Ok(()) => self.delete(&folder, &marker).await,
            Err(error) => Err(error),
        };
        if let Backend::Folder(root) = &self.backend
            && created_folder
        {
            // Only an empty folder goes: the check leaves the destination as it found it.
            let _ = std::fs::remove_dir(folder_of(root, &folder));
        }
        checked.map_err(|error| LakeError::NotWritable {
            destination: self.display.clone(),
            cause: match error {
                LakeError::Upload { source, .. } | LakeError::Cleanup { source, .. } => {
                    innermost(source.as_ref())
                }
                other => other.to_string(),
            },
        })
    }

    /// Puts the complete export in `staging` into its partitions under fixed names, removes
    /// this tool's stale files there, then writes each partition's manifest.
    pub async fn publish(
        &self,
        staging: &LocalPath,
        template: &str,
        vars: &RunVars,
    ) -> Result<Published, LakeError> {
        let staged = staging.join(MANIFEST_FILE);
        let staging_error = |detail: String| LakeError::Staging {
            path: staged.clone(),
            detail,
        };
        let manifest: Value = read_staged_manifest(staging)?;
        let tables = manifest["tables"]
            .as_object()
            .ok_or_else(|| staging_error("no tables".into()))?
            .clone();
        // partition -> its tables, and each table's files, as staged (the names they keep).
        let mut partitions: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
        let mut files: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (table, entry) in &tables {
            let staged = entry["files"]
                .as_array()
                .ok_or_else(|| staging_error(format!("no files for table {table}")))?;
            for file in staged {
                let file = file
                    .as_str()
                    .filter(|file| is_ours(file) && file.starts_with(table.as_str()))
                    .ok_or_else(|| staging_error(format!("unexpected file {file} in {table}")))?;
                files.entry(table).or_default().push(file.to_owned());
            }
            let partition = partition_of(&vars.render(template, table));
            partitions.entry(partition).or_default().push(table.clone());
        }
        let placed: Vec<(Partition, String)> = partitions
            .iter()
            .flat_map(|(partition, tables)| {
                tables
                    .iter()
                    .flat_map(|table| files.get(table.as_str()).into_iter().flatten())
                    .map(|name| (partition.clone(), name.clone()))
            })
            .collect();
        let mut published = Published::default();

        // 1. The manifests go first: a partition without one is being published.
        for partition in partitions.keys() {
            self.delete_manifest(partition).await?;
        }

        // 2. Data files. In a folder they are written beside the partition's manifest under
        // hidden names (Polars reads every file of a folder, hidden or not), then renamed
        // over the old ones all at once; in an object store each PUT replaces its object whole.
        for (partition, name) in &placed {
            self.upload(&staging.join(name), partition, name).await?;
        }
        if let Backend::Folder(root) = &self.backend {
            if let Some(pause) = std::env::var(TEST_PAUSE_ENV)
                .ok()
                .and_then(|ms| ms.parse().ok())
            {
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            for (partition, name) in &placed {
                self.reveal(root, partition, name)?;
            }
        }
        published.files.extend(
            placed
                .iter()
                .map(|(partition, name)| self.show(partition, name)),
        );

        // 3. This tool's files in those partitions that the run did not write: earlier
        // versions' run-named files and in-partition manifest, split files a shorter run no
        // longer has, and what runs killed while publishing left (there, and beside the
        // manifest).
        for partition in partitions.keys() {
            for name in self.list(partition).await? {
                let written = placed.iter().any(|(p, n)| p == partition && *n == name);
                let stale = !written && (is_ours(&name) || name == OLD_PARTITION_MANIFEST);
                if stale || is_leftover(&name) {
                    self.delete(partition, &name).await?;
                    published.replaced.push(self.show(partition, &name));
                }
            }
            if let Backend::Folder(root) = &self.backend {
                let beside = manifest_partition(partition);
                if folder_of(root, &beside).exists() {
                    for name in self.list(&beside).await? {
                        if is_leftover(&name) {
                            self.delete(&beside, &name).await?;
                        }
                    }
                }
            }
        }
        self.clear_stale_feed(&manifest, template, vars, &partitions, &mut published)
            .await?;

        // 4. One manifest per partition, listing that partition's tables: the commit marker.
        for (partition, partition_tables) in &partitions {
            let mut own = manifest.clone();
            if let Some(object) = own["tables"].as_object_mut() {
                object.retain(|name, _| partition_tables.contains(name));
            }
            own["run_id"] = Value::from(vars.run_id.as_str());
            own["partition"] = Value::from(partition.join("/"));
            let bytes = serde_json::to_vec_pretty(&own).unwrap_or_default();
            let at = manifest_partition(partition);
            self.put(&at, PARTITION_MANIFEST, bytes).await?;
            published.files.push(self.show(&at, PARTITION_MANIFEST));
        }
        Ok(published)
    }

    /// A run without a base (none to compare with, or no `--full`/`--incremental`) writes no
    /// change feed: where the feed has a partition of its own (a `{table}` template), an
    /// earlier run's feed there would pass for this run's, so it goes, manifest first. (In a
    /// shared partition, step 3 removes it with the other stale files.)
    async fn clear_stale_feed(
        &self,
        manifest: &Value,
        template: &str,
        vars: &RunVars,
        partitions: &BTreeMap<Partition, Vec<String>>,
        published: &mut Published,
    ) -> Result<(), LakeError> {
        let feed_written = manifest["tables"].get(CHANGES_TABLE).is_some();
        let partition = partition_of(&vars.render(template, CHANGES_TABLE));
        if feed_written || partitions.contains_key(&partition) {
            return Ok(());
        }
        self.delete_manifest(&partition).await?;
        for name in self.list(&partition).await? {
            if is_ours(&name) && name.starts_with(CHANGES_TABLE) {
                self.delete(&partition, &name).await?;
                published.replaced.push(self.show(&partition, &name));
            }
        }
        Ok(())
    }

    /// In a local lake folder: moves the uploaded `name`, written under its hidden temporary
    /// name beside the partition's manifest, into the partition (replacing the old file at once).
    fn reveal(&self, root: &LocalPath, partition: &Partition, name: &str) -> Result<(), LakeError> {
        let written = folder_of(root, &manifest_partition(partition)).join(temp_name(name));
        let folder = folder_of(root, partition);
        owner_only_dir()
            .recursive(true)
            .create(&folder)
            .and_then(|()| std::fs::rename(written, folder.join(name)))
            .map_err(|source| self.upload_error(partition, name, source.into()))
    }

    /// Removes `partition`'s manifest, if it has one: the first change a publish makes.
    async fn delete_manifest(&self, partition: &Partition) -> Result<(), LakeError> {
        let at = manifest_partition(partition);
        if let Backend::Folder(root) = &self.backend
            && !folder_of(root, &at).exists()
        {
            return Ok(());
        }
        self.delete(&at, PARTITION_MANIFEST)
            .await
            .map_err(|error| match error {
                LakeError::Cleanup {
                    destination,
                    object,
                    source,
                } => LakeError::Unreachable {
                    destination,
                    object,
                    source,
                },
                other => other,
            })
    }

    /// Puts a staged file into `partition` as `name`: in a folder, as its hidden temporary
    /// name (renamed in step 2), synced; in an object store, streamed up (one PUT when small, a
    /// multipart upload when large, aborted on failure so no part is left behind).
    async fn upload(
        &self,
        local: &LocalPath,
        partition: &Partition,
        name: &str,
    ) -> Result<(), LakeError> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| {
            self.upload_error(partition, name, source)
        };
        match &self.backend {
            Backend::Folder(root) => {
                let (local, folder, temp) = (
                    local.to_owned(),
                    folder_of(root, &manifest_partition(partition)),
                    temp_name(name),
                );
                tokio::task::spawn_blocking(move || copy_owner_only(&local, &folder, &temp))
                    .await
                    .map_err(|e| fail(e.into()))?
                    .map_err(|e| fail(e.into()))
            }
            Backend::Store { store, prefix } => {
                let object = object_of(prefix, partition, name);
                let mut file = tokio::fs::File::open(local)
                    .await
                    .map_err(|e| fail(e.into()))?;
                let mut writer = BufWriter::new(Arc::clone(store), object);
                if let Err(source) = tokio::io::copy(&mut file, &mut writer).await {
                    let _ = writer.abort().await;
                    return Err(fail(source.into()));
                }
                writer.shutdown().await.map_err(|e| fail(e.into()))
            }
        }
    }

    /// Puts a staged file into `partition` as `name`, visible once complete (in a folder:
    /// written under its hidden temporary name, then renamed). For store/delta.rs, whose files
    /// no reader sees before the Delta commit that lists them.
    #[cfg_attr(
        not(feature = "delta"),
        expect(dead_code, reason = "only the Delta writer places files this way")
    )]
    pub(super) async fn place(
        &self,
        local: &LocalPath,
        partition: &Partition,
        name: &str,
    ) -> Result<String, LakeError> {
        self.upload(local, partition, name).await?;
        if let Backend::Folder(root) = &self.backend {
            self.reveal(root, partition, name)?;
        }
        Ok(self.show(partition, name))
    }

    /// The object store holding `folder` (rooted at the store's root, as delta-rs wants it)
    /// and the folder's URL. A local folder is created owner-only first.
    #[cfg_attr(
        not(feature = "delta"),
        expect(dead_code, reason = "only the Delta writer opens stores this way")
    )]
    pub(super) fn store_for(
        &self,
        folder: &Partition,
    ) -> Result<(Arc<dyn ObjectStore>, Url), LakeError> {
        match &self.backend {
            Backend::Folder(root) => {
                let path = folder_of(root, folder);
                owner_only_dir()
                    .recursive(true)
                    .create(&path)
                    .map_err(|source| LakeError::Local {
                        path: path.clone(),
                        source,
                    })?;
                let url = std::path::absolute(&path)
                    .ok()
                    .and_then(|path| Url::from_directory_path(path).ok())
                    .ok_or_else(|| LakeError::Unsupported(path.display().to_string()))?;
                let local = object_store::local::LocalFileSystem::new();
                Ok((Arc::new(local), url))
            }
            Backend::Store { store, .. } => {
                let shown = format!("{}/", self.show(folder, ""));
                let url = Url::parse(&shown).map_err(|_| LakeError::Unsupported(shown))?;
                Ok((Arc::clone(store), url))
            }
        }
    }

    /// Writes a small object (a manifest): in a folder through a hidden temporary name.
    pub(super) async fn put(
        &self,
        partition: &Partition,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), LakeError> {
        match &self.backend {
            Backend::Folder(root) => {
                let folder = folder_of(root, partition);
                let temp = temp_name(name);
                let written = write_owner_only(&folder, &temp, &bytes)
                    .and_then(|()| std::fs::rename(folder.join(&temp), folder.join(name)));
                written.map_err(|source| self.upload_error(partition, name, source.into()))
            }
            Backend::Store { store, prefix } => store
                .put(&object_of(prefix, partition, name), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|source| self.upload_error(partition, name, source.into())),
        }
    }

    /// Puts the local file `local` into `partition` as `name`, visible once complete: in a
    /// folder written under its hidden temporary name in that folder, synced, then renamed; in
    /// an object store streamed up as `upload` does. For files outside the data partitions
    /// (store/snapshot.rs's raw contacts).
    pub(super) async fn put_file(
        &self,
        local: &LocalPath,
        partition: &Partition,
        name: &str,
    ) -> Result<(), LakeError> {
        let Backend::Folder(root) = &self.backend else {
            return self.upload(local, partition, name).await;
        };
        let (local, folder, temp) = (
            local.to_owned(),
            folder_of(root, partition),
            temp_name(name),
        );
        let target = folder.join(name);
        tokio::task::spawn_blocking(move || {
            let copied = copy_owner_only(&local, &folder, &temp)
                .and_then(|()| std::fs::rename(folder.join(&temp), target));
            if copied.is_err() {
                // Nothing half-written stays behind (the next run would remove it anyway).
                let _ = std::fs::remove_file(folder.join(&temp));
            }
            copied
        })
        .await
        .map_err(|e| self.upload_error(partition, name, e.into()))?
        .map_err(|e| self.upload_error(partition, name, e.into()))
    }

    /// Downloads `name` in `partition` to the new local file `local` (owner-only), streamed:
    /// `false` when there is no such object.
    pub(super) async fn get_file(
        &self,
        partition: &Partition,
        name: &str,
        local: &LocalPath,
    ) -> Result<bool, LakeError> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| LakeError::Download {
            destination: self.display.clone(),
            object: self.show(partition, name),
            source,
        };
        let folder = local.parent().unwrap_or(LocalPath::new(".")).to_owned();
        let file_name = local
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match &self.backend {
            Backend::Folder(root) => {
                let source = folder_of(root, partition).join(name);
                if !source.is_file() {
                    return Ok(false);
                }
                tokio::task::spawn_blocking(move || copy_owner_only(&source, &folder, &file_name))
                    .await
                    .map_err(|e| fail(e.into()))?
                    .map_err(|e| fail(e.into()))?;
                Ok(true)
            }
            Backend::Store { store, prefix } => {
                let object = object_of(prefix, partition, name);
                let got = match store.get(&object).await {
                    Err(object_store::Error::NotFound { .. }) => return Ok(false),
                    got => got.map_err(|e| fail(e.into()))?,
                };
                let file = create_owner_only(&folder, &file_name).map_err(|e| fail(e.into()))?;
                let mut file = tokio::fs::File::from_std(file);
                let mut chunks = got.into_stream();
                while let Some(chunk) = chunks.try_next().await.map_err(|e| fail(e.into()))? {
                    file.write_all(&chunk).await.map_err(|e| fail(e.into()))?;
                }
                file.sync_all().await.map_err(|e| fail(e.into()))?;
                Ok(true)
            }
        }
    }

    /// The names of the files directly in `partition`.
    pub(super) async fn list(&self, partition: &Partition) -> Result<Vec<String>, LakeError> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| LakeError::Cleanup {
            destination: self.display.clone(),
            object: self.show(partition, ""),
            source,
        };
        match &self.backend {
            Backend::Folder(root) => {
                let entries = match std::fs::read_dir(folder_of(root, partition)) {
                    // As in an object store, where a prefix nothing was put under lists empty.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    entries => entries.map_err(|source| fail(source.into()))?,
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|source| fail(source.into()))?;
                    // Files only: a folder (a deeper partition) is never ours to remove.
                    if entry.file_type().is_ok_and(|kind| !kind.is_dir()) {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                Ok(names)
            }
            Backend::Store { store, prefix } => {
                let partition_path = object_of(prefix, partition, "");
                let listed: Vec<_> = store
                    .list(Some(&partition_path))
                    .try_collect()
                    .await
                    .map_err(|source| fail(source.into()))?;
                Ok(listed
                    .iter()
                    .filter_map(|meta| direct_child(&meta.location, &partition_path))
                    .collect())
            }
        }
    }

    pub(super) async fn delete(&self, partition: &Partition, name: &str) -> Result<(), LakeError> {
        let deleted: Result<(), Box<dyn std::error::Error + Send + Sync>> = match &self.backend {
            Backend::Folder(root) => {
                match std::fs::remove_file(folder_of(root, partition).join(name)) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
                    _ => Ok(()),
                }
            }
            Backend::Store { store, prefix } => {
                match store.delete(&object_of(prefix, partition, name)).await {
                    // Azure answers 404 for what is not there; S3 does not.
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    other => other.map_err(Into::into),
                }
            }
        };
        deleted.map_err(|source| LakeError::Cleanup {
            destination: self.display.clone(),
            object: self.show(partition, name),
            source,
        })
    }

    /// `DEST/partition/name` for messages and the run report.
    pub(super) fn show(&self, partition: &Partition, name: &str) -> String {
        let mut shown = self.display.clone();
        for part in partition.iter().map(String::as_str).chain([name]) {
            if !part.is_empty() {
                shown.push('/');
                shown.push_str(part);
            }
        }
        shown
    }

    fn upload_error(
        &self,
        partition: &Partition,
        name: &str,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> LakeError {
        LakeError::Upload {
            destination: self.display.clone(),
            object: self.show(partition, name),
            source,
        }
    }
}

/// The deepest cause of an error: object_store wraps the one that says what happened (a
/// refused connection, an HTTP status) in several layers of context, which would make the one
/// error line hundreds of characters long.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}

/// The partition a rendered template names (empty parts dropped: `a//b/` is `a/b`).
fn partition_of(relative: &str) -> Partition {
    relative
        .split('/')
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The manifest of the complete export staged in `staging`.
pub(super) fn read_staged_manifest<T: serde::de::DeserializeOwned>(
    staging: &LocalPath,
) -> Result<T, LakeError> {
    let staged = staging.join(MANIFEST_FILE);
    let staging_error = |detail: String| LakeError::Staging {
        path: staged.clone(),
        detail,
    };
    let text = std::fs::read_to_string(&staged).map_err(|e| staging_error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| staging_error(e.to_string()))
}

/// Where `partition`'s manifest lives: the same path under `MANIFESTS_FOLDER`.
pub(super) fn manifest_partition(partition: &Partition) -> Partition {
    std::iter::once(MANIFESTS_FOLDER.to_owned())
        .chain(partition.iter().cloned())
        .collect()
}

fn folder_of(root: &LocalPath, partition: &Partition) -> PathBuf {
    partition
        .iter()
        .fold(root.to_owned(), |path, part| path.join(part))
}

/// The object `name` in `partition` under `prefix` (`name` empty: the partition itself).
fn object_of(prefix: &Path, partition: &Partition, name: &str) -> Path {
    partition
        .iter()
        .map(String::as_str)
        .chain([name])
        .filter(|part| !part.is_empty())
        .fold(prefix.clone(), |path, part| path.join(part))
}

/// The temporary name of `name` while it is written, beside the partition's manifest: hidden
/// (a leading `.`) and ending in `.tmp`, so that even a glob of the whole lake
/// (`lake/**/*.parquet`) never matches it.
fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Creates `folder` (and its missing parents) owner-only, then writes `bytes` to a new
/// owner-only `folder/name`, synced.
fn write_owner_only(folder: &LocalPath, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = create_owner_only(folder, name)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Copies `local` to a new owner-only `folder/name`, synced.
fn copy_owner_only(local: &LocalPath, folder: &LocalPath, name: &str) -> std::io::Result<()> {
    let mut file = create_owner_only(folder, name)?;
    std::io::copy(&mut std::fs::File::open(local)?, &mut file)?;
    file.sync_all()
}

/// A new owner-only file in `folder` (made owner-only if missing); one left by a killed run
/// under the same name is replaced, never written through.
fn create_owner_only(folder: &LocalPath, name: &str) -> std::io::Result<std::fs::File> {
    owner_only_dir().recursive(true).create(folder)?;
    let path = folder.join(name);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    owner_only().open(&path)
}

/// The file name of `location` when it sits directly in `partition` (not deeper).
fn direct_child(location: &Path, partition: &Path) -> Option<String> {
    let mut rest = location.prefix_match(partition)?;
    let name = rest.next()?.as_ref().to_owned();
    rest.next().is_none().then_some(name)
}

/// Whether a file name is one this tool writes (`<table>.<ext>`, `<table>-<n>.<ext>`, and
/// earlier versions' `<table>-<run_id>.<ext>`, `<table>-<run_id>-<n>.<ext>`): only those are
/// ever deleted, whatever else shares the partition.
fn is_ours(name: &str) -> bool {
    // The change feed too: a --full or --incremental run with a base writes it.
    crate::table::names().chain([CHANGES_TABLE]).any(|table| {
        name.strip_prefix(table).is_some_and(|rest| {
            [".parquet", ".csv", ".ndjson"].iter().any(|ext| {
                rest == *ext
                    || (rest.starts_with('-') && rest.len() > 1 + ext.len() && rest.ends_with(ext))
            })
        })
    })
}

/// Whether a file name is a temporary file of a run killed while publishing: this tool's
/// `.<name>.tmp`, or `<name>#<digits>`, the staging name under which earlier versions (through
/// `object_store`'s local store) wrote a file into a lake folder, visible to every engine. `<name>` is
/// one of this tool's data files or a partition manifest; nothing else is ever matched.
pub(super) fn is_leftover(name: &str) -> bool {
    let ours = |inner: &str| {
        is_ours(inner) || inner == PARTITION_MANIFEST || inner == OLD_PARTITION_MANIFEST
    };
    if let Some(inner) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
        return ours(inner);
    }
    name.rsplit_once('#').is_some_and(|(inner, suffix)| {
        !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) && ours(inner)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_hive_partitions() {
        let started = chrono::DateTime::parse_from_rfc3339("2025-03-04T05:06:07Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let vars = RunVars::now(3, started, 0xabc);
        assert_eq!(vars.run_id, "20250304T050607Z-000abc");
        assert_eq!(
            vars.render("{table}/account_id={account_id}/dt={date}", "contacts"),
            "contacts/account_id=3/dt=2025-03-04"
        );
    }

    #[test]
    fn only_our_files_are_ever_deleted() {
        assert!(is_ours("contacts-20250304T050607Z-000abc.parquet"));
        assert!(is_ours("contact_inboxes-x.csv"));
        assert!(is_ours("contacts-20250304T050607Z-000abc-00001.parquet"));
        assert!(is_ours("contacts.parquet"));
        assert!(is_ours("contact_inboxes-00001.ndjson"));
        assert!(is_ours("contact_changes.parquet"));
        assert!(!is_ours("contacts-.parquet"));
        assert!(!is_ours("contacts.parquet.bak"));
        assert!(!is_ours("manifest.json"));
        assert!(!is_ours(PARTITION_MANIFEST));
        assert!(!is_ours(OLD_PARTITION_MANIFEST));
        assert!(!is_ours("notes-1.parquet"));
        assert!(!is_ours("contacts-1.txt"));
    }

    #[test]
    fn only_our_leftovers_count_as_leftovers() {
        for name in [
            ".contacts-20250304T050607Z-000abc.parquet.tmp",
            ".contact_inboxes-x-00001.csv.tmp",
            "._manifest.json.tmp",
            ".manifest.json.tmp",
            ".contacts.parquet.tmp",
            "contact_inboxes-20250304T050607Z-000abc.parquet#1",
            "contacts-x-00002.ndjson#17",
            "_manifest.json#3",
        ] {
            assert!(is_leftover(name), "{name}");
        }
        for name in [
            "contacts-x.parquet",
            "_manifest.json",
            ".hidden",
            ".notes.tmp",
            ".contacts.txt.tmp",
            "notes.parquet#1",
            "contacts-x.parquet#",
            "contacts-x.parquet#1a",
            "contacts-x.parquet.tmp",
        ] {
            assert!(!is_leftover(name), "{name}");
        }
    }

    #[test]
    fn direct_children_only() {
        let partition = Path::from("a/b");
        assert_eq!(
            direct_child(&Path::from("a/b/c.parquet"), &partition).as_deref(),
            Some("c.parquet")
        );
        assert_eq!(
            direct_child(&Path::from("a/b/d/c.parquet"), &partition),
            None
        );
    }

    /// A finished export of one CSV row, as a run stages it.
    fn one_row_export() -> tempfile::TempDir {
        let staging = tempfile::tempdir().expect("temp");
        std::fs::write(staging.path().join("contacts.csv"), "id\n1\n").expect("write");
        std::fs::write(
            staging.path().join(MANIFEST_FILE),
            r#"{"complete":true,"format":"csv","tables":{"contacts":{"files":["contacts.csv"],"rows":1,"columns":[]}}}"#,
        )
        .expect("write");
        staging
    }

    #[tokio::test]
    async fn a_rerun_replaces_the_partition_and_keeps_foreign_files() {
        let lake = tempfile::tempdir().expect("temp");
        let staging = one_row_export();
        let dest = Destination::open(lake.path().to_str().expect("utf-8")).expect("open");
        let part = lake.path().join("account_id=3");
        std::fs::create_dir_all(&part).expect("mkdir");
        std::fs::write(part.join("README.txt"), "keep").expect("write");
        // What earlier versions and runs killed while publishing leave, and a user's hidden
        // file, before the first run.
        for leftover in [
            "contacts-20000101T000000Z-000001.csv",
            "contact_inboxes-20000101T000000Z-000001-00002.csv",
            "_manifest.json",
            ".contacts-20000101T000000Z-000001.csv.tmp",
            "contact_inboxes-20000101T000000Z-000001.csv#1",
            "._manifest.json.tmp",
            ".notes.tmp",
        ] {
            std::fs::write(part.join(leftover), "x").expect("write");
        }
        let mut run_ids = Vec::new();
        for nonce in [1, 2] {
            let vars = RunVars::now(3, chrono::Utc::now(), nonce);
            dest.publish(staging.path(), "account_id={account_id}", &vars)
                .await
                .expect("publish");
            run_ids.push(vars.run_id);
        }
        std::fs::remove_file(part.join(".notes.tmp")).expect("the user's file was kept");
        let mut left: Vec<String> = std::fs::read_dir(&part)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["README.txt", "contacts.csv"]);
        assert_eq!(
            std::fs::read_to_string(part.join("contacts.csv")).expect("read"),
            "id\n1\n"
        );
        let manifest_at = lake.path().join(MANIFESTS_FOLDER).join("account_id=3");
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(manifest_at.join(PARTITION_MANIFEST)).expect("read"),
        )
        .expect("json");
        assert_eq!(manifest["tables"]["contacts"]["files"][0], "contacts.csv");
        assert_eq!(manifest["run_id"], run_ids[1].as_str());
        assert_eq!(manifest["partition"], "account_id=3");
    }

    /// A staged export of one CSV row per table in `tables`, keeping a snapshot as `--full`
    /// and `--incremental` runs do.
    fn snapshot_export(tables: &[&str]) -> tempfile::TempDir {
        let staging = tempfile::tempdir().expect("temp");
        let mut entries = serde_json::Map::new();
        for table in tables {
            std::fs::write(staging.path().join(format!("{table}.csv")), "id\n1\n").expect("write");
            entries.insert(
                (*table).to_owned(),
                serde_json::json!({"files": [format!("{table}.csv")], "rows": 1, "columns": []}),
            );
        }
        let manifest = serde_json::json!({
            "complete": true,
            "format": "csv",
            "tables": entries,
            "snapshot": {"raw_file": "_chatwoot_export/contacts.raw.ndjson.zst"},
        });
        std::fs::write(
            staging.path().join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("write");
        staging
    }

    /// Regression: a run without a base (no change feed) left the previous run's feed in its
    /// own partition, where it passed for this run's.
    #[tokio::test]
    async fn a_run_without_a_feed_removes_the_previous_one_from_its_partition() {
        let lake = tempfile::tempdir().expect("temp");
        let dest = Destination::open(lake.path().to_str().expect("utf-8")).expect("open");
        let template = "{table}/account_id={account_id}";
        let with_feed = snapshot_export(&["contacts", "contact_changes"]);
        dest.publish(
            with_feed.path(),
            template,
            &RunVars::now(3, chrono::Utc::now(), 1),
        )
        .await
        .expect("publish");
        let feed = lake
            .path()
            .join("contact_changes/account_id=3/contact_changes.csv");
        let feed_manifest = lake
            .path()
            .join(MANIFESTS_FOLDER)
            .join("contact_changes/account_id=3")
            .join(PARTITION_MANIFEST);
        assert!(feed.is_file() && feed_manifest.is_file());
        let without = snapshot_export(&["contacts"]);
        let published = dest
            .publish(
                without.path(),
                template,
                &RunVars::now(3, chrono::Utc::now(), 2),
            )
            .await
            .expect("publish");
        assert!(!feed.exists() && !feed_manifest.exists());
        assert!(
            published
                .replaced
                .iter()
                .any(|r| r.ends_with("contact_changes.csv"))
        );
        assert!(
            lake.path()
                .join("contacts/account_id=3/contacts.csv")
                .is_file()
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_lake_folder_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().expect("temp");
        let staging = one_row_export();
        let root = parent.path().join("lake");
        let dest = Destination::open(root.to_str().expect("utf-8")).expect("open");
        let vars = RunVars::now(3, chrono::Utc::now(), 7);
        dest.publish(staging.path(), "{table}/account_id={account_id}", &vars)
            .await
            .expect("publish");
        let mode = |p: &LocalPath| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        let part = root.join("contacts/account_id=3");
        for folder in [&root, &root.join("contacts"), &part] {
            assert_eq!(mode(folder), 0o700, "{}", folder.display());
        }
        let files: Vec<_> = std::fs::read_dir(&part)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "the data file only: {files:?}");
        let manifests = root.join(MANIFESTS_FOLDER);
        for folder in [&manifests, &manifests.join("contacts/account_id=3")] {
            assert_eq!(mode(folder), 0o700, "{}", folder.display());
        }
        let manifest = manifests
            .join("contacts/account_id=3")
            .join(PARTITION_MANIFEST);
        for file in files.into_iter().chain([manifest]) {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
}
