//! The `thitl` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::startup::Application;
use app::audit::{event_json, event_line};
use app::commands::CommandBus;
use app::data::{DataDir, StoreLocation};
use app::runner::{ProjectionRunner, Until, replay};
use store::{StreamName, verify};

#[derive(Parser)]
#[command(
    name = "thitl",
    version,
    about = "Twice-human-in-the-loop mitigation of problematic associations in image-generation models",
    long_about = "thitl records every prompt, image, annotation and fine-tune step of a T-HITL campaign \
                  as an immutable, hash-chained event.\n\n\
                  Start here:\n  thitl demo                      run a whole campaign on the embedded defaults\n  \
                  thitl serve --data DIR          serve the API on a data directory\n  \
                  thitl token create --data DIR --role curator --name NAME   a bearer token\n  \
                  thitl audit verify --data DIR   check every hash chain"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The log filter when `THITL_LOG` is unset: `info`, but `warn` for the demo, whose progress
    /// bars share stderr.
    pub fn default_log_filter(&self) -> &'static str {
        if matches!(self.command, Command::Demo { .. }) { "warn" } else { "info" }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API on a data directory (created if missing). Stop with Ctrl-C.
    Serve {
        /// Data directory: events.db, projections.json, blobs/.
        #[arg(long, env = "THITL_DATA", default_value = "thitl-data")]
        data: PathBuf,
        /// Address to listen on; port 0 picks a free port (default 127.0.0.1:8080).
        #[arg(long, env = "THITL_BIND")]
        bind: Option<String>,
        /// A JSON settings file (bind, body_limit_bytes, workers, wait_for_max_seconds);
        /// THITL_* variables and the flags above override it.
        #[arg(long, env = "THITL_CONFIG")]
        config: Option<PathBuf>,
        /// Serve the API only: run no generation or fine-tune jobs and step no campaigns
        /// (another `thitl serve` on the same data does).
        #[arg(long)]
        no_jobs: bool,
        /// Step the campaigns but run no generation or fine-tune job here: workers do (`thitl
        /// worker --api` on GPU machines that reach this server over HTTPS, or `thitl worker` on
        /// this store).
        #[arg(long, conflicts_with = "no_jobs")]
        no_local_jobs: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Run generation and fine-tune jobs: on a data directory's store, beside `thitl serve` (which
    /// may then run with --no-jobs) and other workers, or with --api and --token on a server
    /// reached over HTTPS alone. Each job is claimed with a lease, so no two workers run the same
    /// one and a dead worker's job is taken over once its lease expires. Stop with Ctrl-C (the job
    /// at hand runs to its end; Ctrl-C again abandons it).
    Worker {
        /// Data directory written by `thitl serve` or `thitl demo` (events.db, blobs/); with
        /// --api, this worker's own directory: its cache of weights and blobs by hash.
        #[arg(long, env = "THITL_DATA", default_value = "thitl-data")]
        data: PathBuf,
        /// Run the jobs of the thitl server at this URL (https://…) through its REST API, instead
        /// of a local store: nothing but HTTPS and a worker token needed.
        #[arg(long, env = "THITL_API", requires = "token", conflicts_with = "location")]
        api: Option<String>,
        /// A worker token (`thitl token create --role worker`), for --api. Prefer the variable: a
        /// flag shows in the process list.
        #[arg(long, env = "THITL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// This worker's name: unique among the processes sharing the store (default
        /// worker@HOST-PID). A worker restarted under its old name resumes its own job at once.
        #[arg(long)]
        name: Option<String>,
        /// How long a claim holds without renewal; the worker renews it every third of that.
        #[arg(long, env = "THITL_JOB_LEASE_SECONDS", default_value_t = app::workers::DEFAULT_LEASE_SECONDS,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(domain::lease::MAX_LEASE_SECONDS)))]
        lease_seconds: u32,
        #[command(flatten)]
        device: crate::scenes_cli::DeviceArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Issue or revoke API bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run a whole T-HITL campaign for the three default associations on the reference world
    /// (about 15 minutes on 2 cores; resumes an unfinished one in --data) and print the evaluation.
    Demo {
        /// Data directory to write (default: a new temporary directory, kept afterwards).
        #[arg(long)]
        data: Option<PathBuf>,
        /// A small campaign (48 probe images per association): about 3 minutes.
        #[arg(long)]
        quick: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Rounds without quality controls, for comparison: three raters per item and a majority,
        /// no gold items, no careless annotator (by default every round has gold items, a careless
        /// simulated annotator the rule should exclude, and two raters per item, more where split).
        #[arg(long)]
        fixed_rounds: bool,
    },
    /// For analysts: annotations, images' metadata or evaluations as CSV, JSON Lines or Parquet,
    /// from the event log (every row names its event's position; the summary on stderr, the
    /// position the export reflects).
    Export {
        /// annotations, images or evaluations.
        kind: String,
        #[arg(long, env = "THITL_DATA", default_value = "thitl-data")]
        data: PathBuf,
        /// csv, jsonl or parquet (typed columns; needs --out or a redirected standard output).
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// For auditors: verify the hash chains, read the log, replay history.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Maintain the read models.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Training prompts: try the configured generator (a chat endpoint, or the templates).
    #[command(subcommand)]
    Prompts(crate::prompts_cli::PromptsCommand),
    /// Move a whole event store (and its blobs) to another one.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Measure throughput on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The reference world: train its base model, measure a model's samples, look at them.
    #[command(subcommand)]
    Scenes(crate::scenes_cli::ScenesCommand),
    /// Stable Diffusion pipelines (diffusers folders): tokenize a prompt as the pipeline would.
    #[command(subcommand)]
    Model(crate::model_cli::ModelCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every stream's hash chain. Exit 0 if all hold, 1 naming the first that fails.
    Verify {
        #[arg(long, env = "THITL_DATA")]
        data: PathBuf,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Print recorded events, oldest first.
    Log {
        #[arg(long, env = "THITL_DATA")]
        data: PathBuf,
        /// Only this stream (e.g. association-0190…).
        #[arg(long)]
        stream: Option<String>,
        /// Only events after this global position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show the read models as they were at a position or time ("what did the system know then?").
    Replay {
        #[arg(long, env = "THITL_DATA")]
        data: PathBuf,
        /// A global position (e.g. 120) or an RFC 3339 time (e.g. 2026-11-26T12:00:00Z).
        #[arg(long)]
        until: Until,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a token and print it once (only its SHA-256 is recorded, in a TokenIssued event).
    Create {
        #[arg(long, env = "THITL_DATA")]
        data: PathBuf,
        /// admin, curator, annotator, operator, auditor or worker.
        #[arg(long)]
        role: String,
        /// The principal's name: the actor of every event the token causes.
        #[arg(long)]
        name: String,
    },
    /// Revoke a token by id: it answers 401 from then on.
    Revoke {
        #[arg(long, env = "THITL_DATA")]
        data: PathBuf,
        /// The token id `token create` printed.
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "revoked from the command line")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Matmul TFLOP/s, DiT sampling images/s and LoRA training steps/s on the GPU adapter at hand
    /// (a software adapter such as lavapipe included) and on the CPU backend. Sizes default to
    /// what the adapter can do in a minute or two.
    Gpu {
        /// Square matmul sizes, e.g. 1024,4096 (default: 1024,4096 on a GPU, 256 on a software adapter).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// DiT configurations to time: tiny, small, dit-s (default: small,dit-s on a GPU, tiny otherwise).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Images per sampling and training batch (default 64 on a GPU, 4 otherwise).
        #[arg(long)]
        batch: Option<usize>,
        /// Skip the wgpu adapter (CPU backend only).
        #[arg(long)]
        no_gpu: bool,
        /// Skip the CPU backend.
        #[arg(long)]
        no_cpu: bool,
    },
    /// Stable Diffusion 1.5 at full size (UNet 860M, CLIP ViT-L/14 text tower, VAE) with
    /// synthetic weights: images/s of a guided pipeline call (text encoder, STEPS UNet
    /// evaluations on 2 × batch latents, DDIM updates, VAE decode) on one backend.
    Sd {
        /// Image side in pixels.
        #[arg(long, default_value_t = 512)]
        size: usize,
        /// Denoising steps.
        #[arg(long, default_value_t = 25)]
        steps: usize,
        /// Images per call, one measurement each (e.g. 1,4).
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        batch: Vec<usize>,
        /// auto, cpu or wgpu.
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

/// `--store`, for the commands that read or write a store.
#[derive(clap::Args)]
struct StoreArg {
    /// Where the events are: sqlite:DIR (default: the --data directory's events.db) or an
    /// EventStoreDB/KurrentDB cluster, esdb://HOST:2113[,HOST:2113…]?tls=false. Blobs, the
    /// checkpoint and idempotency records stay in --data.
    #[arg(long = "store", value_name = "STORE", env = "THITL_STORE")]
    location: Option<String>,
}

impl StoreArg {
    fn parse(self) -> anyhow::Result<Option<StoreLocation>> {
        self.location.map(|text| StoreLocation::parse(&text).map_err(|e| anyhow::anyhow!("--store {e}"))).transpose()
    }
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy every stream, chain intact, into an empty store, and verify the copy.
    /// Stores are named `sqlite:DIR` (a data directory; a bare path means the same) or
    /// `esdb://HOST:2113?tls=false` (an EventStoreDB/KurrentDB cluster; events only: blobs are
    /// copied between data directories).
    Copy {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Discard the read models' checkpoint and fold every event again from position 0.
    Rebuild {
        #[arg(long, env = "THITL_DATA")]
        data: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { data, bind, config, no_jobs, no_local_jobs, store } => {
            let background = match (no_jobs, no_local_jobs) {
                (true, _) => Background::Nothing,
                (false, true) => Background::CampaignsOnly,
                (false, false) => Background::CampaignsAndJobs,
            };
            serve(&data, store.parse()?.as_ref(), bind, config.as_deref(), background)
        }
        Command::Worker { data, api, token, name, lease_seconds, device, store } => {
            let worker_name = name.unwrap_or_else(|| app::workers::Worker::default_name("worker", true));
            match api {
                Some(api) => remote_worker(
                    &api,
                    token.as_deref().unwrap_or_default(),
                    &data,
                    &device,
                    worker_name,
                    lease_seconds,
                ),
                None => worker(
                    &data,
                    store.parse()?.as_ref(),
                    &device,
                    app::workers::Worker { name: worker_name, lease_seconds },
                ),
            }
        }
        Command::Token(TokenCommand::Create { data, role, name }) => token_create(&data, &role, &name),
        Command::Token(TokenCommand::Revoke { data, id, reason }) => token_revoke(&data, &id, &reason),
        Command::Demo { data, quick, json, seed, fixed_rounds } => {
            let rounds = if fixed_rounds { crate::demo::Rounds::Fixed } else { crate::demo::Rounds::Controlled };
            demo(data, quick, json, seed, rounds)
        }
        Command::Export { kind, data, format, out } => export(&kind, &data, &format, out.as_deref()),
        Command::Audit(AuditCommand::Verify { data, store }) => audit_verify(&data, store.parse()?.as_ref()),
        Command::Audit(AuditCommand::Log { data, stream, after, limit, json }) => {
            audit_log(&data, stream, after, limit, json)
        }
        Command::Audit(AuditCommand::Replay { data, until, json }) => audit_replay(&data, until, json),
        Command::Projections(ProjectionsCommand::Rebuild { data }) => rebuild(&data),
        Command::Store(StoreCommand::Copy { from, to }) => store_copy(&from, &to),
        Command::Bench(BenchCommand::Gpu { sizes, models, batch, no_gpu, no_cpu }) => {
            bench_gpu(sizes, models, batch, !no_gpu, !no_cpu)
        }
        Command::Bench(BenchCommand::Sd { size, steps, batch, device }) => {
            crate::model_cli::bench_sd(size, steps, batch, &device)
        }
        Command::Scenes(command) => crate::scenes_cli::run(command),
        Command::Model(command) => crate::model_cli::run(command),
        Command::Prompts(command) => crate::prompts_cli::run(command),
    }
}

fn worker(
    data: &Path,
    store: Option<&StoreLocation>,
    device: &crate::scenes_cli::DeviceArg,
    worker: app::workers::Worker,
) -> anyhow::Result<ExitCode> {
    if let Err(error) = domain::values::Name::parse("worker", &worker.name) {
        anyhow::bail!("--name: {error}");
    }
    let dir = DataDir::open_existing_with(data, store)?;
    let blobs = std::sync::Arc::new(dir.blobs()?);
    // Its own read models, in memory (the checkpoint file is the server's): they list the jobs.
    let projections = std::sync::Arc::new(app::runner::ProjectionRunner::open(dir.store.clone(), None)?);
    projections.catch_up()?;
    let runner = app::runner::RunnerHandle::spawn(projections.clone());
    let backend = device.backend()?;
    tracing::info!(device = %backend.describe(), data = %data.display(), "jobs run here");
    let bus = app::commands::CommandBus::new(dir.store.clone());
    let driver = app::driver::Driver::spawn(app::driver::DriverParts {
        bus,
        blobs: blobs.clone(),
        projections,
        family: std::sync::Arc::new(app::reference::ReferenceWorld::new(backend.clone())),
        named_families: app::sd::named_families(blobs, backend, data),
        rater: None,
        campaigns: None,
        worker,
        run_jobs: true,
    });
    actix_web::rt::System::new().block_on(async {
        stop_signal().await;
        tracing::info!("stopping: the job in progress runs to its end (Ctrl-C again abandons it; another worker or a restart resumes it)");
        actix_web::rt::spawn(async {
            stop_signal().await;
            tracing::warn!("abandoning the job in progress");
            std::process::exit(130);
        });
        actix_web::rt::task::spawn_blocking(move || driver.stop()).await.ok();
    });
    drop(runner);
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// `thitl worker --api URL --token TOKEN`: the server's jobs over HTTPS, until Ctrl-C.
fn remote_worker(
    api: &str,
    token: &str,
    data: &Path,
    device: &crate::scenes_cli::DeviceArg,
    name: String,
    lease_seconds: u32,
) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if let Err(error) = domain::values::Name::parse("worker", &name) {
        anyhow::bail!("--name: {error}");
    }
    let backend = device.backend()?;
    tracing::info!(device = %backend.describe(), cache = %data.display(), "jobs run here");
    let settings = crate::remote_worker::RemoteWorkerSettings {
        api: api.to_string(),
        token: token.to_string(),
        name,
        lease_seconds,
        data: data.to_path_buf(),
        backend,
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Woken by Ctrl-C, or by the worker ending on its own (an error).
    let wake = Arc::new(tokio::sync::Notify::new());
    let (flag, ended) = (stop.clone(), wake.clone());
    let working = std::thread::Builder::new().name("thitl-remote-worker".into()).spawn(move || {
        let result = crate::remote_worker::run(settings, flag);
        ended.notify_one();
        result
    })?;
    let result = actix_web::rt::System::new().block_on(async {
        let interrupted = wake.clone();
        actix_web::rt::spawn(async move {
            stop_signal().await;
            interrupted.notify_one();
        });
        wake.notified().await;
        if !working.is_finished() {
            tracing::info!("stopping: the job in progress runs to its end (Ctrl-C again abandons it; another worker resumes it once its lease ends)");
            stop.store(true, Ordering::SeqCst);
            actix_web::rt::spawn(async {
                stop_signal().await;
                tracing::warn!("abandoning the job in progress");
                std::process::exit(130);
            });
        }
        actix_web::rt::task::spawn_blocking(move || working.join()).await
    });
    match result {
        Ok(Ok(Ok(()))) => Ok(ExitCode::SUCCESS),
        Ok(Ok(Err(error))) => Err(error),
        _ => anyhow::bail!("the worker thread stopped unexpectedly"),
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let on_interrupt = notify.clone();
    actix_web::rt::spawn(async move {
        if actix_web::rt::signal::ctrl_c().await.is_ok() {
            on_interrupt.notify_one();
        }
    });
    #[cfg(unix)]
    if let Ok(mut terminate) = actix_web::rt::signal::unix::signal(actix_web::rt::signal::unix::SignalKind::terminate())
    {
        let on_terminate = notify.clone();
        actix_web::rt::spawn(async move {
            if terminate.recv().await.is_some() {
                on_terminate.notify_one();
            }
        });
    }
    notify.notified().await;
}

fn bench_gpu(
    sizes: Vec<usize>,
    models: Vec<String>,
    batch: Option<usize>,
    gpu: bool,
    cpu: bool,
) -> anyhow::Result<ExitCode> {
    use gpu::bench::{BenchOptions, run_with_progress};
    use gpu::model::DitConfig;
    // Size the run to the adapter: a software adapter is hundreds of times slower than a GPU.
    let hardware = gpu && gpu::context::GpuContext::new().map(|c| c.is_hardware()).unwrap_or(false);
    let config = |name: &str| -> anyhow::Result<(String, DitConfig)> {
        let config = match name {
            "tiny" => DitConfig::tiny(),
            "small" => DitConfig::small(),
            "dit-s" => DitConfig::dit_s(),
            other => anyhow::bail!("unknown model '{other}': choose tiny, small or dit-s"),
        };
        Ok((name.to_string(), config))
    };
    let model_names = if !models.is_empty() {
        models
    } else if hardware {
        vec!["small".into(), "dit-s".into()]
    } else {
        vec!["tiny".into()]
    };
    let gpu_models = model_names.iter().map(|name| config(name)).collect::<anyhow::Result<Vec<_>>>()?;
    let options = BenchOptions {
        gpu_sizes: if !sizes.is_empty() {
            sizes.clone()
        } else if hardware {
            vec![1024, 4096]
        } else {
            vec![256]
        },
        cpu_sizes: if !sizes.is_empty() { sizes } else { vec![512] },
        repeats: if hardware { 10 } else { 3 },
        gpu,
        cpu,
        check_size: if hardware { 1000 } else { 64 },
        cpu_models: gpu_models.clone(),
        gpu_models,
        model_batch: batch.unwrap_or(if hardware { 64 } else { 4 }),
        sample_steps: if hardware { 25 } else { 5 },
        model_repeats: if hardware { 3 } else { 1 },
        // The DiT-S-shaped products take seconds each on a software adapter.
        gpu_linear_shapes: if hardware { BenchOptions::default().gpu_linear_shapes } else { vec![] },
    };
    eprintln!(
        "thitl bench gpu: matmul {:?}, models {:?}, batch {}, {} DDIM steps (medians after a warm-up)",
        options.gpu_sizes, model_names, options.model_batch, options.sample_steps
    );
    let report = run_with_progress(&options, &mut |line| {
        if !line.starts_with("RESULT") {
            eprintln!("  {line}");
        }
    })?;
    println!("{}", report.render());
    Ok(ExitCode::SUCCESS)
}

/// What `thitl serve` does besides serving the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Background {
    CampaignsAndJobs,
    /// Workers elsewhere run the jobs (`--no-local-jobs`).
    CampaignsOnly,
    /// Another `thitl serve` on the same data drives (`--no-jobs`).
    Nothing,
}

fn serve(
    data: &Path,
    store: Option<&StoreLocation>,
    bind: Option<String>,
    config: Option<&Path>,
    background: Background,
) -> anyhow::Result<ExitCode> {
    let mut settings = crate::configuration::Settings::load(config)?;
    if let Some(bind) = bind {
        settings.bind = bind;
    }
    let dir = DataDir::open_or_create_with(data, store)?;
    if let Some(store) = store {
        tracing::info!(store = %store.describe(), "events are in");
    }
    let storage = crate::startup::Storage {
        store: dir.store.clone(),
        checkpoint: Some(dir.checkpoint_path()),
        idempotency: Some(dir.idempotency_path()),
    };
    actix_web::rt::System::new().block_on(async move {
        let bind = settings.bind.clone();
        let blobs = std::sync::Arc::new(dir.blobs()?);
        let generator = crate::prompts_cli::prompt_generator(&settings)?;
        let app = Application::build_with_blobs(storage, settings, blobs.clone())?;
        let driver = match background {
            Background::CampaignsAndJobs | Background::CampaignsOnly => {
                let run_jobs = background == Background::CampaignsAndJobs;
                let backend = match run_jobs {
                    true => gpu::Backend::choose(gpu::DeviceChoice::from_env()?)?,
                    // No job runs here: the reference world's family only names its objects.
                    false => gpu::Backend::Cpu,
                };
                match run_jobs {
                    true => tracing::info!(device = %backend.describe(), "jobs run here"),
                    false => tracing::info!("jobs run on workers (thitl worker), not here"),
                }
                let worker = app::workers::Worker::from_env(app::workers::Worker::default_name("serve", false))
                    .map_err(|e| anyhow::anyhow!(e))?;
                let parts = app::driver::DriverParts {
                    bus: app.bus(),
                    blobs: blobs.clone(),
                    projections: app.projections(),
                    family: std::sync::Arc::new(app::reference::ReferenceWorld::new(backend.clone())),
                    named_families: app::sd::named_families(blobs, backend, data),
                    rater: Some(std::sync::Arc::new(app::reference::ReferenceRater::default())),
                    campaigns: Some((generator, 0x0007_4171)),
                    worker,
                    run_jobs,
                };
                Some(app::driver::Driver::spawn(parts))
            }
            Background::Nothing => None,
        };
        let address = format!("http://{}", bind_address(&bind, app.port()));
        tracing::info!(%address, data = %data.display(), "thitl is serving; stop with Ctrl-C");
        app.run_until_stopped().await?;
        if let Some(driver) = driver {
            const WAITING: &str =
                "waiting for the job in progress to end (Ctrl-C again to abandon it: it resumes at the next start)";
            tracing::info!(WAITING);
            driver.stop();
        }
        tracing::info!("stopped cleanly");
        Ok(ExitCode::SUCCESS)
    })
}

fn export(kind: &str, data: &Path, format: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    use app::export::{ExportCursor, ExportFormat, ExportKind};
    use std::io::Write;
    let kind = ExportKind::parse(kind)
        .ok_or_else(|| anyhow::anyhow!("no export is called '{kind}': use annotations, images or evaluations"))?;
    let format = ExportFormat::parse(format)
        .ok_or_else(|| anyhow::anyhow!("format '{format}' is not one of csv, jsonl, parquet"))?;
    if out.is_none() && !format.is_text() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("a {} export is binary: write it with --out FILE or redirect standard output", format.name());
    }
    let dir = DataDir::open_existing(data)?;
    let mut cursor = ExportCursor::new(kind, format, dir.store.clone())?;
    let mut sink: Box<dyn Write> = match out {
        // Written beside the target and renamed at the end: a failed export leaves no half file.
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path.with_extension("partial"))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    while let Some(chunk) = cursor.next_chunk()? {
        sink.write_all(&chunk)?;
    }
    sink.flush()?;
    drop(sink);
    if let Some(path) = out {
        std::fs::rename(path.with_extension("partial"), path)?;
    }
    eprintln!("exported {} {} rows up to position {}", cursor.rows(), kind.name(), cursor.position());
    Ok(ExitCode::SUCCESS)
}

fn store_copy(from: &str, to: &str) -> anyhow::Result<ExitCode> {
    let parse = |flag: &str, text: &str| StoreLocation::parse(text).map_err(|e| anyhow::anyhow!("{flag} {e}"));
    let (from, to) = (parse("--from", from)?, parse("--to", to)?);
    let same = match (&from, &to) {
        (StoreLocation::Sqlite(a), StoreLocation::Sqlite(b)) => {
            a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok().as_ref() == Some(&a))
        }
        (a, b) => a == b,
    };
    if same {
        anyhow::bail!("--from and --to name the same store");
    }
    let (source, target) = (from.open(false)?, to.open(true)?);
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  copying events [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = store::copy::copy_store(source.as_ref(), target.as_ref(), &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report?;
    println!(
        "copied {} events in {} streams (positions 1 to {}), every chain verified, in {:.1?}",
        report.events,
        report.streams,
        report.head,
        started.elapsed()
    );
    // The blobs the events name, by hash: copied file by file, then rehashed.
    let (StoreLocation::Sqlite(from_dir), StoreLocation::Sqlite(to_dir)) = (&from, &to) else {
        println!(
            "blobs are not copied: an EventStoreDB store holds events only; keep the blobs/ directory of the data directory that serves these events"
        );
        return Ok(ExitCode::SUCCESS);
    };
    let copied = copy_tree(&DataDir::blobs_path(from_dir), &DataDir::blobs_path(to_dir))?;
    let blobs = app::blobs::verify_blobs(&DataDir::blobs_path(to_dir))?;
    println!("copied {copied} blob files; {}", blobs.summary());
    for problem in &blobs.problems {
        println!("blob verification FAILED: {problem}");
    }
    Ok(if blobs.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Copies the files under `from` to the same places under `to` (existing ones are kept: blobs
/// are named by their content); answers how many were copied.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let mut copied = 0;
    if !from.is_dir() {
        return Ok(0);
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copied += copy_tree(&entry.path(), &target)?;
        } else if !target.exists() {
            std::fs::copy(entry.path(), &target)?;
            copied += 1;
        }
    }
    Ok(copied)
}

fn token_create(data: &Path, role: &str, name: &str) -> anyhow::Result<ExitCode> {
    let role = domain::Role::parse(role).filter(|r| *r != domain::Role::System).ok_or_else(|| {
        anyhow::anyhow!("unknown role '{role}': use admin, curator, annotator, operator, auditor or worker")
    })?;
    let dir = DataDir::open_or_create(data)?;
    let bus = CommandBus::new(dir.store.clone());
    let context = app::commands::CommandContext::new(domain::Actor::new("thitl-cli", domain::Role::Admin));
    let issued = crate::auth::issue_token(&bus, &context, name, role)?;
    eprintln!(
        "issued token {} for '{}' ({role}); it is shown this once and cannot be recovered:",
        issued.token_id,
        name.trim()
    );
    println!("{}", issued.secret);
    Ok(ExitCode::SUCCESS)
}

fn token_revoke(data: &Path, id: &str, reason: &str) -> anyhow::Result<ExitCode> {
    let token_id: domain::TokenId =
        id.parse().map_err(|_| anyhow::anyhow!("'{id}' is not a token id (a UUID, as `token create` printed)"))?;
    let dir = DataDir::open_existing(data)?;
    let bus = CommandBus::new(dir.store.clone());
    let context = app::commands::CommandContext::new(domain::Actor::new("thitl-cli", domain::Role::Admin));
    bus.execute::<domain::Token>(
        &token_id.stream(),
        None,
        &context,
        domain::TokenCommand::Revoke { reason: reason.to_string() },
    )
    .map_err(|e| match e {
        app::commands::CommandError::Domain(domain::DomainError::NotFound { .. }) => {
            anyhow::anyhow!("no token has id {token_id}")
        }
        other => other.into(),
    })?;
    eprintln!("revoked token {token_id}");
    Ok(ExitCode::SUCCESS)
}

fn bind_address(bind: &str, port: u16) -> String {
    let host = bind.rsplit_once(':').map_or(bind, |(host, _)| host);
    format!("{host}:{port}")
}

fn audit_verify(data: &Path, store: Option<&StoreLocation>) -> anyhow::Result<ExitCode> {
    let dir = DataDir::open_existing_with(data, store)?;
    let chains_ok = match verify(dir.store.as_ref()) {
        Ok(report) => {
            println!("{} events in {} streams verified", report.events, report.streams);
            true
        }
        Err(failure) => {
            println!("verification FAILED: {failure}");
            false
        }
    };
    // Blobs are named by their SHA-256: rehash each one.
    let blobs = app::blobs::verify_blobs(&DataDir::blobs_path(data))?;
    println!("{}", blobs.summary());
    for problem in &blobs.problems {
        println!("blob verification FAILED: {problem}");
    }
    Ok(if chains_ok && blobs.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn audit_log(
    data: &Path,
    stream: Option<String>,
    after: u64,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let dir = DataDir::open_existing(data)?;
    let mut printed = 0usize;
    let limit = limit.unwrap_or(usize::MAX);
    let print = |event: &store::StoredEvent| {
        if json {
            println!("{}", event_json(event));
        } else {
            println!("{}", event_line(event));
        }
    };
    match stream {
        Some(name) => {
            let name = StreamName::new(name)?;
            let mut version = 1;
            while printed < limit {
                let batch = dir.store.read_stream(&name, version, 1000)?;
                if batch.is_empty() {
                    break;
                }
                for event in batch.iter().filter(|e| e.position > after).take(limit - printed) {
                    print(event);
                    printed += 1;
                }
                version = batch.last().map_or(version, |e| e.version + 1);
            }
        }
        None => {
            let mut from = after;
            while printed < limit {
                let batch = dir.store.read_all(from, 1000.min(limit - printed))?;
                if batch.is_empty() {
                    break;
                }
                for event in &batch {
                    print(event);
                }
                printed += batch.len();
                from = batch.last().map_or(from, |e| e.position);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn audit_replay(data: &Path, until: Until, json: bool) -> anyhow::Result<ExitCode> {
    let dir = DataDir::open_existing(data)?;
    let state = replay(dir.store.as_ref(), until)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("as of position {} ({} events in {} streams)", state.position, state.audit.events, state.audit.streams);
    if let Some(at) = state.audit.last_recorded_at {
        println!("last event recorded at {}", at.to_rfc3339());
    }
    println!("\nassociations:");
    for view in state.associations.associations.values() {
        println!("  {} → {} [{}] {}", view.group, view.concept, view.category, view.status);
        for evaluation in &view.evaluations {
            println!(
                "    {:?}: rate before {:.1}% (n={}), after {:.1}% (n={})",
                evaluation.arm,
                evaluation.before.rate * 100.0,
                evaluation.before.n,
                evaluation.after.rate * 100.0,
                evaluation.after.n
            );
        }
    }
    println!("\nrounds:");
    for round in state.rounds.rounds.values() {
        println!(
            "  {} {:?}: {}/{} annotations, {}{}",
            round.id,
            round.kind,
            round.submitted,
            round.needed,
            round.status,
            round.accepted.map(|a| format!(", {a} accepted")).unwrap_or_default()
        );
    }
    println!("\nevents by type:");
    for (event_type, count) in &state.audit.by_type {
        println!("  {event_type:<28} {count}");
    }
    Ok(ExitCode::SUCCESS)
}

fn rebuild(data: &Path) -> anyhow::Result<ExitCode> {
    let dir = DataDir::open_existing(data)?;
    let checkpoint = dir.checkpoint_path();
    match std::fs::remove_file(&checkpoint) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let started = std::time::Instant::now();
    let runner = ProjectionRunner::open(dir.store.clone(), Some(checkpoint))?;
    let position = runner.catch_up()?;
    runner.save()?;
    println!("rebuilt projections from position 0 to {position} in {:.2?}", started.elapsed());
    Ok(ExitCode::SUCCESS)
}

fn demo(
    data: Option<PathBuf>,
    quick: bool,
    json: bool,
    seed: u64,
    rounds: crate::demo::Rounds,
) -> anyhow::Result<ExitCode> {
    use crate::demo::{Demo, Progress, Scale};
    let data = match data {
        Some(path) => path,
        None => std::env::temp_dir().join(format!("thitl-demo-{}", uuid::Uuid::now_v7())),
    };
    let dir = DataDir::open_or_create(&data)?;
    let blobs: Arc<dyn app::blobs::BlobStore> = Arc::new(dir.blobs()?);
    let bus = CommandBus::new(dir.store.clone());
    let scale = if quick { Scale::QUICK } else { Scale::FULL };
    let backend = gpu::Backend::choose(gpu::DeviceChoice::from_env()?)?;
    if !json {
        eprintln!("thitl demo: a T-HITL campaign over the three default associations, on the reference world");
        eprintln!("  base model: the shipped DiT; simulated annotators: the shipped rater with per-annotator noise");
        eprintln!("  device: {}; data: {}", backend.describe(), data.display());
    }
    // One progress bar per task, replaced when the next task starts; narration above it.
    let bar: std::sync::Mutex<Option<(String, indicatif::ProgressBar)>> = std::sync::Mutex::new(None);
    // Without a terminal (a log, CI) bars are hidden: print the narration and each finished task.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |event: Progress| {
        if json {
            return;
        }
        if !terminal {
            match event {
                Progress::Stage(line) => eprintln!("  {line}"),
                Progress::Task { task, done, total } if done == total => eprintln!("  {task}: {done}/{total}"),
                Progress::Task { .. } => {}
            }
            return;
        }
        let mut current = bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Progress::Stage(line) => match current.as_ref() {
                Some((_, bar)) => bar.println(format!("  {line}")),
                None => eprintln!("  {line}"),
            },
            Progress::Task { task, done, total } => {
                if current.as_ref().is_none_or(|(name, _)| name != task) {
                    if let Some((_, old)) = current.take() {
                        old.finish();
                    }
                    let new = indicatif::ProgressBar::new(total);
                    new.set_style(
                        indicatif::ProgressStyle::with_template(
                            "  {msg:<30} [{bar:30}] {pos}/{len} ({elapsed}, {eta} left)",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    new.set_message(task.to_string());
                    *current = Some((task.to_string(), new));
                }
                if let Some((_, bar)) = current.as_ref() {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            }
        }
    };
    let started = std::time::Instant::now();
    let blobs_for_measure = blobs.clone();
    let report = Demo::new(&bus, blobs, backend, scale, rounds, seed, &progress).run()?;
    if let Some((_, bar)) = bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        bar.finish();
    }
    let elapsed = started.elapsed();
    let measured = crate::demo::probe_measurements(&bus, blobs_for_measure.as_ref(), report.campaign_id)?;
    let runner = Arc::new(ProjectionRunner::open(dir.store.clone(), Some(dir.checkpoint_path()))?);
    runner.catch_up()?;
    runner.save()?;
    let verified = verify(dir.store.as_ref());
    let blob_report = app::blobs::verify_blobs(&DataDir::blobs_path(&data))?;
    let summary = runner.read(|p| p.audit.clone());
    let (ok, events) = match &verified {
        Ok(report) => (blob_report.is_ok(), report.events),
        Err(_) => (false, summary.events),
    };
    let estimate = |e: &domain::campaign::RateEstimate| serde_json::json!({"rate": e.rate, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n});
    let label = |id: &domain::AssociationId| report.associations.get(id).cloned().unwrap_or_default();
    let thitl: Vec<_> = report.evaluations.iter().filter(|e| e.arm == domain::fine_tune::Arm::Thitl).collect();
    let traditional: Vec<_> =
        report.evaluations.iter().filter(|e| e.arm == domain::fine_tune::Arm::Traditional).collect();
    // Over every round: ratings (gold and set-aside answers included) per item, and the share of
    // verdicts that agree with the reference world's truth.
    let totals = report.rounds.iter().fold((0u64, 0u64, 0u64, 0u64), |t, r| {
        (
            t.0 + u64::from(r.ratings),
            t.1 + u64::from(r.items),
            t.2 + u64::from(r.verdicts_correct),
            t.3 + u64::from(r.verdicts),
        )
    });
    let ratings_per_item = totals.0 as f64 / totals.1.max(1) as f64;
    let verdict_accuracy = totals.2 as f64 / totals.3.max(1) as f64;
    if json {
        let associations: Vec<_> = thitl
            .iter()
            .map(|e| {
                let (group, concept, category) = label(&e.association_id);
                serde_json::json!({
                    "group": group, "concept": concept, "category": category,
                    "before": estimate(&e.before), "after": estimate(&e.after),
                    "quality_before": e.quality_before, "quality_after": e.quality_after,
                    "win_rate": e.win_rate.as_ref().map(|w| w.rate), "alpha": e.alpha,
                })
            })
            .collect();
        let traditional: Vec<_> = traditional
            .iter()
            .map(|e| {
                let (group, concept, _) = label(&e.association_id);
                serde_json::json!({"group": group, "concept": concept, "after": estimate(&e.after), "quality_after": e.quality_after})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "associations": associations,
                "traditional": traditional,
                "measured": measured.iter().map(|m| {
                    let (group, concept, _) = label(&m.association_id);
                    serde_json::json!({"group": group, "concept": concept, "model": m.model, "concept_rate": m.concept_rate, "group_recognized": m.group_recognized, "quality": m.quality, "frechet": m.frechet})
                }).collect::<Vec<_>>(),
                "verify": {"ok": ok, "events": events},
                "data": data,
                "campaign_id": report.campaign_id,
                "promoted_model": report.promoted,
                "models": {"base": report.base_model, "thitl": report.thitl_model, "traditional": report.traditional_model},
                "stages": report.stages,
                "images": report.images,
                "annotations": report.annotations,
                "rounds": report.rounds,
                "ratings_per_item": ratings_per_item,
                "verdict_accuracy": verdict_accuracy,
                "annotators": report.annotators,
                "screening": report.screening,
                "comparison": report.comparisons,
                "seconds": elapsed.as_secs_f64(),
            })
        );
    } else {
        let percent = |e: &domain::campaign::RateEstimate| {
            format!("{:5.1}% [{:4.1}, {:4.1}] n={}", 100.0 * e.rate, 100.0 * e.ci_low, 100.0 * e.ci_high, e.n)
        };
        println!(
            "\nT-HITL campaign {} ({} images, {} annotations, {:.1?}): {}",
            report.campaign_id,
            report.images,
            report.annotations,
            elapsed,
            report.stages.join(" → ")
        );
        println!(
            "\n{:<34} {:<15} {:<28} {:<28} {:<15} {:<17} {:>6}",
            "association",
            "category",
            "rate before [95% CI]",
            "rate after [95% CI]",
            "quality b → a",
            "win rate [95% CI]",
            "alpha"
        );
        for e in &thitl {
            let (group, concept, category) = label(&e.association_id);
            let win = e.win_rate.as_ref().map_or("–".to_string(), |w| {
                format!("{:3.0}% [{:2.0}, {:3.0}]", 100.0 * w.rate, 100.0 * w.ci_low, 100.0 * w.ci_high)
            });
            let alpha = e.alpha.map_or("–".to_string(), |a| format!("{a:.2}"));
            println!(
                "{:<34} {:<15} {:<28} {:<28} {:<15} {:<17} {:>6}",
                format!("{group} → {concept}"),
                category,
                percent(&e.before),
                percent(&e.after),
                format!("{:.3} → {:.3}", e.quality_before, e.quality_after),
                win,
                alpha
            );
        }
        println!("\ntraditional fine-tuning (no round 1) on the same candidates:");
        println!("{:<34} {:<28} {:<15} T-HITL quality after", "association", "rate after [95% CI]", "quality after");
        for e in &traditional {
            let (group, concept, _) = label(&e.association_id);
            let thitl_quality =
                thitl.iter().find(|t| t.association_id == e.association_id).map_or(f64::NAN, |t| t.quality_after);
            println!(
                "{:<34} {:<28} {:<15.3} {:.3}",
                format!("{group} → {concept}"),
                percent(&e.after),
                e.quality_after,
                thitl_quality
            );
        }
        println!("(quality: the shipped rater's score in [0, 1]; rates and win rates: round 2's majority verdicts)");
        println!("\nT-HITL minus traditional, with 95% intervals (negative rate and positive quality favour T-HITL):");
        println!("{:<34} {:<32} quality after", "association", "rate after (points)");
        for c in &report.comparisons {
            let points = |d: &domain::planning::Difference| {
                format!("{:+5.1} [{:+5.1}, {:+5.1}]", 100.0 * d.estimate, 100.0 * d.ci_low, 100.0 * d.ci_high)
            };
            let quality = c
                .quality
                .as_ref()
                .map_or("–".to_string(), |d| format!("{:+.4} [{:+.4}, {:+.4}]", d.estimate, d.ci_low, d.ci_high));
            println!("{:<34} {:<32} {quality}", format!("{} → {}", c.group, c.concept), points(&c.after_rate));
        }
        println!(
            "(rates: Newcombe's interval for a difference of two rates; quality: Welch's for a difference of means)"
        );
        println!("\nround 1 (screen): what the candidates show (the shipped rater) and what round 1 rejected:");
        println!(
            "{:<34} {:>10} {:>9} {:>8} {:>8} {:>9} {:>14} {:>9} {:>20} {:>8}",
            "association",
            "candidates",
            "degraded",
            "other",
            "concept",
            "accepted",
            "degraded kept",
            "rejected",
            "for quality/group/c.",
            "left out"
        );
        for r in &report.screening {
            println!(
                "{:<34} {:>10} {:>9} {:>8} {:>8} {:>9} {:>14} {:>9} {:>20} {:>8}",
                format!("{} → {}", r.group, r.concept),
                r.candidates,
                r.degraded,
                r.wrong_group,
                r.concept_shown,
                r.accepted,
                r.degraded_accepted,
                r.rejected,
                format!("{} / {} / {}", r.rejected_for_quality, r.rejected_for_group, r.rejected_for_concept),
                r.left_out
            );
        }
        println!(
            "(degraded: a person would rate it below round 1's quality threshold; degraded kept: degraded and accepted \
             for the T-HITL fine-tune, where the traditional arm trains on every candidate; other: it shows another group \
             or none)"
        );
        println!(
            "\nrounds ({}): {ratings_per_item:.2} ratings per item, {:.2}% of verdicts right",
            match rounds {
                crate::demo::Rounds::Controlled => "gold items, exclusion by rule, 2 raters and more where split",
                crate::demo::Rounds::Fixed => "fixed: 3 raters per item, majority",
            },
            100.0 * verdict_accuracy
        );
        println!(
            "{:<10} {:>6} {:>5} {:>8} {:>10} {:>7} {:>9} {:>16}",
            "round", "items", "gold", "ratings", "per item", "raised", "left out", "verdicts right"
        );
        for r in &report.rounds {
            println!(
                "{:<10} {:>6} {:>5} {:>8} {:>10.2} {:>7} {:>9} {:>16}",
                r.kind,
                r.items,
                r.gold_items,
                r.ratings,
                r.ratings_per_item,
                r.items_raised,
                r.left_out,
                format!("{} / {}", r.verdicts_correct, r.verdicts)
            );
        }
        println!("(verdicts right: against the shipped rater's own reading of each picture)");
        println!("\n{:<14} {:>10} {:>14} {:<9} excluded in", "annotator", "answers", "gold right", "answers");
        for a in &report.annotators {
            println!(
                "{:<14} {:>10} {:>14} {:<9} {}",
                a.name,
                a.submitted,
                a.gold_accuracy.map_or("–".to_string(), |acc| format!(
                    "{}/{} ({:.0}%)",
                    a.gold_correct,
                    a.gold_answers,
                    100.0 * acc
                )),
                if a.careless { "at random" } else { "careful" },
                if a.excluded_in.is_empty() { "–".to_string() } else { a.excluded_in.join(", ") }
            );
        }
        println!("\nthe same probe images through the shipped rater (base → T-HITL / traditional):");
        println!("{:<34} {:<26} {:<26} Fréchet distance to renders", "association", "concept seen", "group recognized");
        for (id, (group, concept, _)) in &report.associations {
            let of = |model: &str| measured.iter().find(|m| m.association_id == *id && m.model == model);
            let (Some(base), Some(thitl), Some(traditional)) = (of("base"), of("thitl"), of("traditional")) else {
                continue;
            };
            let trio = |f: fn(&crate::demo::ProbeMeasurement) -> f64, scale: f64, digits: usize| {
                format!(
                    "{:.d$} → {:.d$} / {:.d$}",
                    scale * f(base),
                    scale * f(thitl),
                    scale * f(traditional),
                    d = digits
                )
            };
            println!(
                "{:<34} {:<26} {:<26} {}",
                format!("{group} → {concept}"),
                trio(|m| m.concept_rate, 100.0, 1) + "%",
                trio(|m| m.group_recognized, 100.0, 1) + "%",
                trio(|m| m.frechet, 1.0, 1)
            );
        }
        match &verified {
            Ok(report) => println!(
                "\naudit verify: {} events in {} streams verified; {}",
                report.events,
                report.streams,
                blob_report.summary()
            ),
            Err(failure) => println!("\naudit verify FAILED: {failure}"),
        }
        println!("\ndata directory: {}", data.display());
        println!("look around:  thitl serve --data {}   |   thitl audit log --data {}", data.display(), data.display());
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
