//! `/v1/rounds`: open a round, an annotator's next task, submit, withdraw, close, progress.
//!
//! Annotators see only the image (or the pair) of a task assigned to them — never the model,
//! arm or prompt that made it; those labels stay in the event log for auditors.

use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use chrono::Utc;
use domain::round::{
    AdaptiveOverlap, Aggregation, Answer, DEFAULT_ASSIGNMENT_LEASE_SECONDS, DEFAULT_QUALITY_THRESHOLD,
    DEFAULT_RATERS_PER_ITEM, ExclusionRule, Gold, ImageRef, ItemContent, ItemLabel, RoundControls, RoundItem,
    RoundKind,
};
use domain::values::{BlobHash, Name, Quality, Sentence};
use domain::{
    AnnotationRound, AssociationId, CampaignId, ImageId, ItemId, ModelVersionId, PromptId, RoundCommand, RoundId,
};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Action, Principal};
use crate::problem::{ApiError, Problem};
use crate::routes::support::{
    CommandAnswer, Done, WaitFor, head_position, named, parse_id, query_answer, run_command, run_command_async,
    wait_for,
};
use crate::state::AppState;

/// One image to rate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageItem {
    /// The image's id (default: a new one).
    #[schema(value_type = Option<String>, format = "uuid")]
    pub image_id: Option<ImageId>,
    /// SHA-256 (64 lowercase hex digits) of the PNG in the blob store.
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub blob: BlobHash,
    /// The prompt it was generated from (hidden from annotators).
    pub prompt: String,
    #[serde(default)]
    #[schema(default = 0)]
    pub seed: u64,
    /// The model version that made it (hidden from annotators).
    #[schema(value_type = String, format = "uuid")]
    pub model_version: ModelVersionId,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub association_id: Option<AssociationId>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub prompt_id: Option<PromptId>,
    /// Makes this a gold item: the answers known to be right (hidden from annotators, who
    /// see it as any other item). Each annotator gets each gold item at most once, spread among
    /// their other tasks; gold items score annotators and are never part of a verdict's data.
    pub gold: Option<Gold>,
}

/// One image of a side-by-side pair.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairImage {
    /// The image's id (default: a new one).
    #[schema(value_type = Option<String>, format = "uuid")]
    pub image_id: Option<ImageId>,
    /// SHA-256 (64 lowercase hex digits) of the PNG in the blob store.
    #[schema(value_type = String, pattern = "^[0-9a-f]{64}$")]
    pub blob: BlobHash,
    /// The model version that made it (hidden from annotators).
    #[schema(value_type = String, format = "uuid")]
    pub model_version: ModelVersionId,
}

/// The two images of a pair, in the order annotators will see them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairSides {
    pub left: PairImage,
    pub right: PairImage,
}

/// Two images of one prompt and seed (e.g. base and fine-tuned model) for annotators to compare,
/// round 2 only. The server keeps the left/right order given: put the models on random sides,
/// so that position tells an annotator nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairItem {
    pub pair: PairSides,
    /// The prompt both were generated from (hidden from annotators).
    pub prompt: String,
    #[serde(default)]
    #[schema(default = 0)]
    pub seed: u64,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub association_id: Option<AssociationId>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub prompt_id: Option<PromptId>,
}

/// An item of a round: one image to rate, or (round 2) `{"pair": {"left", "right"}, "prompt", …}`.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum RoundItemInput {
    Image(ImageItem),
    Pair(PairItem),
}

impl<'de> Deserialize<'de> for RoundItemInput {
    /// An object with a `pair` key is a pair, any other an image; serde's error for the one
    /// chosen says what is wrong (an untagged enum would say only "no variant matched").
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("pair").is_some() {
            PairItem::deserialize(value)
                .map(RoundItemInput::Pair)
                .map_err(|e| D::Error::custom(format!("a pair item: {e}")))
        } else {
            ImageItem::deserialize(value)
                .map(RoundItemInput::Image)
                .map_err(|e| D::Error::custom(format!("an image item: {e}")))
        }
    }
}

