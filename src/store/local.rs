//! The output folder: temporary names while writing, atomic renames when complete, the
//! manifest last.
//!
//! Receives finished files from the pipeline; emits `DIR/<table>.<ext>` (or numbered
//! `DIR/<table>-00000.<ext>`, ... with `rows_per_file`) and `DIR/manifest.json`.
//! Invariants: a file appears under its final name only once complete and synced; the manifest of a
//! previous export is removed before anything of the new run is renamed into place, and the new
//! manifest is written only after every data file, so a folder whose manifest says complete always
//! holds a complete export. Until that first rename the previous export stays whole, manifest
//! included, so a run that fails while fetching (the usual failure: a network, a token, a server)
//! leaves last night's export as readable and verifiable as before. Files are created owner-only
//! (they hold personal data), folders this run creates too, and a folder holding anything but a
//! previous export is refused without `--overwrite`. Nothing is ever written through a symbolic
//! link: files are created with create-new (which refuses links) and renamed over their final name
//! (which replaces a link itself), and a link under one of the export's names is refused like any
//! other foreign entry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Where the run keeps its intermediate files (the spilled rows and the checkpoint).
const WORK_DIR: &str = ".chatwoot-export.partial";
/// The folder beside the manifest with what an incremental run builds on (raw contacts); the
/// leading `_` keeps it out of data globs.
pub const SNAPSHOT_DIR: &str = "_chatwoot_export";
/// The file in the work folder that marks a resumable export.
const CHECKPOINT_FILE: &str = "checkpoint.json";
/// The change feed an export with a base writes beside the described tables
/// (`pipeline::incremental::changes`).
pub(super) const CHANGES_TABLE: &str = "contact_changes";
const EXTENSIONS: &[&str] = &["parquet", "csv", "ndjson"];

/// A failure to prepare or write the output folder.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use output folder {}: {source}{}", path.display(), disk_hint(source))]
    Folder { path: PathBuf, source: io::Error },
    #[error("output folder {} holds {} which is not part of a previous export: choose an empty or new folder, or pass --overwrite", path.display(), example)]
    NotAnExport { path: PathBuf, example: String },
    #[error("cannot write {}: {source}{}", path.display(), disk_hint(source))]
    Write { path: PathBuf, source: io::Error },
}

/// What to do about an I/O error on the output disk, as a suffix for the message.
pub fn disk_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::StorageFull => ": the disk is full; free some space or choose another --out",
        io::ErrorKind::PermissionDenied => {
            ": check the folder's permissions or choose another --out"
        }
        _ => "",
    }
}

/// The output folder of one run.
#[derive(Debug)]
pub struct OutputDir {
    root: PathBuf,
    work: PathBuf,
    /// The folders this run made, `root` first and then up its parents (`--out a/b/c` when
    /// only `a` existed: `a/b/c` and `a/b`): a failure with nothing to keep removes them.
    created: Vec<PathBuf>,
    /// The previous export's manifest is gone: set before the first data file is renamed
    /// into place.
    manifest_withdrawn: AtomicBool,
}

