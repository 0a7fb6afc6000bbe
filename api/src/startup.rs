//! Building and running the HTTP server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::middleware::ErrorHandlers;
use actix_web::{App, HttpServer, web};

use crate::configuration::Settings;
use crate::metrics::Metrics;
use crate::problem::{ApiError, problem_json_everywhere};
use crate::routes;
use crate::state::AppState;
use app::blobs::{BlobStore, LocalBlobStore, MemoryBlobStore};
use app::commands::{CommandBus, CommandContext};
use app::data::DataDir;
use app::idempotency::IdempotencyStore;
use app::images::LiveImageCatalog;
use app::runner::{ProjectionRunner, RunnerHandle};
use store::EventStore;

pub struct Application {
    port: u16,
    server: Server,
    runner: RunnerHandle,
    bus: CommandBus,
}

/// Where the server keeps its state.
pub struct Storage {
    pub store: Arc<dyn EventStore>,
    /// The read models' checkpoint file (None: rebuild on every start).
    pub checkpoint: Option<PathBuf>,
    /// The idempotency keys' SQLite file (None: kept in memory).
    pub idempotency: Option<PathBuf>,
}

impl Application {
    /// Binds `bind` (port 0 picks a free port) with default settings.
    pub fn build(store: Arc<dyn EventStore>, checkpoint: Option<PathBuf>, bind: &str) -> anyhow::Result<Application> {
        let settings = Settings { bind: bind.to_string(), ..Settings::default() };
        Self::build_with(Storage { store, checkpoint, idempotency: None }, settings)
    }

    /// Like [`build_with_blobs`](Self::build_with_blobs), with the blobs of the data directory
    /// that holds the checkpoint (`DIR/blobs/`, the layout of `data::DataDir`), or in memory
    /// when there is no checkpoint file.
    pub fn build_with(storage: Storage, settings: Settings) -> anyhow::Result<Application> {
        let blobs: Arc<dyn BlobStore> = match storage.checkpoint.as_deref().and_then(std::path::Path::parent) {
            Some(data_dir) => Arc::new(LocalBlobStore::open(&DataDir::blobs_path(data_dir))?),
            None => Arc::new(MemoryBlobStore::default()),
        };
        Self::build_with_blobs(storage, settings, blobs)
    }

    /// Seeds the default taxonomy into an empty store, catches the read models up, starts the
    /// projection runner and binds `settings.bind`.
    pub fn build_with_blobs(
        storage: Storage,
        settings: Settings,
        blobs: Arc<dyn BlobStore>,
    ) -> anyhow::Result<Application> {
        let Storage { store, checkpoint, idempotency } = storage;
        let bus = CommandBus::new(store.clone());
        app::defaults::seed_default_taxonomy(&bus, &CommandContext::system())?;
        let runner = Arc::new(ProjectionRunner::open(store.clone(), checkpoint)?);
        runner.catch_up()?;
        let runner = RunnerHandle::spawn(runner);
        let idempotency = match idempotency {
            Some(path) => IdempotencyStore::open(&path)?,
            None => IdempotencyStore::in_memory()?,
        };
        let bind = settings.bind.clone();
        let listener = TcpListener::bind(&bind).map_err(|e| anyhow::anyhow!("cannot bind {bind}: {e}"))?;
        let port = listener.local_addr()?.port();
        let body_limit = settings.body_limit_bytes;
        let workers = settings.workers;
        let metrics = Arc::new(Metrics::default());
        let state = web::Data::new(AppState {
            store,
            bus: bus.clone(),
            blobs,
            images: Arc::new(LiveImageCatalog::default()),
            projections: runner.runner.clone(),
            idempotency: Arc::new(idempotency),
            metrics: metrics.clone(),
            settings,
        });
        let mut server = HttpServer::new(move || {
            let metrics = metrics.clone();
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(body_limit))
                .app_data(web::JsonConfig::default().limit(body_limit).error_handler(|error, _| {
                    ApiError::unprocessable(format!("the JSON body does not fit: {error}")).into()
                }))
                .app_data(web::QueryConfig::default().error_handler(|error, _| {
                    ApiError::bad_request(format!("the query string does not fit: {error}")).into()
                }))
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|error, _| ApiError::not_found(format!("no such resource: {error}")).into()),
                )
                .wrap(ErrorHandlers::new().default_handler(problem_json_everywhere))
                .wrap_fn(move |request, service| {
                    let started = Instant::now();
                    let method = request.method().to_string();
                    let metrics = metrics.clone();
                    let response = service.call(request);
                    async move {
                        let response = response.await?;
                        let route = response.request().match_pattern().unwrap_or_else(|| "(unmatched)".to_string());
                        metrics.record_request(&method, &route, response.status().as_u16(), started.elapsed());
                        Ok(response)
                    }
                })
                .configure(routes::configure)
        })
        .listen(listener)?
        .shutdown_timeout(10);
        if let Some(workers) = workers {
            server = server.workers(workers.max(1));
        }
        let server = server.run();
        Ok(Application { port, server, runner, bus })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's command bus (one writer per stream in the process: share it).
    pub fn bus(&self) -> CommandBus {
        self.bus.clone()
    }

    /// The read models the server answers from.
    pub fn projections(&self) -> Arc<ProjectionRunner> {
        self.runner.runner.clone()
    }

    /// A handle that stops the server from another thread.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until Ctrl-C (SIGINT) or SIGTERM, then saves the projections' checkpoint.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        self.runner.stop()?;
        Ok(())
    }
}