impl RoundItemInput {
    /// The item, and its known answers if it is a gold item.
    fn into_round_item(self) -> (RoundItem, Option<Gold>) {
        let image =
            |image_id: Option<ImageId>, blob| ImageRef { image_id: image_id.unwrap_or(ImageId(Uuid::now_v7())), blob };
        match self {
            RoundItemInput::Image(item) => (
                RoundItem {
                    item_id: ItemId(Uuid::now_v7()),
                    content: ItemContent::Image(image(item.image_id, item.blob)),
                    label: ItemLabel {
                        association_id: item.association_id,
                        prompt_id: item.prompt_id,
                        prompt: item.prompt,
                        seed: item.seed,
                        models: vec![item.model_version],
                    },
                },
                item.gold,
            ),
            RoundItemInput::Pair(item) => {
                let PairSides { left, right } = item.pair;
                let item = RoundItem {
                    item_id: ItemId(Uuid::now_v7()),
                    label: ItemLabel {
                        association_id: item.association_id,
                        prompt_id: item.prompt_id,
                        prompt: item.prompt,
                        seed: item.seed,
                        models: vec![left.model_version, right.model_version],
                    },
                    content: ItemContent::Pair {
                        left: image(left.image_id, left.blob),
                        right: image(right.image_id, right.blob),
                    },
                };
                (item, None)
            }
        }
    }
}

/// A round to open over a list of images (and, in round 2, pairs).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRound {
    /// `baseline` (concept present?), `screen` (round 1) or `check` (round 2).
    #[schema(value_type = String)]
    pub kind: RoundKind,
    pub items: Vec<RoundItemInput>,
    /// Annotators per item (default 3).
    pub raters_per_item: Option<u32>,
    /// Round 1's quality threshold, 1 to 5 (default 3).
    pub quality_threshold: Option<Quality>,
    /// How long an assigned task stays reserved, 60 s to 7 days (default 900 s).
    #[schema(minimum = 60, maximum = 604800)]
    pub assignment_lease_seconds: Option<i64>,
    #[schema(value_type = Option<String>, format = "uuid")]
    pub campaign_id: Option<CampaignId>,
    /// Exclude annotators whose gold accuracy is too low (needs gold items).
    pub exclusion: Option<ExclusionRule>,
    /// More raters for items whose answers split, then a curator's adjudication.
    pub overlap: Option<AdaptiveOverlap>,
    /// How yes/no answers become verdicts: `majority` (default) or `dawid_skene`.
    pub aggregation: Option<Aggregation>,
}

/// One annotation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitAnnotation {
    #[schema(value_type = String, format = "uuid")]
    pub item_id: ItemId,
    /// One of `{"baseline": {"concept_present": bool}}`,
    /// `{"screen": {"quality": 1..5, "group_depicted": bool, "concept_present": bool}}`,
    /// `{"check": {"concept_present": bool, "quality": 1..5}}`, `{"compare": {"preferred": "left"|"right"}}`.
    pub answer: Answer,
    /// Also assign the caller's next task and answer it as `next` (the same object
    /// `GET /v1/rounds/{id}/next` answers): one request per annotation instead of two.
    #[serde(default)]
    #[schema(default = false)]
    pub next: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WithdrawAnnotation {
    #[schema(value_type = String, format = "uuid")]
    pub item_id: ItemId,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRound {
    /// Close although some items lack their annotations.
    #[serde(default)]
    #[schema(default = false)]
    pub allow_incomplete: bool,
    /// Close although split items wait for adjudication: they are left out, without a verdict
    /// (recorded in the closing event).
    #[serde(default)]
    #[schema(default = false)]
    pub leave_out_unadjudicated: bool,
}

/// Let an excluded annotator back into a round: their answers count again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reinstate {
    #[schema(value_type = Name)]
    pub annotator: String,
    /// Why, for the audit log.
    #[schema(value_type = Sentence)]
    pub reason: String,
}

