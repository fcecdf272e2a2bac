//! Incremental snapshots and the change feed: a simulated week of nightly runs against the
//! fake server's simulated days, each night compared value by value with a full export.

use std::collections::BTreeSet;

use chatwoot_export::fake::{DayPlan, FakeServerConfig};

use crate::harness::Fake;

fn ids(truth: &[serde_json::Value]) -> BTreeSet<i64> {
    truth
        .iter()
        .map(|contact| contact["id"].as_i64().expect("an integer id"))
        .collect()
}

#[test]
fn a_simulated_day_changes_the_truth_as_reported() {
    let fake = Fake::start(FakeServerConfig {
        contacts: 400,
        ..FakeServerConfig::default()
    });
    let before = ids(&fake.truth());
    let report = fake.simulate_day(DayPlan {
        created: 30,
        active: 20,
        deleted_old: 4,
        deleted_new: 2,
        edited: 6,
    });
    let truth = fake.truth();
    let after = ids(&truth);
    assert_eq!(report.deleted.len(), 6);
    for id in &report.created {
        assert!(!before.contains(id), "{id} is new");
    }
    let expected: BTreeSet<i64> = before
        .iter()
        .chain(&report.created)
        .filter(|id| !report.deleted.contains(id))
        .copied()
        .collect();
    assert_eq!(after, expected);
    // created_at stays in listing order, and new contacts are born on the simulated day.
    let created: Vec<i64> = truth
        .iter()
        .map(|c| c["created_at"].as_i64().expect("created_at"))
        .collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]));
    assert!(*created.last().expect("contacts") <= report.clock);
    let silent = fake.silently_edited();
    assert!(!silent.is_empty());
    assert!(silent.iter().all(|id| report.edited.contains(id)));
}
