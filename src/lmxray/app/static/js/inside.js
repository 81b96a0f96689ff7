// Inside: logit / tuned lens grid, causal tracing (the subject is the selected prompt text),
// activation patching and head scores; each drawn as a grid of coloured cells.
import { h, clear, showToken, diverging, sequential, fmt, maxAbs, grid, formData, fillForm } from "./dom.js";
import { runJob, JobView, exportLinks } from "./api.js";

let app, out, job, sub = "lens";
const forms = {};

export function init(a) {
  app = a;
  out = document.querySelector("#inside-out");
  job = new JobView(document.querySelector("#inside-job"));
  for (const f of document.querySelectorAll("#view-inside form.sub")) {
    forms[f.dataset.sub] = f;
    f.addEventListener("submit", (e) => { e.preventDefault(); run(f.dataset.sub); });
  }
  for (const b of document.querySelectorAll("#view-inside .subtab")) b.addEventListener("click", () => { choose(b.dataset.sub); app.setUrl("inside", { sub }); });
  for (const s of app.info.patch_sites) document.querySelector("#patch-site").append(h("option", { value: s, text: s }));
  const t = forms.trace;
  const pick = () => {
    const [s, e] = [t.prompt.selectionStart, t.prompt.selectionEnd];
    if (e > s) { t.start.value = s; t.end.value = e; }
    subjectHint();
  };
  for (const ev of ["select", "mouseup", "keyup"]) t.prompt.addEventListener(ev, pick);
  t.prompt.addEventListener("input", () => { t.start.value = ""; t.end.value = ""; subjectHint(); });
  choose("lens");
}

function subjectHint() {
  const t = forms.trace, hint = document.querySelector("#subject-hint");
  hint.textContent = t.start.value === "" ? "Subject: none selected (select it in the prompt)"
    : `Subject: \u201c${t.prompt.value.slice(Number(t.start.value), Number(t.end.value))}\u201d (characters ${t.start.value}\u2013${t.end.value})`;
}

function choose(name) {
  sub = name;
  for (const b of document.querySelectorAll("#view-inside .subtab")) b.classList.toggle("active", b.dataset.sub === name);
  for (const [k, f] of Object.entries(forms)) f.hidden = k !== name;
}

export function restore(q) {
  choose(forms[q.sub] ? q.sub : "lens");
  fillForm(forms[sub], q);
  if (sub === "trace") subjectHint();
  if (q.run === "1") run(sub);
}

function request(name, v) {
  const base = { kind: name, model: app.model() };
  if (name === "lens") return { ...base, prompt: v.prompt, target: v.target || null, top_k: v.top_k, tuned: v.tuned };
  if (name === "trace") {
    const kinds = app.info.trace_kinds.filter((k) => v[`kind_${k}`]);
    const span = v.start === "" ? {} : { start: Number(v.start), end: Number(v.end) };
    return { ...base, prompt: v.prompt, ...span, subject: v.start === "" ? "" : undefined, answer: v.answer || null, n_samples: v.n_samples, kinds };
  }
  if (name === "patch") return { ...base, clean: v.clean, corrupt: v.corrupt, answer: v.answer || null, foil: v.foil || null, site: v.site };
  return { ...base, n_seqs: v.n_seqs, seq_len: v.seq_len, seed: v.seed };
}

async function run(name) {
  app.showError("");
  const v = formData(forms[name]);
  app.setUrl("inside", { sub: name, run: 1, ...v });
  clear(out).hidden = true;
  try {
    const res = await runJob(request(name, v), job);
    ({ lens: drawLens, trace: drawTrace, patch: drawPatch, heads: drawHeads })[name](res);
    out.append(exportLinks(res.job.id, 1));
    out.hidden = false;
  } catch (e) {
    app.showError(e.message === "cancelled" ? "Cancelled." : e.message);
  }
}

