//! `thitl serve`'s background work — the campaign process manager and a job worker, in one
//! thread — and `thitl worker`'s, which is the job worker alone.
//!
//! ```text
//! loop until stopped:
//!   (serve) every campaign not completed or failed ─ CampaignRunner::step ─> requests, links, advances
//!   the oldest generation or fine-tune job still requested, or running under an expired lease
//!     or this worker's own ─> claim it and run it (resumes from the images already recorded;
//!     a fine-tune starts again from step 0); another worker's claim ─> the next job
//!   nothing to do ─> wait for the next event (at most a few seconds)
//! ```
//!
//! Key design decisions:
//! - **People stay in the loop**: the driver never works a round, reviews prompts or promotes a
//!   version for a campaign that does not auto-accept; it steps the campaign again once the
//!   annotators and curators have acted through the API.
//! - **One job at a time per process, in the order requested**: the sampler and the trainer use
//!   every core (or the GPU) already. Several processes (`thitl worker` on other machines, or
//!   beside `thitl serve`) share the jobs as competing consumers: each claims a job with a lease
//!   ([`crate::workers`]), so two never run the same one, and a dead worker's job is taken over
//!   once its lease expires. A process restarted under its old name resumes its own job at once.
//! - **A failing campaign or job does not stop the others**: each error is logged and recorded
//!   (a job that cannot run is failed with its reason by the worker functions), and the loop goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use domain::campaign::Stage;
use domain::{CampaignId, FineTuneId, GenerationId};

use crate::blobs::BlobStore;
use crate::campaigns::{CampaignRunner, Step};
use crate::commands::CommandBus;
use crate::ports::{ModelFamily, QualityRater};
use crate::prompts::PromptGenerator;
use crate::runner::ProjectionRunner;
use crate::workers::{LocalJobs, Models, Worker, lease_next_job, work_job};

/// How long the driver sleeps when nothing changes.
const IDLE_WAIT: Duration = Duration::from_secs(2);

/// The background thread; stops (after the job at hand) when dropped or [`stop`](Self::stop)ped.
pub struct Driver {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the driver needs.
pub struct DriverParts {
    pub bus: CommandBus,
    pub blobs: Arc<dyn BlobStore>,
    pub projections: Arc<ProjectionRunner>,
    /// The family of the models the jobs run on (and the campaigns' world).
    pub family: Arc<dyn ModelFamily>,
    /// Other families, for the versions whose config names them (imported pipelines).
    pub named_families: Vec<(String, Arc<dyn ModelFamily>)>,
    /// The campaigns' automatic quality judge, if any.
    pub rater: Option<Arc<dyn QualityRater>>,
    /// The prompt generator and seed the campaigns use; `None` runs jobs only (`thitl worker`).
    pub campaigns: Option<(Box<dyn PromptGenerator>, u64)>,
    /// Who claims the jobs.
    pub worker: Worker,
    /// Run generation and fine-tune jobs here; false leaves them to workers elsewhere
    /// (`thitl serve --no-local-jobs`), and only steps the campaigns.
    pub run_jobs: bool,
}

impl Driver {
    pub fn spawn(parts: DriverParts) -> Driver {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("thitl-driver".into())
            .spawn(move || drive(parts, &flag))
            .map_err(|error| tracing::error!(%error, "cannot start the campaign driver"))
            .ok();
        Driver { stop, thread }
    }

    /// Asks the thread to stop and waits for it (a job in progress runs to its end first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.halt();
    }
}

fn drive(parts: DriverParts, stop: &AtomicBool) {
    let DriverParts { bus, blobs, projections, family, named_families, rater, campaigns, worker, run_jobs } = parts;
    let models = named_families
        .iter()
        .cloned()
        .fold(Models::new(family.clone()), |models, (name, family)| models.with_family(&name, family));
    let narrate = |line: &str| tracing::info!(target: "thitl::campaign", "{line}");
    let mut runner = campaigns.map(|(generator, seed)| {
        CampaignRunner::new(bus.clone(), blobs.clone(), generator, family, rater, seed, Box::new(narrate))
            .with_families(named_families)
    });
    match runner {
        Some(_) => {
            tracing::info!(worker = %worker.name, lease_seconds = worker.lease_seconds, "campaign driver started: it steps campaigns and runs generation and fine-tune jobs")
        }
        None => {
            tracing::info!(worker = %worker.name, lease_seconds = worker.lease_seconds, "worker started: it runs generation and fine-tune jobs")
        }
    }
    while !stop.load(Ordering::SeqCst) {
        let head = match bus.store().head_position() {
            Ok(head) => head,
            Err(error) => {
                tracing::error!(%error, "the campaign driver cannot read the store; retrying");
                std::thread::sleep(IDLE_WAIT);
                continue;
            }
        };
        // The lists below come from the read models: let them see what is in the store.
        projections.wait_for(head, IDLE_WAIT);
        let (campaigns, (generations, fine_tunes)) = projections.read(|p| {
            let campaigns: Vec<CampaignId> = p
                .catalog
                .campaigns
                .values()
                .filter(|c| !matches!(c.stage, Stage::Completed | Stage::Failed))
                .map(|c| c.id)
                .collect();
            (campaigns, p.catalog.pending_jobs())
        });
        for id in runner.as_ref().map_or(&[][..], |_| &campaigns[..]) {
            let Some(runner) = runner.as_mut() else { break };
            let mut on_stage = |stage: Stage| tracing::info!(target: "thitl::campaign", campaign = %id, "stage: {}", format!("{stage:?}").to_lowercase());
            match runner.step(*id, &mut on_stage) {
                Ok(Step::Waiting(what)) => tracing::debug!(campaign = %id, ?what, "campaign waits"),
                Ok(Step::Finished) => {
                    // A crash between a curator's conclusion and the promotion: finish it.
                    let context = crate::commands::CommandContext::system();
                    if let Err(error) =
                        crate::campaigns::promote_concluded(&bus, &context, *id, "promoted as concluded")
                    {
                        tracing::error!(campaign = %id, %error, "cannot promote the version the campaign concluded with");
                    }
                }
                Err(error) => {
                    tracing::error!(campaign = %id, %error, "cannot step the campaign; it is tried again on the next change")
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // One job, then look at the campaigns again (the job's end may move one on).
        if run_jobs && run_one_job(&bus, &models, blobs.as_ref(), &worker, &generations, &fine_tunes) {
            continue;
        }
        // Nothing to do: wait for the next event (a new job, an annotation closing a round).
        let _ = bus.store().wait_for_position_after(head, IDLE_WAIT);
    }
    tracing::info!("campaign driver stopped");
}

/// Claims the first job of `generations`, then of `fine_tunes`, that this worker may take, and
/// works it to its end; false when there was none.
fn run_one_job(
    bus: &CommandBus,
    models: &Models,
    blobs: &dyn BlobStore,
    worker: &Worker,
    generations: &[GenerationId],
    fine_tunes: &[FineTuneId],
) -> bool {
    match lease_next_job(bus, worker, &worker.context(), generations, fine_tunes) {
        Ok(Some((leased, _))) => {
            work_job(&LocalJobs { bus, blobs }, models, &leased.job, worker);
            true
        }
        Ok(None) => false,
        Err(error) => {
            tracing::error!(%error, "cannot claim a job; trying again on the next change");
            false
        }
    }
}
