//! The output holds personal data: every file is owner-only, even the rows spilled during the
//! run, and nothing is written through a symbolic link.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use chatwoot_export::fake::FakeServerConfig;

use crate::harness::{Fake, all_file_bytes, export, manifest};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn every_written_file_is_owner_only() {
    let fake = Fake::with_contacts(50);
    let parent = tempfile::tempdir().expect("temp dir");
    for format in ["parquet", "csv", "ndjson"] {
        let dir = parent.path().join(format);
        let run = export(&fake.base_url(), format, &dir, &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(mode(&dir), 0o700, "the folder the export created");
        let files = all_file_bytes(&dir);
        assert_eq!(files.len(), 3, "two tables and the manifest");
        for (path, _) in files {
            assert_eq!(mode(Path::new(&path)), 0o600, "{path}");
        }
    }
}

#[test]
fn rows_spilled_during_the_run_are_owner_only() {
    // Slow pages keep the run in its fetch stage long enough to look at the work folder.
    let fake = Fake::start(FakeServerConfig {
        contacts: 60,
        latency: Duration::from_millis(300),
        ..FakeServerConfig::default()
    });
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("out");
    let work = dir.join(".chatwoot-export.partial");
    let url = fake.base_url();
    let dir_arg = dir.clone();
    let exporter =
        std::thread::spawn(move || export(&url, "csv", &dir_arg, &["--concurrency", "1"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < 2 && Instant::now() < deadline {
        seen = std::fs::read_dir(&work)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.len(), 2, "the spill files appeared: {seen:?}");
    assert_eq!(mode(&work), 0o700);
    for path in &seen {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    let run = exporter.join().expect("export thread");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!work.exists(), "the work folder is removed at the end");
}

#[test]
fn a_symlink_in_the_output_folder_is_never_written_through() {
    let fake = Fake::with_contacts(30);
    let outside = tempfile::tempdir().expect("temp dir");
    let precious = outside.path().join("precious.csv");
    std::fs::write(&precious, b"not yours").expect("write");
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(export(&fake.base_url(), "csv", dir.path(), &[]).code, 0);
    for name in ["contacts.csv", "manifest.json", ".contact_inboxes.csv.tmp"] {
        let path = dir.path().join(name);
        let _ = std::fs::remove_file(&path);
        symlink(&precious, &path).expect("link");
    }

    let refused = export(&fake.base_url(), "csv", dir.path(), &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("symbolic link") && refused.stderr.contains("--overwrite"),
        "{}",
        refused.stderr
    );
    assert_eq!(std::fs::read(&precious).expect("read"), b"not yours");

    let run = export(&fake.base_url(), "csv", dir.path(), &["--overwrite"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read(&precious).expect("read"),
        b"not yours",
        "the link's target is untouched"
    );
    for name in ["contacts.csv", "contact_inboxes.csv", "manifest.json"] {
        let meta = std::fs::symlink_metadata(dir.path().join(name)).expect("meta");
        assert!(meta.is_file(), "{name} is a file of its own now");
        assert_eq!(mode(&dir.path().join(name)), 0o600);
    }
    assert!(!dir.path().join(".contact_inboxes.csv.tmp").exists());
    assert_eq!(manifest(dir.path()).expect("manifest")["complete"], true);
}
