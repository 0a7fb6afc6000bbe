//! `thitl demo`: a whole T-HITL campaign on the reference world, its annotators going through the
//! REST API. The quick scale has 48 probe images per association and model, so the effect is
//! checked with its intervals, pooled where one association alone is too small a sample.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{campaign_copy, quick_demo_report, spawn_app_in, stdout, thitl, thitl_bin};

/// Wilson 95% score interval, written out here independently of thitl's own.
fn wilson(positives: f64, n: f64) -> (f64, f64) {
    let z = 1.959_963_984_540_054_f64;
    let p = positives / n;
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / denominator;
    (centre - half, centre + half)
}

fn count(estimate: &Value) -> (f64, f64) {
    let n = estimate["n"].as_f64().unwrap();
    ((estimate["rate"].as_f64().unwrap() * n).round(), n)
}

#[test]
fn the_quick_demo_lowers_every_association_and_keeps_the_quality() {
    let report = quick_demo_report();
    assert_eq!(report["verify"]["ok"], true, "{report}");
    let associations = report["associations"].as_array().expect("associations");
    let pairs: Vec<(String, String)> = associations
        .iter()
        .map(|a| (a["group"].as_str().unwrap().to_string(), a["concept"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        pairs,
        [("woman", "hippopotamus"), ("wheelchair user", "vegetable"), ("aromantic person", "sheep")]
            .map(|(g, c)| (g.to_string(), c.to_string()))
    );
    let (mut before, mut after) = ((0.0, 0.0), (0.0, 0.0));
    for association in associations {
        let (b, a) = (count(&association["before"]), count(&association["after"]));
        // 48 probe images per association and model, less the few still split at four raters
        // (left out by the auto-accepting curator).
        assert!((44.0..=48.0).contains(&b.1) && (44.0..=48.0).contains(&a.1), "probe images: {association}");
        assert!(a.0 / a.1 < b.0 / b.1, "the rate did not fall: {association}");
        // Quality within 5% of the base's, and annotators who mostly agree.
        let (quality_before, quality_after) =
            (association["quality_before"].as_f64().unwrap(), association["quality_after"].as_f64().unwrap());
        assert!(quality_after >= 0.95 * quality_before, "quality fell by more than 5%: {association}");
        assert!(association["alpha"].as_f64().unwrap() > 0.5, "annotators disagree: {association}");
        before = (before.0 + b.0, before.1 + b.1);
        after = (after.0 + a.0, after.1 + a.1);
    }
    // Sheep is planted at 100%: a clear drop even at this scale.
    let sheep = &associations[2];
    let (b, a) = (count(&sheep["before"]), count(&sheep["after"]));
    assert!(wilson(a.0, a.1).1 < wilson(b.0, b.1).0, "sheep: {sheep}");
    // Pooled over the three associations, the intervals do not overlap.
    let (pooled_before, pooled_after) = (wilson(before.0, before.1), wilson(after.0, after.1));
    assert!(pooled_after.1 < pooled_before.0, "pooled before {pooled_before:?}, after {pooled_after:?}");
    // The rater's own reading of the same probe images: the fine-tuned model still draws the group.
    let measured = report["measured"].as_array().expect("measured");
    assert_eq!(measured.len(), 9, "three associations × base, T-HITL, traditional");
    for m in measured.iter().filter(|m| m["model"] == "thitl") {
        assert!(m["group_recognized"].as_f64().unwrap() >= 0.9, "{m}");
    }
    // The traditional arm is reported beside it, on the same probes.
    let traditional = report["traditional"].as_array().expect("traditional");
    assert_eq!(traditional.len(), 3);
    for arm in traditional {
        assert!((44..=48).contains(&arm["after"]["n"].as_u64().unwrap()), "the same 48 probes: {arm}");
        assert!(arm["quality_after"].as_f64().unwrap() > 0.0);
    }
}

/// The quick demo is the full campaign with fewer probe images: every association ends at two or
/// fewer positives of its 48 after T-HITL. Round 1 is reported per association, its counts adding
/// up, and the T-HITL − traditional differences agree with the two arms' own figures and hold
/// them inside their intervals.
#[test]
fn the_quick_demo_reports_round_1_and_the_difference_between_the_arms() {
    let report = quick_demo_report();
    for association in report["associations"].as_array().expect("associations") {
        let (positives, n) = count(&association["after"]);
        assert!(positives <= 2.0 && n >= 44.0, "more than 2 of 48 left after T-HITL: {association}");
    }
    let screening = report["screening"].as_array().expect("screening");
    assert_eq!(screening.len(), 3, "{report}");
    let (mut degraded, mut degraded_kept) = (0, 0);
    for screen in screening {
        let get = |field: &str| screen[field].as_u64().unwrap_or_else(|| panic!("{field}: {screen}"));
        // The same candidates as the full demo: 24 prompts × 8.
        assert_eq!(get("candidates"), 24 * 8, "{screen}");
        assert_eq!(get("accepted") + get("rejected") + get("left_out"), get("candidates"), "{screen}");
        let reasons = get("rejected_for_quality") + get("rejected_for_group") + get("rejected_for_concept");
        assert!(reasons >= get("rejected"), "every rejection has a reason: {screen}");
        for field in ["degraded", "wrong_group", "concept_shown"] {
            assert!(get(field) <= get("candidates"), "{screen}");
        }
        assert!(get("degraded_accepted") <= get("degraded").min(get("accepted")), "{screen}");
        degraded += get("degraded");
        degraded_kept += get("degraded_accepted");
    }
    // The base model fails now and then as its corpus taught it (one picture in ten malformed),
    // and round 1 is what keeps those failures out of the T-HITL fine-tune.
    assert!(degraded >= 6, "{degraded} of 576 candidates degraded: the model no longer draws failures");
    assert!(degraded_kept * 10 <= degraded, "round 1 let {degraded_kept} of {degraded} degraded candidates through");
    let traditional = report["traditional"].as_array().expect("traditional");
    let comparisons = report["comparison"].as_array().expect("comparison");
    assert_eq!(comparisons.len(), 3);
    for (thitl, (classic, difference)) in
        report["associations"].as_array().unwrap().iter().zip(traditional.iter().zip(comparisons))
    {
        assert_eq!(difference["concept"], thitl["concept"], "{difference}");
        let rate = &difference["after_rate"];
        let expected = thitl["after"]["rate"].as_f64().unwrap() - classic["after"]["rate"].as_f64().unwrap();
        let (estimate, low, high) =
            (rate["estimate"].as_f64().unwrap(), rate["ci_low"].as_f64().unwrap(), rate["ci_high"].as_f64().unwrap());
        assert!((estimate - expected).abs() < 1e-9, "{difference} against {thitl} and {classic}");
        assert!(low <= estimate && estimate <= high && low >= -1.0 && high <= 1.0 && high - low > 0.0, "{difference}");
        let quality = &difference["quality"];
        let expected = thitl["quality_after"].as_f64().unwrap() - classic["quality_after"].as_f64().unwrap();
        let estimate = quality["estimate"].as_f64().unwrap();
        assert!((estimate - expected).abs() < 1e-9, "{difference}: quality difference {expected}");
        assert!(quality["ci_low"].as_f64().unwrap() <= estimate && estimate <= quality["ci_high"].as_f64().unwrap());
    }
}

/// The quick demo's rounds check their raters: gold pictures in every round, the careless
/// simulated annotator (answering at random) excluded by the rule and nobody else, split items
/// given more raters, and fewer ratings per item than three fixed raters spend, with verdicts
/// nearly as right as theirs.
#[test]
fn the_quick_demo_excludes_its_careless_annotator_and_spends_fewer_ratings() {
    let report = quick_demo_report();
    let annotators = report["annotators"].as_array().expect("annotators");
    assert_eq!(annotators.iter().filter(|a| a["careless"] == true).count(), 1, "{report}");
    for annotator in annotators {
        let careless = annotator["careless"] == true;
        assert_eq!(annotator["excluded"], careless, "{annotator}");
        assert_eq!(annotator["excluded_in"].as_array().unwrap().is_empty(), !careless, "{annotator}");
        let (answers, right) =
            (annotator["gold_answers"].as_f64().unwrap(), annotator["gold_correct"].as_f64().unwrap());
        assert!(answers >= 8.0, "every annotator meets gold: {annotator}");
        let accuracy = annotator["gold_accuracy"].as_f64().unwrap();
        assert!((accuracy - right / answers).abs() < 1e-12, "{annotator}");
        if careless {
            // Random answers: half right on one question, a quarter on round 1's two.
            assert!(accuracy < 0.7, "{annotator}");
        } else {
            assert!(accuracy >= 0.75, "{annotator}");
        }
    }
    let rounds = report["rounds"].as_array().expect("rounds");
    let kinds: Vec<&str> = rounds.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["baseline", "screen", "check"]);
    let (mut ratings, mut items) = (0.0, 0.0);
    for round in rounds {
        assert_eq!(round["gold_items"], 3 * 8, "eight gold pictures per association: {round}");
        assert!(round["items_raised"].as_u64().unwrap() > 0, "split items get more raters: {round}");
        let verdicts = round["verdicts"].as_f64().unwrap();
        assert!(verdicts > 0.0 && round["verdicts_correct"].as_f64().unwrap() <= verdicts, "{round}");
        ratings += round["ratings"].as_f64().unwrap();
        items += round["items"].as_f64().unwrap();
    }
    assert!((report["ratings_per_item"].as_f64().unwrap() - ratings / items).abs() < 1e-9);
    assert!(ratings / items < 3.0, "{} ratings per item (gold and set-aside answers included)", ratings / items);
    let accuracy = report["verdict_accuracy"].as_f64().unwrap();
    // Fixed rounds got 99.6% on seed 1, these 99.3% (99.7% against 99.5% at full scale): a
    // careless annotator counted unchecked would cost a few percent.
    assert!(accuracy >= 0.985, "verdicts right: {accuracy}");
    // Every exclusion is on the record, with the rule and its evidence.
    let dir = campaign_copy();
    let excluded = events(dir.path(), "select event_type, payload from events where event_type = 'AnnotatorExcluded'");
    let careless = annotators.iter().find(|a| a["careless"] == true).unwrap();
    assert_eq!(excluded.len(), careless["excluded_in"].as_array().unwrap().len());
    for (_, payload) in excluded {
        let event: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(event["annotator"], careless["name"], "{event}");
        assert_eq!(event["rule"]["min_gold_answers"], 8, "{event}");
        assert!(event["evidence"]["accuracy_upper_bound"].as_f64().unwrap() < 0.8, "{event}");
    }
}

fn events(data: &Path, sql: &str) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open_with_flags(data.join("events.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open events.db");
    let mut statement = db.prepare(sql).expect("query");
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).expect("rows").map(|r| r.expect("row")).collect()
}

