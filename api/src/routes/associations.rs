//! `/v1/associations` and `/v1/taxonomy`.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use domain::values::{Name, Sentence};
use domain::{AssociationCommand, AssociationId, TAXONOMY_STREAM, Taxonomy, TaxonomyCommand};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Action, Principal};
use crate::problem::{ApiError, Problem};
use crate::routes::support::{
    CommandAnswer, Done, WaitFor, entity_answer, load, named, parse_id, query_answer, run_command, wait_for,
};
use crate::state::AppState;

/// A problematic association to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAssociation {
    /// The demographic group, e.g. `woman`.
    #[schema(value_type = Name)]
    pub group: String,
    /// The concept the model wrongly ties to the group, e.g. `hippopotamus`.
    #[schema(value_type = Name)]
    pub concept: String,
    /// Other words for the concept, removed too by the neutral prompt transformation.
    #[serde(default)]
    #[schema(value_type = Vec<Name>, default = json!([]))]
    pub concept_synonyms: Vec<String>,
    /// A taxonomy category key (see `GET /v1/taxonomy`).
    pub category: String,
    #[schema(value_type = Sentence)]
    pub description: String,
    /// Prompts that name the group and not the concept (1 to 100), each once.
    #[schema(value_type = Vec<Sentence>)]
    pub probe_prompts: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recategorize {
    pub category: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why, in a sentence: recorded in the event.
    #[schema(value_type = Sentence)]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineCategory {
    /// Lowercase letters, digits and `_`.
    pub key: String,
    #[schema(value_type = Sentence)]
    pub narrative: String,
    #[schema(value_type = Sentence)]
    pub example: String,
}

fn load_taxonomy(bus: &app::commands::CommandBus) -> Result<Taxonomy, ApiError> {
    Ok(bus.load::<Taxonomy>(TAXONOMY_STREAM)?.0)
}

/// Register a problematic association (curator).
#[utoipa::path(post, path = "/v1/associations", tag = "associations", request_body = RegisterAssociation,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays return the first answer")),
    responses((status = 201, description = "registered; `id` is the association's id", body = CommandAnswer),
        (status = "4XX", description = "400 malformed, 401, 403, 409, 413, 422 invalid values", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn register(
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
        |bus, context, expected, input: RegisterAssociation| {
            let association_id = AssociationId(Uuid::now_v7());
            let taxonomy = load_taxonomy(bus)?;
            let outcome = bus.execute::<domain::Association>(
                &association_id.stream(),
                expected,
                context,
                AssociationCommand::Register {
                    association_id,
                    group: input.group,
                    concept: input.concept,
                    concept_synonyms: input.concept_synonyms,
                    category: input.category,
                    description: input.description,
                    probe_prompts: input.probe_prompts,
                    taxonomy,
                },
            )?;
            Ok(Done::new(outcome).with("id", association_id))
        },
    )
    .await
}

/// Move an association to another taxonomy category (curator).
#[utoipa::path(post, path = "/v1/associations/{id}/recategorize", tag = "associations", request_body = Recategorize,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "the version you last saw; 409 if it changed"),
        ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn recategorize(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: AssociationId = parse_id("association", &path)?;
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        false,
        move |bus, context, expected, input: Recategorize| {
            let taxonomy = load_taxonomy(bus)?;
            let command = AssociationCommand::Recategorize { category: input.category, taxonomy };
            let outcome = bus
                .execute::<domain::Association>(&id.stream(), expected, context, command)
                .map_err(|e| named(e, "association", id))?;
            Ok(Done::new(outcome))
        },
    )
    .await
}

/// Retire an association (curator).
#[utoipa::path(post, path = "/v1/associations/{id}/retire", tag = "associations", request_body = Reason,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn retire(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: AssociationId = parse_id("association", &path)?;
    run_command(state, principal, request, body, Action::Curate, false, move |bus, context, expected, input: Reason| {
        let command = AssociationCommand::Retire { reason: input.reason };
        let outcome = bus
            .execute::<domain::Association>(&id.stream(), expected, context, command)
            .map_err(|e| named(e, "association", id))?;
        Ok(Done::new(outcome))
    })
    .await
}

