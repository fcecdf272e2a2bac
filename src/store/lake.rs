//! Object store destinations (`s3://`, `gs://`, `az://`, `file://`, or a local lake folder):
//! a finished export in a local staging folder -> data files uploaded -> manifests last ->
//! the partitions' previous files and leftover temporary files removed.
//!
//! Receives a destination, a partition path template and a staging folder holding a complete
//! export (`<table>.<ext>`, or `<table>-00000.<ext>`, ... when split by `rows_per_file`, and
//! `manifest.json`); emits objects under
//! `DEST/<template rendered for the table>/<table>-<run_id>.<ext>` (or
//! `<table>-<run_id>-00000.<ext>`, ...) and one `_manifest.json` per partition, listing its
//! files (the leading `_` is the Hadoop convention for files that are not data: Spark, Hive,
//! Athena and Trino skip them when they read the partition's folder). Invariants: a
//! partition's manifest is written only after every data file of the run is in place, and the
//! run's data files have names no earlier run used, so a reader that follows the manifest never
//! sees a half-written run; the files of earlier runs in the same partition are deleted only
//! after the new manifests are in place (a scheduled job that runs twice replaces its partition
//! cleanly). A local lake folder is written with `std::fs`, not `object_store`'s local store:
//! every file and folder is created owner-only whatever the umask, and a file being written
//! has a hidden name (`.<name>.tmp`) that no engine reads, so a `kill -9` mid-publish leaves
//! nothing an engine counts; the next run of the partition removes such leftovers. Only files
//! named like this tool's are ever deleted. Credentials and endpoints come from the usual
//! environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), read by `object_store`.

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

use super::{MANIFEST_FILE, owner_only, owner_only_dir};

