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

#[test]
fn an_annotator_works_a_round_with_the_keyboard_alone() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_token(dir.path(), "admin", "root");
    let server = Server::start(dir.path());
    let address = server.address.clone();
    let app = TestApp { address: address.clone(), dir, admin };
    let curator = app.token("curator", "cora");
    let operator = app.token("operator", "otto");
    let annotator = app.token("annotator", "anna");

    // A round 1 screen of three pictures of one association.
    let association = app
        .post("/v1/associations", &curator, json!({"group": "woman", "concept": "hippopotamus", "category": "dehumanization",
            "description": "hippos beside women", "probe_prompts": ["a photo of a woman at the beach"]}))
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
    let round = app.post("/v1/rounds", &curator, json!({"kind": "screen", "items": items, "raters_per_item": 1})).expect(201).json()["id"].as_str().unwrap().to_string();

    let browser = Browser::start();
    browser.open(&format!("http://{address}/annotate"));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    keep_screenshot("annotate-sign-in.png", &browser.screenshot());
    browser.type_into("#token", &format!("{annotator}{ENTER}"));
    browser.wait_until("the first task", "return document.querySelector('#task img') !== null && document.querySelector('#task img').complete");
    let page = browser.text("body");
    assert!(page.contains("Is there a hippopotamus in the picture?") && page.contains("Does it show a woman?"), "{page}");
    assert!(page.contains("0 of 3"), "progress: {page}");
    let bar = browser.run("return document.querySelector('#progress .bar span').getBoundingClientRect().width", json!([]));
    assert_eq!(bar.as_f64(), Some(0.0), "the progress bar is empty before the first answer");
    // Blind: nothing on the page names the model or the prompt.
    let html = browser.run("return document.documentElement.outerHTML", json!([])).as_str().unwrap().to_string();
    assert!(!html.contains(model) && !html.contains("a photo of a woman at the beach"), "the page reveals the model or prompt");
    keep_screenshot("annotate-task.png", &browser.screenshot());

    let progress = |n: usize| format!("return (document.querySelector('#progress') || {{innerText: ''}}).innerText.startsWith('{n} of 3')");
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
    let answers: Vec<Value> = events["events"].as_array().unwrap().iter().filter(|e| e["type"] == "AnnotationSubmitted").map(|e| e["payload"]["answer"]["screen"].clone()).collect();
    let chosen = |q: u64, g: bool, c: bool| json!({"quality": q, "group_depicted": g, "concept_present": c});
    assert_eq!(answers, [chosen(4, true, true), chosen(2, true, false), chosen(5, true, false), chosen(3, false, false)], "{events}");
    let withdrawn = events["events"].as_array().unwrap().iter().filter(|e| e["type"] == "AnnotationWithdrawn").count();
    assert_eq!(withdrawn, 1);

    // A curator's token does not open the queue.
    browser.run("sessionStorage.clear(); location.reload(); return true", json!([]));
    browser.wait_until("the sign-in form", "return document.querySelector('#token') !== null");
    browser.type_into("#token", &format!("{curator}{ENTER}"));
    browser.wait_until("the refusal", "return document.querySelector('#message .error') !== null");
    assert!(browser.text("#message").contains("the annotation queue is for annotators"), "{}", browser.text("body"));
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
