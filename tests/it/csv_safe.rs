//! `--csv-safe`: text cells that a spreadsheet would run as formulas get a leading `'`; typed
//! columns and every other cell stay as the lossless export has them.

use std::collections::BTreeMap;
use std::path::Path;

use crate::harness::{Fake, export, manifest};

const FORMULA_STARTS: &[char] = &['=', '+', '-', '@', '\t', '\r'];

fn records(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .expect("csv file");
    reader
        .records()
        .map(|r| r.expect("record").iter().map(str::to_owned).collect())
        .collect()
}

#[test]
fn csv_safe_neutralises_formula_cells_of_text_columns_only() {
    let fake = Fake::with_contacts(400);
    let work = tempfile::tempdir().expect("temp dir");
    let (lossless, safe) = (work.path().join("lossless"), work.path().join("safe"));
    assert_eq!(export(&fake.base_url(), "csv", &lossless, &[]).code, 0);
    let run = export(&fake.base_url(), "csv", &safe, &["--csv-safe"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(manifest(&safe).expect("manifest")["csv_safe"], true);
    assert_eq!(manifest(&lossless).expect("manifest")["csv_safe"], false);

    let types = manifest(&lossless).expect("manifest")["tables"].clone();
    let mut escaped: BTreeMap<char, usize> = BTreeMap::new();
    let mut typed_cells = 0;
    for table in ["contacts", "contact_inboxes"] {
        let file = format!("{table}.csv");
        let (plain, guarded) = (records(&lossless.join(&file)), records(&safe.join(&file)));
        assert_eq!(plain.len(), guarded.len(), "{table}: same rows");
        assert_eq!(plain[0], guarded[0], "{table}: same header");
        let is_text: Vec<bool> = types[table]["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c["type"] == "string")
            .collect();
        assert_eq!(is_text.len(), plain[0].len());
        for (row, (a, b)) in plain.iter().zip(&guarded).enumerate().skip(1) {
            for (col, (cell, got)) in a.iter().zip(b).enumerate() {
                let risky = cell.starts_with(FORMULA_STARTS);
                if is_text[col] && risky {
                    assert_eq!(*got, format!("'{cell}"), "{table} row {row} col {col}");
                    *escaped
                        .entry(cell.chars().next().expect("a char"))
                        .or_insert(0) += 1;
                } else {
                    assert_eq!(got, cell, "{table} row {row} col {col}");
                    typed_cells += usize::from(!is_text[col] && !cell.is_empty());
                }
            }
        }
    }
    for start in ['=', '+', '-', '@'] {
        assert!(
            escaped.get(&start).copied().unwrap_or(0) > 0,
            "the fake data has cells starting with {start:?}: {escaped:?}"
        );
    }
    assert!(typed_cells > 0);
}

#[test]
fn csv_safe_with_another_format_is_refused() {
    let fake = Fake::with_contacts(5);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = export(&fake.base_url(), "parquet", dir.path(), &["--csv-safe"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--csv-safe applies only to CSV"),
        "{}",
        run.stderr
    );
    assert_eq!(fake.requests(), 0);
}
