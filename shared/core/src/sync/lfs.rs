//! Git LFS objects in the sync service (issue 19): the engine's LFS step
//! (`git::lfs::mirror_objects`) with the object store as its lasting tier.
//!
//! Why a tier: on AWS the function's disk does not outlive it, so a local object cache alone
//! would download every object from the source again after each cold start, and a run stopped
//! by the time limit would lose what it had fetched. Each object is kept in the store under
//! `lfs/{oid[0:2]}/{oid[2:4]}/{oid}` as soon as it is downloaded and verified, and looked for
//! there before the source is asked: one download per object, however many targets, cold
//! starts and restarts — the per-object checkpoint the time limit needs.

use std::path::Path;
use std::sync::Arc;

use crate::git::lfs::{LfsError, ObjectTier, Pointer};
use crate::store::{Condition, ObjectStore, StoreError};

/// The store as the engine's lasting LFS tier. Called from blocking threads (the engine's LFS
/// step runs in one): each call waits on the runtime for the store's streaming transfer.
pub(super) struct StoreTier {
    pub store: Arc<dyn ObjectStore>,
    pub runtime: tokio::runtime::Handle,
}

impl ObjectTier for StoreTier {
    fn fetch(&self, pointer: &Pointer, dest: &Path) -> Result<bool, LfsError> {
        let key = crate::keys::lfs_object(&pointer.oid);
        match self.runtime.block_on(self.store.download(&key, dest)) {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(&key, &e)),
        }
    }

    fn keep(&self, pointer: &Pointer, path: &Path) -> Result<(), LfsError> {
        let key = crate::keys::lfs_object(&pointer.oid);
        // Content-addressed: whoever wrote it first wrote the same bytes.
        match self
            .runtime
            .block_on(self.store.upload(&key, path, Condition::IfAbsent))
        {
            Ok(_) | Err(StoreError::PreconditionFailed { .. }) => Ok(()),
            Err(e) => Err(store_error(&key, &e)),
        }
    }
}

fn store_error(key: &str, e: &StoreError) -> LfsError {
    LfsError::Store {
        message: format!("{key}: {e}"),
        transient: e.is_transient(),
    }
}
