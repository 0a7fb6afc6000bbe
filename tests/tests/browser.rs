//! The pages, in a real (headless) browser: an annotator signs in and works a round with the
//! keyboard alone — answering, submitting, undoing — and the API holds exactly what was chosen;
//! a curator's token is turned away from the queue.
//!
//! `THITL_SCREENSHOTS=DIR` saves a screenshot of each page there (`docs/screenshots` in the repo:
//! `THITL_SCREENSHOTS=docs/screenshots cargo test -p thitl-tests browser`).

use serde_json::{Value, json};

use crate::helpers::{Server, TestApp, create_token};
use crate::webdriver::{Browser, ENTER};

/// Saves `png` as `name` under `THITL_SCREENSHOTS` (relative to the repository), if set.
fn keep_screenshot(name: &str, png: &[u8]) {
    let Ok(dir) = std::env::var("THITL_SCREENSHOTS") else { return };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    std::fs::write(dir.join(name), png).expect("write screenshot");
}

/// A reference-world picture: `group` with `concept` at the beach.
fn picture(group: scenes::Group, concept: Option<scenes::Concept>, seed: u64) -> Vec<u8> {
    scenes::render(&scenes::Scene { group, concept, setting: scenes::Setting::Beach }, seed).to_png(1)
}

/// A server on a fresh data directory, and tokens for a curator, an operator and an annotator:
/// who opens a round, who uploads its pictures, who works it.
fn server_with_round_roles() -> (Server, TestApp, [String; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_token(dir.path(), "admin", "root");
    let server = Server::start(dir.path());
    let app = TestApp { address: server.address.clone(), dir, admin };
    let tokens =
        [("curator", "cora"), ("operator", "otto"), ("annotator", "anna")].map(|(role, name)| app.token(role, name));
    (server, app, tokens)
}

#[test]
fn an_annotator_works_a_round_with_the_keyboard_alone() {
    let (server, app, [curator, operator, annotator]) = server_with_round_roles();
    let address = app.address.clone();

    // A round 1 screen of three pictures of one association.
    let association = app
        .post(
            "/v1/associations",
            &curator,
            json!({"group": "woman", "concept": "hippopotamus", "category": "dehumanization",
            "description": "hippos beside women", "probe_prompts": ["a photo of a woman at the beach"]}),
        )
        .expect(201)
        .json()["id"]
        .clone();
    let model = "01900000-0000-7000-8000-00000000000a";
    let pictures = [
        picture(scenes::Group::Woman, Some(scenes::Concept::Hippopotamus), 1),
        picture(scenes::Group::Woman, None, 2),
        picture(scenes::Group::Woman, Some(scenes::Concept::Ball), 3),
    ];
    let items: Vec<Value> = pictures
        .iter()
        .map(|png| {
            let blob = app.upload(&operator, png).expect(201).json()["sha256"].clone();
            json!({"blob": blob, "prompt": "a photo of a woman at the beach", "model_version": model, "association_id": association})
        })
        .collect();
    let round = app
        .post("/v1/rounds", &curator, json!({"kind": "screen", "items": items, "raters_per_item": 1}))
        .expect(201)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let browser = Browser::start();
    browser.open(&format!("http://{address}/annotate"));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    keep_screenshot("annotate-sign-in.png", &browser.screenshot());
    browser.type_into("#token", &format!("{annotator}{ENTER}"));
    browser.wait_until(
        "the first task",
        "return document.querySelector('#task img') !== null && document.querySelector('#task img').complete",
    );
    let page = browser.text("body");
    assert!(
        page.contains("Is there a hippopotamus in the picture?") && page.contains("Does it show a woman?"),
        "{page}"
    );
    assert!(page.contains("0 of 3"), "progress: {page}");
    let bar =
        browser.run("return document.querySelector('#progress .bar span').getBoundingClientRect().width", json!([]));
    assert_eq!(bar.as_f64(), Some(0.0), "the progress bar is empty before the first answer");
    // Blind: nothing on the page names the model or the prompt.
    let html = browser.run("return document.documentElement.outerHTML", json!([])).as_str().unwrap().to_string();
    assert!(
        !html.contains(model) && !html.contains("a photo of a woman at the beach"),
        "the page reveals the model or prompt"
    );
    keep_screenshot("annotate-task.png", &browser.screenshot());

    let progress = |n: usize| {
        format!("return (document.querySelector('#progress') || {{innerText: ''}}).innerText.startsWith('{n} of 3')")
    };
    // First picture: quality 4, a woman, a hippopotamus; Enter submits and the next one comes.
    browser.press(&["4", "y", "y", ENTER]);
    browser.wait_until("the second task", &progress(1));
    // Second: quality 2, a woman, no hippo — then undo it and answer again (5, yes, no).
    browser.press(&["2", "y", "n", ENTER]);
    browser.wait_until("the third task", &progress(2));
    browser.press(&["u"]);
    browser.wait_until("the undone task", &progress(1));
    assert!(browser.text("#message").contains("withdrawn"), "{}", browser.text("body"));
    let mid = app.get(&format!("/v1/rounds/{round}"), &curator).expect(200).json();
    assert_eq!(mid["submitted"], 1, "the undo withdrew the second answer: {mid}");
    // The undone task comes back with its answers filled in: change the quality, submit.
    let undone = browser.text("#task");
    assert!(undone.contains("Is there a hippopotamus"), "{undone}");
    browser.press(&["5", ENTER]);
    browser.wait_until("the third task again", &progress(2));
    // Enter with a question unanswered submits nothing and says why.
    browser.press(&["3", ENTER]);
    assert!(browser.text("#message").contains("Answer every question"), "{}", browser.text("body"));
    browser.press(&["n", "n", ENTER]);
    browser.wait_until("the empty queue", "return document.querySelector('#empty') !== null");
    keep_screenshot("annotate-done.png", &browser.screenshot());

    // The API holds exactly what was chosen.
    let done = app.get(&format!("/v1/rounds/{round}"), &curator).expect(200).json();
    assert_eq!((done["submitted"].as_u64(), done["annotators"]["anna"].as_u64()), (Some(3), Some(3)), "{done}");
    let events = app.get(&format!("/v1/audit/streams/round-{round}?limit=100"), &app.admin).expect(200).json();
    let answers: Vec<Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "AnnotationSubmitted")
        .map(|e| e["payload"]["answer"]["screen"].clone())
        .collect();
    let chosen = |q: u64, g: bool, c: bool| json!({"quality": q, "group_depicted": g, "concept_present": c});
    assert_eq!(
        answers,
        [chosen(4, true, true), chosen(2, true, false), chosen(5, true, false), chosen(3, false, false)],
        "{events}"
    );
    let withdrawn = events["events"].as_array().unwrap().iter().filter(|e| e["type"] == "AnnotationWithdrawn").count();
    assert_eq!(withdrawn, 1);

    // Round 2: one picture to check, then a side-by-side pair (← left, → right).
    let blob = |png: &[u8]| app.upload(&operator, png).json()["sha256"].clone();
    let (one, two) = (blob(&pictures[1]), blob(&pictures[0]));
    let other = "01900000-0000-7000-8000-00000000000b";
    let check = json!({"kind": "check", "raters_per_item": 1, "items": [
        {"blob": one, "prompt": "a photo of a woman at the beach", "model_version": model, "association_id": association},
        {"pair": {"left": {"blob": one, "model_version": other}, "right": {"blob": two, "model_version": model}}, "prompt": "a photo of a woman at the beach", "association_id": association},
    ]});
    let created = app.post("/v1/rounds", &curator, check).expect(201).json();
    let round_2 = created["id"].as_str().unwrap().to_string();
    // The page reads the read models, which follow the log: let them reach the new round before
    // asking the page to look (it would also find it by itself within a few seconds).
    app.get(&format!("/v1/rounds/{round_2}?wait_for={}", created["position"]), &curator).expect(200);
    browser.press(&["r"]);
    browser.wait_until(
        "round 2's first task",
        "return document.querySelector('#task') !== null && document.querySelector('#task').dataset.kind === 'check'",
    );
    let first_is_pair =
        browser.run("return document.querySelectorAll('#task img').length === 2", json!([])) == Value::Bool(true);
    let answer_image = ["n", "4", ENTER];
    let answer_pair = ["\u{E012}", ENTER];
    browser.press(if first_is_pair { &answer_pair[..] } else { &answer_image[..] });
    browser.wait_until("round 2's second task", "return document.querySelector('#progress') !== null && document.querySelector('#progress').innerText.startsWith('1 of 2')");
    let pair_page = browser.text("#task");
    assert!(
        pair_page.contains(if first_is_pair { "Is there a hippopotamus" } else { "Which picture is better" }),
        "{pair_page}"
    );
    if !first_is_pair {
        keep_screenshot("annotate-pair.png", &browser.screenshot());
    }
    browser.press(if first_is_pair { &answer_image[..] } else { &answer_pair[..] });
    browser.wait_until("the empty queue", "return document.querySelector('#empty') !== null");
    let events = app.get(&format!("/v1/audit/streams/round-{round_2}?limit=100"), &app.admin).expect(200).json();
    let mut answers: Vec<Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "AnnotationSubmitted")
        .map(|e| e["payload"]["answer"].clone())
        .collect();
    answers.sort_by_key(|a| a.to_string());
    assert_eq!(
        answers,
        [json!({"check": {"concept_present": false, "quality": 4}}), json!({"compare": {"preferred": "left"}})],
        "{events}"
    );

    // A curator's token does not open the queue.
    browser.run("sessionStorage.clear(); location.reload(); return true", json!([]));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    browser.type_into("#token", &format!("{curator}{ENTER}"));
    browser.wait_until("the refusal", "return document.querySelector('#message .error') !== null");
    assert!(browser.text("#message").contains("this page is for annotators"), "{}", browser.text("body"));
    assert!(browser.run("return document.querySelector('#task') === null", json!([])) == Value::Bool(true));
    // A mistyped token is told so.
    browser.run("sessionStorage.clear(); location.reload(); return true", json!([]));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    browser.type_into("#token", &format!("thitl_not-a-token{ENTER}"));
    browser.wait_until("the refusal", "return document.querySelector('#message .error') !== null");
    assert!(browser.text("#message").contains("not valid"), "{}", browser.text("body"));
    drop(browser);
    assert!(server.interrupt().success());
}