impl OutputDir {
    /// Creates the folder if needed, checks that it is empty or a previous export (unless
    /// `overwrite`) and makes a fresh work folder; a previous export stays untouched. Also says
    /// whether an interrupted export's work was discarded.
    pub fn prepare(root: &Path, overwrite: bool) -> Result<(Self, bool), StoreError> {
        let folder_error = |source| StoreError::Folder {
            path: root.to_owned(),
            source,
        };
        let created: Vec<PathBuf> = root
            .ancestors()
            .filter(|folder| !folder.as_os_str().is_empty())
            .take_while(|folder| fs::symlink_metadata(folder).is_err())
            .map(Path::to_path_buf)
            .collect();
        owner_only_dir()
            .recursive(true)
            .create(root)
            .map_err(folder_error)?;
        if !overwrite {
            for entry in fs::read_dir(root).map_err(folder_error)? {
                let entry = entry.map_err(folder_error)?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                // The entry itself, not what a link points to.
                let kind = entry.file_type().map_err(folder_error)?;
                let expected = if name == WORK_DIR || name == SNAPSHOT_DIR {
                    kind.is_dir()
                } else {
                    kind.is_file()
                };
                if !is_ours(&name) || !expected {
                    let what = if kind.is_symlink() {
                        ", a symbolic link (an export never writes through links),"
                    } else {
                        ""
                    };
                    return Err(StoreError::NotAnExport {
                        path: root.to_owned(),
                        example: format!("{name:?}{what}"),
                    });
                }
            }
        }
        let dir = Self {
            root: root.to_owned(),
            work: root.join(WORK_DIR),
            created,
            manifest_withdrawn: AtomicBool::new(false),
        };
        let discarded = dir.work.join(CHECKPOINT_FILE).exists();
        // A link (with --overwrite) is removed itself, never followed.
        match fs::symlink_metadata(&dir.work) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&dir.work).map_err(folder_error)?,
            Ok(_) => fs::remove_file(&dir.work).map_err(folder_error)?,
            Err(_) => {}
        }
        owner_only_dir().create(&dir.work).map_err(folder_error)?;
        Ok((dir, discarded))
    }

    /// Opens the folder of an interrupted export to go on with it; `None` if it holds none.
    pub fn reopen(root: &Path) -> Result<Option<Self>, StoreError> {
        let dir = Self {
            root: root.to_owned(),
            work: root.join(WORK_DIR),
            created: Vec::new(),
            manifest_withdrawn: AtomicBool::new(false),
        };
        // Only a real folder of ours, never one behind a link.
        let is_dir = fs::symlink_metadata(&dir.work).is_ok_and(|meta| meta.is_dir());
        if !is_dir || !dir.work.join(CHECKPOINT_FILE).is_file() {
            return Ok(None);
        }
        Ok(Some(dir))
    }

    /// The run's work folder (spills and checkpoint).
    pub fn work(&self) -> &Path {
        &self.work
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path in the run's work folder.
    pub fn work_path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// Creates a new owner-only file in the run's work folder (the spilled rows).
    pub fn create_work_file(&self, name: &str) -> io::Result<(File, PathBuf)> {
        let path = self.work_path(name);
        Ok((owner_only().open(&path)?, path))
    }

    /// Creates `DIR/.<name>.tmp`, owner-only, never through a link.
    pub fn create_temp(&self, name: &str) -> Result<(File, PathBuf), StoreError> {
        let path = self.root.join(format!(".{name}.tmp"));
        self.remove_if_present(&path)?;
        let file = owner_only()
            .open(&path)
            .map_err(|source| StoreError::Write {
                path: path.clone(),
                source,
            })?;
        Ok((file, path))
    }

    /// Gives a complete temporary file its final name. The first data file removes the
    /// previous export's manifest before it replaces anything that manifest vouches for.
    pub fn commit(&self, temp: &Path, name: &str) -> Result<PathBuf, StoreError> {
        if name != MANIFEST_FILE && !self.manifest_withdrawn.swap(true, Ordering::SeqCst) {
            self.remove_if_present(&self.root.join(MANIFEST_FILE))?;
        }
        let path = self.root.join(name);
        fs::rename(temp, &path).map_err(|source| StoreError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Writes the manifest (temp, sync, rename, sync the folder): the run's commit marker.
    pub fn write_manifest(&self, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let (mut file, temp) = self.create_temp(MANIFEST_FILE)?;
        let write_error = |source| StoreError::Write {
            path: temp.clone(),
            source,
        };
        file.write_all(bytes).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        let path = self.commit(&temp, MANIFEST_FILE)?;
        // Make the renames durable before anyone trusts the manifest.
        if let Ok(folder) = File::open(&self.root) {
            let _ = folder.sync_all();
        }
        Ok(path)
    }

    /// After a complete run: removes the work folder, temporary files left by earlier runs
    /// (a link under such a name is removed itself) and data files of earlier exports that
    /// this run did not write (a previous CSV export when this one wrote Parquet, say, or the
    /// numbered files beyond this run's last).
    pub fn finish(self, written: &[PathBuf]) -> Result<(), StoreError> {
        self.remove_temps();
        let entries = fs::read_dir(&self.root).map_err(|source| StoreError::Folder {
            path: self.root.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let path = entry.path();
            if is_data_file(&name.to_string_lossy()) && !written.contains(&path) {
                self.remove_if_present(&path)?;
            }
        }
        fs::remove_dir_all(&self.work).map_err(|source| StoreError::Folder {
            path: self.work.clone(),
            source,
        })
    }

    /// After a failed run with nothing worth resuming: removes temporary files and the work
    /// folder, and the folders this run made, if empty (so a failed first run leaves no empty
    /// folder behind). Nothing under a final name was touched, and no manifest says complete.
    pub fn abandon(self) {
        let _ = fs::remove_dir_all(&self.work);
        self.remove_temps();
        // Only while empty: `remove_dir` never removes contents, and a parent another run has
        // put something in since stays, with everything above it.
        for folder in &self.created {
            if fs::remove_dir(folder).is_err() {
                break;
            }
        }
    }

    /// After an interrupted or failed run that `--resume` can continue: removes temporary
    /// data files, keeps the work folder and its checkpoint.
    pub fn keep_for_resume(self) {
        self.remove_temps();
    }

    fn remove_temps(&self) {
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") && is_ours(&name) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    fn remove_if_present(&self, path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(StoreError::Write {
                path: path.to_owned(),
                source: err,
            }),
            _ => Ok(()),
        }
    }
}

