// The auditor's timeline: the global event log with filters, one entity's history, the live
// feed, "verify chains", and a model version's lineage as a tree down to prompts and ratings.
import { api, el, imageUrl, signIn, token } from "./common.js";

const view = document.getElementById("view");
const message = document.getElementById("message");
const who = document.getElementById("who");

signIn({ view, message, who, roles: ["admin", "auditor"], purpose: "auditors", onReady: show });

const error = (e) => message.replaceChildren(el("p", { class: "message error" }, e.message));

function show() {
  const verify = el("div", { id: "verify" }, el("p", { class: "muted" }, "Recomputes every event's hash and every stream's chain."));
  const verifyButton = el("button", { id: "verify-button", type: "button" }, "Verify chains (V)");
  verifyButton.addEventListener("click", runVerify);
  const fields = ["stream", "type", "actor", "since", "until"].map((name) =>
    el("label", {}, name, el("input", { type: "text", name, id: `filter-${name}`, placeholder: name === "since" || name === "until" ? "2026-11-27T10:00:00Z" : "" })));
  const filters = el("form", { class: "filters", id: "filters" }, fields, el("button", { type: "submit" }, "Show"));
  filters.addEventListener("submit", (event) => { event.preventDefault(); loadEvents(); });
  const follow = el("input", { type: "checkbox", id: "follow" });
  follow.addEventListener("change", () => (follow.checked ? startFeed() : stopFeed()));
  const lineageInput = el("select", { id: "lineage-model" });
  const lineageButton = el("button", { type: "button", id: "lineage-button" }, "Show lineage");
  lineageButton.addEventListener("click", () => showLineage(lineageInput.value));
  view.replaceChildren(
    el("section", { id: "integrity" }, el("h2", {}, "Integrity"), el("div", { class: "card" }, verifyButton, verify)),
    el("section", { id: "log" }, el("h2", {}, "Event log"),
      el("div", { class: "card" }, filters, el("p", { class: "muted" }, el("label", {}, follow, " follow the live feed (new events appear on top)")),
        el("div", { id: "events" }))),
    el("section", { id: "history-section" }, el("h2", {}, "Entity history"), el("div", { class: "card", id: "history" }, el("p", { class: "muted" }, "Click a stream name in the log."))),
    el("section", { id: "lineage-section" }, el("h2", {}, "Model lineage"),
      el("div", { class: "card" }, el("div", { class: "chart-row" }, lineageInput, lineageButton), el("div", { id: "lineage" }))),
  );
  document.addEventListener("keydown", (event) => {
    if (event.key === "v" && !(event.target instanceof HTMLInputElement) && !event.ctrlKey && !event.metaKey) runVerify();
  });
  loadEvents();
  api("GET", "/v1/model-versions").then((models) => {
    const derived = models.model_versions.filter((m) => m.parent);
    lineageInput.replaceChildren(...(derived.length ? derived : models.model_versions).map((m) => el("option", { value: m.id }, `${m.name} (${m.status}) ${m.id}`)));
  }).catch(error);
}

async function runVerify() {
  const target = document.getElementById("verify");
  target.replaceChildren(el("p", { class: "muted" }, "Verifying…"));
  try {
    const report = await api("GET", "/v1/audit/verify");
    target.replaceChildren(report.ok
      ? el("p", { class: "ok", id: "verify-result" }, `OK: ${report.events} events in ${report.streams} streams verified.`)
      : el("p", { class: "bad", id: "verify-result" }, `FAILED: ${report.failure}`));
  } catch (e) {
    error(e);
  }
}

