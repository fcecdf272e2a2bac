//! Where finished files go. Today a local folder (`local`); an object store is one more file.

mod local;

pub use local::{MANIFEST_FILE, OutputDir, StoreError, disk_hint};