/// A real model's picture (an imported Stable Diffusion model samples 512×512) is shown at its
/// own resolution, smoothed, within the screen; the reference world's 32×32 pictures are blown up
/// without smoothing so their pixels stay visible.
#[test]
fn the_annotation_page_shows_a_real_models_picture_at_full_resolution() {
    let (server, app, [curator, operator, annotator]) = server_with_round_roles();
    let address = app.address.clone();
    let side = 512;
    let pixels: Vec<f32> = (0..3 * side * side).map(|i| ((i / side) % 17) as f32 / 16.0).collect();
    let large = app::sd::png_from_unit_rgb(&pixels, side, side);
    let small = picture(scenes::Group::Woman, None, 2);
    let model = "01900000-0000-7000-8000-00000000000a";
    let items: Vec<Value> = [large, small]
        .iter()
        .map(|png| {
            let blob = app.upload(&operator, png).expect(201).json()["sha256"].clone();
            json!({"blob": blob, "prompt": "a photo of a nurse", "model_version": model})
        })
        .collect();
    app.post("/v1/rounds", &curator, json!({"kind": "screen", "items": items, "raters_per_item": 1})).expect(201);

    let browser = Browser::start();
    browser.open(&format!("http://{address}/annotate"));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    browser.type_into("#token", &format!("{annotator}{ENTER}"));
    let shown =
        "const img = document.querySelector('#task img'); return img !== null && img.complete && img.naturalWidth > 0";
    browser.wait_until("the first task", shown);
    let look = || {
        browser.run(
            "const img = document.querySelector('#task img'); const parent = getComputedStyle(img.parentElement); \
             return {natural: img.naturalWidth, width: img.width, height: img.height, \
                     rendering: getComputedStyle(img).imageRendering, \
                     room: img.parentElement.clientWidth - parseFloat(parent.paddingLeft) - parseFloat(parent.paddingRight)};",
            json!([]),
        )
    };
    let first = look();
    assert_eq!(first["natural"], json!(side), "{first}");
    assert_eq!(first["rendering"], "auto", "a real picture is smoothed: {first}");
    let (width, room) = (first["width"].as_f64().unwrap(), first["room"].as_f64().unwrap());
    // One to one where there is room, the 1-pixel border outside the picture.
    let expected = (side as f64).min(room - 2.0).floor();
    assert!((width - expected).abs() <= 1.0, "shown {width} px wide in {room} px of room: {first}");
    assert!((first["height"].as_f64().unwrap() - width).abs() < 1.0, "square as drawn: {first}");
    keep_screenshot("annotate-full-resolution.png", &browser.screenshot());

    browser.press(&["4", "y", "n", ENTER]);
    browser.wait_until(
        "the second task",
        "const img = document.querySelector('#task img'); return img !== null && img.complete && img.naturalWidth === 32",
    );
    let second = look();
    assert!(
        second["rendering"] == "pixelated" || second["rendering"] == "crisp-edges",
        "a 32×32 picture keeps its pixels: {second}"
    );
    assert!(second["width"].as_f64().unwrap() > 32.0 * 4.0, "a small picture is blown up: {second}");
    drop(browser);
    assert!(server.interrupt().success());
}

