//! The OpenAPI document (utoipa), served at `/openapi.json`, with Swagger UI at `/docs`
//! (vendored: it works with no internet). The committed `openapi/openapi.json` must equal what
//! the server serves; `tests/tests/api_openapi.rs` fails otherwise.

use actix_web::HttpResponse;
use domain::fine_tune::Arm;
use domain::generation::GenerationPurpose;
use domain::round::RoundKind;
use domain::{Role, Taxonomy};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{associations, audit, exports, health, images, jobs, model_export, pages, rounds, support, tokens, work};
use crate::problem;

#[derive(OpenApi)]
#[openapi(
    info(title = "thitl", description = "Twice-human-in-the-loop mitigation of problematic associations in image-generation models. \
        Every command answers `{stream, version, position}`; every query answers the `position` it reflects and accepts `?wait_for=POS`. \
        Errors are RFC 7807 `application/problem+json`. POSTs accept `Idempotency-Key`; commands on an existing entity accept `If-Match: <version>`."),
    paths(
        health::healthz, health::readyz, health::metrics,
        tokens::create, tokens::list, tokens::revoke, pages::me,
        associations::taxonomy, associations::define_category, associations::retire_category,
        associations::register, associations::list, associations::detail, associations::evaluation, associations::recategorize, associations::retire,
        rounds::open, rounds::list, rounds::progress, rounds::next, rounds::submit, rounds::withdraw, rounds::close,
        rounds::annotators, rounds::reinstate, rounds::adjudications, rounds::adjudicate,
        images::image, images::blob, images::upload,
        work::register_model, work::list_model_versions, work::model_version, work::lineage, work::model_lineage, model_export::export_version, work::promote, work::roll_back,
        work::create_prompt_set, work::list_prompt_sets, work::prompt_set, work::add_prompts, work::review_prompt, work::finalize,
        work::request_generation, work::list_generations, work::generation,
        work::request_fine_tune, work::list_fine_tunes, work::fine_tune,
        work::start_campaign, work::list_campaigns, work::campaign, work::conclude_campaign,
        jobs::lease, jobs::renew_generation, jobs::record_image, jobs::complete_generation, jobs::fail_generation,
        jobs::renew_fine_tune, jobs::record_progress, jobs::complete_fine_tune, jobs::fail_fine_tune,
        exports::export,
        audit::events, audit::stream_history, audit::verify, audit::feed,
    ),
    components(schemas(
        problem::Problem, support::CommandAnswer,
        tokens::CreateToken, associations::RegisterAssociation, associations::Recategorize, associations::Reason,
        associations::DefineCategory, associations::Empty,
        rounds::OpenRound, rounds::RoundItemInput, rounds::ImageItem, rounds::PairItem, rounds::PairSides, rounds::PairImage,
        rounds::SubmitAnnotation, rounds::WithdrawAnnotation, rounds::CloseRound, rounds::Reinstate, rounds::Adjudicate,
        work::RegisterBaseModel, work::CreatePromptSet, work::AddPrompts, work::PromptText, work::PromptReview,
        work::RequestGeneration, work::RequestFineTune, work::StartCampaign, work::ConcludeCampaign,
        jobs::LeaseJob, jobs::RenewLease, jobs::RecordJobImage, jobs::RecordJobProgress, jobs::WorkerOnly,
        jobs::CompleteFineTuneJob, jobs::FailJob,
        projections::ImageRecord, images::StoredBlob, images::BlobBytes,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as served (pretty JSON, stable key order), also what `openapi/openapi.json` holds.
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make every release a spurious diff of the contract.
    doc.info.version = "v1".to_string();
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    exact(&mut doc);
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// `Idempotency-Key`: what `support::idempotency_key` accepts.
const IDEMPOTENCY_KEY: &str = "^[!-~]{1,200}$";
/// `If-Match`: a stream version, bare, quoted or weak, as `support::if_match` reads it (at most 19
/// digits: every such number fits the u64 it is parsed into).
const IF_MATCH: &str = r#"^(W/)?"?[0-9]{1,19}"?$"#;
/// A blob's name: its SHA-256, as `BlobHash` accepts it.
pub const SHA256: &str = "^[0-9a-f]{64}$";

/// The wire names of a serde enum's variants, in order.
fn names<T: Serialize>(variants: &[T]) -> Value {
    Value::Array(variants.iter().map(|v| serde_json::to_value(v).unwrap_or_default()).collect())
}

/// Every variant of each enum the request bodies name (a new variant fails to compile here, so
/// the document cannot fall behind).
fn enumerations() -> [(&'static str, &'static str, Value); 4] {
    let arms = [Arm::Thitl, Arm::Traditional];
    let purposes = [
        GenerationPurpose::Baseline,
        GenerationPurpose::Candidates,
        GenerationPurpose::PriorPreservation,
        GenerationPurpose::Evaluation,
    ];
    let kinds = [RoundKind::Baseline, RoundKind::Screen, RoundKind::Check];
    for variant in &arms {
        match variant {
            Arm::Thitl | Arm::Traditional => {}
        }
    }
    for variant in &purposes {
        match variant {
            GenerationPurpose::Baseline
            | GenerationPurpose::Candidates
            | GenerationPurpose::PriorPreservation
            | GenerationPurpose::Evaluation => {}
        }
    }
    for variant in &kinds {
        match variant {
            RoundKind::Baseline | RoundKind::Screen | RoundKind::Check => {}
        }
    }
    // A token is never issued for the system role (the domain refuses it).
    let roles: Vec<Role> = Role::ALL.into_iter().filter(|r| *r != Role::System).collect();
    [
        ("RequestFineTune", "arm", names(&arms)),
        ("RequestGeneration", "purpose", names(&purposes)),
        ("OpenRound", "kind", names(&kinds)),
        ("CreateToken", "role", names(&roles)),
    ]
}

/// What the derive cannot say about the request bodies' properties, from the domain's own
/// constants and patterns: merged into `components.schemas.<component>.properties.<property>`.
fn bounds() -> Vec<(&'static str, &'static str, Value)> {
    use domain::association::{MAX_PROBE_PROMPTS, MAX_SYNONYMS};
    use domain::campaign::MAX_TEAM_IMAGES;
    use domain::fine_tune::MAX_EXAMPLES;
    use domain::generation::MAX_IMAGES_PER_JOB;
    use domain::prompt_set::MAX_PROMPTS_PER_SET;
    use domain::round::{MAX_ITEMS_PER_ROUND, MAX_RATERS_PER_ITEM};
    // An association names a category by its key exactly as the taxonomy holds it.
    let category = json!({"pattern": Taxonomy::stored_key_pattern()});
    let raters = json!({"minimum": 1, "maximum": MAX_RATERS_PER_ITEM});
    vec![
        ("RegisterAssociation", "concept_synonyms", json!({"maxItems": MAX_SYNONYMS})),
        (
            "RegisterAssociation",
            "probe_prompts",
            json!({"minItems": 1, "maxItems": MAX_PROBE_PROMPTS, "uniqueItems": true}),
        ),
        ("RegisterAssociation", "category", category.clone()),
        ("Recategorize", "category", category),
        ("DefineCategory", "key", json!({"pattern": Taxonomy::key_pattern()})),
        ("AddPrompts", "prompts", json!({"minItems": 1, "maxItems": MAX_PROMPTS_PER_SET})),
        ("RequestGeneration", "items", json!({"minItems": 1, "maxItems": MAX_IMAGES_PER_JOB})),
        ("RequestFineTune", "examples", json!({"minItems": 1, "maxItems": MAX_EXAMPLES})),
        ("OpenRound", "items", json!({"minItems": 1, "maxItems": MAX_ITEMS_PER_ROUND})),
        ("OpenRound", "raters_per_item", raters.clone()),
        ("CampaignSettings", "raters_per_item", raters),
        ("CampaignSettings", "team_images", json!({"maxItems": MAX_TEAM_IMAGES})),
        (
            "StartCampaign",
            "associations",
            json!({"minItems": 1, "uniqueItems": true, "items": {"type": "string", "format": "uuid"}}),
        ),
        // An HTTP status: a `u16`, which the derive writes as any unsigned integer.
        ("Problem", "status", json!({"minimum": 100, "maximum": 599})),
    ]
}

/// Rules on a whole body, merged into `components.schemas.<component>`: between fields, as
/// `if`/`then`/`else` (only round 2, `check`, holds pairs; a T-HITL fine-tune names its round 1,
/// a traditional one names none), and a blob's bytes are never empty.
fn rules() -> [(&'static str, Value); 3] {
    let check = names(&[RoundKind::Check])[0].clone();
    let thitl = names(&[Arm::Thitl])[0].clone();
    [
        (
            "OpenRound",
            json!({
                "if": {"properties": {"kind": {"const": check}}},
                "else": {"properties": {"items": {"items": {"$ref": "#/components/schemas/ImageItem"}}}},
            }),
        ),
        (
            "RequestFineTune",
            json!({
                "if": {"properties": {"arm": {"const": thitl}}},
                "then": {"required": ["source_round"], "properties": {"source_round": {"type": "string"}}},
                "else": {"properties": {"source_round": {"type": "null"}}},
            }),
        ),
        ("BlobBytes", json!({"minLength": 1})),
    ]
}

/// Enums serde reads externally tagged (`{"variant": {...}}`): the object holds exactly its one
/// key; with `deny_unknown_fields`, each variant's fields too.
const EXTERNALLY_TAGGED: [(&str, bool); 2] = [("PromptReview", true), ("Answer", false)];

/// utoipa writes an unsigned integer as `format: int32` or `int64` with `minimum: 0`; those
/// formats bound it to the signed range, half of what serde reads. Every such integer of the
/// components without a bound of its own becomes `uint32` or `uint64`, up to its type's largest
/// value. (Not the parameters: a log position, though a `u64`, ends at `i64::MAX`.)
fn unsigned(schema: &mut Value) {
    match schema {
        Value::Object(fields) => {
            let maximum = match fields.get("format").and_then(Value::as_str) {
                Some("int32") => Some(("uint32", json!(u32::MAX))),
                Some("int64") => Some(("uint64", json!(u64::MAX))),
                _ => None,
            };
            let unbounded = fields.get("minimum").and_then(Value::as_i64).is_some_and(|minimum| minimum >= 0)
                && !fields.contains_key("maximum");
            if let (Some((format, maximum)), true) = (maximum, unbounded) {
                fields.insert("format".into(), json!(format));
                fields.insert("maximum".into(), maximum);
            }
            fields.values_mut().for_each(unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned),
        _ => {}
    }
}

/// A link's name, and the path and method of the operation it leads to.
type Link = (&'static str, &'static str, &'static str);

/// Each command that creates an entity answers its `id`: the operations that read it or act on
/// it, as OpenAPI links (a client, or a stateful fuzzer, chains create → read → act with them).
const LINKS: &[(&str, &[Link])] = &[
    (
        "/v1/associations",
        &[
            ("GetAssociation", "/v1/associations/{id}", "get"),
            ("GetEvaluation", "/v1/associations/{id}/evaluation", "get"),
            ("Recategorize", "/v1/associations/{id}/recategorize", "post"),
            ("Retire", "/v1/associations/{id}/retire", "post"),
        ],
    ),
    (
        "/v1/rounds",
        &[
            ("GetRound", "/v1/rounds/{id}", "get"),
            ("NextTask", "/v1/rounds/{id}/next", "get"),
            ("Annotate", "/v1/rounds/{id}/annotations", "post"),
            ("Withdraw", "/v1/rounds/{id}/withdrawals", "post"),
            ("Close", "/v1/rounds/{id}/close", "post"),
        ],
    ),
    ("/v1/tokens", &[("Revoke", "/v1/tokens/{id}/revoke", "post")]),
    (
        "/v1/model-versions",
        &[
            ("GetModelVersion", "/v1/model-versions/{id}", "get"),
            ("GetLineage", "/v1/model-versions/{id}/lineage", "get"),
            ("GetModelLineage", "/v1/models/{id}/lineage", "get"),
            ("Promote", "/v1/model-versions/{id}/promote", "post"),
            ("RollBack", "/v1/model-versions/{id}/rollback", "post"),
        ],
    ),
    (
        "/v1/prompt-sets",
        &[
            ("GetPromptSet", "/v1/prompt-sets/{id}", "get"),
            ("AddPrompts", "/v1/prompt-sets/{id}/prompts", "post"),
            ("Finalize", "/v1/prompt-sets/{id}/finalize", "post"),
        ],
    ),
    ("/v1/generations", &[("GetGeneration", "/v1/generations/{id}", "get")]),
    ("/v1/fine-tunes", &[("GetFineTune", "/v1/fine-tunes/{id}", "get")]),
    (
        "/v1/campaigns",
        &[("GetCampaign", "/v1/campaigns/{id}", "get"), ("Conclude", "/v1/campaigns/{id}/conclude", "post")],
    ),
];

/// What the derive cannot say: the exact shape of the headers and path ids every route reads,
/// the enumerations of the request bodies, and the links between operations.
fn exact(doc: &mut Value) {
    // Bodies whose every field is optional: an empty body reads as `{}` (`support::parse_json`).
    for pointer in [
        "/paths/~1v1~1jobs~1lease/post/requestBody",
        "/paths/~1v1~1jobs~1generations~1{id}~1renew/post/requestBody",
        "/paths/~1v1~1jobs~1generations~1{id}~1complete/post/requestBody",
        "/paths/~1v1~1jobs~1fine-tunes~1{id}~1renew/post/requestBody",
    ] {
        if let Some(body) = doc.pointer_mut(pointer) {
            body["required"] = json!(false);
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
            let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else { continue };
            for parameter in parameters {
                let schema = match (parameter["in"].as_str(), parameter["name"].as_str()) {
                    (Some("header"), Some("Idempotency-Key")) => json!({"type": "string", "pattern": IDEMPOTENCY_KEY}),
                    (Some("header"), Some("If-Match")) => json!({"type": "string", "pattern": IF_MATCH}),
                    (Some("path"), Some("id" | "prompt_id" | "item_id")) => json!({"type": "string", "format": "uuid"}),
                    (Some("path"), Some("sha256")) => json!({"type": "string", "pattern": SHA256}),
                    (Some("path"), Some("key")) => json!({"type": "string", "pattern": Taxonomy::stored_key_pattern()}),
                    _ => continue,
                };
                parameter["schema"] = schema;
            }
        }
    }
    for (component, property, values) in enumerations() {
        if let Some(schema) = doc.pointer_mut(&format!("/components/schemas/{component}/properties/{property}")) {
            schema["enum"] = values;
        }
    }
    for (component, property, keywords) in bounds() {
        let pointer = format!("/components/schemas/{component}/properties/{property}");
        if let (Some(schema), Value::Object(keywords)) =
            (doc.pointer_mut(&pointer).and_then(Value::as_object_mut), keywords)
        {
            schema.extend(keywords);
        }
    }
    for (component, keywords) in rules() {
        if let (Some(schema), Value::Object(keywords)) =
            (doc.pointer_mut(&format!("/components/schemas/{component}")).and_then(Value::as_object_mut), keywords)
        {
            schema.extend(keywords);
        }
    }
    for (component, closed_variants) in EXTERNALLY_TAGGED {
        let pointer = format!("/components/schemas/{component}/oneOf");
        let Some(variants) = doc.pointer_mut(&pointer).and_then(Value::as_array_mut) else { continue };
        for variant in variants {
            variant["additionalProperties"] = Value::Bool(false);
            match variant["properties"].as_object_mut() {
                Some(fields) if closed_variants => {
                    fields.values_mut().for_each(|fields| fields["additionalProperties"] = Value::Bool(false));
                }
                _ => {}
            }
        }
    }
    for (create, targets) in LINKS {
        let pointer = format!("/paths/{}/post/responses/201", create.replace('/', "~1"));
        let Some(response) = doc.pointer_mut(&pointer) else { continue };
        let links: serde_json::Map<String, Value> = targets
            .iter()
            .map(|(name, path, method)| {
                let reference = format!("#/paths/{}/{method}", path.replace('/', "~1"));
                (name.to_string(), json!({"operationRef": reference, "parameters": {"id": "$response.body#/id"}}))
            })
            .collect();
        response["links"] = Value::Object(links);
    }
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        unsigned(schemas);
    }
}

/// `GET /openapi.json`.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document_json())
}

/// Swagger UI at `/docs`, from files compiled into the binary.
pub fn swagger_ui() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every amendment names a schema the derive wrote: a renamed body or field fails here rather
    /// than silently losing its bounds.
    #[test]
    fn every_amendment_finds_its_schema() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (component, property, _) in enumerations().into_iter().chain(bounds()) {
            let pointer = format!("/components/schemas/{component}/properties/{property}");
            assert!(doc.pointer(&pointer).is_some(), "{pointer}");
        }
        for (component, _) in rules() {
            assert!(doc.pointer(&format!("/components/schemas/{component}")).is_some(), "{component}");
        }
        for (component, _) in EXTERNALLY_TAGGED {
            assert!(doc.pointer(&format!("/components/schemas/{component}/oneOf")).is_some(), "{component}");
        }
    }

    /// The text the domain parses as `Name` or `Sentence` is described by the parser's own pattern.
    #[test]
    fn text_schemas_carry_the_parsers_patterns() {
        let doc: Value = serde_json::from_str(&document_json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Name"]["pattern"], json!(domain::values::Name::pattern()));
        assert_eq!(schemas["Sentence"]["pattern"], json!(domain::values::Sentence::pattern()));
        assert_eq!(schemas["RegisterAssociation"]["properties"]["group"]["$ref"], "#/components/schemas/Name");
        assert_eq!(schemas["GenerationItem"]["properties"]["prompt"]["$ref"], "#/components/schemas/Sentence");
    }
}