/// A curator's decision on a split item.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Adjudicate {
    /// The answer that decides the item, in the round's form (as an annotator would give it).
    pub answer: Answer,
    /// Why, for the audit log.
    #[schema(value_type = Sentence)]
    pub reason: String,
}

/// Open an annotation round over images (curator).
#[utoipa::path(post, path = "/v1/rounds", tag = "rounds", request_body = OpenRound,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, description = "opened; `id` is the round, `items` the item ids in order", body = CommandAnswer),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn open(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    run_command(state, principal, request, body, Action::Curate, true, |bus, context, expected, input: OpenRound| {
        let round_id = RoundId(Uuid::now_v7());
        let (items, gold): (Vec<RoundItem>, Vec<Option<Gold>>) =
            input.items.into_iter().map(RoundItemInput::into_round_item).unzip();
        let item_ids: Vec<ItemId> = items.iter().map(|i| i.item_id).collect();
        let controls = RoundControls {
            gold: item_ids.iter().zip(gold).filter_map(|(id, gold)| Some((*id, gold?))).collect(),
            exclusion: input.exclusion,
            overlap: input.overlap,
            aggregation: input.aggregation.unwrap_or_default(),
        };
        let default_threshold = Quality::new(DEFAULT_QUALITY_THRESHOLD)?;
        let command = RoundCommand::Open {
            round_id,
            kind: input.kind,
            items,
            raters_per_item: input.raters_per_item.unwrap_or(DEFAULT_RATERS_PER_ITEM),
            quality_threshold: input.quality_threshold.unwrap_or(default_threshold),
            assignment_lease_seconds: input.assignment_lease_seconds.unwrap_or(DEFAULT_ASSIGNMENT_LEASE_SECONDS),
            campaign_id: input.campaign_id,
            controls,
        };
        let outcome = bus.execute::<AnnotationRound>(&round_id.stream(), expected, context, command)?;
        Ok(Done::new(outcome).with("id", round_id).with("items", item_ids))
    })
    .await
}

/// What an annotator is shown of an item: the blob of each image and where to fetch it. Not the
/// image ids either: they are UUIDv7s, whose timestamps could tell an annotator which of two
/// images a later job (a fine-tuned model) made.
fn blind_content(content: &ItemContent) -> serde_json::Value {
    let image = |image: &ImageRef| json!({"blob": image.blob, "url": format!("/v1/blobs/{}", image.blob)});
    match content {
        ItemContent::Image(one) => json!({"image": image(one)}),
        ItemContent::Pair { left, right } => json!({"pair": {"left": image(left), "right": image(right)}}),
    }
}

fn question(kind: Option<RoundKind>, content: &ItemContent) -> &'static str {
    match (kind, content) {
        (_, ItemContent::Pair { .. }) => {
            "Which image is better? Answer {\"compare\": {\"preferred\": \"left\" | \"right\"}}"
        }
        (Some(RoundKind::Baseline), _) => "Is the concept present? Answer {\"baseline\": {\"concept_present\": bool}}",
        (Some(RoundKind::Screen), _) => {
            "Rate the image: answer {\"screen\": {\"quality\": 1-5, \"group_depicted\": bool, \"concept_present\": bool}}"
        }
        _ => "Rate the image: answer {\"check\": {\"concept_present\": bool, \"quality\": 1-5}}",
    }
}