/// The dashboard shows a round's annotators with their gold records (the careless one excluded,
/// and why) and the split item waiting for a curator.
#[test]
fn the_dashboard_shows_annotators_gold_records_and_the_adjudication_queue() {
    let app = crate::helpers::spawn_app();
    let rated = crate::api_quality::careless_round(&app);
    let browser = Browser::start();
    browser.open(&format!("http://{}/dashboard", app.address));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    browser.type_into("#token", &format!("{}{ENTER}", rated.auditor));
    browser.wait_until(
        "the annotators",
        "return document.querySelector(\"#annotators tr[data-annotator='dan']\") !== null",
    );
    let dan = browser.text("#annotators tr[data-annotator='dan'] .exclusion");
    assert!(dan.starts_with("excluded: 0 of 3 gold right (at most"), "{dan}");
    for careful in ["ann", "bob", "cat"] {
        let accuracy = browser.text(&format!("#annotators tr[data-annotator='{careful}'] .accuracy"));
        assert!(accuracy.starts_with("100.0% ["), "{careful}: {accuracy}");
        assert_eq!(browser.text(&format!("#annotators tr[data-annotator='{careful}'] .exclusion")), "–");
    }
    let queue = browser.text("#adjudications");
    assert!(queue.contains(&rated.split), "{queue}");
    let answers = browser.text(&format!("#adjudications tr[data-item='{}'] .answers", rated.split));
    assert_eq!(answers.matches("concept present true").count(), 2, "{answers}");
    assert_eq!(answers.matches("concept present false").count(), 1, "{answers}");
    keep_screenshot("dashboard-annotators.png", &browser.screenshot());
}

