//! The sink's options: `--rows-per-file` (`sink.rows_per_file`) splits a table into numbered
//! files that together hold exactly the ground truth, and a rerun leaves only its own files;
//! `--compression` (`sink.compression`) writes the codec it names into the Parquet files.

use std::mem::{Discriminant, discriminant};
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use serde_json::Value;

use crate::expected::{self, Table};
use crate::harness::{Fake, assert_no_token, export, manifest, run_with_env};
use crate::readers::{assert_same, read_files};

/// The files the manifest lists for `table`.
fn listed(manifest: &Value, table: &str) -> Vec<String> {
    manifest["tables"][table]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().expect("file name").to_owned())
        .collect()
}

/// The data files in `dir`, sorted.
fn data_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "manifest.json")
        .collect();
    names.sort();
    names
}

/// `<table>-00000.<ext>`, ... for `parts` files, or `<table>.<ext>` for one.
fn names(table: &str, ext: &str, parts: usize) -> Vec<String> {
    if parts == 1 {
        return vec![format!("{table}.{ext}")];
    }
    (0..parts)
        .map(|i| format!("{table}-{i:05}.{ext}"))
        .collect()
}

/// Checks that the split table in `dir` is the expected table, in files of `rows_per_file`
/// rows (the last one the rest), and that the manifest lists those files and their rows.
fn assert_split(dir: &Path, format: &str, table: &str, want: &Table, rows_per_file: usize) {
    let manifest = manifest(dir).expect("manifest");
    let files = listed(&manifest, table);
    let parts = want.rows.len().div_ceil(rows_per_file).max(1);
    assert_eq!(
        files,
        names(table, format, parts),
        "{table}: manifest files"
    );
    assert_eq!(manifest["tables"][table]["rows"], want.rows.len() as u64);
    let (got, counts) = read_files(dir, &files, format, want);
    let mut sizes = vec![rows_per_file; parts - 1];
    sizes.push(want.rows.len() - rows_per_file * (parts - 1));
    assert_eq!(counts, sizes, "{table}: rows per file");
    assert_same(table, format, want, &got);
}

/// Exports into `dir` in files of `rows_per_file` rows, checks both tables and that the
/// folder holds exactly the files the manifest lists; returns them, sorted.
fn export_split(fake: &Fake, dir: &Path, format: &str, rows_per_file: usize) -> Vec<String> {
    let (contacts, inboxes) = expected::tables(&fake.truth(), &fake.definitions());
    let limit = rows_per_file.to_string();
    let run = export(&fake.base_url(), format, dir, &["--rows-per-file", &limit]);
    assert_eq!(run.code, 0, "{format}: {}", run.stderr);
    assert_no_token(&run, dir);
    assert_split(dir, format, "contacts", &contacts, rows_per_file);
    assert_split(dir, format, "contact_inboxes", &inboxes, rows_per_file);
    let manifest = manifest(dir).expect("manifest");
    let mut every = listed(&manifest, "contacts");
    every.extend(listed(&manifest, "contact_inboxes"));
    // A plain export keeps nothing for later runs (no raw contacts, no change feed).
    every.sort();
    assert_eq!(data_files(dir), every, "nothing else in the folder");
    every
}

#[test]
fn rows_per_file_splits_tables_and_a_rerun_leaves_only_its_own_files() {
    let fake = Fake::with_contacts(700);
    let truth = fake.truth();
    for format in ["parquet", "csv"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let every = export_split(&fake, dir.path(), format, 200);
        assert!(every.contains(&format!("contacts-00003.{format}")));

        // A rerun that fails leaves the earlier files alone (and no manifest).
        let failed = export("http://127.0.0.1:1", format, dir.path(), &[]);
        assert_eq!(failed.code, 1, "{}", failed.stderr);
        assert_eq!(data_files(dir.path()), every);

        // Fewer, bigger files: the earlier run's extra files go once the new run is complete.
        let every = export_split(&fake, dir.path(), format, 300);
        assert!(!every.contains(&format!("contacts-00003.{format}")));

        // A table that fits keeps its one plain name, and the numbered files go.
        let every = export_split(&fake, dir.path(), format, 100_000);
        assert_eq!(
            every,
            [
                format!("contact_inboxes.{format}"),
                format!("contacts.{format}")
            ]
        );
        crate::export::assert_export_matches(dir.path(), format, &truth, &fake.definitions());
    }
}