function query() {
  const params = new URLSearchParams();
  for (const name of ["stream", "type", "actor", "since", "until"]) {
    const value = document.getElementById(`filter-${name}`).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

async function loadEvents() {
  try {
    const head = (await api("GET", "/v1/audit/events?limit=1")).head;
    const params = query();
    const filtered = [...params.keys()].length > 0;
    // Unfiltered: the latest 100 events. Filtered: the first 100 that match, from the start.
    params.set("after", String(filtered ? 0 : Math.max(0, head - 100)));
    params.set("limit", "100");
    const page = await api("GET", `/v1/audit/events?${params}`);
    const events = page.events.slice().reverse();
    document.getElementById("events").replaceChildren(
      el("p", { class: "muted" }, `${events.length} events shown · log head at ${head}`),
      eventTable(events, "event-table"));
  } catch (e) {
    error(e);
  }
}

function eventTable(events, id) {
  const body = el("tbody", {});
  const table = el("table", { id }, el("thead", {}, el("tr", {}, ["position", "recorded", "stream", "type", "actor"].map((h) => el("th", {}, h)))), body);
  for (const event of events) body.append(...eventRows(event));
  return table;
}

function eventRows(event) {
  const stream = el("a", { href: "#", class: "stream" }, event.stream);
  stream.addEventListener("click", (e) => { e.preventDefault(); e.stopPropagation(); showHistory(event.stream); });
  const row = el("tr", { class: "event", "data-position": event.position },
    el("td", {}, String(event.position)), el("td", {}, new Date(event.recorded_at).toLocaleString()),
    el("td", {}, stream), el("td", {}, event.type), el("td", {}, `${event.actor.principal} (${event.actor.role})`));
  const detail = el("tr", { hidden: true }, el("td", { colspan: 5 }, el("pre", {}, JSON.stringify({ payload: event.payload, hash: event.hash, prev_hash: event.prev_hash, event_id: event.event_id, correlation_id: event.correlation_id }, null, 2))));
  row.addEventListener("click", () => { detail.hidden = !detail.hidden; });
  return [row, detail];
}

async function showHistory(stream) {
  const target = document.getElementById("history");
  try {
    const history = await api("GET", `/v1/audit/streams/${encodeURIComponent(stream)}`);
    target.replaceChildren(el("h3", {}, `${stream} · version ${history.version}`), eventTable(history.events, "history-table"));
    target.scrollIntoView({ block: "start" });
  } catch (e) {
    error(e);
  }
}

// ---- the live feed (Server-Sent Events, read with fetch so the token goes in a header) ------

let feed = null;

async function startFeed() {
  const controller = new AbortController();
  feed = controller;
  try {
    const response = await fetch("/v1/audit/feed", { headers: { Authorization: `Bearer ${token()}` }, signal: controller.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
        if (!data) continue;
        const table = document.querySelector("#event-table tbody");
        if (table) table.prepend(...eventRows(JSON.parse(data)));
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") error(e);
  }
}

function stopFeed() {
  if (feed) feed.abort();
  feed = null;
}

// ---- lineage -------------------------------------------------------------------------------

async function showLineage(id) {
  const target = document.getElementById("lineage");
  if (!id) return target.replaceChildren(el("p", { class: "muted" }, "No model version yet."));
  target.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  try {
    const lineage = await api("GET", `/v1/models/${id}/lineage`);
    const version = lineage.model_version;
    const parts = [el("summary", {}, `model version ${version.name} · ${version.status} · ${version.id}`)];
    if (lineage.parent) parts.push(el("details", {}, el("summary", {}, `parent: ${lineage.parent.name} · weights ${lineage.parent.weights}`)));
    if (lineage.fine_tune) {
      const job = lineage.fine_tune;
      const examples = el("details", { id: "lineage-examples" }, el("summary", {}, `${lineage.examples.length} training images (round 1 accepted them)`),
        lineage.examples.map((example) => exampleNode(example)));
      // The pictures load when the list is opened (a lineage can list hundreds).
      examples.addEventListener("toggle", () => {
        if (!examples.open) return;
        for (const img of examples.querySelectorAll("img.thumb:not([src])")) {
          imageUrl(`/v1/blobs/${img.dataset.blob}`).then((url) => { img.src = url; }).catch(error);
        }
      });
      const prompts = el("details", { id: "lineage-prompts" }, el("summary", {}, `${lineage.prompts.length} prompts`),
        lineage.prompts.map((prompt) => el("details", { class: "prompt" },
          el("summary", {}, `“${prompt.text}” · ${prompt.status}`),
          el("p", {}, `neutral form: “${prompt.neutral.text}”, negative prompt “${prompt.neutral.negative_prompt}”`),
          el("p", { class: "muted" }, `generator: ${JSON.stringify(prompt.generator)}`))));
      parts.push(el("details", { open: true }, el("summary", {}, `fine-tune ${job.id} · ${job.arm} · ${job.status} · final loss ${job.final_loss ?? "–"}`),
        lineage.source_round ? el("p", { class: "muted" }, `screened in round ${lineage.source_round.id} (${lineage.source_round.raters_per_item} raters per item); annotators: ${lineage.annotators.join(", ")}`) : null,
        examples, prompts));
    }
    target.replaceChildren(el("details", { open: true, id: "lineage-tree" }, parts));
  } catch (e) {
    error(e);
  }
}

function exampleNode(example) {
  const thumb = el("img", { class: "thumb", alt: "", "data-blob": example.blob });
  return el("details", { class: "example" }, el("summary", {}, thumb, `“${example.prompt}”`),
    example.round_1 ? el("ul", {}, example.round_1.ratings.map((rating) => el("li", {}, `${rating.annotator}: ${describe(rating.answer)}`)),
      el("li", { class: "muted" }, `verdict: ${describe(example.round_1.verdict)}`)) : el("p", { class: "muted" }, "not screened (traditional arm)"));
}

/** An answer or verdict in words: {"screen": {"quality": 4, ...}} → "screen: quality 4, group depicted yes, ...". */
function describe(value) {
  if (!value || typeof value !== "object") return String(value);
  const [[kind, fields]] = Object.entries(value);
  const words = Object.entries(fields).map(([name, v]) => `${name.replaceAll("_", " ")} ${v === true ? "yes" : v === false ? "no" : v}`);
  return `${kind}: ${words.join(", ")}`;
}