function drawLens(r) {
  const rows = r.layers.map((_, i) => r.layers.length - 1 - i); // output layer on top
  const detail = h("div", { class: "detail muted", text: "Click a cell for its top tokens." });
  const track = r.target ? `P(${showToken(r.target)})` : "P(final top-1)";
  out.append(h("h3", { text: `${r.method === "tuned_lens" ? "Tuned" : "Logit"} lens \u00b7 colour: ${track}` }),
    grid({
      rows: rows.map((i) => (r.layers[i] === "embed" ? "embed" : `layer ${r.layers[i]}`)), cols: r.tokens, corner: "layer \\ position",
      value: (i, p) => r.target_prob[rows[i]][p], color: (v) => sequential(v),
      label: (i, p) => showToken(r.top_tokens[rows[i]][p][0]),
      title: (i, p, v) => `${track} = ${fmt(v)}; top: ${r.top_tokens[rows[i]][p].map((t, k) => `${JSON.stringify(t)} ${fmt(r.top_probs[rows[i]][p][k], 2)}`).join(", ")}`,
      onClick: (i, p) => {
        clear(detail).classList.remove("muted");
        detail.append(h("b", { text: `${r.layers[rows[i]] === "embed" ? "embed" : "layer " + r.layers[rows[i]]}, after ${JSON.stringify(r.tokens[p])}: ` }),
          ...r.top_tokens[rows[i]][p].map((t, k) => h("span", { class: "chip", text: `${showToken(t)} ${fmt(r.top_probs[rows[i]][p][k], 3)}` })));
      }, cls: "lens",
    }), detail);
}

function drawTrace(r) {
  out.append(h("h3", { text: `Causal tracing of ${JSON.stringify(r.answer)}: P clean ${fmt(r.p_clean)}, corrupted ${fmt(r.p_corrupt)}` }),
    h("p", { class: "muted", text: `Subject tokens ${r.subject_tokens.join(", ")} noised (${r.n_samples} samples); each cell restores one state and shows P(answer).` }));
  for (const [kind, m] of Object.entries(r.restored)) {
    const hi = Math.max(r.p_clean, ...m.flat().filter((x) => x !== null));
    out.append(h("h4", { text: kind }), grid({
      rows: m.map((_, l) => `layer ${l}`), cols: r.tokens, value: (l, p) => m[l][p],
      color: (v) => sequential(v, r.p_corrupt, hi), mark: (l, p) => r.subject_tokens.includes(p), cls: "trace",
    }));
  }
}

function drawPatch(r) {
  out.append(h("h3", { text: `Activation patching (${r.metric}; ${JSON.stringify(r.answer)} vs ${JSON.stringify(r.foil)}): clean ${fmt(r.clean_value)}, corrupted ${fmt(r.corrupt_value)}` }),
    h("p", { class: "muted", text: "Normalised effect: 1 = the patch restores the clean run, 0 = no change." }));
  for (const [kind, m] of Object.entries(r.effects)) {
    out.append(h("h4", { text: kind }), grid({
      rows: m.map((_, l) => `layer ${l}`), cols: r.tokens.map((t, i) => (t === r.corrupt_tokens[i] ? t : `${t}/${r.corrupt_tokens[i]}`)),
      value: (l, p) => m[l][p], color: (v) => diverging(v, 1), cls: "patch",
    }));
  }
}

function drawHeads(r) {
  out.append(h("h3", { text: "Head scores" }), h("p", { class: "muted", text: r.info.data || "" }));
  const box = h("div", { class: "heads" });
  for (const [kind, m] of Object.entries(r.scores)) {
    box.append(h("div", {}, h("h4", { text: kind.replace(/_/g, " ") }), grid({
      rows: m.map((_, l) => `layer ${l}`), cols: m[0].map((_, i) => `head ${i}`), value: (l, i) => m[l][i],
      color: (v) => sequential(v, 0, Math.max(0.01, maxAbs(m.flat()))), cls: "headgrid",
    })));
  }
  out.append(box);
}