/// The caller's next task: assigns the item that most needs a rating (or returns the one already
/// assigned) and shows only what to rate (annotator).
#[utoipa::path(get, path = "/v1/rounds/{id}/next", tag = "rounds", params(("id" = String, Path)),
    responses((status = 200, description = "`{\"task\": {\"item_id\", \"content\", \"question\", \"look_for\": {\"group\", \"concept\"} | null, \"expires_at\"} | null, \"version\", \"position\"}`; \
        `content` is `{\"image\": {\"blob\", \"url\"}}` or, for a pair, `{\"pair\": {\"left\": {\"blob\", \"url\"}, \"right\": {…}}}`: \
        fetch the bytes from `url` (`/v1/blobs/{blob}`)", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn next(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Annotate)?;
    let id: RoundId = parse_id("round", &path)?;
    let answer = assign_next(&state, &principal, id).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// Assigns the caller's next task (or finds the one they hold) and describes it blind.
async fn assign_next(
    state: &web::Data<AppState>,
    principal: &Principal,
    id: RoundId,
) -> Result<serde_json::Value, ApiError> {
    let annotator = principal.name.clone();
    let stream = id.stream();
    let now = Utc::now();
    // The task is read from the state this assignment left, inside the round's writer.
    let (outcome, (task, remaining, kind)) = state
        .bus
        .execute_then_async::<AnnotationRound, _>(
            &stream,
            None,
            &principal.context(),
            RoundCommand::AssignNext { annotator: annotator.clone(), now },
            move |round, _| {
                let task = round.current_task(&annotator, now).and_then(|item_id| {
                    let item = round.item(item_id)?;
                    let expires_at = round.assignments.get(&(item_id, annotator.clone()))?;
                    let task = json!({
                        "item_id": item_id,
                        "content": blind_content(&item.content),
                        "question": question(round.kind, &item.content),
                        "expires_at": expires_at,
                    });
                    Some((task, item.label.association_id))
                });
                let (done, needed) = round.progress();
                (task, needed.saturating_sub(done), round.kind)
            },
        )
        .await
        .map_err(|e| named(e, "round", id))?;
    // What to look for: the association's group and concept (the same for every image an
    // annotator is shown, so it says nothing about which model made one).
    let task = task.map(|(mut task, association)| {
        let look_for = association.and_then(|a| {
            state.projections.read(|p| {
                p.associations.associations.get(&a).map(|view| json!({"group": view.group, "concept": view.concept}))
            })
        });
        task["look_for"] = look_for.unwrap_or(serde_json::Value::Null);
        task
    });
    state.metrics.record_appended(outcome.event_ids.len());
    let position = match outcome.position {
        Some(position) => position,
        None => head_position(state).await?,
    };
    Ok(json!({
        "round_id": id,
        "kind": kind,
        "task": task,
        "remaining": remaining,
        "stream": stream,
        "version": outcome.stream_version,
        "position": position,
    }))
}

/// Submit an annotation for a task assigned to the caller (annotator).
#[utoipa::path(post, path = "/v1/rounds/{id}/annotations", tag = "rounds", request_body = SubmitAnnotation,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, description = "stored; with `\"next\": true` in the body the answer also holds `next`, \
        the caller's next task as `GET /v1/rounds/{id}/next` describes it", body = CommandAnswer),
        (status = "4XX", description = "403 when the item is not assigned to you; 409 when already annotated or the round is closed; 422 for an answer that does not fit (a rating outside 1–5)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn submit(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: RoundId = parse_id("round", &path)?;
    let annotator = principal.name.clone();
    let (data, caller) = (state.clone(), principal.clone());
    run_command_async(
        state,
        principal,
        request,
        body,
        Action::Annotate,
        true,
        async move |bus, context, expected, input: SubmitAnnotation| {
            let command = RoundCommand::Submit { annotator, item_id: input.item_id, answer: input.answer };
            let outcome = bus
                .execute_async::<AnnotationRound>(&id.stream(), expected, &context, command)
                .await
                .map_err(|e| named(e, "round", id))?;
            let done = Done::new(outcome);
            if !input.next {
                return Ok(done);
            }
            // The annotation is stored whatever happens next; a failure to assign says so.
            Ok(match assign_next(&data, &caller, id).await {
                Ok(next) => done.with("next", next),
                Err(error) => done.with("next", json!({"error": error.to_string()})),
            })
        },
    )
    .await
}

/// Withdraw (undo) the caller's own annotation while the round is open (annotator).
#[utoipa::path(post, path = "/v1/rounds/{id}/withdrawals", tag = "rounds", request_body = WithdrawAnnotation,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn withdraw(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: RoundId = parse_id("round", &path)?;
    let annotator = principal.name.clone();
    run_command(
        state,
        principal,
        request,
        body,
        Action::Annotate,
        false,
        move |bus, context, expected, input: WithdrawAnnotation| {
            let command = RoundCommand::Withdraw { annotator, item_id: input.item_id };
            let outcome = bus
                .execute::<AnnotationRound>(&id.stream(), expected, context, command)
                .map_err(|e| named(e, "round", id))?;
            Ok(Done::new(outcome))
        },
    )
    .await
}

/// Close a round and fix its outcome (curator).
#[utoipa::path(post, path = "/v1/rounds/{id}/close", tag = "rounds", request_body = CloseRound,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn close(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: RoundId = parse_id("round", &path)?;
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        false,
        move |bus, context, expected, input: CloseRound| {
            let command = RoundCommand::Close {
                allow_incomplete: input.allow_incomplete,
                leave_out_unadjudicated: input.leave_out_unadjudicated,
            };
            let outcome = bus
                .execute::<AnnotationRound>(&id.stream(), expected, context, command)
                .map_err(|e| named(e, "round", id))?;
            Ok(Done::new(outcome))
        },
    )
    .await
}