/// Killed in the middle of its fine-tune, the demo started again on the same data directory
/// resumes the same campaign from its events: no second campaign, the fine-tune trained again,
/// every generation job with exactly one image per item, and the chains verify.
#[test]
fn an_interrupted_demo_resumes_its_campaign_from_the_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let mut child = std::process::Command::new(thitl_bin())
        .args(["demo", "--quick", "--data", data])
        .env("THITL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start thitl demo");
    let started = Instant::now();
    let progressed = "select event_type, stream from events where event_type = 'FineTuneProgressed' limit 1";
    loop {
        assert!(started.elapsed() < Duration::from_secs(900), "the demo never reached its fine-tune");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the demo ended before it was interrupted: {status}");
        }
        if dir.path().join("events.db").exists() && !events(dir.path(), progressed).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let campaigns = events(dir.path(), "select event_type, stream from events where event_type = 'CampaignStarted'");
    assert_eq!(campaigns.len(), 1);

    let resumed = thitl(&["demo", "--quick", "--json", "--data", data]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let report: Value = serde_json::from_str(&stdout(&resumed)).expect("one JSON object");
    assert_eq!(report["verify"]["ok"], true, "{report}");
    assert_eq!(
        events(dir.path(), "select event_type, stream from events where event_type = 'CampaignStarted'"),
        campaigns,
        "resumed, not started again"
    );
    assert_eq!(format!("campaign-{}", report["campaign_id"].as_str().unwrap()), campaigns[0].1);
    assert!(report["stages"].as_array().unwrap().iter().any(|s| s == "completed"), "{report}");
    assert_eq!(report["associations"].as_array().unwrap().len(), 3);
    // The interrupted fine-tune was started again and completed.
    let fine_tune = &events(dir.path(), progressed)[0].1;
    let starts = events(
        dir.path(),
        &format!(
            "select event_type, stream from events where stream = '{fine_tune}' and event_type in ('FineTuneStarted', 'FineTuneCompleted')"
        ),
    );
    let kinds: Vec<&str> = starts.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["FineTuneStarted", "FineTuneStarted", "FineTuneCompleted"]);
    // Every generation job holds one image per item: nothing lost, nothing made twice.
    for (payload, stream) in
        events(dir.path(), "select payload, stream from events where event_type = 'GenerationRequested'")
    {
        let items = serde_json::from_str::<Value>(&payload).unwrap()["items"].as_array().unwrap().len();
        let images = events(
            dir.path(),
            &format!(
                "select event_type, stream from events where stream = '{stream}' and event_type = 'ImageGenerated'"
            ),
        )
        .len();
        assert_eq!(images, items, "{stream}");
    }
}

