//! Model versions, prompt sets, generation and fine-tune requests, campaigns.
//!
//! Generation and fine-tune endpoints record the *request*; workers (a later issue) run them.

use std::collections::BTreeMap;

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use domain::campaign::CampaignSettings;
use domain::fine_tune::{Arm, LoraConfig, TrainingExample};
use domain::generation::{GenerationItem, GenerationPurpose, SamplerSettings};
use domain::prompt_set::{GeneratorInfo, PromptDraft};
use domain::values::{BlobHash, Name, Sentence};
use domain::*;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Action, Principal};
use crate::problem::{ApiError, Problem};
use crate::routes::associations::{Empty, Reason};
use crate::routes::support::{
    CommandAnswer, Done, WaitFor, load, named, parse_id, query_answer, run_command, wait_for,
};
use crate::state::AppState;
use app::jobs::{self, FineTuneRequest, GenerationRequest};

// ---------------------------------------------------------------------------------------------
// Model versions

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBaseModel {
    #[schema(value_type = Name)]
    pub name: String,
    /// SHA-256 of the weights file in the blob store.
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub weights: BlobHash,
    /// The architecture's settings, as the weights need them.
    #[serde(default)]
    #[schema(default = json!(null))]
    pub config: Value,
}

/// Register a base model version (operator).
#[utoipa::path(post, path = "/v1/model-versions", tag = "model versions", request_body = RegisterBaseModel,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn register_model(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    run_command(
        state,
        principal,
        request,
        body,
        Action::Operate,
        true,
        |bus, context, expected, input: RegisterBaseModel| {
            let model_version_id = ModelVersionId(Uuid::now_v7());
            let command = ModelVersionCommand::RegisterBase {
                model_version_id,
                name: input.name,
                weights: input.weights,
                config: input.config,
            };
            let outcome = bus.execute::<ModelVersion>(&model_version_id.stream(), expected, context, command)?;
            Ok(Done::new(outcome).with("id", model_version_id))
        },
    )
    .await
}

async fn model_command(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
    promote: bool,
) -> Result<HttpResponse, ApiError> {
    let id: ModelVersionId = parse_id("model version", &path)?;
    run_command(state, principal, request, body, Action::Curate, false, move |bus, context, expected, input: Reason| {
        let command = if promote {
            ModelVersionCommand::Promote { reason: input.reason }
        } else {
            ModelVersionCommand::RollBack { reason: input.reason }
        };
        let outcome = bus
            .execute::<ModelVersion>(&id.stream(), expected, context, command)
            .map_err(|e| named(e, "model version", id))?;
        Ok(Done::new(outcome))
    })
    .await
}

/// Promote a model version (curator).
#[utoipa::path(post, path = "/v1/model-versions/{id}/promote", tag = "model versions", request_body = Reason,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn promote(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    model_command(state, principal, request, path, body, true).await
}

/// Roll a promoted model version back (curator).
#[utoipa::path(post, path = "/v1/model-versions/{id}/rollback", tag = "model versions", request_body = Reason,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn roll_back(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    model_command(state, principal, request, path, body, false).await
}

// ---------------------------------------------------------------------------------------------
// Prompt sets

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePromptSet {
    #[schema(value_type = String, format = "uuid")]
    pub association_id: AssociationId,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptText {
    /// A training prompt that names the group.
    #[schema(value_type = Sentence)]
    pub text: String,
    /// A neutral word to put where the concept was, if any.
    #[schema(value_type = Option<Sentence>)]
    pub alternative: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPrompts {
    pub prompts: Vec<PromptText>,
}

/// Start a prompt set for an association (curator).
#[utoipa::path(post, path = "/v1/prompt-sets", tag = "prompt sets", request_body = CreatePromptSet,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn create_prompt_set(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        true,
        |bus, context, expected, input: CreatePromptSet| {
            let (association, _) = bus.load::<Association>(&input.association_id.stream())?;
            if !association.exists() {
                return Err(ApiError::unprocessable(format!("association {} does not exist", input.association_id)));
            }
            let prompt_set_id = PromptSetId(Uuid::now_v7());
            let command = PromptSetCommand::Create {
                prompt_set_id,
                association_id: input.association_id,
                group: association.group,
                concept: association.concept,
                concept_synonyms: association.concept_synonyms,
            };
            let outcome = bus.execute::<PromptSet>(&prompt_set_id.stream(), expected, context, command)?;
            Ok(Done::new(outcome).with("id", prompt_set_id))
        },
    )
    .await
}

