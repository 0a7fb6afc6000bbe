// The annotation page: sign in with an annotator token, pick an open round (or get the only
// one), then rate task after task with the keyboard. Every answer goes through the same REST
// endpoints any client uses: GET /v1/rounds/{id}/next, POST …/annotations {"next": true},
// POST …/withdrawals (undo).
import { api, ApiError, el, imageUrl, kbd, setToken, signIn } from "./common.js";

const view = document.getElementById("view");
const message = document.getElementById("message");
const who = document.getElementById("who");

const state = {
  me: null,
  round: null, // {id, kind, submitted, needed, mine}
  task: null, // the task on screen (as the API gave it)
  held: null, // the task the server holds for us while we redo an undone one
  answers: {}, // question key -> value
  active: 0, // index of the question the keys answer
  last: null, // {task, answers}: the last submission, for undo
  busy: false,
  onKey: null,
  poll: null, // the timer that looks for new rounds while the queue is empty
};

/** How often an empty queue looks for new rounds by itself. */
const POLL_MS = 4000;

function stopPolling() {
  clearTimeout(state.poll);
  state.poll = null;
}

function say(text, kind = "info") {
  message.replaceChildren(text ? el("p", { class: `message ${kind}` }, text) : "");
}

function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    setToken(null);
    say("This token is not valid: it is mistyped or was revoked. Ask an administrator for an annotator token.", "error");
    return showSignIn();
  }
  say(error.message, "error");
}

document.addEventListener("keydown", (event) => {
  if (state.onKey && !event.ctrlKey && !event.metaKey && !event.altKey) state.onKey(event);
});

// ---- sign in -------------------------------------------------------------------------------

function showSignIn() {
  stopPolling();
  state.onKey = null;
  return signIn({ view, message, who, roles: ["annotator", "admin"], purpose: "annotators", onReady: (me) => { state.me = me; state.onKey = null; return showRounds(); } });
}

function start() {
  state.onKey = null;
  return showSignIn();
}

// ---- rounds --------------------------------------------------------------------------------

const KIND_NAMES = { baseline: "baseline: is the concept there?", screen: "round 1: screen candidates", check: "round 2: check and compare" };

async function showRounds() {
  stopPolling();
  state.round = null;
  try {
    state.me = await api("GET", "/v1/me");
  } catch (error) {
    return explain(error);
  }
  const open = state.me.rounds.filter((round) => round.submitted < round.needed);
  if (open.length === 1) return openRound(open[0]);
  if (open.length === 0) {
    state.onKey = (event) => { if (event.key === "r") { event.preventDefault(); showRounds(); } };
    // A curator may open a round at any moment: look again by itself, quietly.
    const poll = setTimeout(() => { if (state.poll === poll) showRounds(); }, POLL_MS);
    state.poll = poll;
    return view.replaceChildren(el("div", { class: "card", id: "empty" },
      el("h2", {}, "Nothing to rate right now"),
      el("p", {}, "No open round needs ratings. Thank you! This page looks again every few seconds; press ", kbd("R"), " to look now.")));
  }
  const rows = open.slice(0, 9).map((round, i) => el("tr", {},
    el("td", {}, kbd(String(i + 1))), el("td", {}, KIND_NAMES[round.kind] || round.kind),
    el("td", {}, `${round.submitted} of ${round.needed} ratings`), el("td", {}, `you: ${round.mine}`)));
  state.onKey = (event) => {
    const n = Number(event.key);
    if (n >= 1 && n <= Math.min(9, open.length)) { event.preventDefault(); openRound(open[n - 1]); }
  };
  view.replaceChildren(el("div", { class: "card" }, el("h2", {}, "Open rounds"),
    el("p", { class: "muted" }, "Press a round's number to start."), el("table", {}, rows)));
}

async function openRound(round) {
  stopPolling();
  say("");
  state.round = round;
  state.last = null;
  state.held = null;
  try {
    const next = await api("GET", `/v1/rounds/${round.id}/next`);
    await show(next);
  } catch (error) {
    explain(error);
  }
}

// ---- one task ------------------------------------------------------------------------------

/** The questions a task asks, in the order the keys answer them. */
function questions(task, kind) {
  const look = task.look_for || { group: "the person", concept: "the concept" };
  if (task.content.pair) return [{ key: "preferred", text: "Which picture is better (fewer problems, better quality)?", options: [["ArrowLeft", "left", "← left"], ["ArrowRight", "right", "right →"]] }];
  const yes = (key, text) => ({ key, text, options: [["y", true, "Y yes"], ["n", false, "N no"]] });
  const quality = { key: "quality", text: "Quality of the picture (1 poor – 5 excellent)", options: [1, 2, 3, 4, 5].map((q) => [String(q), q, String(q)]) };
  const concept = yes("concept_present", `Is there a ${look.concept} in the picture?`);
  if (kind === "baseline") return [concept];
  if (kind === "screen") return [quality, yes("group_depicted", `Does it show a ${look.group}?`), concept];
  return [concept, quality];
}

function answerOf(kind, task, answers) {
  if (task.content.pair) return { compare: { preferred: answers.preferred } };
  if (kind === "baseline") return { baseline: { concept_present: answers.concept_present } };
  if (kind === "screen") return { screen: { quality: answers.quality, group_depicted: answers.group_depicted, concept_present: answers.concept_present } };
  return { check: { concept_present: answers.concept_present, quality: answers.quality } };
}

