//! The set of contact ids an export has seen, in about two bytes an id.
//!
//! Receives contact ids as the pages arrive; answers whether each one is new (the pipeline
//! drops a contact whose id it has seen, which happens when the list shifts during the walk).
//! A `HashSet<i64>` takes some 18 bytes an id and doubles as it grows, which alone made the
//! peak memory of a 1,000,000-contact export 20 MB higher than a 100,000-contact one's. Here,
//! as in Roaring bitmaps, ids are grouped by their high 48 bits into chunks of 65,536; a chunk
//! keeps the low 16 bits in a sorted `Vec<u16>` while it holds at most 4,096 of them (2 bytes an
//! id) and an 8 KiB bitmap after that (under 2 bytes an id). Chatwoot ids grow with creation
//! time and the export walks in `created_at` order, so most inserts append to the last chunk.

use rustc_hash::FxHashMap;

/// Above this many ids a chunk is a bitmap: 4,096 u16s take as much room as 65,536 bits.
const SPARSE_MAX: usize = 4096;

#[derive(Debug)]
enum Chunk {
    /// Low 16 bits of the ids, sorted.
    Sparse(Vec<u16>),
    /// One bit per low 16 bits.
    Dense(Box<[u64; 1024]>),
}

impl Chunk {
    /// Adds `low`; false if it was there.
    fn insert(&mut self, low: u16) -> bool {
        match self {
            Chunk::Sparse(lows) => {
                match lows.last() {
                    Some(&last) if last < low => lows.push(low),
                    None => lows.push(low),
                    _ => match lows.binary_search(&low) {
                        Ok(_) => return false,
                        Err(at) => lows.insert(at, low),
                    },
                }
                if lows.len() > SPARSE_MAX {
                    let mut bits = Box::new([0u64; 1024]);
                    for &low in lows.iter() {
                        bits[usize::from(low) / 64] |= 1 << (low % 64);
                    }
                    *self = Chunk::Dense(bits);
                }
                true
            }
            Chunk::Dense(bits) => {
                let (word, bit) = (usize::from(low) / 64, 1u64 << (low % 64));
                let new = bits[word] & bit == 0;
                bits[word] |= bit;
                new
            }
        }
    }
}

/// A set of i64 ids, compact for ids that cluster.
#[derive(Debug, Default)]
pub struct IdSet {
    chunks: FxHashMap<i64, Chunk>,
    len: u64,
}

impl IdSet {
    /// Adds `id`; true if it was not in the set.
    pub fn insert(&mut self, id: i64) -> bool {
        let chunk = self
            .chunks
            .entry(id >> 16)
            .or_insert_with(|| Chunk::Sparse(Vec::new()));
        let new = chunk.insert((id & 0xFFFF) as u16);
        self.len += u64::from(new);
        new
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: i64) -> bool {
        let low = (id & 0xFFFF) as u16;
        match self.chunks.get(&(id >> 16)) {
            None => false,
            Some(Chunk::Sparse(lows)) => lows.binary_search(&low).is_ok(),
            Some(Chunk::Dense(bits)) => bits[usize::from(low) / 64] & (1 << (low % 64)) != 0,
        }
    }

    /// How many distinct ids were added.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn contains_what_was_inserted_sparse_or_dense() {
        let mut set = IdSet::default();
        for id in (0..5000).map(|i| i * 3) {
            set.insert(id);
        }
        set.insert(-7);
        assert!(set.contains(0) && set.contains(4_998 * 3) && set.contains(-7));
        assert!(!set.contains(1) && !set.contains(70_000) && !set.contains(-8));
    }

    #[test]
    fn answers_whether_an_id_is_new() {
        let mut set = IdSet::default();
        for (id, new) in [
            (5, true),
            (5, false),
            (3, true),
            (70_000, true),
            (-1, true),
            (i64::MIN, true),
            (i64::MAX, true),
            (3, false),
            (-1, false),
            (i64::MAX, false),
        ] {
            assert_eq!(set.insert(id), new, "{id}");
        }
        assert_eq!(set.len(), 6);
    }

    #[test]
    fn agrees_with_a_hash_set_through_the_switch_to_bitmaps() {
        let mut set = IdSet::default();
        let mut oracle = HashSet::new();
        // Ascending runs with repeats and gaps, then scattered ids: sparse and dense chunks.
        let mut x: u64 = 7;
        let ids = (0..20_000i64)
            .map(|i| 100 + 3 * i)
            .chain((0..20_000).map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 40) as i64 - 8_000_000
            }))
            .chain((0..5_000i64).map(|i| 100 + 3 * i));
        for id in ids {
            assert_eq!(set.insert(id), oracle.insert(id), "{id}");
        }
        assert_eq!(set.len(), oracle.len() as u64);
        assert!(
            set.chunks.values().any(|c| matches!(c, Chunk::Dense(_))),
            "some chunk went dense"
        );
    }
}
