// Judge: a leaderboard of methods on a zoo task or an uploaded JSONL, with progress, the table
// (best value per column marked) and the mean deletion curves; the self-explanation tests and the
// SAE feature view are sub-views (selfexplain.js, features.js) sharing the progress line and output.
import { h, svg, clear, fmt, formData, fillForm } from "./dom.js";
import { runJob, JobView, exportLinks } from "./api.js";
import * as selfexplain from "./selfexplain.js";
import * as features from "./features.js";

let app, form, out, job, sub = "board";
const COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const SUBS = { selfexplain, feature: features };

export function init(a) {
  app = a;
  form = document.querySelector("#judge-form");
  out = document.querySelector("#judge-out");
  job = new JobView(document.querySelector("#judge-job"));
  for (const t of app.info.tasks) form.task.append(h("option", { value: t, text: `zoo: ${t}` }));
  const box = document.querySelector("#judge-methods");
  for (const [name, about] of Object.entries(app.info.methods)) {
    box.append(h("label", { class: "check", title: about },
      h("input", { type: "checkbox", name: `m_${name}`, checked: ["saliency", "occlusion", "random"].includes(name) }),
      h("span", { text: name })));
  }
  form.n.max = app.info.limits.examples;
  form.addEventListener("submit", (e) => { e.preventDefault(); run(); });
  const shared = { app, out, job, readFile };
  for (const m of Object.values(SUBS)) m.init(shared);
  for (const b of document.querySelectorAll("#view-judge .subtab")) {
    b.addEventListener("click", () => { app.showError(""); choose(b.dataset.sub); app.setUrl("judge", sub === "board" ? {} : { sub }); });
  }
  choose("board");
}

function choose(name) {
  sub = SUBS[name] ? name : "board";
  for (const b of document.querySelectorAll("#view-judge .subtab")) b.classList.toggle("active", b.dataset.sub === sub);
  for (const f of document.querySelectorAll("#view-judge form.sub")) f.hidden = f.dataset.sub !== sub;
}

export function restore(q) {
  choose(q.sub);
  if (sub !== "board") { SUBS[sub].restore(q); return; }
  if (q.methods) for (const el of form.querySelectorAll("input[name^=m_]")) el.checked = q.methods.split(",").includes(el.name.slice(2));
  fillForm(form, q);
  if (q.run === "1") run();
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error(`cannot read ${file.name}`));
    r.readAsText(file);
  });
}

async function run() {
  app.showError("");
  const v = formData(form);
  const methods = Object.keys(app.info.methods).filter((m) => v[`m_${m}`]);
  const file = form.upload.files[0];
  const body = { kind: "judge", model: app.model(), n: v.n, n_steps: v.n_steps, methods };
  clear(out).hidden = true;
  try {
    if (file) {
      if (file.size > app.info.limits.upload_bytes) throw new Error(`${file.name} has ${file.size} bytes, over the limit of ${app.info.limits.upload_bytes}`);
      Object.assign(body, { jsonl: await readFile(file), name: file.name });
    } else {
      body.task = v.task;
      app.setUrl("judge", { task: v.task, n: v.n, n_steps: v.n_steps, methods: methods.join(","), run: 1 });
    }
    draw(await runJob(body, job));
  } catch (e) {
    app.showError(e.message === "cancelled" ? "Cancelled." : e.message);
  }
}

const num = (x) => (x === null || x === undefined || x === "" ? NaN : Number(x));

function best(rows, col, higher) {
  const vals = rows.map((r) => num(r[col])).filter((x) => !Number.isNaN(x));
  return vals.length ? (higher ? Math.max(...vals) : Math.min(...vals)) : null;
}

function draw(res) {
  const cols = res.columns;
  const table = h("table", { class: "board" },
    h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", {
      text: c + (res.metrics[c] ? (res.metrics[c].higher_is_better ? " \u2191" : " \u2193") : ""),
      title: res.metrics[c] ? res.metrics[c].about : "" })), h("th", { text: "n" }))),
    h("tbody", {}, ...res.leaderboard.map((row) => h("tr", {}, ...cols.map((c) => {
      if (c === "method") return h("th", { text: row.method });
      const top = best(res.leaderboard, c, res.metrics[c].higher_is_better);
      const best_ = top !== null && num(row[c]) === top && res.leaderboard.length > 1;
      return h("td", { class: best_ ? "best" : "", "data-col": c, text: fmt(num(row[c])) });
    }), h("td", { text: String(row.n) })))));
  out.append(h("h3", { text: `Leaderboard \u00b7 ${res.data} \u00b7 ${res.n_examples} examples` }), table, plot(res.curves), exportLinks(res.job.id, 1));
  out.hidden = false;
}

function plot(curves) {
  const W = 520, H = 260, L = 48, B = 34, T = 14, R = 130;
  const names = Object.keys(curves);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img" });
  if (!names.length) return h("p", { class: "muted", text: "No deletion curves (no faithfulness metrics)." });
  const all = names.flatMap((n) => curves[n].filter((x) => x !== null));
  const hi = Math.max(...all, 1e-9), lo = Math.min(0, ...all);
  const x = (i, n) => L + (i / Math.max(1, n - 1)) * (W - L - R), y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", text: "share of top tokens deleted" }),
    svg("text", { x: 12, y: T + 4, text: fmt(hi, 2) }), svg("text", { x: 12, y: H - B, text: fmt(lo, 2) }),
    svg("text", { x: L, y: H - B + 14, text: "0" }), svg("text", { x: W - R, y: H - B + 14, "text-anchor": "end", text: "1" }));
  names.forEach((n, k) => {
    const c = curves[n];
    const pts = c.map((v, i) => (v === null ? null : `${x(i, c.length).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean).join(" ");
    s.append(svg("polyline", { points: pts, fill: "none", stroke: COLOURS[k % COLOURS.length], "stroke-width": 2 }),
      svg("line", { x1: W - R + 10, y1: T + 10 + k * 18, x2: W - R + 28, y2: T + 10 + k * 18, stroke: COLOURS[k % COLOURS.length], "stroke-width": 3 }),
      svg("text", { x: W - R + 34, y: T + 14 + k * 18, class: "legend", style: { fill: COLOURS[k % COLOURS.length] }, text: n }));
  });
  return h("figure", {}, s, h("figcaption", { class: "muted", text: "Mean deletion curve: p(target) as the top-scored tokens are removed (lower is more faithful)." }));
}
