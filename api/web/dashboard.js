// The dashboard, for curators, analysts and auditors: each association's rate before and after
// (with 95% intervals), quality and side-by-side win rate; campaigns and their stage; rounds with
// completion and agreement; annotators' gold records and exclusions; items waiting for
// adjudication; fine-tune loss curves. Every number comes from the REST API.
import { api, el, percent, signIn, svg } from "./common.js";

const view = document.getElementById("view");
const message = document.getElementById("message");
const who = document.getElementById("who");

const ARM_NAMES = { thitl: "T-HITL", traditional: "traditional" };

signIn({ view, message, who, roles: ["admin", "curator", "operator", "auditor"], purpose: "curators, analysts and auditors", onReady: load });

async function load() {
  try {
    const [associations, campaigns, rounds, fineTunes] = await Promise.all([
      api("GET", "/v1/associations"), api("GET", "/v1/campaigns"), api("GET", "/v1/rounds"), api("GET", "/v1/fine-tunes"),
    ]);
    const evaluations = await Promise.all(associations.associations.map((a) => api("GET", `/v1/associations/${a.id}/evaluation`)));
    const recentRounds = rounds.rounds.slice(-12).reverse();
    const details = await Promise.all(recentRounds.map((r) => api("GET", `/v1/rounds/${r.id}`)));
    // Who rated how well, for the rounds that score their annotators on gold items.
    const scored = details.filter((r) => r.gold_items > 0);
    const records = await Promise.all(scored.map((r) => api("GET", `/v1/rounds/${r.id}/annotators`)));
    const adjudications = await api("GET", "/v1/adjudications");
    const recentTunes = fineTunes.fine_tunes.slice(-6).reverse();
    const tunes = await Promise.all(recentTunes.map((f) => api("GET", `/v1/fine-tunes/${f.id}`)));
    view.replaceChildren(
      el("p", { class: "muted", id: "position" }, `as of event ${associations.position}`),
      section("Associations", "associations", associations.associations.length === 0
        ? el("p", { class: "muted" }, "No association is registered yet.")
        : associations.associations.map((a, i) => associationCard(a, evaluations[i]))),
      section("Campaigns", "campaigns", campaignTable(campaigns.campaigns)),
      section("Rounds", "rounds", roundTable(details)),
      section("Annotators", "annotators", scored.length === 0
        ? el("p", { class: "muted" }, "No round scores its annotators on gold items.")
        : scored.map((r, i) => annotatorTable(r, records[i].annotators))),
      section("Adjudications", "adjudications", adjudicationTable(adjudications.adjudications)),
      section("Fine-tunes", "fine-tunes", tunes.length === 0 ? el("p", { class: "muted" }, "No fine-tune yet.") : el("div", { class: "curves" }, tunes.map(lossCurve))),
    );
  } catch (error) {
    message.replaceChildren(el("p", { class: "message error" }, error.message));
  }
}

function section(title, id, ...content) {
  return el("section", { id }, el("h2", {}, title), content);
}

function associationCard(association, evaluation) {
  const latest = evaluation.latest;
  const head = el("h3", {}, `${association.group} → ${association.concept}`,
    el("span", { class: "muted" }, ` · ${association.category} · ${association.status}`));
  if (!latest) {
    return el("div", { class: "card association", "data-association": association.id }, head, el("p", { class: "muted" }, "Not evaluated yet."));
  }
  const thitl = latest.arms.find((arm) => arm.arm === "thitl") || latest.arms[0];
  const bars = [{ label: "before (base)", estimate: thitl.before, kind: "before" }]
    .concat(latest.arms.map((arm) => ({ label: `after (${ARM_NAMES[arm.arm] || arm.arm})`, estimate: arm.after, kind: arm.arm })));
  const rows = latest.arms.map((arm) => el("tr", { "data-arm": arm.arm },
    el("td", {}, ARM_NAMES[arm.arm] || arm.arm),
    el("td", { class: "before" }, interval(arm.before)),
    el("td", { class: "after" }, interval(arm.after)),
    el("td", { title: arm.quality_source === "round2_people" ? "mean of round 2's quality answers (1–5)" : "the automatic rater" },
      `${arm.quality_before.toFixed(3)} → ${arm.quality_after.toFixed(3)}${arm.quality_source === "round2_people" ? " (people)" : ""}`),
    el("td", { class: "people-quality", title: "round 2's people: median over images of each image's mean quality answer (1–5), 95% interval" },
      arm.people_quality_before && arm.people_quality_after ? `${median(arm.people_quality_before)} → ${median(arm.people_quality_after)}` : "–"),
    el("td", {}, arm.win_rate ? `${percent(arm.win_rate.rate)} [${percent(arm.win_rate.ci_low)}, ${percent(arm.win_rate.ci_high)}]` : "–"),
    el("td", {}, arm.alpha === null || arm.alpha === undefined ? "–" : arm.alpha.toFixed(2))));
  const table = el("table", {},
    el("tr", {}, ["arm", "before", "after", "quality", "people's quality (median)", "win rate", "α"].map((h) => el("th", {}, h))),
    rows);
  return el("div", { class: "card association", "data-association": association.id }, head,
    el("div", { class: "chart-row" }, rateChart(bars), table),
    el("p", { class: "muted" }, `rates with 95% intervals from round 2's majority verdicts, n = ${thitl.after.n} per model; quality: before → after; win rate: round 2's side-by-side preference for the T-HITL picture; α: agreement on the concept · campaign ${latest.campaign_id}, ${new Date(latest.recorded_at).toLocaleString()}`));
}

