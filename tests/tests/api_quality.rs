//! Rounds that control their raters' quality, through HTTP: gold items score annotators, a
//! careless one is excluded by the rule (and told so), split items get more raters and then a
//! curator's adjudication, and every decision is on the audit log with its actor.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api_resources::{base_model, woman_hippo};
use crate::helpers::{TestApp, spawn_app};

/// A round 2 worked to its end: six pictures and four gold ones, three careful annotators and a
/// careless one (excluded by the rule), the first picture split and waiting for a curator.
pub(crate) struct CarelessRound {
    pub round: String,
    pub split: String,
    pub curator: String,
    pub auditor: String,
    pub model: String,
    pub tokens: BTreeMap<&'static str, String>,
    /// What the careless annotator's `next` answered once excluded.
    pub refusal: String,
    /// The round's opening body.
    pub body: Value,
}

/// What each annotator answers: the careless one sees the concept everywhere; two of the careful
/// ones see it in the first picture.
fn answer(who: &str, item: &str, split: &str) -> Value {
    let concept = who == "dan" || (item == split && who != "bob");
    json!({"check": {"concept_present": concept, "quality": 4}})
}

pub(crate) fn careless_round(app: &TestApp) -> CarelessRound {
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let auditor = app.token("auditor", "audrey");
    let model = base_model(app, &operator);
    // Six pictures to rate and four gold pictures known to show no concept.
    let items: Vec<Value> = (0..10)
        .map(|i| {
            let mut item = json!({"blob": format!("{i:064x}"), "prompt": "a photo of a woman at the beach", "seed": i, "model_version": model});
            if i >= 6 {
                item["gold"] = json!({"concept_present": false});
            }
            item
        })
        .collect();
    let body = json!({
        "kind": "check", "items": items, "raters_per_item": 2,
        "exclusion": {"min_gold_answers": 3, "min_accuracy": 0.8},
        "overlap": {"max_raters": 3, "margin": 3},
    });
    let opened = app.post("/v1/rounds", &curator, body.clone());
    let opened = opened.expect(201).json();
    let round = opened["id"].as_str().unwrap().to_string();
    let ids: Vec<String> = opened["items"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    let split = ids[0].clone();
    let names = ["ann", "bob", "cat", "dan"];
    let tokens: BTreeMap<&str, String> = names.iter().map(|name| (*name, app.token("annotator", name))).collect();
    let mut refusal = None;
    loop {
        let mut worked = false;
        for who in names {
            let next = app.get(&format!("/v1/rounds/{round}/next"), &tokens[who]);
            if next.status == 403 {
                refusal.get_or_insert(next.body.clone());
                continue;
            }
            let task = next.expect(200).json()["task"].clone();
            if task.is_null() {
                continue;
            }
            let item = task["item_id"].as_str().unwrap();
            let body = json!({"item_id": item, "answer": answer(who, item, &split)});
            app.post(&format!("/v1/rounds/{round}/annotations"), &tokens[who], body).expect(201);
            worked = true;
        }
        if !worked {
            break;
        }
    }
    let refusal = refusal.expect("the careless annotator is refused");
    CarelessRound { round, split, curator, auditor, model, tokens, refusal, body }
}

#[test]
fn a_careless_annotator_is_excluded_and_a_split_item_is_adjudicated() {
    let app = spawn_app();
    let CarelessRound { round, split, curator, auditor, model, tokens, refusal, body } = careless_round(&app);
    // Bad settings are refused with the field named, and nothing is opened.
    let mut no_gold = body.clone();
    no_gold["items"] = json!([body["items"][0]]);
    let refused = app.post("/v1/rounds", &curator, no_gold);
    assert!(refused.expect(422).body.contains("exclusion"), "{}", refused.body);
    assert!(refusal.contains("dan is excluded from this round: 0 of 3 gold answers right"), "{refusal}");

    let annotators = app.get(&format!("/v1/rounds/{round}/annotators"), &auditor).expect(200).json();
    let record = |name: &str| {
        annotators["annotators"].as_array().unwrap().iter().find(|r| r["annotator"] == name).unwrap().clone()
    };
    assert_eq!((record("dan")["gold_answers"].clone(), record("dan")["gold_correct"].clone()), (json!(3), json!(0)));
    assert_eq!(record("dan")["excluded"]["gold_answers"], 3, "{annotators}");
    for name in ["ann", "bob", "cat"] {
        let r = record(name);
        assert_eq!(r["gold_correct"], r["gold_answers"], "{r}");
        assert!(r["excluded"].is_null(), "{r}");
    }
    // Every picture has three careful raters (two agreeing is not margin enough); the first
    // splits 2–1 at the most raters and waits for a curator.
    let progress = app.get(&format!("/v1/rounds/{round}"), &curator).expect(200).json();
    assert_eq!((progress["submitted"].clone(), progress["needed"].clone()), (json!(18), json!(18)), "{progress}");
    assert_eq!(progress["gold_items"], 4);
    let queue = app.get("/v1/adjudications", &curator).expect(200).json();
    let queue = queue["adjudications"].as_array().unwrap();
    assert_eq!(queue.len(), 1, "{queue:?}");
    assert_eq!((queue[0]["item_id"].as_str(), queue[0]["margin"].clone()), (Some(split.as_str()), json!(1)));
    assert_eq!(queue[0]["answers"].as_object().unwrap().len(), 3);
    let closing = app.post(&format!("/v1/rounds/{round}/close"), &curator, json!({}));
    assert!(closing.expect(409).body.contains("adjudication"), "{}", closing.body);
    app.post(
        &format!("/v1/adjudications/{split}"),
        &tokens["ann"],
        json!({"answer": answer("bob", &split, &split), "reason": "r"}),
    )
    .expect(403);
    app.post(
        &format!("/v1/adjudications/{split}"),
        &curator,
        json!({"answer": {"check": {"concept_present": true, "quality": 4}}, "reason": "a hippo in the water, left"}),
    )
    .expect(200);
    app.post(&format!("/v1/rounds/{round}/close"), &curator, json!({})).expect(200);

    // The log says who decided what, and why.
    let history = app.get(&format!("/v1/audit/streams/round-{round}"), &auditor).expect(200).json();
    let events = history["events"].as_array().unwrap();
    let of = |kind: &str| events.iter().filter(|e| e["type"] == kind).cloned().collect::<Vec<_>>();
    let excluded = &of("AnnotatorExcluded")[0];
    assert_eq!(excluded["payload"]["annotator"], "dan");
    assert_eq!(excluded["payload"]["rule"], json!({"min_gold_answers": 3, "min_accuracy": 0.8}));
    assert_eq!(of("RaterAdded").len(), 6, "one more rater for each picture");
    let adjudicated = &of("ItemAdjudicated")[0];
    assert_eq!(adjudicated["actor"], json!({"principal": "cora", "role": "curator"}));
    assert_eq!(adjudicated["payload"]["reason"], "a hippo in the water, left");
    let closed = &of("RoundClosed")[0]["payload"];
    let outcome = closed["outcomes"].as_array().unwrap().iter().find(|o| o["item_id"] == split.as_str()).unwrap();
    assert_eq!(outcome["adjudicated"], true);
    assert_eq!(outcome["verdict"]["check"]["concept_present"], true);

    // A round that aggregates by Dawid–Skene says so in each outcome.
    let items: Vec<Value> = (20..24)
        .map(|i| json!({"blob": format!("{i:064x}"), "prompt": "a photo of a woman at the beach", "model_version": model}))
        .collect();
    let body = json!({"kind": "check", "items": items, "raters_per_item": 2, "aggregation": "dawid_skene"});
    let round = app.post("/v1/rounds", &curator, body).expect(201).json()["id"].as_str().unwrap().to_string();
    for who in ["ann", "bob"] {
        loop {
            let task = app.get(&format!("/v1/rounds/{round}/next"), &tokens[who]).expect(200).json()["task"].clone();
            if task.is_null() {
                break;
            }
            let body =
                json!({"item_id": task["item_id"], "answer": {"check": {"concept_present": false, "quality": 3}}});
            app.post(&format!("/v1/rounds/{round}/annotations"), &tokens[who], body).expect(201);
        }
    }
    app.post(&format!("/v1/rounds/{round}/close"), &curator, json!({})).expect(200);
    let history = app.get(&format!("/v1/audit/streams/round-{round}"), &auditor).expect(200).json();
    let closed = history["events"].as_array().unwrap().iter().find(|e| e["type"] == "RoundClosed").unwrap().clone();
    let outcomes = closed["payload"]["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 4);
    for outcome in outcomes {
        assert_eq!(outcome["aggregation"], "dawid_skene", "{outcome}");
        assert_eq!(outcome["verdict"]["check"]["concept_present"], false, "{outcome}");
    }
}

/// A curator may give the bound the after-rate must be provable under instead of a probe count:
/// the campaign takes the fewest probe images that can show it, and says what its count can show.
#[test]
fn a_campaign_plans_its_probe_count_from_a_rate_bound() {
    let app = spawn_app();
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let model = base_model(&app, &operator);
    let association = app.post("/v1/associations", &curator, woman_hippo()).expect(201).json()["id"].clone();
    let start = |bound: f64| {
        app.post(
            "/v1/campaigns",
            &curator,
            json!({"name": "planned", "associations": [association], "base_model": model,
                   "settings": {"probe_rate_bound": bound}}),
        )
    };
    let started = start(0.02);
    let started = started.expect(201).json();
    let planning = &started["planning"];
    assert_eq!(planning["probe_images_per_association"], 189, "{started}");
    let bound = planning["zero_rate_upper_bound"].as_f64().unwrap();
    assert!(bound <= 0.02 && bound > 0.0199, "{planning}");
    assert_eq!(planning["associations"][0]["association_id"], association);
    assert!(planning["associations"][0]["last_measured_baseline"].is_null(), "never measured: {planning}");
    let id = started["id"].as_str().unwrap();
    let campaign = app.get(&format!("/v1/campaigns/{id}"), &curator).expect(200).json();
    assert_eq!(campaign["settings"]["probe_images_per_association"], 189, "{campaign}");
    assert_eq!(campaign["settings"]["probe_rate_bound"], 0.02);
    let refused = start(0.0001);
    assert!(refused.expect(422).body.contains("probe_rate_bound"), "{}", refused.body);
}
