//! The staging place of an object store or lake export: a fixed local folder per destination,
//! partition template, Chatwoot server and account, where the export is built before it is
//! published, and where a failure keeps it for `--resume`.
//!
//! Receives what names a job (destination, partition template, server, account); emits the
//! folder's path under `$XDG_CACHE_HOME/chatwoot-export/staging` (else `~/.cache/...`, else the
//! temporary directory), named by a stable hash of the job, and a lock file beside it. The
//! folders are owner-only (0700): the staged rows are personal data. Invariants: at most one
//! live process holds a place's lock (`<hash>.lock`, created with create-new, holding its PID;
//! a lock whose PID no longer runs is stale and taken over), and the lock goes when its holder
//! drops it. Staging folders of older versions (random `chatwoot-export-staging-*` names in the
//! temporary directory, which a `kill -9` left behind) are removed when found.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{owner_only, owner_only_dir};

/// The prefix of the random staging folders of earlier versions.
const OLD_PREFIX: &str = "chatwoot-export-staging-";

/// Why a staging place cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("cannot create the staging folder {}: {source}{}", path.display(), super::disk_hint(source))]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "another export to the same destination and account is running (process {pid}, lock {}): wait for it to end, or delete the lock file if that process is not an export",
        lock.display()
    )]
    Locked { lock: PathBuf, pid: String },
}

/// Where a job is staged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagingPlace {
    /// The export's folder (an output folder as `--out DIR` makes it).
    pub folder: PathBuf,
    /// The lock file beside it.
    pub lock: PathBuf,
}

impl StagingPlace {
    /// The place of the job that exports account `account_id` of the Chatwoot server
    /// `base_url` to `destination` with the partition template `partition`, under `root`
    /// (`staging_root()` outside the tests). The server is part of the key because account ids
    /// are only unique within one server.
    pub fn for_job(
        root: &Path,
        destination: &str,
        partition: &str,
        base_url: &str,
        account_id: u64,
    ) -> Self {
        let key = format!(
            "{}\n{partition}\n{base_url}\n{account_id}",
            destination.trim_end_matches('/')
        );
        let name = format!("{:016x}", fnv1a(key.as_bytes()));
        Self {
            folder: root.join(&name),
            lock: root.join(format!("{name}.lock")),
        }
    }

    /// Takes the place's lock: create-new, so two processes cannot both hold it; a lock left
    /// by a process that no longer runs (a `kill -9`) is taken over.
    pub fn lock(&self) -> Result<StagingLock, StagingError> {
        let create_error = |source| StagingError::Create {
            path: self.lock.clone(),
            source,
        };
        if let Some(root) = self.lock.parent() {
            owner_only_dir()
                .recursive(true)
                .create(root)
                .map_err(create_error)?;
        }
        // Twice at most: once more after removing a stale lock.
        for _ in 0..2 {
            match owner_only().open(&self.lock) {
                Ok(mut file) => {
                    file.write_all(std::process::id().to_string().as_bytes())
                        .map_err(create_error)?;
                    return Ok(StagingLock {
                        path: self.lock.clone(),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&self.lock).unwrap_or_default();
                    let holder = holder.trim().to_owned();
                    if lock_is_held(&self.lock, &holder) {
                        return Err(StagingError::Locked {
                            lock: self.lock.clone(),
                            pid: holder,
                        });
                    }
                    match fs::remove_file(&self.lock) {
                        Err(err) if err.kind() != io::ErrorKind::NotFound => {
                            return Err(create_error(err));
                        }
                        _ => {}
                    }
                }
                Err(err) => return Err(create_error(err)),
            }
        }
        Err(StagingError::Locked {
            lock: self.lock.clone(),
            pid: fs::read_to_string(&self.lock)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        })
    }

    /// Whether the place holds work a failed or interrupted run kept: an export to continue
    /// (its checkpoint) or a finished one that was not published (its manifest).
    pub fn has_kept_work(&self) -> bool {
        self.folder
            .join(".chatwoot-export.partial")
            .join("checkpoint.json")
            .is_file()
            || self.holds_finished_export()
    }

    /// Whether the place holds a finished export that was not published.
    pub fn holds_finished_export(&self) -> bool {
        self.folder.join(super::MANIFEST_FILE).is_file()
    }

    /// Removes the folder and everything in it (after publishing, or for `--restart`).
    pub fn discard(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.folder) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

/// A held staging lock; dropping it removes the lock file.
#[derive(Debug)]
pub struct StagingLock {
    path: PathBuf,
}

impl Drop for StagingLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Where staging places live: `$XDG_CACHE_HOME/chatwoot-export/staging`, else
/// `$HOME/.cache/chatwoot-export/staging`, else `<temporary directory>/chatwoot-export-staging`.
/// A cache folder rather than the temporary directory, so kept work survives the reboots and
/// tmp cleaners that a long-running resume may meet.
pub fn staging_root() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        });
    match cache {
        Some(cache) => cache.join("chatwoot-export").join("staging"),
        None => std::env::temp_dir().join("chatwoot-export-staging"),
    }
}

