//! Object store destinations (`s3://`, `gs://`, `az://`, `file://`, or a local lake folder):
//! a finished export in a local staging folder -> data files uploaded -> manifests last ->
//! the partitions' previous files removed.
//!
//! Receives a destination, a partition path template and a staging folder holding a complete
//! export (`<table>.<ext>`, or `<table>-00000.<ext>`, ... when split by `rows_per_file`, and
//! `manifest.json`); emits objects under
//! `DEST/<template rendered for the table>/<table>-<run_id>.<ext>` (or
//! `<table>-<run_id>-00000.<ext>`, ...) and one `_manifest.json` per partition, listing its
//! files (the leading `_` is the Hadoop convention for files that are not data: Spark, Hive,
//! Athena and Trino skip them when they read the partition's folder). Invariants: a partition's manifest is written only after every
//! data file of the run is uploaded, and the run's data files have names no earlier run used,
//! so a reader that follows the manifest never sees a half-written run; the files of earlier
//! runs in the same partition are deleted only after the new manifests are in place (a
//! scheduled job that runs twice replaces its partition cleanly). Only files named like this
//! tool's are ever deleted. Credentials and endpoints come from the usual environment
//! variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), read by `object_store`.

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
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::MANIFEST_FILE;

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
    #[error("the staged export in {} is unreadable ({detail}); please report this", path.display())]
    Staging { path: PathBuf, detail: String },
    #[error(
        "uploaded the new run to {destination} but cannot remove the previous run's {object}: {source}; readers following manifest.json are not affected, delete it by hand"
    )]
    Cleanup {
        destination: String,
        object: String,
        source: object_store::Error,
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

/// An opened destination.
#[derive(Debug)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    display: String,
}

impl Destination {
    /// A local folder (created if missing) as an object store rooted at it.
    fn local_folder(path: PathBuf, display: String) -> Result<Self, LakeError> {
        std::fs::create_dir_all(&path).map_err(|source| LakeError::Local {
            path: path.clone(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&path).map_err(|source| LakeError::Open {
            destination: display.clone(),
            source,
        })?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::ROOT,
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
            store,
            prefix,
            display,
        })
    }

    /// The object store and the destination's prefix in it (for tests and tools).
    pub fn store(&self) -> (&Arc<dyn ObjectStore>, &Path) {
        (&self.store, &self.prefix)
    }

    /// Uploads the complete export in `staging` into its partitions, manifests last, then
    /// removes the partitions' files of earlier runs.
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

        // 1. Data files, under names no earlier run used.
        let mut published = Published::default();
        let mut partitions: BTreeMap<String, (Path, Vec<String>)> = BTreeMap::new();
        let mut uploaded: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (table, entry) in &tables {
            let relative = vars.render(template, table);
            let partition = self.join(&relative);
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
                let object = partition.clone().join(name.as_str());
                self.upload(&staging.join(file), &object).await?;
                published.files.push(self.show(&object));
                uploaded.entry(table).or_default().push(name);
            }
            partitions
                .entry(partition.to_string())
                .or_insert_with(|| (partition.clone(), Vec::new()))
                .1
                .push(table.clone());
        }

        // 2. One manifest per partition, listing that partition's tables: the commit marker.
        for (partition, partition_tables) in partitions.values() {
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
            let object = partition.clone().join(PARTITION_MANIFEST);
            self.store
                .put(&object, PutPayload::from(bytes))
                .await
                .map_err(|source| self.upload_error(&object, source.into()))?;
            published.files.push(self.show(&object));
        }

        // 3. Earlier runs' files in those partitions, now that the new manifests are in place.
        for (partition, _) in partitions.values() {
            let listed: Vec<_> = self
                .store
                .list(Some(partition))
                .try_collect()
                .await
                .map_err(|source| self.cleanup_error(partition, source))?;
            for meta in listed {
                let Some(name) = direct_child(&meta.location, partition) else {
                    continue;
                };
                if is_ours(&name) && !name.contains(&vars.run_id) {
                    self.store
                        .delete(&meta.location)
                        .await
                        .map_err(|source| self.cleanup_error(&meta.location, source))?;
                    published.replaced.push(self.show(&meta.location));
                }
            }
        }
        Ok(published)
    }

    /// Streams a file up: one PUT when small, a multipart upload when large (BufWriter
    /// switches at its capacity), aborted on failure so no part is left behind.
    async fn upload(&self, local: &LocalPath, object: &Path) -> Result<(), LakeError> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|source| self.upload_error(object, source.into()))?;
        let mut writer = BufWriter::new(Arc::clone(&self.store), object.clone());
        if let Err(source) = tokio::io::copy(&mut file, &mut writer).await {
            let _ = writer.abort().await;
            return Err(self.upload_error(object, source.into()));
        }
        writer
            .shutdown()
            .await
            .map_err(|source| self.upload_error(object, source.into()))
    }

    fn join(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// `DEST/relative/path` for messages and the run report.
    fn show(&self, object: &Path) -> String {
        let full = object.to_string();
        let relative = full
            .strip_prefix(self.prefix.as_ref())
            .unwrap_or(&full)
            .trim_start_matches('/');
        format!("{}/{relative}", self.display)
    }

    fn upload_error(
        &self,
        object: &Path,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> LakeError {
        LakeError::Upload {
            destination: self.display.clone(),
            object: self.show(object),
            source,
        }
    }

    fn cleanup_error(&self, object: &Path, source: object_store::Error) -> LakeError {
        LakeError::Cleanup {
            destination: self.display.clone(),
            object: self.show(object),
            source,
        }
    }
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

    #[tokio::test]
    async fn a_rerun_replaces_the_partition_and_keeps_foreign_files() {
        let lake = tempfile::tempdir().expect("temp");
        let staging = tempfile::tempdir().expect("temp");
        std::fs::write(staging.path().join("contacts.csv"), "id\n1\n").expect("write");
        std::fs::write(
            staging.path().join(MANIFEST_FILE),
            r#"{"complete":true,"format":"csv","tables":{"contacts":{"files":["contacts.csv"],"rows":1,"columns":[]}}}"#,
        )
        .expect("write");
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
        }
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
}
