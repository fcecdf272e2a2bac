//! The snapshot an incremental run builds on, kept at an object store, lake folder or Delta
//! destination (a local `--out` folder keeps its own beside its tables: store/local.rs).
//!
//! Receives, after a publish, the staged export (its manifest and raw contacts) and the run's
//! placeholders; emits, per account, under `DEST/_chatwoot_export/snapshots/account_id=<id>/`:
//! `contacts.raw-<run_id>.ndjson.zst` (the raw contacts, uploaded first), then `snapshot.json`
//! (the staged manifest with the publish's `run_id` and `raw_object` naming the raw object,
//! written last: the pointer), then the account's older raw objects removed. Before a run,
//! `fetch` downloads the pointer and the raw object it names into a local folder laid out as a
//! local export (`manifest.json` and its `snapshot.raw_file`), where
//! `pipeline::incremental::base::find` reads it as it reads a local `--out`.
//!
//! Invariants: the pointer only ever names a raw object that is whole (a new run's has a new
//! name and is complete before the pointer moves), so a failure anywhere leaves the previous
//! pointer and its raw object as they were. The folder sits under `_chatwoot_export/`, outside
//! every data glob, and does not depend on the partition template: a `{date}` template puts each
//! night in a new partition, but the base is the account's latest snapshot. A Delta snapshot
//! counts only while the `contacts` table's latest commit for the account is the snapshot's run.

use std::path::{Component, Path as LocalPath, PathBuf};

use serde_json::Value;

use super::MANIFEST_FILE;
use super::lake::{Destination, LakeError, MANIFESTS_FOLDER, Partition, RunVars};
use super::owner_only_dir;

/// The folder of every account's snapshot, under `MANIFESTS_FOLDER`.
const SNAPSHOTS_FOLDER: &str = "snapshots";
/// The pointer: the manifest of the run whose raw contacts are the base.
const POINTER: &str = "snapshot.json";
/// The raw objects: `contacts.raw-<run_id>.ndjson.zst`.
const RAW_PREFIX: &str = "contacts.raw-";
const RAW_SUFFIX: &str = ".ndjson.zst";

/// Where an export looks for the previous complete export it builds on (for
/// `pipeline::incremental::base::find`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BaseAt {
    /// In the export's own folder, where a local export left it.
    #[default]
    Out,
    /// In this local folder, where `fetch` downloaded a destination's snapshot.
    Folder(PathBuf),
    /// Nowhere, and why (for the note an incremental run prints).
    Missing(String),
}

impl BaseAt {
    /// The folder to look in, given the export's own `out`; `Err` says why there is none.
    pub fn folder<'a>(&'a self, out: &'a LocalPath) -> Result<&'a LocalPath, String> {
        match self {
            Self::Out => Ok(out),
            Self::Folder(folder) => Ok(folder),
            Self::Missing(why) => Err(why.clone()),
        }
    }
}

/// The account's snapshot folder under the destination.
fn folder(account_id: u64) -> Partition {
    vec![
        MANIFESTS_FOLDER.to_owned(),
        SNAPSHOTS_FOLDER.to_owned(),
        format!("account_id={account_id}"),
    ]
}

/// Whether `name` is one of the raw objects this module writes: only those are ever removed.
fn is_raw_object(name: &str) -> bool {
    name.strip_prefix(RAW_PREFIX)
        .and_then(|rest| rest.strip_suffix(RAW_SUFFIX))
        .is_some_and(|run_id| !run_id.is_empty() && !run_id.contains('/'))
}

/// Keeps the published export's snapshot at the destination, once its tables and manifests
/// are published (a failed publish never moves the base). A run that kept no raw contacts (a
/// one-off or a resumed run) removes the account's pointer instead: as a local folder whose
/// manifest has no snapshot, the next incremental run must not build on a snapshot older than
/// the tables it replaced. Returns the objects written, the pointer last.
pub async fn keep(
    destination: &Destination,
    staging: &LocalPath,
    vars: &RunVars,
) -> Result<Vec<String>, LakeError> {
    let mut manifest: Value = super::lake::read_staged_manifest(staging)?;
    let at = folder(vars.account_id);
    let Some(raw_file) = manifest["snapshot"]["raw_file"].as_str().map(str::to_owned) else {
        destination
            .delete(&at, POINTER)
            .await
            .map_err(|error| stale_pointer(destination, &at, error))?;
        remove_older(destination, &at, None).await;
        return Ok(Vec::new());
    };
    let name = format!("{RAW_PREFIX}{}{RAW_SUFFIX}", vars.run_id);
    destination
        .put_file(&staging.join(&raw_file), &at, &name)
        .await?;
    manifest["run_id"] = Value::from(vars.run_id.as_str());
    manifest["raw_object"] = Value::from(name.as_str());
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    destination.put(&at, POINTER, bytes).await?;
    remove_older(destination, &at, Some(&name)).await;
    Ok(vec![
        destination.show(&at, &name),
        destination.show(&at, POINTER),
    ])
}

