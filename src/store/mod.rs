//! Where finished files go: a local folder (`local`: temporary names, atomic renames, manifest
//! last) or an object store / lake folder (`lake`: a staged export uploaded, manifests last,
//! earlier runs of the partition removed after), staged in a fixed place per job (`staging`:
//! kept for `--resume` when a run fails, locked against two runs at once), or committed to
//! Delta Lake tables (`delta`: the staged Parquet files added by one Delta commit per table);
//! the snapshot an incremental run builds on kept at such destinations (`snapshot`).

mod delta;
mod lake;
mod local;
mod snapshot;
mod staging;

pub use delta::{DeltaError, publish as publish_delta};
pub use lake::{Destination, LakeError, Published, RunVars, is_url};
pub use local::{
    MANIFEST_FILE, OutputDir, SNAPSHOT_DIR, StoreError, disk_hint, owner_only, owner_only_dir,
};
pub use snapshot::{BaseAt, fetch as fetch_snapshot, keep as keep_snapshot};
pub use staging::{StagingError, StagingLock, StagingPlace, remove_old_staging, staging_root};