#[test]
fn exactly_full_files_and_empty_tables_make_no_empty_extra_file() {
    // 90 contacts in files of 45: two full files, no third empty one.
    let fake = Fake::with_contacts(90);
    let (contacts, _) = expected::tables(&fake.truth(), &fake.definitions());
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &fake.base_url(),
        "ndjson",
        dir.path(),
        &["--rows-per-file", "45"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_split(dir.path(), "ndjson", "contacts", &contacts, 45);

    let empty = Fake::with_contacts(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        &empty.base_url(),
        "csv",
        dir.path(),
        &["--rows-per-file", "10"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    crate::export::assert_export_matches(dir.path(), "csv", &[], &fake.definitions());
}

/// The codec of every column chunk of a Parquet file. (A file records the codec, not the
/// level: zstd reads back as zstd of the reader's default level.)
fn codecs(path: &Path) -> Vec<Discriminant<Compression>> {
    let file = std::fs::File::open(path).expect("parquet file");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("valid parquet");
    builder
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|group| {
            group
                .columns()
                .iter()
                .map(|c| discriminant(&c.compression()))
        })
        .collect()
}

#[test]
fn each_codec_is_in_the_parquet_metadata_and_the_values_are_exact() {
    let fake = Fake::with_contacts(150);
    let truth = fake.truth();
    let zstd = Compression::ZSTD(ZstdLevel::default());
    let default = format!("zstd:{}", chatwoot_export::sink::DEFAULT_ZSTD_LEVEL);
    let cases = [
        (None, zstd, default.as_str()),
        (Some("zstd:9"), zstd, "zstd:9"),
        (Some("snappy"), Compression::SNAPPY, "snappy"),
        (Some("none"), Compression::UNCOMPRESSED, "none"),
    ];
    for (flag, codec, recorded) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra: Vec<&str> = flag.map_or_else(Vec::new, |f| vec!["--compression", f]);
        let run = export(&fake.base_url(), "parquet", dir.path(), &extra);
        assert_eq!(run.code, 0, "{flag:?}: {}", run.stderr);
        crate::export::assert_export_matches(dir.path(), "parquet", &truth, &fake.definitions());
        for table in ["contacts", "contact_inboxes"] {
            let found = codecs(&dir.path().join(format!("{table}.parquet")));
            assert!(!found.is_empty());
            assert!(
                found.iter().all(|c| *c == discriminant(&codec)),
                "{flag:?} {table}: {found:?}"
            );
        }
        let manifest = manifest(dir.path()).expect("manifest");
        assert_eq!(manifest["compression"], recorded);
    }
    // The manifest of a text format has no codec.
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "ndjson", dir.path(), &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        manifest(dir.path()).expect("manifest")["compression"],
        Value::Null
    );
}

#[test]
fn compression_is_refused_for_text_formats_and_unknown_codecs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(
        "http://127.0.0.1:1",
        "csv",
        dir.path(),
        &["--compression", "snappy"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--compression applies only to Parquet"),
        "{}",
        run.stderr
    );
    let run = export(
        "http://127.0.0.1:1",
        "parquet",
        dir.path(),
        &["--compression", "lz4"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("snappy or none"), "{}", run.stderr);

    // `validate` lists both keys' problems with their lines.
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[source]\nbase_url = \"https://chat.example.com\"\naccount_id = 3\n\n\
         [sink]\nformat = \"csv\"\ndestination = \"out\"\ncompression = \"zstd\"\nrows_per_file = 0\n",
    )
    .expect("write");
    let run = run_with_env(
        &["validate", file.to_str().expect("utf-8")],
        &[("CHATWOOT_API_TOKEN", "t")],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    for want in [
        "sink.compression (line 8): applies only to format = \"parquet\"",
        "sink.rows_per_file (line 9): must be at least 1",
    ] {
        assert!(run.stderr.contains(want), "{want:?} in:\n{}", run.stderr);
    }
}

#[test]
fn the_oneoff_pipeline_takes_both_keys() {
    let fake = Fake::with_contacts(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let run = crate::pipelines::run_example(
        "oneoff-parquet.toml",
        &fake.base_url(),
        &out,
        &["sink.compression=snappy", "sink.rows_per_file=40"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (contacts, _) = expected::tables(&fake.truth(), &fake.definitions());
    assert_split(&out, "parquet", "contacts", &contacts, 40);
    for name in names("contacts", "parquet", 3) {
        let snappy = discriminant(&Compression::SNAPPY);
        assert!(codecs(&out.join(name)).iter().all(|c| *c == snappy));
    }
    assert_eq!(manifest(&out).expect("manifest")["compression"], "snappy");
}