function median(estimate) {
  return `${estimate.median.toFixed(2)} [${estimate.ci_low.toFixed(2)}, ${estimate.ci_high.toFixed(2)}]`;
}

function interval(estimate) {
  return `${percent(estimate.rate)} [${percent(estimate.ci_low)}, ${percent(estimate.ci_high)}]`;
}

/** Bars for the rates, with whiskers for their 95% intervals, on a 0–100% axis. */
function rateChart(bars) {
  const width = 320, height = 200, left = 40, bottom = 40, top = 10;
  const plot = height - bottom - top;
  const y = (rate) => top + plot * (1 - rate);
  const slot = (width - left) / bars.length;
  const axis = [0, 0.25, 0.5, 0.75, 1].map((tick) => [
    svg("line", { x1: left, x2: width, y1: y(tick), y2: y(tick), class: "grid" }),
    svg("text", { x: left - 6, y: y(tick) + 4, "text-anchor": "end", class: "tick" }, `${tick * 100}%`),
  ]);
  const drawn = bars.map((bar, i) => {
    const x = left + i * slot + slot * 0.2, w = slot * 0.6, e = bar.estimate;
    return svg("g", { class: `bar ${bar.kind}` },
      svg("title", {}, `${bar.label}: ${interval(e)}, n = ${e.n}`),
      svg("rect", { x, y: y(e.rate), width: w, height: Math.max(0.5, plot * e.rate), class: "rate" }),
      svg("line", { x1: x + w / 2, x2: x + w / 2, y1: y(e.ci_high), y2: y(e.ci_low), class: "whisker" }),
      svg("line", { x1: x + w / 4, x2: x + 3 * w / 4, y1: y(e.ci_high), y2: y(e.ci_high), class: "whisker" }),
      svg("line", { x1: x + w / 4, x2: x + 3 * w / 4, y1: y(e.ci_low), y2: y(e.ci_low), class: "whisker" }),
      svg("text", { x: x + w / 2, y: height - bottom + 16, "text-anchor": "middle", class: "label" }, bar.label.split(" ")[0]),
      svg("text", { x: x + w / 2, y: height - bottom + 30, "text-anchor": "middle", class: "label muted" }, bar.label.split(" ").slice(1).join(" ")));
  });
  return svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart rates", role: "img", "aria-label": "rate before and after" }, axis, drawn);
}

function campaignTable(campaigns) {
  if (campaigns.length === 0) return el("p", { class: "muted" }, "No campaign yet.");
  return el("table", {}, el("tr", {}, ["campaign", "stage", "associations", "promoted", "started"].map((h) => el("th", {}, h))),
    campaigns.map((c) => el("tr", { "data-campaign": c.id },
      el("td", {}, c.name), el("td", { class: "stage" }, c.stage.replace("_", " ")), el("td", {}, String(c.associations.length)),
      el("td", {}, c.promoted || "–"), el("td", {}, new Date(c.started_at).toLocaleString()))));
}

function roundTable(rounds) {
  if (rounds.length === 0) return el("p", { class: "muted" }, "No round yet.");
  const agreement = (values) => Object.entries(values || {}).map(([question, alpha]) => `${question.replace("_", " ")} ${alpha === null ? "–" : alpha.toFixed(2)}`).join(" · ") || "–";
  return el("table", {}, el("tr", {}, ["round", "kind", "status", "completion", "agreement (Krippendorff's α)"].map((h) => el("th", {}, h))),
    rounds.map((r) => el("tr", { "data-round": r.id },
      el("td", {}, r.id.slice(-8)), el("td", {}, r.kind), el("td", {}, r.status),
      el("td", {}, el("div", { class: "progress" }, el("div", { class: "bar" }, el("span", { style: `width: ${(100 * r.submitted / Math.max(1, r.needed)).toFixed(1)}%` })), `${r.submitted} of ${r.needed}`)),
      el("td", { class: "agreement" }, agreement(r.agreement)))));
}