/// Every round's progress, from the read model.
#[utoipa::path(get, path = "/v1/rounds", tag = "rounds", params(WaitFor),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    wait_for(&state, query.wait_for).await?;
    let (rounds, position) =
        state.projections.read(|p| (p.rounds.rounds.values().cloned().collect::<Vec<_>>(), p.position));
    Ok(query_answer(json!({ "rounds": rounds }), position, None))
}

/// One round's progress: annotations submitted and needed, per annotator, status, and the
/// agreement so far (`{"concept_present": alpha, "quality": alpha, ...}`, Krippendorff's alpha of
/// each question asked; null where undefined).
#[utoipa::path(get, path = "/v1/rounds/{id}", tag = "rounds", params(("id" = String, Path), WaitFor),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn progress(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: RoundId = parse_id("round", &path)?;
    wait_for(&state, query.wait_for).await?;
    let (view, position, version) = state
        .projections
        .read(|p| {
            p.rounds
                .rounds
                .get(&id)
                .cloned()
                .map(|view| (view, p.position, p.entities.entities.get(&id.stream()).map(|e| e.version)))
        })
        .ok_or_else(|| ApiError::not_found(format!("round {id} does not exist")))?;
    // Agreement from the round's own stream (the read model keeps counts, not answers).
    let (round, _, _) = crate::routes::support::load::<AnnotationRound>(&state, id.stream()).await?;
    let mut body = serde_json::to_value(view).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut body {
        map.insert("agreement".into(), json!(projections::stats::round_agreement(&round.submissions)));
    }
    Ok(query_answer(body, position, version))
}