/// Add prompts written by hand (curator); each gets its neutral form.
#[utoipa::path(post, path = "/v1/prompt-sets/{id}/prompts", tag = "prompt sets", request_body = AddPrompts,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, description = "`prompts`: the new prompt ids in order", body = CommandAnswer),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn add_prompts(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: PromptSetId = parse_id("prompt set", &path)?;
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        true,
        move |bus, context, expected, input: AddPrompts| {
            let drafts: Vec<PromptDraft> = input
                .prompts
                .into_iter()
                .map(|p| PromptDraft { prompt_id: PromptId(Uuid::now_v7()), text: p.text, alternative: p.alternative })
                .collect();
            let ids: Vec<PromptId> = drafts.iter().map(|d| d.prompt_id).collect();
            let generator =
                GeneratorInfo { name: "manual".into(), model: None, parameters: json!({}), response_sha256: None };
            let command = PromptSetCommand::AddPrompts { generator, prompts: drafts };
            let outcome = bus
                .execute::<PromptSet>(&id.stream(), expected, context, command)
                .map_err(|e| named(e, "prompt set", id))?;
            Ok(Done::new(outcome).with("prompts", ids))
        },
    )
    .await
}

/// What to do to one prompt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PromptReview {
    Accept {},
    Reject {
        #[schema(value_type = Sentence)]
        reason: String,
    },
    Edit {
        #[schema(value_type = Sentence)]
        text: String,
        #[schema(value_type = Option<Sentence>)]
        alternative: Option<String>,
    },
}

/// Accept, reject or edit one prompt (curator). Body: `{"accept": {}}`, `{"reject": {"reason"}}`
/// or `{"edit": {"text", "alternative"}}`.
#[utoipa::path(post, path = "/v1/prompt-sets/{id}/prompts/{prompt_id}", tag = "prompt sets", request_body = PromptReview,
    params(("id" = String, Path), ("prompt_id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn review_prompt(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: PromptSetId = parse_id("prompt set", &path.0)?;
    let prompt_id: PromptId = parse_id("prompt", &path.1)?;
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        false,
        move |bus, context, expected, input: PromptReview| {
            let command = match input {
                PromptReview::Accept {} => PromptSetCommand::AcceptPrompt { prompt_id },
                PromptReview::Reject { reason } => PromptSetCommand::RejectPrompt { prompt_id, reason },
                PromptReview::Edit { text, alternative } => {
                    PromptSetCommand::EditPrompt { prompt_id, text, alternative }
                }
            };
            let outcome = bus
                .execute::<PromptSet>(&id.stream(), expected, context, command)
                .map_err(|e| named(e, "prompt set", id))?;
            Ok(Done::new(outcome))
        },
    )
    .await
}

