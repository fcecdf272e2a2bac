//! One schema per table across every account of a run.
//!
//! Each account of a `run` learns its own columns (its own custom attributes); engines that
//! read a lake folder take one file's schema for all (Spark, pandas, pyarrow) or refuse files
//! that differ (Polars), and engines that map CSV by position mix the columns up. So before
//! writing, the accounts of a run meet here: each hands in the columns it found, waits until
//! every other account has either handed in its own or ended without writing, and gets back
//! the union of all of them, types joined (`ColumnType::join`). Every account then writes its
//! files in that one schema (columns it never met are null), in the contract's order.
//!
//! Receives: each account's columns per table (`agree`), or word that an account ended without
//! writing (`leave`). Emits: the union of the columns per table, the same for every account.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::transform::schema::ColumnDef;

/// Columns per table name.
pub type TableColumns = BTreeMap<String, Vec<ColumnDef>>;

/// Where the accounts of one run agree on their tables' columns.
#[derive(Debug)]
pub struct SharedSchemas {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Accounts that have neither handed in their columns nor left.
    pending: BTreeSet<u64>,
    /// The union of what was handed in so far.
    union: TableColumns,
}

impl SharedSchemas {
    /// A meeting of `accounts`.
    pub fn new(accounts: impl IntoIterator<Item = u64>) -> Self {
        Self {
            state: Mutex::new(State {
                pending: accounts.into_iter().collect(),
                union: TableColumns::new(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands in `account`'s columns and waits for every other account; returns the union.
    pub async fn agree(&self, account: u64, tables: TableColumns) -> TableColumns {
        {
            let mut state = self.lock();
            for (table, columns) in tables {
                merge(state.union.entry(table).or_default(), &columns);
            }
            state.pending.remove(&account);
        }
        self.changed.notify_waiters();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between check and wait is not lost.
            changed.as_mut().enable();
            {
                let state = self.lock();
                if state.pending.is_empty() {
                    return state.union.clone();
                }
            }
            changed.await;
        }
    }

    /// `account` ended without handing in its columns (it failed, was interrupted, or had a
    /// finished export to publish): nobody waits for it any more. Does nothing once it has.
    pub fn leave(&self, account: u64) {
        if self.lock().pending.remove(&account) {
            self.changed.notify_waiters();
        }
    }
}

/// Adds `columns` to `into` by name, types joined; first met, first placed (the writer orders
/// them by the contract).
fn merge(into: &mut Vec<ColumnDef>, columns: &[ColumnDef]) {
    for column in columns {
        match into.iter_mut().find(|c| c.name == column.name) {
            Some(known) => known.ty = known.ty.join(column.ty),
            None => into.push(column.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::transform::schema::ColumnType;

    fn columns(list: &[(&str, ColumnType)]) -> TableColumns {
        let defs = list
            .iter()
            .map(|(name, ty)| ColumnDef {
                name: (*name).to_owned(),
                ty: *ty,
            })
            .collect();
        TableColumns::from([("contacts".to_owned(), defs)])
    }

    #[tokio::test]
    async fn every_account_gets_the_union_once_all_have_handed_in_or_left() {
        let shared = Arc::new(SharedSchemas::new([1, 2, 3]));
        let first = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                shared
                    .agree(
                        1,
                        columns(&[("id", ColumnType::Int), ("a", ColumnType::Int)]),
                    )
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!first.is_finished(), "waits for the others");
        shared.leave(3);
        let second = shared
            .agree(
                2,
                columns(&[("id", ColumnType::Int), ("a", ColumnType::String)]),
            )
            .await;
        let first = first.await.expect("joined");
        assert_eq!(first, second);
        assert_eq!(
            first["contacts"],
            columns(&[("id", ColumnType::Int), ("a", ColumnType::String)])["contacts"]
        );
        shared.leave(1); // after handing in: nothing changes
    }
}
