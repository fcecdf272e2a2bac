//! What analysts will do: pyarrow, DuckDB and Polars (Parquet) read the outputs, and must agree
//! with the ground truth (tests/readers/check_export.py flattens the truth on its own).

use std::process::Command;

use crate::harness::{Fake, export, python};

#[test]
fn pyarrow_duckdb_and_polars_agree_with_the_ground_truth() {
    let fake = Fake::with_contacts(600);
    let work = tempfile::tempdir().expect("temp dir");
    let truth_path = work.path().join("truth.ndjson");
    let truth: String = fake.truth().iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&truth_path, truth).expect("write truth");
    let definitions_path = work.path().join("definitions.json");
    std::fs::write(&definitions_path, fake.definitions().to_string()).expect("write definitions");
    let python = python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/readers/check_export.py");
    let split = ["--rows-per-file", "250", "--compression", "snappy"];
    let cases: [(&str, &str, &[&str]); 4] = [
        ("parquet", "parquet", &[]),
        ("csv", "csv", &[]),
        ("ndjson", "ndjson", &[]),
        // Three files a table (250, 250, 100 contacts), each read and the codec checked.
        ("parquet-split-snappy", "parquet", &split),
    ];
    for (name, format, extra) in cases {
        let dir = work.path().join(name);
        let run = export(&fake.base_url(), format, &dir, extra);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let output = Command::new(&python)
            .args([script, "--dir", dir.to_str().expect("path"), "--format", format, "--truth"])
            .arg(&truth_path)
            .arg("--definitions")
            .arg(&definitions_path)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {python}: {err}; install Python 3 and `pip install -r tests/requirements.txt`"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{format}: independent readers disagree:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("OK"), "{format}: {stdout}");
    }
}