/** Each annotator of a round with gold items: answers, gold record, agreement, exclusion. */
function annotatorTable(round, annotators) {
  const accuracy = (a) => a.gold_accuracy === null
    ? "–"
    : `${percent(a.gold_accuracy)} [${percent(a.gold_accuracy_ci[0])}, ${percent(a.gold_accuracy_ci[1])}]`;
  const excluded = (a) => a.excluded
    ? `excluded: ${a.excluded.gold_correct} of ${a.excluded.gold_answers} gold right (at most ${percent(a.excluded.accuracy_upper_bound)})`
    : "–";
  return el("div", { class: "card", "data-round": round.id },
    el("h3", {}, `round ${round.id.slice(-8)} · ${round.kind} · ${round.gold_items} gold items`),
    el("table", {}, el("tr", {}, ["annotator", "answers", "gold right", "gold accuracy (95%)", "agreement", "exclusion"].map((h) => el("th", {}, h))),
      annotators.map((a) => el("tr", { "data-annotator": a.annotator, class: a.excluded ? "excluded" : "" },
        el("td", {}, a.annotator), el("td", {}, String(a.submitted)), el("td", {}, `${a.gold_correct} of ${a.gold_answers}`),
        el("td", { class: "accuracy" }, accuracy(a)),
        el("td", {}, a.agreement === null ? "–" : percent(a.agreement)),
        el("td", { class: "exclusion" }, excluded(a))))));
}

/** Split items waiting for a curator (decided with `POST /v1/adjudications/{item_id}`). */
function adjudicationTable(queue) {
  if (queue.length === 0) return el("p", { class: "muted" }, "No item waits for adjudication.");
  const answer = (a) => Object.entries(a).map(([kind, fields]) => `${kind}: ${Object.entries(fields).map(([k, v]) => `${k.replace("_", " ")} ${v}`).join(", ")}`).join("");
  return el("div", {},
    el("p", { class: "muted" }, "Items whose answers still split at the most raters their round allows; decide each with POST /v1/adjudications/{item_id} and a reason."),
    el("table", {}, el("tr", {}, ["round", "item", "margin", "answers"].map((h) => el("th", {}, h))),
      queue.map((q) => el("tr", { "data-item": q.item_id },
        el("td", {}, q.round_id.slice(-8)), el("td", {}, q.item_id), el("td", {}, String(q.margin)),
        el("td", { class: "answers" }, Object.entries(q.answers).map(([who, a]) => `${who} — ${answer(a)}`).join("; "))))));
}

/** A fine-tune's loss against its step. */
function lossCurve(job) {
  const width = 300, height = 150, left = 44, bottom = 24, top = 10, right = 8;
  const points = job.losses || [];
  const card = el("div", { class: "card curve", "data-fine-tune": job.id },
    el("h3", {}, `${ARM_NAMES[job.arm] || job.arm} · ${job.status}`),
    el("p", { class: "muted" }, `${job.last_step ?? 0} of ${job.config ? job.config.steps : "?"} steps`));
  if (points.length < 2) return card;
  const steps = points.map((p) => p[0]), losses = points.map((p) => p[1]);
  const [minStep, maxStep] = [Math.min(...steps), Math.max(...steps)];
  const [minLoss, maxLoss] = [Math.min(...losses), Math.max(...losses)];
  const x = (s) => left + (width - left - right) * (s - minStep) / Math.max(1, maxStep - minStep);
  const y = (l) => top + (height - top - bottom) * (1 - (l - minLoss) / Math.max(1e-9, maxLoss - minLoss));
  card.append(svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart loss", role: "img", "aria-label": "loss by step" },
    svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "grid" }),
    svg("text", { x: left - 6, y: top + 8, "text-anchor": "end", class: "tick" }, maxLoss.toFixed(3)),
    svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end", class: "tick" }, minLoss.toFixed(3)),
    svg("text", { x: width - right, y: height - 6, "text-anchor": "end", class: "tick" }, `step ${maxStep}`),
    svg("polyline", { points: points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "), class: "line" })));
  return card;
}