/// Removes the random staging folders that earlier versions left in the temporary directory
/// after a `kill -9` (they hold personal data and no version can resume them); returns how many.
pub fn remove_old_staging(temp: &Path) -> usize {
    let Ok(entries) = fs::read_dir(temp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_old = name.to_string_lossy().starts_with(OLD_PREFIX)
            && entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_old && fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether the lock at `path`, holding `pid`, is held by a running process. Without `/proc`
/// (not Linux), a lock is taken to be held: refusing is safer than sharing a staging folder.
fn lock_is_held(path: &Path, pid: &str) -> bool {
    let Ok(pid) = pid.parse::<u32>() else {
        // Not a PID: a lock being written this instant (held), or one whose holder died
        // between creating and writing it (stale once a few seconds old).
        return fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_none_or(|age| age < std::time::Duration::from_secs(10));
    };
    if pid == std::process::id() {
        return true;
    }
    if Path::new("/proc/self").exists() {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust versions and machines (std's
/// `DefaultHasher` promises neither), so a later version finds the place an earlier one kept.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_place_follows_the_job_and_nothing_else() {
        let root = Path::new("/r");
        let place = |dest: &str, part: &str, base: &str, account| {
            StagingPlace::for_job(root, dest, part, base, account).folder
        };
        let a = place("s3://lake/x", "", "https://c.example", 1);
        assert_eq!(a, place("s3://lake/x/", "", "https://c.example", 1));
        assert_ne!(a, place("s3://lake/y", "", "https://c.example", 1));
        assert_ne!(a, place("s3://lake/x", "{table}", "https://c.example", 1));
        assert_ne!(a, place("s3://lake/x", "", "https://d.example", 1));
        assert_ne!(a, place("s3://lake/x", "", "https://c.example", 2));
        // Stable across versions: a kept export must be found by the next release.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_live_lock_refuses_and_a_stale_one_is_taken_over() {
        let root = tempfile::tempdir().expect("temp dir");
        let place = StagingPlace::for_job(root.path(), "s3://b/p", "", "u", 1);
        let held = place.lock().expect("first lock");
        let refused = place.lock().expect_err("second lock");
        let message = refused.to_string();
        assert!(
            message.contains(&place.lock.display().to_string())
                && message.contains(&std::process::id().to_string()),
            "{message}"
        );
        drop(held);
        assert!(!place.lock.exists(), "dropping the lock removes it");
        // A PID that cannot run (beyond Linux's pid_max): stale, taken over.
        fs::write(&place.lock, "4294967295").expect("write");
        let taken = place.lock().expect("stale lock taken over");
        assert_eq!(
            fs::read_to_string(&place.lock).expect("read"),
            std::process::id().to_string()
        );
        drop(taken);
    }

    #[test]
    fn old_random_staging_folders_are_removed_and_nothing_else() {
        let temp = tempfile::tempdir().expect("temp dir");
        let old = temp.path().join("chatwoot-export-staging-a1B2c3");
        fs::create_dir_all(old.join("account-1")).expect("mkdir");
        fs::write(old.join("account-1/rows"), b"personal data").expect("write");
        let other = temp.path().join("someone-else");
        fs::create_dir(&other).expect("mkdir");
        assert_eq!(remove_old_staging(temp.path()), 1);
        assert!(!old.exists() && other.exists());
    }
}
