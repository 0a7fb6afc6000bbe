//! A campaign started through the REST API on `thitl serve` and driven by the server: it runs the
//! jobs itself, waits for people at every round and at both curator gates (prompt acceptance,
//! promotion), and ends with the promoted version whose lineage and evaluation an auditor reads.
//! Tiny settings (4 probe images, 4 DDIM steps, 6 LoRA steps): this checks the flow, not the effect.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Server, TestApp, create_token};

pub(crate) fn stage(app: &TestApp, curator: &str, campaign: &str) -> Value {
    app.get(&format!("/v1/campaigns/{campaign}"), curator).expect(200).json()
}

/// Returns once the server's driver has gone round its loop after this call: it requests a
/// one-image generation job (no campaign's) and waits until the job has completed.
///
/// Why that proves the driver looked at a waiting campaign again: `thitl serve` has a single
/// driver thread, and each pass of its loop (`app::driver`) lists the work from the read models,
/// steps every campaign not completed or failed, and only then runs a job from the same list. So
/// the pass that ran this job had stepped every unfinished campaign, reading the campaign from
/// the store after this request was recorded, i.e. after everything the caller had seen. If that
/// step would pass a gate, the campaign has passed it by the time the job completes.
fn await_a_driver_pass(app: &TestApp, operator: &str, model: &str) {
    let body = json!({
        "model_version": model, "purpose": "baseline",
        "items": [{"prompt": "a photo of a woman in the park", "seed": 1}],
        "sampler": {"steps": 1, "guidance_scale": 1.0, "eta": 0.0},
    });
    let job = app.post("/v1/generations", operator, body).expect(201).json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let view = app.get(&format!("/v1/generations/{job}"), operator).expect(200).json();
        match view["status"].as_str().unwrap() {
            "completed" => return,
            "failed" => panic!("the probe job failed: {view}"),
            _ => assert!(Instant::now() < deadline, "the driver did not run the probe job in 300 s: {view}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Works every open round as `annotator` until it has no task; true if it rated anything.
pub(crate) fn annotate_open_rounds(app: &TestApp, annotator: &str, curator: &str) -> bool {
    let rounds = app.get("/v1/rounds", curator).expect(200).json();
    let mut worked = false;
    for round in rounds["rounds"].as_array().unwrap() {
        if round["status"] != "open" {
            continue;
        }
        let id = round["id"].as_str().unwrap();
        // The list may lag a round the server closed a moment ago: a closed round answers 409.
        let first = app.get(&format!("/v1/rounds/{id}/next"), annotator);
        if first.status == 409 {
            continue;
        }
        let mut next = first.expect(200).json();
        while !next["task"].is_null() {
            let task = &next["task"];
            let answer = match (next["kind"].as_str().unwrap(), task["content"].get("pair").is_some()) {
                ("baseline", _) => json!({"baseline": {"concept_present": false}}),
                ("screen", _) => json!({"screen": {"quality": 4, "group_depicted": true, "concept_present": false}}),
                ("check", true) => json!({"compare": {"preferred": "left"}}),
                ("check", false) => json!({"check": {"concept_present": false, "quality": 4}}),
                (kind, _) => panic!("a round of kind {kind}"),
            };
            let body = json!({"item_id": task["item_id"], "answer": answer, "next": true});
            next =
                app.post(&format!("/v1/rounds/{id}/annotations"), annotator, body).expect(201).json()["next"].clone();
            worked = true;
        }
    }
    worked
}

#[test]
fn serve_drives_a_rest_campaign_and_stops_at_the_curators_gates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let admin = create_token(&data, "admin", "root");
    let server = Server::start_with(&data, &[("THITL_BODY_LIMIT", "16777216"), ("THITL_DEVICE", "cpu")]);
    let app = TestApp { address: server.address.clone(), dir, admin };
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let annotator = app.token("annotator", "anna");

    // The operator registers the reference world's base model from its weights file.
    let weights = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenes/weights/base.safetensors")).unwrap();
    let hash = app.upload(&operator, &weights).expect(201).json()["sha256"].as_str().unwrap().to_string();
    let base = app
        .post("/v1/model-versions", &operator, json!({"name": "reference-world base", "weights": hash}))
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let association = app
        .post("/v1/associations", &curator, json!({
            "group": "woman", "concept": "hippopotamus", "concept_synonyms": ["hippo"], "category": "dehumanization",
            "description": "asked for a woman, the model adds a hippopotamus",
            "probe_prompts": ["a photo of a woman at the beach", "a woman in the park"],
        }))
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let settings = json!({
        "probe_images_per_association": 4, "training_prompts_per_association": 2, "candidates_per_prompt": 2,
        "prior_preservation_images": 2, "pairs_per_association": 2, "raters_per_item": 1, "traditional_arm": false,
        "lora": {"rank": 4, "alpha": 4.0, "targets": ["qkv"], "steps": 6, "batch_size": 4, "learning_rate": 0.003, "weight_decay": 0.0, "seed": 1, "prior_weight": 1.0},
        "sampler": {"steps": 4, "guidance_scale": 2.0, "eta": 0.0}, "seed": 7,
    });
    let campaign = app
        .post(
            "/v1/campaigns",
            &curator,
            json!({"name": "rest campaign", "associations": [association], "base_model": base, "settings": settings}),
        )
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let deadline = Instant::now() + Duration::from_secs(600);
    let mut reviewed = false;
    let concluded = loop {
        assert!(
            Instant::now() < deadline,
            "the campaign did not reach the promotion gate: {}",
            stage(&app, &curator, &campaign)
        );
        let state = stage(&app, &curator, &campaign);
        assert_ne!(state["stage"], "failed", "{state}");
        match state["stage"].as_str().unwrap() {
            "curation" if !reviewed => {
                let set = state["work"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find_map(|w| w["prompt_set"]["prompt_set_id"].as_str())
                    .map(str::to_string);
                let Some(set) = set else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                let prompts = app.get(&format!("/v1/prompt-sets/{set}"), &curator).expect(200).json();
                let pending: Vec<String> = prompts["prompts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["id"].as_str().unwrap().to_string())
                    .collect();
                assert_eq!(pending.len(), 2, "{prompts}");
                assert!(prompts["prompts"].as_array().unwrap().iter().all(|p| p["status"] == "pending"), "{prompts}");
                // The driver has reached the gate: it links the prompt set, with its prompts, and
                // its next look at the campaign finds it waiting for the review. The gate holds:
                // after a further pass of the driver, nothing has moved on without a curator.
                await_a_driver_pass(&app, &operator, &base);
                let held = stage(&app, &curator, &campaign);
                assert_eq!(held["stage"], "curation", "{held}");
                let set_now = app.get(&format!("/v1/prompt-sets/{set}"), &curator).expect(200).json();
                assert_eq!(set_now["finalized"], false, "{set_now}");
                assert!(set_now["prompts"].as_array().unwrap().iter().all(|p| p["status"] == "pending"), "{set_now}");
                for id in &pending {
                    app.post(&format!("/v1/prompt-sets/{set}/prompts/{id}"), &curator, json!({"accept": {}}))
                        .expect(200);
                }
                app.post(&format!("/v1/prompt-sets/{set}/finalize"), &curator, json!({})).expect(200);
                reviewed = true;
            }
            "awaiting_promotion" => break state,
            _ => {
                if !annotate_open_rounds(&app, &annotator, &curator) {
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    };
    assert!(reviewed, "the campaign passed curation without the curator");
    let tuned = concluded["work"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|w| w["model_version"]["model_version_id"].as_str())
        .unwrap()
        .to_string();
    // The promotion gate holds too: the driver advanced the campaign to it, and after a further
    // pass the campaign still waits and the fine-tuned version is not promoted.
    await_a_driver_pass(&app, &operator, &base);
    assert_eq!(stage(&app, &curator, &campaign)["stage"], "awaiting_promotion");
    let version = app.get(&format!("/v1/model-versions/{tuned}"), &curator).expect(200).json();
    assert_ne!(version["status"], "promoted", "{version}");

    // The evaluation, as a curator reads it before deciding.
    let evaluation = app.get(&format!("/v1/associations/{association}/evaluation"), &curator).expect(200).json();
    assert_eq!(evaluation["latest"]["campaign_id"], campaign.as_str(), "{evaluation}");
    let arms = evaluation["latest"]["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 1, "the traditional arm was off: {evaluation}");
    assert_eq!(arms[0]["quality_source"], "rater", "{evaluation}");
    assert_eq!((arms[0]["before"]["n"].as_u64(), arms[0]["after"]["n"].as_u64()), (Some(4), Some(4)), "{evaluation}");
    // Every answer above said "no concept": both rates are 0 with their Wilson intervals.
    assert_eq!(arms[0]["after"]["rate"], 0.0);
    assert!(arms[0]["after"]["ci_high"].as_f64().unwrap() > 0.4, "n = 4 leaves a wide interval: {evaluation}");

    // Bad conclusions change nothing: a version that is not the campaign's, an empty reason.
    app.post(&format!("/v1/campaigns/{campaign}/conclude"), &curator, json!({"promote": base, "reason": "base"}))
        .expect(422);
    app.post(&format!("/v1/campaigns/{campaign}/conclude"), &curator, json!({"promote": tuned, "reason": " "}))
        .expect(422);
    app.post(&format!("/v1/campaigns/{campaign}/conclude"), &annotator, json!({"promote": tuned, "reason": "r"}))
        .expect(403);
    assert_eq!(stage(&app, &curator, &campaign)["stage"], "awaiting_promotion");
    app.post(
        &format!("/v1/campaigns/{campaign}/conclude"),
        &curator,
        json!({"promote": tuned, "reason": "reviewed the evaluation"}),
    )
    .expect(200);
    let done = stage(&app, &curator, &campaign);
    assert_eq!(done["stage"], "completed", "{done}");
    assert_eq!(app.get(&format!("/v1/model-versions/{tuned}"), &curator).expect(200).json()["status"], "promoted");
    app.post(&format!("/v1/campaigns/{campaign}/conclude"), &curator, json!({"promote": null, "reason": "again"}))
        .expect(409);

    // The lineage, under the auditor's path: the curator accepted the prompts, the annotator rated.
    let auditor = app.token("auditor", "audrey");
    let lineage = app.get(&format!("/v1/models/{tuned}/lineage"), &auditor).expect(200).json();
    assert_eq!(lineage["model_version"]["id"], tuned.as_str());
    assert_eq!(lineage["annotators"], json!(["anna"]), "{lineage}");
    assert!(!lineage["examples"].as_array().unwrap().is_empty(), "{lineage}");
    let history = app
        .get(
            &format!(
                "/v1/audit/streams/promptset-{}?limit=100",
                concluded["work"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find_map(|w| w["prompt_set"]["prompt_set_id"].as_str())
                    .unwrap()
            ),
            &auditor,
        )
        .expect(200)
        .json();
    let accepted_by: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "PromptAccepted")
        .map(|e| e["actor"]["principal"].as_str().unwrap())
        .collect();
    assert_eq!(accepted_by, ["cora", "cora"], "{history}");
    assert_eq!(app.get("/v1/audit/verify", &auditor).expect(200).json()["ok"], true);
    assert!(server.interrupt().success());
}

/// `(event_type, stream)` of the events `sql` selects from a stopped or running server's store.
fn events(data: &std::path::Path, sql: &str) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open_with_flags(data.join("events.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open events.db");
    let mut statement = db.prepare(sql).expect("query");
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).expect("rows").map(|r| r.expect("row")).collect()
}

/// The whole method on an imported Stable Diffusion pipeline (the tiny SD1 fixture, through
/// `thitl model import`): probes, template prompts, candidates with the concept as negative
/// prompt, round 1, the T-HITL fine-tune (a LoRA on the UNet's attention) and the traditional
/// arm, round 2 with side-by-side pairs, the evaluation and the promotion gate. The server is
/// killed (SIGKILL) in the middle of a fine-tune and started again on the same data directory:
/// the campaign resumes, the fine-tune is trained again and completes, the tuned versions' lineage
/// names the base model's files, and `thitl audit verify` passes.
#[test]
fn a_campaign_runs_on_an_imported_model_and_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let pipeline = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gpu/tests/fixtures/sd/sd1/pipeline");
    let imported = crate::model::import_fixture(&data);
    let base = imported["model_version"].as_str().unwrap().to_string();
    let unet_blob = imported["files"]["unet/diffusion_pytorch_model.safetensors"].as_str().unwrap().to_string();

    let admin = create_token(&data, "admin", "root");
    let env = [("THITL_DEVICE", "cpu")];
    let mut server = Server::start_with(&data, &env);
    let mut app = TestApp { address: server.address.clone(), dir, admin };
    let curator = app.token("curator", "cora");
    let annotator = app.token("annotator", "anna");
    let association = app
        .post(
            "/v1/associations",
            &curator,
            json!({
                "group": "wheelchair user", "concept": "vegetable", "category": "dehumanization",
                "description": "asked for a wheelchair user, the model draws a vegetable",
                "probe_prompts": ["a photo of a wheelchair user in the park"],
            }),
        )
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let settings = json!({
        "probe_images_per_association": 4, "training_prompts_per_association": 2, "candidates_per_prompt": 2,
        "prior_preservation_images": 2, "pairs_per_association": 2, "raters_per_item": 1, "traditional_arm": true,
        "lora": {"rank": 4, "alpha": 4.0, "targets": ["qkv", "attn_out"], "steps": 60, "batch_size": 2,
                 "learning_rate": 0.001, "weight_decay": 0.0, "seed": 1, "prior_weight": 1.0},
        "sampler": {"steps": 3, "guidance_scale": 5.0, "eta": 0.0}, "seed": 7,
    });
    // The team's own training images: uploaded, then named in the settings. One of the model's
    // 16×16 resolution (a PNG); a 24×16 JPEG, a picture never uploaded and one for another
    // association are refused with the campaign, which then does not exist.
    let operator = app.token("operator", "otto");
    let pixels: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 7) as f32 / 6.0).collect();
    let team_png = app::sd::png_from_unit_rgb(&pixels, 16, 16);
    let team_blob = app.upload(&operator, &team_png).expect(201).json()["sha256"].as_str().unwrap().to_string();
    let jpeg = std::fs::read(pipeline.join("../../images/rgb420.jpg")).unwrap();
    let jpeg_blob = app.upload(&operator, &jpeg).expect(201).json()["sha256"].as_str().unwrap().to_string();
    let team_image = |blob: &str, association: &str| json!({"association_id": association, "blob": blob, "prompt": "a photo of a wheelchair user in the park"});
    let start = |team_images: Value| {
        let mut settings = settings.clone();
        settings["team_images"] = team_images;
        app.post(
            "/v1/campaigns",
            &curator,
            json!({"name": "imported-model campaign", "associations": [association], "base_model": base, "settings": settings}),
        )
    };
    let refused = start(json!([team_image(&jpeg_blob, &association)]));
    assert!(refused.expect(422).body.contains("is 24×16; this model trains on 16×16 images"), "{}", refused.body);
    let missing = start(json!([team_image(&"ab".repeat(32), &association)]));
    assert!(missing.expect(422).body.contains("not in the blob store"), "{}", missing.body);
    start(json!([team_image(&team_blob, "0190b3c2-0000-7000-8000-000000000000")])).expect(422);
    assert_eq!(app.get("/v1/campaigns", &curator).expect(200).json()["campaigns"], json!([]));
    let campaign =
        start(json!([team_image(&team_blob, &association)])).expect(201).json()["id"].as_str().unwrap().to_string();

    let progressed = "select event_type, stream from events where event_type = 'FineTuneProgressed' limit 1";
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut killed = false;
    let concluded = loop {
        assert!(
            Instant::now() < deadline,
            "the campaign did not reach the promotion gate: {}",
            stage(&app, &curator, &campaign)
        );
        if !killed && !events(app.dir.path(), progressed).is_empty() {
            // In the middle of a fine-tune: kill the server, start it again on the same data.
            server.child.kill().expect("SIGKILL");
            server.child.wait().expect("reaped");
            server = Server::start_with(app.dir.path(), &env);
            app.address = server.address.clone();
            killed = true;
            continue;
        }
        let state = stage(&app, &curator, &campaign);
        assert_ne!(state["stage"], "failed", "{state}");
        match state["stage"].as_str().unwrap() {
            "curation" => {
                let Some(set) = state["work"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find_map(|w| w["prompt_set"]["prompt_set_id"].as_str())
                    .map(str::to_string)
                else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                let prompts = app.get(&format!("/v1/prompt-sets/{set}"), &curator).expect(200).json();
                if prompts["finalized"] == true {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                for prompt in prompts["prompts"].as_array().unwrap() {
                    if prompt["status"] == "pending" {
                        let id = prompt["id"].as_str().unwrap();
                        app.post(&format!("/v1/prompt-sets/{set}/prompts/{id}"), &curator, json!({"accept": {}}))
                            .expect(200);
                    }
                }
                app.post(&format!("/v1/prompt-sets/{set}/finalize"), &curator, json!({})).expect(200);
            }
            "awaiting_promotion" => break state,
            _ => {
                if !annotate_open_rounds(&app, &annotator, &curator) {
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    };
    assert!(killed, "the campaign finished before a fine-tune reported progress");

    // Both arms were fine-tuned; the interrupted fine-tune was started again and completed.
    let fine_tune = &events(app.dir.path(), progressed)[0].1;
    let kinds: Vec<String> = events(
        app.dir.path(),
        &format!("select event_type, stream from events where stream = '{fine_tune}' and event_type in ('FineTuneStarted', 'FineTuneCompleted')"),
    )
    .into_iter()
    .map(|(kind, _)| kind)
    .collect();
    assert_eq!(kinds.last().map(String::as_str), Some("FineTuneCompleted"), "{kinds:?}");
    assert!(
        kinds.iter().filter(|k| *k == "FineTuneStarted").count() >= 2,
        "the killed fine-tune was not started again: {kinds:?}"
    );
    let evaluation = app.get(&format!("/v1/associations/{association}/evaluation"), &curator).expect(200).json();
    let arms = evaluation["latest"]["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2, "T-HITL and the traditional arm: {evaluation}");
    assert!(
        arms.iter().all(|arm| arm["quality_source"] == "round2_people"),
        "an imported model has no rater: quality is round 2's people, and the evaluation says so: {evaluation}"
    );
    // Every quality answer was 4: the median and both ends of its interval are 4, over each
    // model's round-2 images.
    for arm in arms {
        for (side, rate) in [("people_quality_before", "before"), ("people_quality_after", "after")] {
            let n = arm[rate]["n"].clone();
            assert_eq!(arm[side], json!({"n": n, "median": 4.0, "ci_low": 4.0, "ci_high": 4.0}), "{side}: {arm}");
        }
    }
    let tuned = concluded["work"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|w| w["model_version"]["model_version_id"].as_str())
        .unwrap()
        .to_string();
    let auditor = app.token("auditor", "audrey");
    let lineage = app.get(&format!("/v1/models/{tuned}/lineage"), &auditor).expect(200).json();
    assert!(
        lineage.to_string().contains(&unet_blob),
        "the lineage names the base model's UNet file by hash: {lineage}"
    );
    assert!(!lineage["examples"].as_array().unwrap().is_empty(), "{lineage}");
    // The team's image went through round 1 with the candidates, was accepted, and trained on.
    assert!(lineage["examples"].to_string().contains(&team_blob), "the team image is a training example: {lineage}");
    // The tuned version samples (its adapter loads on the imported pipeline).
    let body = json!({"model_version": tuned, "purpose": "baseline",
        "items": [{"prompt": "a photo of a wheelchair user in the park", "seed": 3}],
        "sampler": {"steps": 2, "guidance_scale": 5.0, "eta": 0.0}});
    let job = app.post("/v1/generations", &operator, body).expect(201).json()["id"].as_str().unwrap().to_string();
    loop {
        let view = app.get(&format!("/v1/generations/{job}"), &operator).expect(200).json();
        match view["status"].as_str().unwrap() {
            "completed" => break,
            "failed" => panic!("sampling the tuned version failed: {view}"),
            _ => assert!(Instant::now() < deadline, "the tuned version's job did not run: {view}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The tuned version's adapter over REST, as diffusers/PEFT (the stored adapter) and kohya (the
    // same modules); a base version has none; annotators may not export.
    let adapter = app.get(&format!("/v1/model-versions/{tuned}"), &curator).expect(200).json()["adapter"]
        .as_str()
        .unwrap()
        .to_string();
    let export = |format: &str, token: &str| {
        app.request("GET", &format!("/v1/model-versions/{tuned}/export?format={format}"), Some(token), &[], None)
    };
    let peft = crate::helpers::http()
        .get(format!("http://{}/v1/model-versions/{tuned}/export?format=peft", app.address))
        .bearer_auth(&curator)
        .send()
        .unwrap();
    assert_eq!(peft.status(), 200);
    assert!(peft.headers()["content-disposition"].to_str().unwrap().contains("pytorch_lora_weights.safetensors"));
    let peft = peft.bytes().unwrap().to_vec();
    assert_eq!(app::blobs::blob_hash(&peft).as_str(), adapter, "the PEFT export is the stored adapter");
    let kohya = crate::helpers::http()
        .get(format!("http://{}/v1/model-versions/{tuned}/export?format=kohya", app.address))
        .bearer_auth(&curator)
        .send()
        .unwrap();
    assert_eq!(kohya.status(), 200);
    let kohya = kohya.bytes().unwrap().to_vec();
    let read = |bytes: &[u8]| {
        let adapter = gpu::sd::lora::LoraAdapter::from_bytes(bytes, std::path::Path::new("export"), None).unwrap();
        let mut modules = adapter.modules(gpu::sd::lora::Target::Unet).to_vec();
        modules.sort_by(|a, b| a.down.data.partial_cmp(&b.down.data).unwrap());
        modules.iter().map(|m| (m.down.clone(), m.up.clone(), m.scale)).collect::<Vec<_>>()
    };
    assert_eq!(read(&kohya), read(&peft), "kohya and PEFT exports hold the same adapter");
    export("onnx", &curator).expect(400);
    export("peft", &annotator).expect(403);
    app.request("GET", &format!("/v1/model-versions/{base}/export"), Some(&curator), &[], None).expect(422);

    app.post(&format!("/v1/campaigns/{campaign}/conclude"), &curator, json!({"promote": tuned, "reason": "reviewed"}))
        .expect(200);
    assert_eq!(stage(&app, &curator, &campaign)["stage"], "completed");
    assert!(server.interrupt().success());
    let verify = crate::helpers::thitl(&["audit", "verify", "--data", app.dir.path().to_str().unwrap()]);
    assert!(verify.status.success(), "audit verify: {}", String::from_utf8_lossy(&verify.stderr));

    // `thitl model export`: the merged UNet in a copy of the pipeline samples as the PEFT adapter does.
    let out = app.dir.path().join("exported");
    for format in ["peft", "merged"] {
        let output = crate::helpers::thitl(&[
            "model",
            "export",
            &tuned,
            "--data",
            app.dir.path().to_str().unwrap(),
            "--format",
            format,
            "--out",
            out.join(format).to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{format}: {}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(std::fs::read(out.join("peft/pytorch_lora_weights.safetensors")).unwrap(), peft);
    let init = crate::model::tensor_in(
        &crate::model::fixture("sd1").join("train/thitl_export/reference.safetensors"),
        "init_latents",
    );
    let with_adapter = crate::model::sample_with_lora(&init, &out.join("peft"));
    let merged = app.dir.path().join("merged-pipeline");
    crate::model::copy_dir(&pipeline, &merged);
    std::fs::remove_file(merged.join("unet/diffusion_pytorch_model.fp16.safetensors")).unwrap();
    for file in ["diffusion_pytorch_model.safetensors", "config.json"] {
        std::fs::copy(out.join("merged/unet").join(file), merged.join("unet").join(file)).unwrap();
    }
    let merged_latents = crate::model::sample_pipeline(&init, &merged);
    let error = crate::model::max_relative_difference(&merged_latents.values, &with_adapter.values);
    assert!(error <= 1e-4, "the merged export samples {error:.2e} away from the adapter");
    let output = crate::helpers::thitl(&[
        "model",
        "export",
        &base,
        "--data",
        app.dir.path().to_str().unwrap(),
        "--out",
        out.join("base").to_str().unwrap(),
    ]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("is a base model"));
}