/// Lock the set: its accepted prompts are what candidates are generated from (curator).
#[utoipa::path(post, path = "/v1/prompt-sets/{id}/finalize", tag = "prompt sets",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn finalize(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: PromptSetId = parse_id("prompt set", &path)?;
    run_command(state, principal, request, body, Action::Curate, false, move |bus, context, expected, _: Empty| {
        let outcome = bus
            .execute::<PromptSet>(&id.stream(), expected, context, PromptSetCommand::Finalize)
            .map_err(|e| named(e, "prompt set", id))?;
        Ok(Done::new(outcome))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Generation and fine-tune requests

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestGeneration {
    #[schema(value_type = String, format = "uuid")]
    pub model_version: ModelVersionId,
    /// `baseline`, `candidates`, `prior_preservation` or `evaluation`.
    #[schema(value_type = String)]
    pub purpose: GenerationPurpose,
    /// The images to make, one per item.
    pub items: Vec<GenerationItem>,
    /// How to sample (null: every default).
    pub sampler: Option<SamplerSettings>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub campaign_id: Option<CampaignId>,
}

/// Record a generation request; a worker runs it (operator, curator).
#[utoipa::path(post, path = "/v1/generations", tag = "jobs", request_body = RequestGeneration,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn request_generation(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    run_command(
        state,
        principal,
        request,
        body,
        Action::Operate,
        true,
        |bus, context, expected, input: RequestGeneration| {
            let request = GenerationRequest {
                model_version: input.model_version,
                purpose: input.purpose,
                items: input.items,
                sampler: input.sampler.unwrap_or_default(),
                campaign_id: input.campaign_id,
            };
            let (generation_id, outcome) = jobs::request_generation(bus, context, expected, request)?;
            Ok(Done::new(outcome).with("id", generation_id))
        },
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestFineTune {
    #[schema(value_type = String, format = "uuid")]
    pub base_model: ModelVersionId,
    /// `thitl` (trains on what a closed round 1 accepted) or `traditional`.
    #[schema(value_type = String)]
    pub arm: Arm,
    /// The closed round 1 (T-HITL only).
    #[schema(value_type = Option<String>, format = "uuid")]
    pub source_round: Option<RoundId>,
    /// The images to train on, with their prompts.
    pub examples: Vec<TrainingExample>,
    /// Images of the model's own, to keep what fine-tuning must not change.
    #[serde(default)]
    #[schema(default = json!([]))]
    pub prior_preservation: Vec<TrainingExample>,
    /// LoRA settings (null: every default).
    pub config: Option<LoraConfig>,
    /// Report progress every this many steps (default 50).
    #[schema(minimum = 1)]
    pub progress_every: Option<u32>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub campaign_id: Option<CampaignId>,
}

/// Record a fine-tune request; a worker runs it (operator, curator).
#[utoipa::path(post, path = "/v1/fine-tunes", tag = "jobs", request_body = RequestFineTune,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn request_fine_tune(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    run_command(
        state,
        principal,
        request,
        body,
        Action::Operate,
        true,
        |bus, context, expected, input: RequestFineTune| {
            let request = FineTuneRequest {
                base_model: input.base_model,
                arm: input.arm,
                source_round: input.source_round,
                examples: input.examples,
                prior_preservation: input.prior_preservation,
                config: input.config.unwrap_or_default(),
                progress_every: input.progress_every.unwrap_or(50),
                campaign_id: input.campaign_id,
            };
            let (fine_tune_id, outcome) = jobs::request_fine_tune(bus, context, expected, request)?;
            Ok(Done::new(outcome).with("id", fine_tune_id))
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Campaigns

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCampaign {
    #[schema(value_type = Name)]
    pub name: String,
    /// The registered, active associations to mitigate, each once.
    #[schema(value_type = Vec<String>)]
    pub associations: Vec<AssociationId>,
    #[schema(value_type = String, format = "uuid")]
    pub base_model: ModelVersionId,
    /// Every setting of the campaign (null: the method's defaults).
    pub settings: Option<CampaignSettings>,
}

/// Start a T-HITL campaign over registered associations (curator).
#[utoipa::path(post, path = "/v1/campaigns", tag = "campaigns", request_body = StartCampaign,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn start_campaign(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let blobs = state.blobs.clone();
    // The rates each association was last measured at (the base model's, before), for planning.
    let measured: BTreeMap<AssociationId, f64> = state.projections.read(|p| {
        p.evaluations
            .by_association
            .iter()
            .filter_map(|(id, records)| Some((*id, records.last()?.arms.first()?.before.rate)))
            .collect()
    });
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        true,
        move |bus, context, expected, input: StartCampaign| {
            jobs::require_model(bus, input.base_model)?;
            let settings = input.settings.unwrap_or_default();
            let planning = campaign_planning(&settings, &input.associations, &measured);
            app::team_images::check(bus, blobs.as_ref(), input.base_model, &settings.team_images).map_err(
                |e| match e {
                    app::team_images::TeamImageError::Command(e) => ApiError::from(e),
                    invalid => ApiError::unprocessable(invalid.to_string()),
                },
            )?;
            for id in &input.associations {
                let (association, _) = bus.load::<Association>(&id.stream())?;
                if association.status != domain::association::AssociationStatus::Active {
                    return Err(ApiError::unprocessable(format!("association {id} is not registered and active")));
                }
            }
            let campaign_id = CampaignId(Uuid::now_v7());
            let command = CampaignCommand::Start {
                campaign_id,
                name: input.name,
                associations: input.associations,
                base_model: input.base_model,
                settings,
            };
            let outcome = bus.execute::<Campaign>(&campaign_id.stream(), expected, context, command)?;
            Ok(Done::new(outcome).with("id", campaign_id).with("planning", planning))
        },
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcludeCampaign {
    /// The model version to promote (one this campaign derived), or null to conclude without
    /// promoting any.
    #[schema(value_type = Option<String>, format = "uuid")]
    pub promote: Option<ModelVersionId>,
    /// Why, for the audit log.
    #[schema(value_type = Sentence)]
    pub reason: String,
}

/// Conclude a campaign awaiting promotion: the curator's gate (curator). The campaign completes
/// and the version named in `promote`, if any, is promoted. Campaigns started with
/// `auto_accept` conclude by themselves.
#[utoipa::path(post, path = "/v1/campaigns/{id}/conclude", tag = "campaigns", request_body = ConcludeCampaign,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn conclude_campaign(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: CampaignId = parse_id("campaign", &path)?;
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        false,
        move |bus, context, expected, input: ConcludeCampaign| {
            // The reason is checked before anything is recorded: the promotion after the conclusion
            // must not fail on it.
            domain::values::Sentence::parse("reason", &input.reason).map_err(app::commands::CommandError::Domain)?;
            let outcome = bus
                .execute::<Campaign>(
                    &id.stream(),
                    expected,
                    context,
                    CampaignCommand::Conclude { promoted: input.promote },
                )
                .map_err(|e| named(e, "campaign", id))?;
            app::campaigns::promote_concluded(bus, context, id, &input.reason)?;
            Ok(Done::new(outcome))
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Lists (read models) and details (each entity's stream)

/// Which catalog list.
#[derive(Debug, Clone, Copy)]
pub enum Listing {
    ModelVersions,
    PromptSets,
    Generations,
    FineTunes,
    Campaigns,
}

async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<WaitFor>,
    listing: Listing,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    wait_for(&state, query.wait_for).await?;
    let (key, items, position) = state.projections.read(|p| {
        let c = &p.catalog;
        let values = |v: Vec<Value>| v;
        let (key, items) = match listing {
            Listing::ModelVersions => ("model_versions", values(c.model_versions.values().map(|v| json!(v)).collect())),
            Listing::PromptSets => ("prompt_sets", values(c.prompt_sets.values().map(|v| json!(v)).collect())),
            Listing::Generations => ("generations", values(c.generations.values().map(|v| json!(v)).collect())),
            Listing::FineTunes => ("fine_tunes", values(c.fine_tunes.values().map(|v| json!(v)).collect())),
            Listing::Campaigns => ("campaigns", values(c.campaigns.values().map(|v| json!(v)).collect())),
        };
        (key, items, p.position)
    });
    Ok(query_answer(json!({ key: items }), position, None))
}

macro_rules! list_endpoint {
    ($name:ident, $listing:expr, $path:literal, $tag:literal) => {
        #[doc = concat!("List (read model): ", $path)]
        #[utoipa::path(get, path = $path, tag = $tag, params(WaitFor),
            responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
            security(("bearer" = [])))]
        pub async fn $name(state: web::Data<AppState>, principal: Principal, query: web::Query<WaitFor>) -> Result<HttpResponse, ApiError> {
            list(state, principal, query, $listing).await
        }
    };
}

list_endpoint!(list_model_versions, Listing::ModelVersions, "/v1/model-versions", "model versions");
list_endpoint!(list_prompt_sets, Listing::PromptSets, "/v1/prompt-sets", "prompt sets");
list_endpoint!(list_generations, Listing::Generations, "/v1/generations", "jobs");
list_endpoint!(list_fine_tunes, Listing::FineTunes, "/v1/fine-tunes", "jobs");
list_endpoint!(list_campaigns, Listing::Campaigns, "/v1/campaigns", "campaigns");

fn not_found(entity: &str, id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found(format!("{entity} {id} does not exist"))
}

/// One model version: its lineage and status.
#[utoipa::path(get, path = "/v1/model-versions/{id}", tag = "model versions", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn model_version(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: ModelVersionId = parse_id("model version", &path)?;
    let (model, version, position) = load::<ModelVersion>(&state, id.stream()).await?;
    if !model.exists() {
        return Err(not_found("model version", id));
    }
    let body = json!({
        "id": id, "name": model.name, "status": model.status, "parent": model.parent,
        "fine_tune_id": model.fine_tune_id, "weights": model.weights, "adapter": model.adapter,
    });
    Ok(query_answer(body, position, Some(version)))
}

/// Where a model version came from: its fine-tune, the images it trained on with every rating
/// and rater of round 1, the prompts and the generator that wrote them, and its parent's weights.
#[utoipa::path(get, path = "/v1/model-versions/{id}/lineage", tag = "model versions", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn lineage(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: ModelVersionId = parse_id("model version", &path)?;
    let (bus, blobs) = (state.bus.clone(), state.blobs.clone());
    let body = web::block(move || app::lineage::lineage(&bus, blobs.as_ref(), id))
        .await
        .map_err(ApiError::blocking)?
        .map_err(|e| match e {
        app::lineage::LineageError::NotFound(id) => not_found("model version", id),
        app::lineage::LineageError::Command(e) => e.into(),
    })?;
    Ok(HttpResponse::Ok().json(body))
}