fn stale_pointer(destination: &Destination, at: &Partition, error: LakeError) -> LakeError {
    match error {
        LakeError::Cleanup { source, .. } => LakeError::Snapshot {
            object: destination.show(at, POINTER),
            source,
        },
        other => other,
    }
}

/// Removes the account's raw objects other than `current` (and what a run killed while
/// uploading left). A failure only leaves garbage the next publish removes: it is logged.
async fn remove_older(destination: &Destination, at: &Partition, current: Option<&str>) {
    let names = match destination.list(at).await {
        Ok(names) => names,
        Err(error) => {
            tracing::warn!(error = %error, "cannot list the older snapshots to remove them");
            return;
        }
    };
    for name in names {
        let older = is_raw_object(&name) && Some(name.as_str()) != current;
        let leftover = name
            .strip_prefix('.')
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .is_some_and(|inner| is_raw_object(inner) || inner == POINTER);
        if (older || leftover)
            && let Err(error) = destination.delete(at, &name).await
        {
            tracing::warn!(error = %error, "cannot remove an older snapshot");
        }
    }
}

/// Downloads the account's snapshot into `into` (emptied first) for `base::find`: the pointer
/// as `manifest.json`, its raw object as the manifest's `snapshot.raw_file`; returns `into`,
/// or why there is nothing to build on. `delta_template`:
/// the export goes to Delta tables with this partition template, and the snapshot counts only
/// while the `contacts` table's latest commit for the account is the snapshot's run.
pub async fn fetch(
    destination: &Destination,
    into: &LocalPath,
    vars: &RunVars,
    delta_template: Option<&str>,
) -> Result<BaseAt, LakeError> {
    let local = |source: std::io::Error| LakeError::Local {
        path: into.to_owned(),
        source,
    };
    match std::fs::remove_dir_all(into) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(local(err)),
        _ => {}
    }
    owner_only_dir()
        .recursive(true)
        .create(into)
        .map_err(local)?;
    let at = folder(vars.account_id);
    let pointer_path = into.join(MANIFEST_FILE);
    if !destination.get_file(&at, POINTER, &pointer_path).await? {
        return Ok(BaseAt::Missing(format!(
            "{} holds no snapshot of account {}",
            destination.show(&at, ""),
            vars.account_id
        )));
    }
    let shown = destination.show(&at, POINTER);
    let pointer: Value = match std::fs::read(&pointer_path)
        .map_err(|err| err.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|err| err.to_string()))
    {
        Ok(pointer) => pointer,
        Err(err) => return Ok(BaseAt::Missing(format!("{shown} is unreadable ({err})"))),
    };
    let (Some(raw_object), Some(raw_file), Some(run_id)) = (
        pointer["raw_object"]
            .as_str()
            .filter(|name| is_raw_object(name)),
        pointer["snapshot"]["raw_file"]
            .as_str()
            .filter(|file| is_relative_inside(file)),
        pointer["run_id"].as_str(),
    ) else {
        return Ok(BaseAt::Missing(format!("{shown} names no raw contacts")));
    };
    if let Some(template) = delta_template {
        let latest = super::delta::latest_run(destination, template, "contacts", vars).await?;
        if latest.as_deref() != Some(run_id) {
            return Ok(BaseAt::Missing(format!(
                "the Delta table was changed by another writer since the snapshot's run {run_id}"
            )));
        }
    }
    let raw_path = into.join(raw_file);
    if let Some(parent) = raw_path.parent() {
        owner_only_dir()
            .recursive(true)
            .create(parent)
            .map_err(local)?;
    }
    if !destination.get_file(&at, raw_object, &raw_path).await? {
        return Ok(BaseAt::Missing(format!(
            "{} is missing",
            destination.show(&at, raw_object)
        )));
    }
    Ok(BaseAt::Folder(into.to_owned()))
}

