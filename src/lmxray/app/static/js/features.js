// Judge > SAE features: one latent of an SAE named at start-up (lmxray serve --sae NAME=FOLDER):
// its top-activating zoo contexts (tokens shaded by activation), the histogram of its non-zero
// activations, and the tokens its decoder row promotes and suppresses through the unembedding.
import { h, svg, clear, fmt, showToken, sequential, formData, fillForm } from "./dom.js";
import { runJob, exportLinks } from "./api.js";

let S, form;

export function init(shared) {
  S = shared;
  form = document.querySelector("#feature-form");
  const saes = S.app.info.saes;
  for (const s of saes) form.sae.append(h("option", { value: s.name, text: `${s.name} (${s.kind}, ${s.d_sae} latents)` }));
  form.n_texts.max = S.app.info.limits.texts;
  const hint = () => {
    const s = saes.find((x) => x.name === form.sae.value);
    document.querySelector("#feature-hint").textContent = s
      ? `${s.name}: ${s.d_sae} latents at ${s.site} of ${s.model} (latent 0\u2013${s.d_sae - 1})`
      : "No SAE is offered: start the server with lmxray serve --sae NAME=FOLDER.";
    if (s) form.feature.max = s.d_sae - 1;
  };
  form.sae.addEventListener("change", hint);
  hint();
  for (const b of form.querySelectorAll("button.step")) {
    b.addEventListener("click", () => {
      const next = Number(form.feature.value || 0) + Number(b.dataset.step);
      if (next >= 0 && (form.feature.max === "" || next <= Number(form.feature.max))) { form.feature.value = next; run(); }
    });
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); run(); });
}

export function restore(q) {
  fillForm(form, q);
  form.sae.dispatchEvent(new Event("change"));
  if (q.run === "1") run();
}

async function run() {
  S.app.showError("");
  const v = formData(form);
  const body = { kind: "feature", sae: v.sae, feature: v.feature, n_texts: v.n_texts, top: v.top };
  S.app.setUrl("judge", { sub: "feature", sae: v.sae, feature: v.feature, n_texts: v.n_texts, top: v.top, run: 1 });
  clear(S.out).hidden = true;
  try {
    draw(await runJob(body, S.job));
  } catch (e) {
    S.app.showError(e.message === "cancelled" ? "Cancelled." : e.message);
  }
}

function contexts(res) {
  const top = Math.max(1e-9, ...res.contexts.map((c) => c.max));
  if (!res.contexts.length) return h("p", { class: "muted", text: "The latent did not fire on these texts." });
  return h("ol", { class: "contexts" }, ...res.contexts.map((c) => h("li", {},
    h("span", { class: "muted ctx-max", text: fmt(c.max, 2) }),
    ...c.tokens.map((t, i) => h("span", {
      class: "ctx-tok" + (i === c.at ? " peak" : ""), title: `${t} \u00b7 ${fmt(c.acts[i], 3)}`,
      "data-act": String(c.acts[i]), style: { background: sequential(c.acts[i], 0, top) }, text: showToken(t) })))));
}

function histogram(res) {
  const W = 420, H = 150, L = 40, B = 26, T = 8, counts = res.hist_counts, edges = res.hist_edges;
  if (!counts.length) return h("p", { class: "muted", text: "No non-zero activations." });
  const hi = Math.max(...counts, 1), bw = (W - L - 8) / counts.length;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot histogram", role: "img" });
  counts.forEach((c, i) => {
    const y = T + (1 - c / hi) * (H - T - B);
    s.append(svg("rect", { x: L + i * bw + 1, y, width: Math.max(1, bw - 2), height: H - B - y, class: "bar" },
      svg("title", { text: `${fmt(edges[i], 3)}\u2013${fmt(edges[i + 1], 3)}: ${c}` })));
  });
  s.append(svg("line", { x1: L, y1: H - B, x2: W - 8, y2: H - B, class: "axis" }),
    svg("text", { x: L, y: H - 8, text: fmt(edges[0], 2) }), svg("text", { x: W - 8, y: H - 8, "text-anchor": "end", text: fmt(edges[edges.length - 1], 2) }),
    svg("text", { x: 4, y: T + 10, text: String(hi) }));
  return h("figure", {}, s, h("figcaption", { class: "muted", text: `Non-zero activations; fires on ${fmt(100 * res.freq, 2)}% of tokens.` }));
}

function effects(title, rows, cls) {
  return h("table", { class: `board effects ${cls}` }, h("thead", {}, h("tr", {}, h("th", { colspan: 2, text: title }))),
    h("tbody", {}, ...rows.map(([tok, v]) => h("tr", {}, h("td", { class: "ctx-tok", text: showToken(tok) }), h("td", { class: "num", "data-value": v, text: fmt(v, 3) })))));
}

function draw(res) {
  S.out.append(h("h3", { text: `${res.sae} \u00b7 latent ${res.feature} \u00b7 ${res.site} \u00b7 ${res.model}` }),
    h("h4", { text: "Top-activating contexts" }), contexts(res),
    h("div", { class: "row-panels" }, histogram(res),
      effects("promoted (logit effect)", res.promoted, "promoted"), effects("suppressed", res.suppressed, "suppressed")),
    exportLinks(res.job.id, 1));
  S.out.hidden = false;
}