/// The same lineage document as `/v1/model-versions/{id}/lineage`.
#[utoipa::path(get, path = "/v1/models/{id}/lineage", tag = "model versions", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn model_lineage(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lineage(state, principal, path).await
}

/// One prompt set with every prompt, its neutral form and review status.
#[utoipa::path(get, path = "/v1/prompt-sets/{id}", tag = "prompt sets", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn prompt_set(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: PromptSetId = parse_id("prompt set", &path)?;
    let (set, version, position) = load::<PromptSet>(&state, id.stream()).await?;
    if !set.exists() {
        return Err(not_found("prompt set", id));
    }
    let prompts: Vec<Value> = set
        .order
        .iter()
        .filter_map(|pid| {
            set.prompts.get(pid).map(|p| json!({"id": pid, "text": p.text, "neutral": p.neutral, "status": p.status}))
        })
        .collect();
    let body = json!({
        "id": id, "association_id": set.association_id, "group": set.group, "concept": set.concept,
        "finalized": set.finalized, "prompts": prompts,
    });
    Ok(query_answer(body, position, Some(version)))
}

/// One generation job: its request, status and images so far.
#[utoipa::path(get, path = "/v1/generations/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn generation(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: GenerationId = parse_id("generation", &path)?;
    let (job, version, position) = load::<Generation>(&state, id.stream()).await?;
    if job.id.is_none() {
        return Err(not_found("generation", id));
    }
    let images: Vec<Value> = job
        .images
        .iter()
        .map(|(index, (image_id, blob))| json!({"index": index, "image_id": image_id, "blob": blob}))
        .collect();
    let body = json!({
        "id": id, "status": job.status, "model_version": job.model_version, "purpose": job.purpose,
        "items": job.items, "sampler": job.sampler, "campaign_id": job.campaign_id, "images": images,
        "worker": job.lease.as_ref().map(|lease| &lease.worker), "lease_until": job.lease.as_ref().map(|lease| lease.until).filter(|until| *until > chrono::DateTime::<chrono::Utc>::MIN_UTC),
    });
    Ok(query_answer(body, position, Some(version)))
}