/// A published partition's manifest. Named like `_SUCCESS`, so that engines reading the
/// partition's folder (Spark, Hive, Athena, Trino) do not take it for a data file.
pub const PARTITION_MANIFEST: &str = "_manifest.json";
use crate::config::TABLE_NAMES;

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
    #[error("cannot create the local destination {}: {source}", path.display())]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot upload {object} to {destination}: {source}; the previous run's files and manifest are untouched, run again"
    )]
    Upload {
        destination: String,
        object: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{source}; the finished export is kept in {}: run the same command with --resume to publish it", folder.display())]
    Kept {
        source: Box<LakeError>,
        folder: PathBuf,
    },
    /// A failure to commit to a Delta table (store/delta.rs's `DeltaError`, boxed so that this
    /// module does not import that one).
    #[error(transparent)]
    Delta(Box<dyn std::error::Error + Send + Sync>),
    #[error("the staged export in {} is unreadable ({detail}); please report this", path.display())]
    Staging { path: PathBuf, detail: String },
    #[error(
        "uploaded the new run to {destination} but cannot remove the previous run's {object}: {source}; readers following manifest.json are not affected, delete it by hand"
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

    /// Uploads the complete export in `staging` into its partitions, manifests last, then
    /// removes the partitions' files of earlier runs and any temporary files they left.
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
        let text = std::fs::read_to_string(&staged).map_err(|e| staging_error(e.to_string()))?;
        let manifest: Value =
            serde_json::from_str(&text).map_err(|e| staging_error(e.to_string()))?;
        let tables = manifest["tables"]
            .as_object()
            .ok_or_else(|| staging_error("no tables".into()))?
            .clone();

        // 1. Data files, under names no earlier run used (in a folder: hidden until step 2).
        let mut published = Published::default();
        let mut partitions: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
        let mut uploaded: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut placed: Vec<(Partition, String)> = Vec::new();
        for (table, entry) in &tables {
            let partition = partition_of(&vars.render(template, table));
            let staged = entry["files"]
                .as_array()
                .ok_or_else(|| staging_error(format!("no files for table {table}")))?;
            for file in staged {
                // contacts.parquet -> contacts-<run_id>.parquet,
                // contacts-00001.parquet -> contacts-<run_id>-00001.parquet
                let (file, rest) = file
                    .as_str()
                    .and_then(|file| Some((file, file.strip_prefix(table.as_str())?)))
                    .ok_or_else(|| staging_error(format!("unexpected file {file} in {table}")))?;
                let name = format!("{table}-{}{rest}", vars.run_id);
                self.upload(&staging.join(file), &partition, &name).await?;
                uploaded.entry(table).or_default().push(name.clone());
                placed.push((partition.clone(), name));
            }
            partitions.entry(partition).or_default().push(table.clone());
        }

        // 2. In a folder, every data file is complete: all of them under their names at once.
        if let Backend::Folder(root) = &self.backend {
            if let Some(pause) = std::env::var(TEST_PAUSE_ENV)
                .ok()
                .and_then(|ms| ms.parse().ok())
            {
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            for (partition, name) in &placed {
                let folder = folder_of(root, partition);
                std::fs::rename(folder.join(temp_name(name)), folder.join(name))
                    .map_err(|source| self.upload_error(partition, name, source.into()))?;
            }
        }
        published.files.extend(
            placed
                .iter()
                .map(|(partition, name)| self.show(partition, name)),
        );

        // 3. One manifest per partition, listing that partition's tables: the commit marker.
        for (partition, partition_tables) in &partitions {
            let mut own = manifest.clone();
            if let Some(object) = own["tables"].as_object_mut() {
                object.retain(|name, _| partition_tables.contains(name));
                for (name, entry) in object.iter_mut() {
                    let files = uploaded.get(name.as_str()).cloned().unwrap_or_default();
                    entry["files"] = Value::from(files);
                }
            }
            own["run_id"] = Value::from(vars.run_id.as_str());
            let bytes = serde_json::to_vec_pretty(&own).unwrap_or_default();
            self.put(partition, PARTITION_MANIFEST, bytes).await?;
            published
                .files
                .push(self.show(partition, PARTITION_MANIFEST));
        }

        // 4. Earlier runs' files in those partitions, now that the new manifests are in
        // place, and the temporary files of runs that were killed while publishing.
        for partition in partitions.keys() {
            for name in self.list(partition).await? {
                let earlier_run = is_ours(&name) && !name.contains(&vars.run_id);
                if earlier_run || is_leftover(&name) {
                    self.delete(partition, &name).await?;
                    published.replaced.push(self.show(partition, &name));
                }
            }
        }
        Ok(published)
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
                    folder_of(root, partition),
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
            let folder = folder_of(root, partition);
            std::fs::rename(folder.join(temp_name(name)), folder.join(name))
                .map_err(|source| self.upload_error(partition, name, source.into()))?;
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

    /// The names of the files directly in `partition`.
    pub(super) async fn list(&self, partition: &Partition) -> Result<Vec<String>, LakeError> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| LakeError::Cleanup {
            destination: self.display.clone(),
            object: self.show(partition, ""),
            source,
        };
        match &self.backend {
            Backend::Folder(root) => {
                let entries = std::fs::read_dir(folder_of(root, partition))
                    .map_err(|source| fail(source.into()))?;
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
            Backend::Store { store, prefix } => store
                .delete(&object_of(prefix, partition, name))
                .await
                .map_err(Into::into),
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

/// The partition a rendered template names (empty parts dropped: `a//b/` is `a/b`).
fn partition_of(relative: &str) -> Partition {
    relative
        .split('/')
        .filter(|part| !part.is_empty())
        .map(str::to_owned)
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

/// The temporary name of `name` while it is written: hidden (a leading `.`) from Spark, Hive,
/// Trino, DuckDB globs, Polars and pyarrow datasets alike.
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

/// Whether a file name is one this tool writes (`<table>-<run_id>.<ext>`,
/// `<table>-<run_id>-<n>.<ext>`): only those are ever deleted, whatever else shares the
/// partition.
fn is_ours(name: &str) -> bool {
    TABLE_NAMES.iter().any(|table| {
        name.strip_prefix(table)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| {
                [".parquet", ".csv", ".ndjson"]
                    .iter()
                    .any(|ext| rest.ends_with(ext))
            })
    })
}

/// Whether a file name is a temporary file of a run killed while publishing: this tool's
/// `.<name>.tmp`, or `<name>#<digits>`, the staging name under which earlier versions (through
/// `object_store`'s local store) wrote a file into a lake folder, visible to every engine. `<name>` is
/// one of this tool's data files or a partition manifest; nothing else is ever matched.
pub(super) fn is_leftover(name: &str) -> bool {
    let ours = |inner: &str| is_ours(inner) || inner == PARTITION_MANIFEST;
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
        assert!(!is_ours("contacts.parquet"));
        assert!(!is_ours("manifest.json"));
        assert!(!is_ours(PARTITION_MANIFEST));
        assert!(!is_ours("notes-1.parquet"));
        assert!(!is_ours("contacts-1.txt"));
    }

    #[test]
    fn only_our_leftovers_count_as_leftovers() {
        for name in [
            ".contacts-20250304T050607Z-000abc.parquet.tmp",
            ".contact_inboxes-x-00001.csv.tmp",
            "._manifest.json.tmp",
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
            ".contacts.parquet.tmp",
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
        let mut names = Vec::new();
        for nonce in [1, 2] {
            let vars = RunVars::now(3, chrono::Utc::now(), nonce);
            dest.publish(staging.path(), "account_id={account_id}", &vars)
                .await
                .expect("publish");
            names.push(format!("contacts-{}.csv", vars.run_id));
            if nonce == 2 {
                break;
            }
            // What runs killed while publishing leave (this version's and earlier ones'),
            // and a user's hidden file, before the second run.
            for leftover in [
                ".contacts-20000101T000000Z-000001.csv.tmp",
                "contact_inboxes-20000101T000000Z-000001.csv#1",
                "._manifest.json.tmp",
                ".notes.tmp",
            ] {
                std::fs::write(part.join(leftover), "x").expect("write");
            }
        }
        std::fs::remove_file(part.join(".notes.tmp")).expect("the user's file was kept");
        let mut left: Vec<String> = std::fs::read_dir(&part)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "README.txt".to_owned(),
                PARTITION_MANIFEST.into(),
                names[1].clone(),
            ]
        );
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(part.join(PARTITION_MANIFEST)).expect("read"),
        )
        .expect("json");
        assert_eq!(
            manifest["tables"]["contacts"]["files"][0],
            names[1].as_str()
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
        assert_eq!(files.len(), 2, "the data file and the manifest: {files:?}");
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
}