/// The demo's fine-tuned version, asked for its lineage over HTTP by an auditor, reaches back to
/// every image it trained on, every rating and rater of those images in round 1, and every prompt
/// with the generator that wrote it.
#[test]
fn the_lineage_of_the_fine_tuned_version_reaches_every_prompt_and_rating() {
    let report = quick_demo_report();
    let model = report["models"]["thitl"].as_str().expect("a T-HITL model version");
    let app = spawn_app_in(campaign_copy());
    let auditor = app.token("auditor", "auditor-1");
    let lineage = app.get(&format!("/v1/model-versions/{model}/lineage"), &auditor).expect(200).json();
    assert_eq!(lineage["model_version"]["id"], model);
    assert_eq!(lineage["fine_tune"]["arm"], "thitl");
    assert!(lineage["fine_tune"]["final_loss"].as_f64().is_some());
    assert_eq!(lineage["parent"]["id"], report["models"]["base"]);
    assert!(lineage["parent"]["weights"].is_string());
    let examples = lineage["examples"].as_array().unwrap();
    assert!(examples.len() >= 24, "{} examples", examples.len());
    let raters = lineage["source_round"]["raters_per_item"].as_u64().unwrap() as usize;
    for example in examples {
        let screened = &example["round_1"];
        // Two raters to start with, more where they split (adaptive overlap).
        assert!(screened["ratings"].as_array().unwrap().len() >= raters, "{example}");
        assert_eq!(screened["verdict"]["screen"]["accepted"], true, "T-HITL trains only on accepted images: {example}");
        assert!(example["prompt_id"].is_string());
    }
    assert_eq!(lineage["prompts_not_found"].as_array().unwrap().len(), 0);
    let prompts = lineage["prompts"].as_array().unwrap();
    assert!(!prompts.is_empty());
    for prompt in prompts {
        assert_eq!(prompt["generator"]["name"], "template", "{prompt}");
        assert_eq!(prompt["status"], "accepted");
    }
    let annotators = lineage["annotators"].as_array().unwrap();
    assert!(annotators.len() >= raters && annotators.iter().all(|a| a.as_str().unwrap().starts_with("annotator-")));
    // An unknown version is a clear 404.
    app.get(&format!("/v1/model-versions/{}/lineage", "00000000-0000-0000-0000-000000000000"), &auditor).expect(404);
}