/// One fine-tune job: its configuration, status, losses and adapter.
#[utoipa::path(get, path = "/v1/fine-tunes/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn fine_tune(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: FineTuneId = parse_id("fine-tune", &path)?;
    let (job, version, position) = load::<FineTune>(&state, id.stream()).await?;
    if job.id.is_none() {
        return Err(not_found("fine-tune", id));
    }
    let body = json!({
        "id": id, "status": job.status, "base_model": job.base_model, "arm": job.arm, "config": job.config,
        "last_step": job.last_step, "losses": job.losses, "adapter": job.adapter, "campaign_id": job.campaign_id,
        "worker": job.lease.as_ref().map(|lease| &lease.worker), "lease_until": job.lease.as_ref().map(|lease| lease.until).filter(|until| *until > chrono::DateTime::<chrono::Utc>::MIN_UTC),
    });
    Ok(query_answer(body, position, Some(version)))
}

/// One campaign's state: stage, linked work, evaluations.
#[utoipa::path(get, path = "/v1/campaigns/{id}", tag = "campaigns", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn campaign(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: CampaignId = parse_id("campaign", &path)?;
    let (campaign, version, position) = load::<Campaign>(&state, id.stream()).await?;
    if campaign.id.is_none() {
        return Err(not_found("campaign", id));
    }
    let body = json!({
        "id": id, "name": campaign.name, "stage": campaign.stage, "associations": campaign.associations,
        "base_model": campaign.base_model, "settings": campaign.settings, "work": campaign.work, "evaluations": campaign.evaluations,
    });
    Ok(query_answer(body, position, Some(version)))
}

/// What a campaign's probe count can show: the after-rate's upper 95% bound if no probe image
/// shows the concept, and, per association measured before, how many probe images it takes for
/// the before and after intervals to come apart if the rate falls from that baseline to zero.
fn campaign_planning(
    settings: &CampaignSettings,
    associations: &[AssociationId],
    measured: &BTreeMap<AssociationId, f64>,
) -> Value {
    use domain::planning::{Z95, images_for_separation, images_for_upper_bound, wilson_interval};
    let probes = settings
        .probe_rate_bound
        .and_then(images_for_upper_bound)
        .unwrap_or(u64::from(settings.probe_images_per_association));
    let per_association: Vec<Value> = associations
        .iter()
        .map(|id| {
            let baseline = measured.get(id).copied();
            json!({
                "association_id": id,
                "last_measured_baseline": baseline,
                "probe_images_to_separate_a_drop_to_zero": baseline.and_then(|b| images_for_separation(b, 0.0)),
            })
        })
        .collect();
    json!({
        "probe_images_per_association": probes,
        "zero_rate_upper_bound": wilson_interval(0, probes, Z95).1,
        "associations": per_association,
    })
}