/// Every association, from the read model.
#[utoipa::path(get, path = "/v1/associations", tag = "associations", params(WaitFor),
    responses((status = 200, description = "`{\"associations\": [...], \"position\": P}`", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let position = wait_for(&state, query.wait_for).await?;
    let (associations, position) = state
        .projections
        .read(|p| (p.associations.associations.values().cloned().collect::<Vec<_>>(), p.position.max(position)));
    Ok(query_answer(json!({ "associations": associations }), position, None))
}

/// One association, from the read model.
#[utoipa::path(get, path = "/v1/associations/{id}", tag = "associations", params(("id" = String, Path), WaitFor),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn detail(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: AssociationId = parse_id("association", &path)?;
    wait_for(&state, query.wait_for).await?;
    entity_answer(&state, "association", id, &id.stream(), |p| p.associations.associations.get(&id).cloned())
}

/// An association's evaluation: the newest campaign's rates before and after (Wilson 95%
/// intervals), quality before and after, round 2's win rate and agreement, for each arm it ran;
/// and every earlier evaluation (`history`, oldest first). `latest` is null until a campaign over
/// the association has recorded one.
#[utoipa::path(get, path = "/v1/associations/{id}/evaluation", tag = "associations", params(("id" = String, Path), WaitFor),
    responses((status = 200, description = "`{\"association_id\", \"group\", \"concept\", \"category\", \"latest\": {\"campaign_id\", \"position\", \"recorded_at\", \"arms\": [{\"arm\", \"before\", \"after\", \"quality_before\", \"quality_after\", \"quality_source\" (rater | round2_people), \"people_quality_before\", \"people_quality_after\" ({\"n\", \"median\", \"ci_low\", \"ci_high\"}), \"aggregation\" (majority | dawid_skene), \"win_rate\", \"alpha\"}]} | null, \"history\": [...], \"position\"}`", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn evaluation(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: AssociationId = parse_id("association", &path)?;
    wait_for(&state, query.wait_for).await?;
    let (body, position) = state.projections.read(|p| {
        let association = p.associations.associations.get(&id)?;
        let history = p.evaluations.by_association.get(&id).cloned().unwrap_or_default();
        let body = json!({
            "association_id": id, "group": association.group, "concept": association.concept, "category": association.category,
            "latest": history.last(), "history": history,
        });
        Some((body, p.position))
    })
    .ok_or_else(|| ApiError::not_found(format!("association {id} does not exist")))?;
    Ok(query_answer(body, position, None))
}

/// The taxonomy of problematic associations (seeded with the default four on first start).
#[utoipa::path(get, path = "/v1/taxonomy", tag = "taxonomy",
    responses((status = 200, description = "`{\"categories\": [...], \"retired\": [...], \"version\", \"position\"}`", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn taxonomy(state: web::Data<AppState>, principal: Principal) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let (taxonomy, version, position) = load::<Taxonomy>(&state, TAXONOMY_STREAM.to_string()).await?;
    let categories: Vec<_> = taxonomy.categories.values().collect();
    let retired: Vec<_> = taxonomy.retired.values().collect();
    Ok(query_answer(json!({ "categories": categories, "retired": retired }), position, Some(version)))
}

/// Define a new taxonomy category (curator).
#[utoipa::path(post, path = "/v1/taxonomy/categories", tag = "taxonomy", request_body = DefineCategory,
    params(("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn define_category(
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
        |bus, context, expected, input: DefineCategory| {
            let command =
                TaxonomyCommand::Define { key: input.key, narrative: input.narrative, example: input.example };
            Ok(Done::new(bus.execute::<Taxonomy>(TAXONOMY_STREAM, expected, context, command)?))
        },
    )
    .await
}

/// Retire a taxonomy category: no new association may use it (curator).
#[utoipa::path(post, path = "/v1/taxonomy/categories/{key}/retire", tag = "taxonomy",
    params(("key" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn retire_category(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let key = path.into_inner();
    run_command(state, principal, request, body, Action::Curate, false, move |bus, context, expected, _: Empty| {
        Ok(Done::new(bus.execute::<Taxonomy>(TAXONOMY_STREAM, expected, context, TaxonomyCommand::Retire { key })?))
    })
    .await
}

/// A body that must be empty or `{}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}
