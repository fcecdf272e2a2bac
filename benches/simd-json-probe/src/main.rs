//! Nanoseconds per contact to tokenise the export's pages three ways, interleaved in one run so
//! that the ratios hold on a busy machine:
//!
//! - serde_json into `IgnoredAny`: every byte checked, nothing built (the floor of the export's
//!   serde pass);
//! - simd-json's tape (simdjson's two stages, SIMD chosen at run time): what a "SIMD structural
//!   index" would cost before any column is built;
//! - the export's own page scan and flatten (`ContactsPage::from_body` + `flatten_json`, rows
//!   encoded for the spill), for scale.
//!
//! The pages are `benches/throughput.rs`'s: the first 3,000 contacts of `FakeAccount::new(42, ..)`
//! in pages of 15, as the fake server renders them.

use std::time::Instant;

use chatwoot_export::fake::FakeAccount;
use chatwoot_export::source::ContactsPage;
use chatwoot_export::transform::flatten::{EncodedContact, Flattener};

const CONTACTS: u64 = 3_000;
const PAGE_SIZE: u64 = 15;
const REPEATS: usize = 20;

/// Nanoseconds per contact of `work` over every page, `REPEATS` times.
fn per_contact(pages: &[Vec<u8>], mut work: impl FnMut(&[u8])) -> f64 {
    let started = Instant::now();
    for _ in 0..REPEATS {
        for page in pages {
            work(page);
        }
    }
    started.elapsed().as_secs_f64() * 1e9 / (REPEATS as f64 * CONTACTS as f64)
}

fn main() {
    let pages = FakeAccount::new(42, CONTACTS).page_bodies(PAGE_SIZE);
    let bytes: usize = pages.iter().map(Vec::len).sum();
    println!(
        "{} pages, {} bytes a contact",
        pages.len(),
        bytes as u64 / CONTACTS
    );
    let mut copy = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    let mut flattener = Flattener::default();
    let mut flat = EncodedContact::default();
    for round in 1..=5 {
        let serde = per_contact(&pages, |page| {
            let _: serde::de::IgnoredAny = serde_json::from_slice(page).expect("JSON");
        });
        let simd = per_contact(&pages, |page| {
            copy.clear();
            copy.extend_from_slice(page); // simd-json parses in place
            let tape = simd_json::to_tape_with_buffers(&mut copy, &mut buffers).expect("JSON");
            std::hint::black_box(tape);
        });
        let export = per_contact(&pages, |page| {
            let page = ContactsPage::from_body(page).expect("a page");
            for contact in &page.payload {
                flattener
                    .flatten_json(contact, &mut flat)
                    .expect("flattens");
            }
        });
        println!(
            "round {round}: ns a contact: serde_json IgnoredAny {serde:.0}, simd-json tape {simd:.0} ({:.2}x serde), export scan+flatten {export:.0}",
            simd / serde
        );
    }
}
