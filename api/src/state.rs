//! What every request handler can reach. Its own module, so that the extractor (`auth`), the
//! routes and the server's start-up (`startup`) all import it and none imports another in a circle.

use std::sync::Arc;

use app::blobs::BlobStore;
use app::commands::CommandBus;
use app::idempotency::IdempotencyStore;
use app::images::LiveImageCatalog;
use app::runner::ProjectionRunner;
use store::EventStore;

use crate::configuration::Settings;
use crate::metrics::Metrics;

/// What every request handler can reach.
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub bus: CommandBus,
    pub blobs: Arc<dyn BlobStore>,
    /// Image metadata by id (see `routes::images`), caught up on each query.
    pub images: Arc<LiveImageCatalog>,
    pub projections: Arc<ProjectionRunner>,
    pub idempotency: Arc<IdempotencyStore>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}
