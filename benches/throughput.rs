//! Contacts per second through the export's CPU stages, on fixed pages of the fake account.
//!
//! The pages are the first 3,000 contacts of `FakeAccount::new(42, ..)` in pages of 15, as the
//! fake server renders them (deterministic, so runs compare). Each benchmark does what the
//! export does to them, minus the network:
//!
//! - `flatten/json`: page body -> `ContactsPage` -> `Flattener::flatten_json` -> dedupe ->
//!   spill-encoded rows (the collector's work per page);
//! - `flatten/value`: the same through `serde_json::Value` and `Flattener::flatten`, the
//!   general path, for comparison;
//! - `encode/<format>`: spilled rows -> Arrow batches -> a file in that format (the write);
//! - `export/<format>`: both, pages to file, with the spill on disk as in an export.
//!
//! `cargo bench --bench throughput` (add `-- encode` to run one group). Files go to /dev/shm
//! when it exists, so that the disk does not time the CPU work.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

use chatwoot_export::fake::FakeAccount;
use chatwoot_export::idset::IdSet;
use chatwoot_export::sink::{Format, SinkOptions, TableWriter};
use chatwoot_export::source::ContactsPage;
use chatwoot_export::transform::batch::BatchBuilder;
use chatwoot_export::transform::flatten::{EncodedContact, Flattener};
use chatwoot_export::transform::spill::{SpillReader, SpillWriter};

const CONTACTS: u64 = 3_000;
const PAGE_SIZE: u64 = 15;
const FORMATS: [Format; 3] = [Format::Parquet, Format::Csv, Format::Ndjson];

/// The page bodies, as the fake server sends them.
fn pages() -> Vec<Vec<u8>> {
    FakeAccount::new(42, CONTACTS).page_bodies(PAGE_SIZE)
}

fn work_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("temp dir in /dev/shm")
    } else {
        tempfile::tempdir().expect("temp dir")
    }
}

/// The collector's work: parse, flatten, dedupe, spill. Returns the flattener (with the final
/// shapes) and the two spill files.
fn collect(pages: &[Vec<u8>], dir: &Path) -> (Flattener, [PathBuf; 2]) {
    let paths = [dir.join("contacts.rows"), dir.join("inboxes.rows")];
    let mut spills = [
        SpillWriter::create(&paths[0]).expect("spill"),
        SpillWriter::create(&paths[1]).expect("spill"),
    ];
    let mut flattener = Flattener::default();
    let mut flat = EncodedContact::default();
    let mut seen = IdSet::default();
    for body in pages {
        let page = ContactsPage::from_body(body).expect("a page");
        for contact in &page.payload {
            flattener
                .flatten_json(contact, &mut flat)
                .expect("flattens");
            if seen.insert(flat.id) {
                spills[0].write(&flat.contact).expect("spill");
                spills[1].write(&flat.inboxes).expect("spill");
            }
        }
    }
    for spill in spills {
        spill.finish().expect("spill");
    }
    (flattener, paths)
}

/// The write: both tables from their spills to files in `format`.
fn write(format: Format, flattener: &Flattener, spills: &[PathBuf; 2], dir: &Path) -> u64 {
    let schemas = [flattener.contacts.finish(), flattener.inboxes.finish()];
    let mut rows = 0;
    for (index, schema) in schemas.into_iter().enumerate() {
        let file = std::fs::File::create(dir.join(format!("{index}.{}", format.extension())))
            .expect("output file");
        let mut writer = TableWriter::create(
            format,
            file,
            Arc::clone(&schema.arrow),
            SinkOptions::default(),
        )
        .expect("writer");
        let mut reader = SpillReader::open(&spills[index]).expect("spill");
        let mut batch = BatchBuilder::new(schema);
        while let Some(row) = reader.next_row().expect("spill") {
            batch.push_encoded(row).expect("row");
            rows += 1;
            if batch.is_full() {
                writer
                    .write(&batch.finish().expect("batch"))
                    .expect("write");
            }
        }
        writer
            .write(&batch.finish().expect("batch"))
            .expect("write");
        writer.finish().expect("finish");
    }
    rows
}

fn benches(c: &mut Criterion) {
    let pages = pages();
    let dir = work_dir();

    let mut group = c.benchmark_group("flatten");
    group.throughput(Throughput::Elements(CONTACTS));
    group.sample_size(20);
    group.bench_function("json", |b| {
        b.iter(|| black_box(collect(&pages, dir.path())));
    });
    group.bench_function("value", |b| {
        b.iter(|| {
            let mut flattener = Flattener::default();
            let mut seen = std::collections::HashSet::new();
            for body in &pages {
                let page: Value = serde_json::from_slice(body).expect("a page");
                for contact in page["payload"].as_array().expect("payload") {
                    let flat = flattener.flatten(contact).expect("flattens");
                    if seen.insert(flat.id) {
                        black_box(&flat);
                    }
                }
            }
            flattener
        });
    });
    group.finish();

    let (flattener, spills) = collect(&pages, dir.path());
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(CONTACTS));
    group.sample_size(20);
    for format in FORMATS {
        group.bench_function(format.extension(), |b| {
            b.iter(|| black_box(write(format, &flattener, &spills, dir.path())));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("export");
    group.throughput(Throughput::Elements(CONTACTS));
    group.sample_size(20);
    for format in FORMATS {
        group.bench_function(format.extension(), |b| {
            b.iter_batched(
                work_dir,
                |run| {
                    let (flattener, spills) = collect(&pages, run.path());
                    black_box(write(format, &flattener, &spills, run.path()));
                    run
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(throughput, benches);
criterion_main!(throughput);