/// Whether a folder entry is something an export writes.
fn is_ours(name: &str) -> bool {
    let bare = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .unwrap_or(name);
    bare == MANIFEST_FILE || name == WORK_DIR || name == SNAPSHOT_DIR || is_data_file(bare)
}

/// Whether a file name is one of an export's tables: `<table>.<ext>` or `<table>-<digits>.<ext>`.
fn is_data_file(name: &str) -> bool {
    // Names a previous export may have left, besides the manifest and the work folder: one
    // stem per described table, and the change feed.
    crate::table::names().chain([CHANGES_TABLE]).any(|stem| {
        let Some(rest) = name.strip_prefix(stem) else {
            return false;
        };
        let rest = match rest.strip_prefix('-') {
            Some(numbered) => {
                let after = numbered.trim_start_matches(|c: char| c.is_ascii_digit());
                if after.len() == numbered.len() {
                    return false;
                }
                after
            }
            None => rest,
        };
        rest.strip_prefix('.')
            .is_some_and(|ext| EXTENSIONS.contains(&ext))
    })
}

/// A folder only its owner can enter (personal data goes in it), whatever the umask: the
/// mode is given at creation, so no other user can ever open it.
pub fn owner_only_dir() -> fs::DirBuilder {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
}

/// Create-new (so never through an existing link), owner read/write only, whatever the umask.
pub fn owner_only() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_what_an_export_writes() {
        for name in [
            "manifest.json",
            "contacts.parquet",
            "contact_inboxes.csv",
            "contacts-00000.parquet",
            "contact_inboxes-00012.csv",
            ".contacts-00001.parquet.tmp",
            ".contacts.ndjson.tmp",
            ".manifest.json.tmp",
            WORK_DIR,
        ] {
            assert!(is_ours(name), "{name}");
        }
        for name in [
            "notes.txt",
            "contacts.xlsx",
            ".bashrc",
            "contacts.parquet.bak",
            "contacts-.parquet",
            "contacts-1a.parquet",
            "contacts-old.parquet",
            "contacts00001.parquet",
        ] {
            assert!(!is_ours(name), "{name}");
        }
    }

    #[test]
    fn refuses_a_folder_with_other_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("thesis.docx"), b"x").expect("write");
        let err = OutputDir::prepare(dir.path(), false).expect_err("refused");
        assert!(err.to_string().contains("--overwrite"), "{err}");
        assert!(OutputDir::prepare(dir.path(), true).is_ok());
    }

    #[test]
    fn the_old_manifest_goes_just_before_the_first_new_file_and_not_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old_manifest = dir.path().join(MANIFEST_FILE);
        fs::write(&old_manifest, b"{\"complete\":true}").expect("write");
        fs::write(dir.path().join("contacts.csv"), b"id\n1\n").expect("write");

        // A run that fails before writing anything leaves the previous export whole.
        let (out, _) = OutputDir::prepare(dir.path(), false).expect("a previous export is fine");
        let (_, temp) = out.create_temp("contacts.csv").expect("temp");
        assert!(
            old_manifest.exists(),
            "still vouches for the untouched files"
        );
        out.abandon();
        assert!(!temp.exists());
        assert_eq!(
            fs::read(&old_manifest).expect("read"),
            b"{\"complete\":true}"
        );
        assert_eq!(
            fs::read(dir.path().join("contacts.csv")).expect("read"),
            b"id\n1\n"
        );

        // A run that fails after its first rename leaves no manifest over the mix.
        let (out, _) = OutputDir::prepare(dir.path(), false).expect("again");
        let (mut file, temp) = out.create_temp("contacts.csv").expect("temp");
        file.write_all(b"id\n2\n").expect("write");
        out.commit(&temp, "contacts.csv").expect("commit");
        assert!(
            !old_manifest.exists(),
            "gone before the old file was replaced"
        );
        out.abandon();
        assert!(!old_manifest.exists());
        assert_eq!(
            fs::read(dir.path().join("contacts.csv")).expect("read"),
            b"id\n2\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn links_are_refused_and_with_overwrite_replaced_never_followed() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().expect("temp dir");
        let target = outside.path().join("precious.txt");
        fs::write(&target, b"precious").expect("write");
        let work_target = outside.path().join("elsewhere");
        fs::create_dir(&work_target).expect("mkdir");
        fs::write(work_target.join("keep.txt"), b"keep").expect("write");

        let dir = tempfile::tempdir().expect("temp dir");
        symlink(&target, dir.path().join("contacts.csv")).expect("link");
        let err = OutputDir::prepare(dir.path(), false).expect_err("a link is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");

        symlink(&target, dir.path().join(MANIFEST_FILE)).expect("link");
        symlink(&work_target, dir.path().join(WORK_DIR)).expect("link");
        let (out, _) = OutputDir::prepare(dir.path(), true).expect("--overwrite");
        let (mut file, temp) = out.create_temp("contacts.csv").expect("temp");
        file.write_all(b"id\n").expect("write");
        out.commit(&temp, "contacts.csv").expect("commit");
        out.create_work_file("rows").expect("work file");
        out.write_manifest(b"{}").expect("manifest");
        out.finish(&[dir.path().join("contacts.csv")])
            .expect("finish");

        assert_eq!(fs::read(&target).expect("read"), b"precious");
        assert_eq!(
            fs::read(work_target.join("keep.txt")).expect("read"),
            b"keep"
        );
        assert_eq!(fs::read_dir(&work_target).expect("dir").count(), 1);
        for name in ["contacts.csv", MANIFEST_FILE] {
            let meta = fs::symlink_metadata(dir.path().join(name)).expect("meta");
            assert!(meta.is_file(), "{name} is now a file of its own");
        }
    }

    #[test]
    fn a_failed_first_run_removes_the_folders_it_made_and_only_those() {
        let parent = tempfile::tempdir().expect("temp dir");
        fs::create_dir(parent.path().join("exports")).expect("mkdir");
        let root = parent.path().join("exports/2026-11-24/account-3");
        let (out, _) = OutputDir::prepare(&root, false).expect("prepare");
        out.create_work_file("rows").expect("work file");
        out.abandon();
        assert!(!parent.path().join("exports/2026-11-24").exists());
        assert!(
            parent.path().join("exports").is_dir(),
            "it was there before"
        );

        // A made parent that has gained other content stays.
        let (out, _) = OutputDir::prepare(&root, false).expect("prepare");
        fs::write(parent.path().join("exports/2026-11-24/other.txt"), b"x").expect("write");
        out.abandon();
        assert!(!root.exists());
        assert!(parent.path().join("exports/2026-11-24/other.txt").is_file());
    }

    #[cfg(unix)]
    #[test]
    fn folders_and_work_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().expect("temp dir");
        let root = parent.path().join("new").join("out");
        let (out, _) = OutputDir::prepare(&root, false).expect("prepare");
        let (_, spill) = out.create_work_file("rows").expect("work file");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(WORK_DIR)), 0o700);
        assert_eq!(mode(&spill), 0o600);
        assert!(out.create_work_file("rows").is_err(), "never reuses a file");
    }
}
