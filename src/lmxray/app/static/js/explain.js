// Explain: prompt -> token heatmaps of one or two methods, side by side; click a target token
// to see its row; the verdict on demand when the server has the verification capability.
import { h, clear, showToken, diverging, fmt, maxAbs, grid, formData, fillForm } from "./dom.js";
import { runJob, JobView, exportLinks } from "./api.js";

let app, form, out, job, last = null;
const FIELDS = ["prompt", "target", "foil", "max_new_tokens", "method_a", "method_b", "n_steps", "n_samples", "verify"];

export function init(a) {
  app = a;
  form = document.querySelector("#explain-form");
  out = document.querySelector("#explain-out");
  job = new JobView(document.querySelector("#explain-job"));
  for (const sel of form.querySelectorAll("select.methods")) {
    if (sel.classList.contains("optional")) sel.append(h("option", { value: "", text: "(none)" }));
    for (const [name, about] of Object.entries(app.info.methods)) sel.append(h("option", { value: name, text: name, title: about }));
  }
  form.method_a.value = "saliency";
  const lim = app.info.limits;
  form.max_new_tokens.max = lim.new_tokens; form.n_steps.max = lim.steps; form.n_samples.max = lim.samples;
  form.prompt.maxLength = lim.prompt_chars;
  if (!app.info.verify) {
    form.verify.disabled = true;
    const label = document.querySelector("#verify-label");
    label.classList.add("disabled");
    label.title = "not available: this lmxray has no explanation verification (Attribution.verify) yet";
    label.querySelector("span").textContent = "Verdict (not available in this lmxray)";
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); run(0); });
}

export function restore(q) {
  fillForm(form, q);
  if (q.prompt) run(Number(q.row || 0));
}

function request(v) {
  const methods = [v.method_a, v.method_b].filter((m, i, all) => m && all.indexOf(m) === i);
  return { kind: "explain", model: app.model(), prompt: v.prompt, target: v.target || null, foil: v.foil || null,
    max_new_tokens: v.target ? null : v.max_new_tokens, methods, n_steps: v.n_steps, n_samples: v.n_samples, verify: !!v.verify };
}

async function run(row) {
  app.showError("");
  const v = formData(form);
  const params = Object.fromEntries(FIELDS.map((k) => [k, v[k]]));
  app.setUrl("explain", params);
  clear(out);
  try {
    const res = await runJob(request(v), job);
    last = { res, params };
    draw(Math.min(row, res.attributions[0].target_tokens.length - 1));
  } catch (e) {
    app.showError(e.message === "cancelled" ? "Cancelled." : e.message);
  }
}

function select(row) {
  app.setUrl("explain", { ...last.params, row: row || undefined });
  draw(row);
}

function draw(row) {
  const res = last.res;
  clear(out);
  res.attributions.forEach((a, i) => out.append(panel(a, row, res.verdicts ? res.verdicts[i] : null)));
  out.append(exportLinks(res.job.id, res.attributions.length, res.attributions.map((a) => a.method)));
}

function panel(a, row, verdict) {
  const nT = a.target_tokens.length, nS = a.source_tokens.length, P = nS - nT;
  const scores = a.scores[row];
  const valid = scores.slice(0, P + row);
  const scale = maxAbs(valid);
  const targets = h("div", { class: "targets" }, h("span", { class: "muted", text: "target " }),
    ...a.target_tokens.map((t, j) => h("button", {
      type: "button", class: "target-token" + (j === row ? " selected" : ""), "data-index": j,
      title: `step ${j}: ${a.info.target_fn || "target"} = ${fmt(a.target_scores[j])}`,
      text: showToken(t), onclick: () => select(j),
    })));
  const heat = h("div", { class: "heat", "data-row": row }, ...a.source_tokens.slice(0, P + row).map((t, s) => {
    const v = scores[s];
    return h("span", { class: "tok" + (s >= P ? " generated" : ""), "data-index": s,
      "data-score": v === null ? "" : String(v), title: `${JSON.stringify(t)}: ${fmt(v, 5)}`,
      style: { background: diverging(v, scale) } },
      h("span", { class: "tok-text", text: showToken(t) }), h("span", { class: "tok-score", text: fmt(v) }));
  }), h("span", { class: "tok predicted", title: "the explained token" },
    h("span", { class: "tok-text", text: showToken(a.target_tokens[row]) }), h("span", { class: "tok-score", text: "\u2190 target" })));
  const matrix = grid({
    rows: a.target_tokens.map((t, j) => `${j} ${showToken(t)}`), cols: a.source_tokens,
    value: (r, c) => a.scores[r][c], color: (v) => diverging(v, maxAbs(a.scores.flat())),
    label: (r, c, v) => (v === null ? "" : fmt(v, 2)), mark: (r) => r === row, onClick: (r) => select(r), cls: "matrix",
  });
  return h("div", { class: "card panel", "data-method": a.method },
    h("h3", {}, a.method, h("span", { class: "muted", text: ` · ${a.model}` })),
    targets, heat,
    h("details", { class: "matrix-box" }, h("summary", { text: "All steps (rows: target tokens; columns: sources)" }), matrix),
    verdict ? verdictView(verdict) : null);
}

function verdictView(v) {
  const scalars = Object.entries(v).filter(([, x]) => x !== null && typeof x !== "object");
  const checks = v.checks && typeof v.checks === "object" ? Object.entries(v.checks).filter(([, x]) => x !== null) : [];
  const reasons = Array.isArray(v.reasons) ? v.reasons : [];
  return h("div", { class: "verdict" + (v.passed === false ? " failed" : "") },
    h("h4", { text: `Verdict: ${v.verdict !== undefined ? v.verdict : ""}` }),
    h("dl", {}, ...[...scalars.filter(([k]) => k !== "verdict"), ...checks]
      .flatMap(([k, x]) => [h("dt", { text: k }), h("dd", { text: String(x) })])),
    reasons.length ? h("ul", { class: "reasons" }, ...reasons.map((r) => h("li", { text: String(r) }))) : null);
}