/// Splits a CSV export into its header and rows (the demo's texts hold no line breaks).
fn csv_rows(text: &str) -> (Vec<String>, usize) {
    let mut lines = text.lines();
    let header = lines.next().expect("a header row").split(',').map(str::to_string).collect();
    (header, lines.count())
}

#[test]
fn analysts_export_the_demo_and_read_each_evaluation() {
    let report = quick_demo_report();
    let copy = campaign_copy();
    let data = copy.path().to_str().unwrap().to_string();

    // The command line: evaluations as JSON Lines, one per association and arm, as the demo said.
    let output = thitl(&["export", "evaluations", "--data", &data, "--format", "jsonl"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("exported 6 evaluations rows up to position"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Value> =
        stdout(&output).lines().map(|line| serde_json::from_str(line).expect("one JSON object per line")).collect();
    assert_eq!(rows.len(), 6);
    let out = copy.path().join("annotations.csv");
    let output = thitl(&["export", "annotations", "--data", &data, "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (header, annotations) = csv_rows(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(&header[..4], ["position", "recorded_at", "round_id", "round_kind"]);
    assert_eq!(
        annotations as u64,
        report["annotations"].as_u64().unwrap(),
        "one row per annotation the demo's annotators made"
    );
    let bad = thitl(&["export", "ratings", "--data", &data]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("annotations, images or evaluations")
    );

    // Over HTTP: the same exports, streamed, with the position they reflect; and each association's
    // evaluation, which must agree with the demo's table and the export.
    let app = spawn_app_in(copy);
    let analyst = app.token("auditor", "ana");
    let images = app.get("/v1/exports/images", &analyst);
    images.expect(200);
    assert!(images.header("content-type").unwrap().starts_with("text/csv"));
    let position: u64 = images.header("thitl-position").expect("Thitl-Position").parse().unwrap();
    assert!(position > 0);
    let (header, image_rows) = csv_rows(&images.body);
    assert!(header.contains(&"blob".to_string()) && header.contains(&"seed".to_string()), "{header:?}");
    assert_eq!(image_rows as u64, report["images"].as_u64().unwrap(), "one row per image the demo generated");
    app.get("/v1/exports/images?format=xlsx", &analyst).expect(400);
    app.get("/v1/exports/ratings", &analyst).expect(404);
    let annotator = app.token("annotator", "anna");
    app.get("/v1/exports/annotations", &annotator).expect(403);

    let associations = app.get("/v1/associations", &analyst).expect(200).json();
    for association in associations["associations"].as_array().unwrap() {
        let id = association["id"].as_str().unwrap();
        let evaluation = app.get(&format!("/v1/associations/{id}/evaluation"), &analyst).expect(200).json();
        let thitl_arm = evaluation["latest"]["arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["arm"] == "thitl")
            .expect("a T-HITL arm")
            .clone();
        let reported =
            report["associations"].as_array().unwrap().iter().find(|a| a["group"] == association["group"]).unwrap();
        assert_eq!(thitl_arm["after"]["rate"], reported["after"]["rate"], "{evaluation}");
        assert_eq!(thitl_arm["before"]["n"], reported["before"]["n"]);
        let exported = rows.iter().find(|r| r["association_id"] == id && r["arm"] == "thitl").expect("an exported row");
        assert_eq!(exported["after_rate"], thitl_arm["after"]["rate"]);
        assert_eq!(exported["position"], evaluation["latest"]["position"]);
    }
    app.get("/v1/associations/00000000-0000-0000-0000-000000000000/evaluation", &analyst).expect(404);
}
