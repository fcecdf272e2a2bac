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
        // --full: the raw contacts an incremental schedule keeps are written too.
        let run = export(&fake.base_url(), format, &dir, &["--full"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(mode(&dir), 0o700, "the folder the export created");
        let files = all_file_bytes(&dir);
        assert_eq!(
            files.len(),
            4,
            "two tables, the manifest and the raw contacts"
        );
        assert_eq!(mode(&dir.join("_chatwoot_export")), 0o700);
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
    let exporter = std::thread::spawn(move || {
        export(&url, "csv", &dir_arg, &["--concurrency", "1", "--full"])
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < 3 && Instant::now() < deadline {
        seen = std::fs::read_dir(&work)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        std::thread::sleep(Duration::from_millis(20));
    }
    // The two tables' rows and the raw contacts kept for an incremental run.
    assert_eq!(seen.len(), 3, "the spill files appeared: {seen:?}");
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

/// Starts `chatwoot-export ARGS` under umask 022, the usual one, which alone would make new
/// files 0644 and folders 0755.
fn spawn_under_umask_022(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_chatwoot-export"))
        .args(args)
        .env("CHATWOOT_API_TOKEN", crate::harness::TOKEN)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("sh runs")
}

/// Every file and folder under `root` (itself included) with a mode other than 0600 / 0700,
/// and how many entries were looked at.
fn not_owner_only(root: &Path) -> (Vec<String>, usize) {
    let mut wrong = Vec::new();
    let mut seen = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        seen += 1;
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode(&path) != want {
            wrong.push(format!("{} {:o}", path.display(), mode(&path)));
        }
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .expect("dir")
                    .map(|e| e.expect("entry").path()),
            );
        }
    }
    (wrong, seen)
}

#[test]
fn under_umask_022_every_file_and_folder_is_owner_only() {
    // Regression (issue 15, finding 6): the checkpoint of an interrupted export and the files
    // and folders of a lake folder were created 0644 / 0755.
    let fake = Fake::start(FakeServerConfig {
        contacts: 3000,
        latency: Duration::from_millis(15),
        ..FakeServerConfig::default()
    });
    let url = fake.base_url();
    let parent = tempfile::tempdir().expect("temp dir");
    let contacts = |out: &Path| {
        vec![
            "contacts".to_owned(),
            "--base-url".into(),
            url.clone(),
            "--account-id".into(),
            "1".into(),
            "--no-progress".into(),
            "--concurrency".into(),
            "2".into(),
            "--out".into(),
            out.to_str().expect("utf-8").into(),
        ]
    };

    // An interrupted export: the work folder, its spills and its checkpoint.
    let interrupted = parent.path().join("interrupted/out");
    let args = contacts(&interrupted);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = spawn_under_umask_022(&args, &[]);
    let checkpoint = interrupted.join(".chatwoot-export.partial/checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !checkpoint.exists() {
        assert!(Instant::now() < deadline, "no checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let (wrong, seen) = not_owner_only(&parent.path().join("interrupted"));
    assert!(seen >= 6, "folders, spills and the checkpoint: {seen}");
    assert_eq!(wrong, Vec::<String>::new());

    // The same export resumed and finished: the folder, the tables and the manifest.
    let mut resume = args.clone();
    resume.push("--resume");
    let output = spawn_under_umask_022(&resume, &[])
        .wait_with_output()
        .expect("ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (wrong, seen) = not_owner_only(&parent.path().join("interrupted"));
    assert_eq!(seen, 5, "two folders, two tables and the manifest");
    assert_eq!(wrong, Vec::<String>::new());

    // A lake folder: partitions, data files and partition manifests.
    let lake = parent.path().join("lake");
    let tmp = parent.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir");
    let args = contacts(Path::new("placeholder"));
    let url_out = format!("file://{}", lake.display());
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    *args.last_mut().expect("--out value") = &url_out;
    let output = spawn_under_umask_022(&args, &[("TMPDIR", tmp.to_str().expect("utf-8"))])
        .wait_with_output()
        .expect("ends");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (wrong, seen) = not_owner_only(&lake);
    assert_eq!(
        seen, 5,
        "the folder, two tables, the manifests' folder (_chatwoot_export) and the manifest"
    );
    assert_eq!(wrong, Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(&tmp).expect("dir").count(),
        0,
        "the staging folder is gone"
    );
}