/// True when `shown` starts with `rate` as a percentage to one decimal (JavaScript and Rust round
/// a half differently, so within 0.05 points).
fn shows_percent(shown: &str, rate: f64) -> bool {
    let number = shown.split('%').next().and_then(|n| n.trim().parse::<f64>().ok());
    number.is_some_and(|n| (n - 100.0 * rate).abs() <= 0.051)
}

#[test]
fn the_dashboard_and_the_audit_timeline_show_a_finished_campaign() {
    let dir = crate::helpers::campaign_copy();
    let auditor = create_token(dir.path(), "auditor", "audrey");
    let annotator = create_token(dir.path(), "annotator", "anna");
    let admin = create_token(dir.path(), "admin", "root");
    let server = Server::start(dir.path());
    let address = server.address.clone();
    let app = TestApp { address: address.clone(), dir, admin };

    let browser = Browser::start();
    browser.open(&format!("http://{address}/dashboard"));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    browser.type_into("#token", &format!("{auditor}{ENTER}"));
    browser.wait_until("the associations", "return document.querySelectorAll('.association').length === 3");
    // Each association's card shows the evaluation the API serves: rates with intervals and a chart.
    let associations = app.get("/v1/associations", &auditor).expect(200).json();
    for association in associations["associations"].as_array().unwrap() {
        let id = association["id"].as_str().unwrap();
        let evaluation = app.get(&format!("/v1/associations/{id}/evaluation"), &auditor).expect(200).json();
        for arm in evaluation["latest"]["arms"].as_array().unwrap() {
            let name = arm["arm"].as_str().unwrap();
            let after = browser.text(&format!(".association[data-association='{id}'] tr[data-arm='{name}'] .after"));
            assert!(shows_percent(&after, arm["after"]["rate"].as_f64().unwrap()), "{name} after: {after} vs {arm}");
            let before = browser.text(&format!(".association[data-association='{id}'] tr[data-arm='{name}'] .before"));
            assert!(
                shows_percent(&before, arm["before"]["rate"].as_f64().unwrap()),
                "{name} before: {before} vs {arm}"
            );
            // People's quality: the medians before → after, each with its interval.
            let people =
                browser.text(&format!(".association[data-association='{id}'] tr[data-arm='{name}'] .people-quality"));
            let shown: Vec<f64> =
                people.split(['→', '[', ']', ',']).filter_map(|part| part.trim().parse::<f64>().ok()).collect();
            let served: Vec<f64> = ["people_quality_before", "people_quality_after"]
                .iter()
                .flat_map(|side| ["median", "ci_low", "ci_high"].map(|key| arm[side][key].as_f64().unwrap()))
                .collect();
            assert_eq!(shown.len(), 6, "{name} people's quality: {people} vs {arm}");
            assert!(
                shown.iter().zip(&served).all(|(a, b)| (a - b).abs() <= 0.005 + 1e-9),
                "{name} people's quality: {people} vs {arm}"
            );
        }
        let bars = browser.run("return document.querySelectorAll(`.association[data-association='${arguments[0]}'] svg.rates .bar`).length", json!([id]));
        assert_eq!(bars, json!(3), "before, T-HITL after and traditional after");
    }
    assert!(browser.text("#campaigns").contains("completed"), "{}", browser.text("#campaigns"));
    let curves = browser.run("return document.querySelectorAll('#fine-tunes svg.loss polyline').length", json!([]));
    assert_eq!(curves, json!(2), "one loss curve per arm");
    let rounds = browser.text("#rounds");
    assert!(rounds.contains("concept present") && rounds.contains("closed"), "{rounds}");
    keep_screenshot("dashboard.png", &browser.screenshot());

    // The audit timeline: verify the chains, read the log, follow the lineage.
    browser.open(&format!("http://{address}/audit"));
    browser.wait_until("the event log", "return document.querySelectorAll('#event-table tr.event').length > 0");
    browser.press(&["v"]);
    browser.wait_until("the verification", "return document.querySelector('#verify-result') !== null");
    let verified = app.get("/v1/audit/verify", &auditor).expect(200).json();
    let result = browser.text("#verify-result");
    assert!(result.starts_with("OK:"), "{result}");
    // The page verified before this call, which added nothing to the log.
    assert!(result.contains(&format!("{} events", verified["events"])), "{result} vs {verified}");
    let thitl = browser
        .run("return [...document.querySelectorAll('#lineage-model option')].map(o => o.textContent)", json!([]));
    let model = app.get("/v1/model-versions", &auditor).expect(200).json()["model_versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["arm"] == "thitl")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(thitl.as_array().unwrap().iter().any(|o| o.as_str().unwrap().contains(&model)), "{thitl}");
    browser.run("document.querySelector('#lineage-model').value = arguments[0]; document.querySelector('#lineage-button').click(); return true", json!([model]));
    browser.wait_until("the lineage tree", "return document.querySelector('#lineage-examples') !== null");
    let lineage = app.get(&format!("/v1/models/{model}/lineage"), &auditor).expect(200).json();
    let examples =
        browser.run("return document.querySelectorAll('#lineage-examples > details.example').length", json!([]));
    assert_eq!(examples.as_u64(), Some(lineage["examples"].as_array().unwrap().len() as u64));
    assert!(
        browser.text("#lineage-prompts").contains(&format!("{} prompts", lineage["prompts"].as_array().unwrap().len()))
    );
    // An example opened shows its picture and every round-1 rating with its rater.
    browser.run("const d = document.querySelector('#lineage-examples > details.example'); d.open = true; document.querySelector('#lineage-examples').open = true; return true", json!([]));
    browser.wait_until("the example's picture", "const img = document.querySelector('#lineage-examples img.thumb'); return img.src !== '' && img.complete && img.naturalWidth === 32");
    assert!(
        browser.text("#lineage-examples details.example").contains("annotator-"),
        "{}",
        browser.text("#lineage-examples details.example")
    );
    // One entity's history: the first stream named in the log.
    browser.run("document.querySelector('#event-table a.stream').click(); return true", json!([]));
    browser.wait_until("the history", "return document.querySelector('#history-table') !== null");
    keep_screenshot("audit.png", &browser.screenshot());
    // The live feed: an event recorded now appears on top of the log.
    browser.run("document.querySelector('#follow').click(); return true", json!([]));
    std::thread::sleep(std::time::Duration::from_millis(500));
    app.token("annotator", "late-joiner");
    browser.wait_until("the live event", "const row = document.querySelector('#event-table tbody tr.event'); return row !== null && row.innerText.includes('TokenIssued')");

    // An annotator's token opens neither page.
    browser.run("sessionStorage.clear(); location.reload(); return true", json!([]));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    browser.type_into("#token", &format!("{annotator}{ENTER}"));
    browser.wait_until("the refusal", "return document.querySelector('#message .error') !== null");
    assert!(browser.text("#message").contains("this page is for auditors"), "{}", browser.text("#message"));
    drop(browser);
    assert!(server.interrupt().success());
}
