//! The image catalog kept up with the store: `projections::ImageCatalog` behind a lock, caught up
//! on each query so that an answer reflects the log's head when it was asked.

use std::sync::{Mutex, PoisonError};

use domain::{DomainEvent, ImageId};
use projections::{ImageCatalog, ImageRecord};
use store::EventStore;

const CATALOG_BATCH: usize = 10_000;

/// Why the catalog could not catch up.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("event store: {0}")]
    Store(#[from] store::StoreError),
    #[error("stored history cannot be read at position {position}: {reason}")]
    Undecodable { position: u64, reason: String },
}

/// Images by id, following the store from its own position.
#[derive(Debug, Default)]
pub struct LiveImageCatalog {
    catalog: Mutex<ImageCatalog>,
}

impl LiveImageCatalog {
    /// Folds whatever the store recorded since the last call; the position now reflected.
    pub fn catch_up(&self, store: &dyn EventStore) -> Result<u64, CatalogError> {
        let mut catalog = self.catalog.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let batch = store.read_all(catalog.position, CATALOG_BATCH)?;
            let done = batch.len() < CATALOG_BATCH;
            for stored in &batch {
                if !ImageCatalog::wants(&stored.event_type) {
                    catalog.skip(stored.position);
                    continue;
                }
                let event = DomainEvent::decode_str(
                    stored.stream.as_str(),
                    &stored.event_type,
                    stored.schema_version,
                    &stored.payload,
                )
                .map_err(|e| CatalogError::Undecodable { position: stored.position, reason: e.to_string() })?;
                catalog.apply(stored.position, event);
            }
            if done {
                return Ok(catalog.position);
            }
        }
    }

    pub fn get(&self, image_id: ImageId) -> Option<ImageRecord> {
        self.catalog.lock().unwrap_or_else(PoisonError::into_inner).get(image_id).cloned()
    }
}