/// Whether `file` is a relative path that stays inside its folder (no `..`, not absolute): the
/// pointer is read from the destination, and must not make the download write elsewhere.
fn is_relative_inside(file: &str) -> bool {
    !file.is_empty()
        && LocalPath::new(file)
            .components()
            .all(|part| matches!(part, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raw_objects_are_raw_objects() {
        assert!(is_raw_object(
            "contacts.raw-20250304T050607Z-000abc.ndjson.zst"
        ));
        assert!(!is_raw_object("contacts.raw-.ndjson.zst"));
        assert!(!is_raw_object("contacts.raw.ndjson.zst"));
        assert!(!is_raw_object("snapshot.json"));
        assert!(!is_raw_object("contacts.parquet"));
    }

    #[test]
    fn the_raw_file_stays_inside_the_base_folder() {
        assert!(is_relative_inside(
            "_chatwoot_export/contacts.raw.ndjson.zst"
        ));
        assert!(!is_relative_inside("../x"));
        assert!(!is_relative_inside("/etc/x"));
        assert!(!is_relative_inside(""));
    }

    /// A staged export with a snapshot, as a `--full` run stages it: `raw` its raw contacts.
    fn staged(raw: &str) -> tempfile::TempDir {
        let staging = tempfile::tempdir().expect("temp");
        std::fs::create_dir_all(staging.path().join("_chatwoot_export")).expect("mkdir");
        std::fs::write(
            staging
                .path()
                .join("_chatwoot_export/contacts.raw.ndjson.zst"),
            raw,
        )
        .expect("write");
        std::fs::write(
            staging.path().join(MANIFEST_FILE),
            r#"{"complete":true,"run_id":"staged","tables":{},"snapshot":{"raw_file":"_chatwoot_export/contacts.raw.ndjson.zst"}}"#,
        )
        .expect("write");
        staging
    }

    fn vars(date: &str, nonce: u64) -> RunVars {
        let started = chrono::DateTime::parse_from_rfc3339(&format!("{date}T02:30:00Z"))
            .expect("time")
            .with_timezone(&chrono::Utc);
        RunVars::now(7, started, nonce)
    }

    fn names(folder: &LocalPath) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Nights on different `{date}` partitions share one snapshot per account, the latest; the
    /// older raw object goes once the pointer moved, and a one-off run removes the pointer.
    #[tokio::test]
    async fn the_latest_night_is_the_base_whatever_the_partition() {
        let lake = tempfile::tempdir().expect("temp");
        let dest = Destination::open(lake.path().to_str().expect("utf-8")).expect("open");
        let base = tempfile::tempdir().expect("temp");
        let into = base.path().join("base");
        let first = vars("2025-03-04", 1);
        assert!(matches!(
            fetch(&dest, &into, &first, None).await.expect("fetch"),
            BaseAt::Missing(why) if why.contains("holds no snapshot of account 7")
        ));
        let monday = staged("monday");
        let written = keep(&dest, monday.path(), &first).await.expect("keep");
        assert_eq!(written.len(), 2);
        assert!(written[1].ends_with("_chatwoot_export/snapshots/account_id=7/snapshot.json"));
        let tuesday = staged("tuesday");
        let second = vars("2025-03-05", 2);
        keep(&dest, tuesday.path(), &second).await.expect("keep");
        let at = lake.path().join("_chatwoot_export/snapshots/account_id=7");
        assert_eq!(
            names(&at),
            [
                format!("contacts.raw-{}.ndjson.zst", second.run_id),
                "snapshot.json".to_owned()
            ]
        );
        assert_eq!(
            fetch(&dest, &into, &second, None).await.expect("fetch"),
            BaseAt::Folder(into.clone())
        );
        let raw = std::fs::read_to_string(into.join("_chatwoot_export/contacts.raw.ndjson.zst"))
            .expect("raw");
        assert_eq!(raw, "tuesday");
        let pointer: Value =
            serde_json::from_slice(&std::fs::read(into.join(MANIFEST_FILE)).expect("pointer"))
                .expect("json");
        assert_eq!(pointer["run_id"], second.run_id.as_str());

        // A one-off run replaced the tables: nothing to build on any more.
        let plain = tempfile::tempdir().expect("temp");
        std::fs::write(
            plain.path().join(MANIFEST_FILE),
            r#"{"complete":true,"tables":{}}"#,
        )
        .expect("write");
        assert!(
            keep(&dest, plain.path(), &vars("2025-03-06", 3))
                .await
                .expect("keep")
                .is_empty()
        );
        assert!(names(&at).is_empty());
        assert!(matches!(
            fetch(&dest, &into, &second, None).await.expect("fetch"),
            BaseAt::Missing(_)
        ));
    }

    /// A raw object that cannot be uploaded (here: the staged file is gone) leaves the
    /// previous pointer and its raw object as they were.
    #[tokio::test]
    async fn a_failed_upload_keeps_the_previous_snapshot() {
        let lake = tempfile::tempdir().expect("temp");
        let dest = Destination::open(lake.path().to_str().expect("utf-8")).expect("open");
        let first = vars("2025-03-04", 1);
        keep(&dest, staged("monday").path(), &first)
            .await
            .expect("keep");
        let at = lake.path().join("_chatwoot_export/snapshots/account_id=7");
        let before = names(&at);
        let broken = staged("tuesday");
        std::fs::remove_file(
            broken
                .path()
                .join("_chatwoot_export/contacts.raw.ndjson.zst"),
        )
        .expect("rm");
        let failed = keep(&dest, broken.path(), &vars("2025-03-05", 2)).await;
        assert!(failed.is_err());
        assert_eq!(names(&at), before);
        let into = tempfile::tempdir().expect("temp");
        let into = into.path().join("base");
        assert_eq!(
            fetch(&dest, &into, &first, None).await.expect("fetch"),
            BaseAt::Folder(into.clone())
        );
        assert_eq!(
            std::fs::read_to_string(into.join("_chatwoot_export/contacts.raw.ndjson.zst"))
                .expect("raw"),
            "monday"
        );
    }
}