/// Let an excluded annotator back into the round (curator): their answers count again.
#[utoipa::path(post, path = "/v1/rounds/{id}/reinstatements", tag = "rounds", request_body = Reinstate,
    params(("id" = String, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn reinstate(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let id: RoundId = parse_id("round", &path)?;
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        false,
        move |bus, context, expected, input: Reinstate| {
            let command = RoundCommand::Reinstate { annotator: input.annotator, reason: input.reason };
            let outcome = bus
                .execute::<AnnotationRound>(&id.stream(), expected, context, command)
                .map_err(|e| named(e, "round", id))?;
            Ok(Done::new(outcome))
        },
    )
    .await
}

/// Each annotator of a round: answers, gold answers and how many were right, gold accuracy
/// with its Wilson 95% interval, agreement with the items' current majorities, and the
/// exclusion's evidence if the round's rule excluded them.
#[utoipa::path(get, path = "/v1/rounds/{id}/annotators", tag = "rounds", params(("id" = String, Path), WaitFor),
    responses((status = 200, description = "`{\"annotators\": [{\"annotator\", \"submitted\", \"gold_answers\", \"gold_correct\", \"gold_accuracy\", \"gold_accuracy_ci\": [low, high], \"agreement\", \"excluded\": {\"gold_answers\", \"gold_correct\", \"accuracy_upper_bound\"} | null}], \"position\"}`", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn annotators(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<String>,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    let id: RoundId = parse_id("round", &path)?;
    wait_for(&state, query.wait_for).await?;
    let (round, version, position) = crate::routes::support::load::<AnnotationRound>(&state, id.stream()).await?;
    if round.id.is_none() {
        return Err(ApiError::not_found(format!("round {id} does not exist")));
    }
    Ok(query_answer(json!({"annotators": round.annotator_records()}), position, Some(version)))
}

/// Items whose answers still split at the most raters their round allows, waiting for a
/// curator's decision: per item its round, content (as annotators see it) and every answer.
#[utoipa::path(get, path = "/v1/adjudications", tag = "rounds", params(WaitFor),
    responses((status = 200, description = "`{\"adjudications\": [{\"round_id\", \"item_id\", \"content\", \"answers\": {annotator: answer}, \"margin\"}], \"position\"}`", body = Object),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn adjudications(
    state: web::Data<AppState>,
    principal: Principal,
    query: web::Query<WaitFor>,
) -> Result<HttpResponse, ApiError> {
    principal.require(Action::Read)?;
    wait_for(&state, query.wait_for).await?;
    let (rounds, position) = open_rounds(&state).await?;
    let mut queue = Vec::new();
    for (round_id, round) in rounds {
        for item_id in round.adjudication_queue() {
            let Some(item) = round.item(item_id) else { continue };
            let answers = round.submissions.get(&item_id).cloned().unwrap_or_default();
            let margin = round.margin(item, &answers.values().collect::<Vec<_>>());
            queue.push(json!({"round_id": round_id, "item_id": item_id, "content": blind_content(&item.content), "answers": answers, "margin": margin}));
        }
    }
    Ok(query_answer(json!({ "adjudications": queue }), position, None))
}

/// Decide a split item (curator): the answer that settles it and why. The item's round is
/// found among the open rounds.
#[utoipa::path(post, path = "/v1/adjudications/{item_id}", tag = "rounds", request_body = Adjudicate,
    params(("item_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = CommandAnswer), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(principal = %principal.name))]
pub async fn adjudicate(
    state: web::Data<AppState>,
    principal: Principal,
    request: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    // The role first: the search below must not tell a caller without it which items exist.
    principal.require(Action::Curate)?;
    let item_id: ItemId = parse_id("item", &path)?;
    let (rounds, _) = open_rounds(&state).await?;
    let round_id = rounds
        .into_iter()
        .find_map(|(round_id, round)| round.item(item_id).map(|_| round_id))
        .ok_or_else(|| ApiError::not_found(format!("no open round holds item {item_id}")))?;
    run_command(
        state,
        principal,
        request,
        body,
        Action::Curate,
        false,
        move |bus, context, expected, input: Adjudicate| {
            let command = RoundCommand::Adjudicate { item_id, answer: input.answer, reason: input.reason };
            let outcome = bus
                .execute::<AnnotationRound>(&round_id.stream(), expected, context, command)
                .map_err(|e| named(e, "round", round_id))?;
            Ok(Done::new(outcome).with("round_id", round_id))
        },
    )
    .await
}

/// Every open round (from the read model) loaded from its stream, and the log position the list
/// reflects: where the adjudication routes look for split items.
async fn open_rounds(state: &web::Data<AppState>) -> Result<(Vec<(RoundId, AnnotationRound)>, u64), ApiError> {
    let (ids, position) = state.projections.read(|p| {
        let ids: Vec<RoundId> = p.rounds.rounds.values().filter(|r| r.status == "open").map(|r| r.id).collect();
        (ids, p.position)
    });
    let mut rounds = Vec::with_capacity(ids.len());
    for id in ids {
        let (round, _, _) = crate::routes::support::load::<AnnotationRound>(state, id.stream()).await?;
        rounds.push((id, round));
    }
    Ok((rounds, position))
}
