//! Building and running the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};

use crate::commands::CommandBus;
use crate::routes;
use crate::runner::{ProjectionRunner, RunnerHandle};
use crate::store::EventStore;

/// What every request handler can reach.
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub bus: CommandBus,
    pub projections: Arc<ProjectionRunner>,
}

pub struct Application {
    port: u16,
    server: Server,
    runner: RunnerHandle,
}

impl Application {
    /// Binds `bind` (port 0 picks a free port), catches the read models up and starts the runner.
    pub fn build(
        store: Arc<dyn EventStore>,
        checkpoint: Option<std::path::PathBuf>,
        bind: &str,
    ) -> anyhow::Result<Application> {
        let runner = Arc::new(ProjectionRunner::open(store.clone(), checkpoint)?);
        runner.catch_up()?;
        let runner = RunnerHandle::spawn(runner);
        let listener = TcpListener::bind(bind).map_err(|e| anyhow::anyhow!("cannot bind {bind}: {e}"))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            store: store.clone(),
            bus: CommandBus::new(store),
            projections: runner.runner.clone(),
        });
        let server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes::configure))
            .listen(listener)?
            .shutdown_timeout(10)
            .run();
        Ok(Application { port, server, runner })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until Ctrl-C (SIGINT) or SIGTERM, then saves the projections' checkpoint.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        self.runner.stop()?;
        Ok(())
    }
}