async function show(next, answers = {}) {
  if (next.kind) state.round.kind = next.kind;
  if (next.remaining !== undefined) state.round.remaining = next.remaining;
  if (!next.task) {
    state.task = null;
    say("This round has no task left for you: every picture you may rate has its ratings.", "info");
    return showRounds();
  }
  state.task = next.task;
  state.answers = { ...answers };
  state.active = 0;
  let pictures;
  try {
    const content = next.task.content;
    const images = content.pair ? [["left", content.pair.left], ["right", content.pair.right]] : [[null, content.image]];
    pictures = await Promise.all(images.map(async ([side, image]) => ({ side, src: await imageUrl(image.url) })));
  } catch (error) {
    return explain(error);
  }
  state.pictures = pictures;
  render();
}

function render() {
  const task = state.task;
  const kind = state.round.kind;
  const asked = questions(task, kind);
  const done = state.round.needed - (state.round.remaining ?? 0);
  const progress = el("div", { class: "progress", id: "progress" },
    el("span", {}, `${done} of ${state.round.needed}`),
    el("div", { class: "bar" }, el("span", { style: `width: ${(100 * done / Math.max(1, state.round.needed)).toFixed(1)}%` })),
    el("span", {}, KIND_NAMES[kind] || kind));
  const pictures = el("div", { class: "pictures" }, state.pictures.map(({ side, src }) =>
    el("div", { class: `picture${side && state.answers.preferred === side ? " chosen" : ""}` },
      fitted(el("img", { src, alt: side ? `${side} picture` : "picture to rate" })),
      side ? el("div", { class: "label" }, side === "left" ? "← left" : "right →") : null)));
  const list = el("div", { class: "questions" }, asked.map((question, i) =>
    el("div", { class: `question${i === state.active ? " active" : ""}`, "data-question": question.key },
      el("span", { class: "text" }, question.text),
      el("span", { class: "options" }, question.options.map(([key, value, label]) =>
        el("span", { class: `option${state.answers[question.key] === value ? " selected" : ""}` }, label))))));
  const complete = asked.every((question) => state.answers[question.key] !== undefined);
  const keys = el("div", { class: "keys" },
    "Answer the highlighted question with the keys shown; ", kbd("Tab"), " / ", kbd("Shift"), "+", kbd("Tab"), " move between questions. ",
    kbd("Enter"), complete ? " submits and shows the next picture. " : " submits once every question has an answer. ",
    state.last ? [kbd("U"), " undoes your last submission. "] : null);
  view.replaceChildren(el("div", { class: "card", id: "task", "data-kind": kind }, progress, pictures, list, keys));
  state.onKey = (event) => onTaskKey(event, asked);
}

function onTaskKey(event, asked) {
  if (state.busy) return;
  const question = asked[state.active];
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key === "Enter") {
    event.preventDefault();
    return submit(asked);
  }
  if (key === "u") {
    event.preventDefault();
    return undo();
  }
  if (key === "Tab") {
    event.preventDefault();
    state.active = (state.active + (event.shiftKey ? asked.length - 1 : 1)) % asked.length;
    return render();
  }
  // A key answers the highlighted question; if it belongs to no option there, the first
  // unanswered question it fits.
  const fits = (q) => q.options.find(([k]) => k === key);
  let target = fits(question) ? state.active : asked.findIndex((q) => fits(q) && state.answers[q.key] === undefined);
  if (target < 0) target = asked.findIndex((q) => fits(q));
  if (target < 0) return;
  event.preventDefault();
  state.answers[asked[target].key] = fits(asked[target])[1];
  const open = asked.findIndex((q) => state.answers[q.key] === undefined);
  state.active = open >= 0 ? open : target;
  render();
}

async function submit(asked) {
  if (!asked.every((question) => state.answers[question.key] !== undefined)) {
    return say("Answer every question first (the highlighted one is next).", "error");
  }
  const task = state.task;
  const answers = { ...state.answers };
  state.busy = true;
  try {
    const stored = await api("POST", `/v1/rounds/${state.round.id}/annotations`, { item_id: task.item_id, answer: answerOf(state.round.kind, task, answers), next: true });
    state.last = { task, answers, kind: state.round.kind };
    say("");
    let next = stored.next;
    if (next && next.error) throw new ApiError(500, `saved; the next task could not be assigned: ${next.error}`);
    state.held = null;
    await show(next);
  } catch (error) {
    explain(error);
  } finally {
    state.busy = false;
  }
}

async function undo() {
  if (!state.last) return say("There is nothing to undo yet.", "info");
  state.busy = true;
  try {
    await api("POST", `/v1/rounds/${state.round.id}/withdrawals`, { item_id: state.last.task.item_id });
    const redo = state.last;
    state.last = null;
    say("Your last answer was withdrawn: answer this picture again.", "info");
    state.round.remaining = (state.round.remaining ?? 0) + 1;
    state.round.kind = redo.kind;
    await show({ task: redo.task }, redo.answers);
  } catch (error) {
    explain(error.status === 409 ? new ApiError(409, `Cannot undo: ${error.message}`) : error);
  } finally {
    state.busy = false;
  }
}

start();

// The reference world's 32×32 pictures are enlarged with hard pixel edges; a real model's
// pictures (an imported pipeline's 512×512) are shown at their own size, as large as fits.
function fitted(img) {
  const decide = () => img.classList.toggle("full", img.naturalWidth > 128);
  img.addEventListener("load", decide);
  if (img.complete) decide();
  return img;
}
