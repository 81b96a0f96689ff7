// Judge > Self-explanations: the faithfulness tests of lmxray.selfexplain on a zoo organism (or
// the model chosen above) with progress, then the CLI's table: per test each measure with its 95%
// interval, the counts and the verdict; the first examples' explanations below.
import { h, clear, fmt, formData, fillForm } from "./dom.js";
import { runJob, exportLinks } from "./api.js";

let S, form;

export function init(shared) {
  S = shared;
  form = document.querySelector("#selfexplain-form");
  const info = S.app.info.selfexplain;
  for (const t of info.tasks) form.task.append(h("option", { value: t, text: `zoo organism: ${t}` }));
  for (const b of info.bias_kinds) form.bias.append(h("option", { value: b, text: b }));
  const box = document.querySelector("#se-tests");
  for (const t of info.tests) {
    box.append(h("label", { class: "check" },
      h("input", { type: "checkbox", name: `t_${t}`, checked: t === "bias" || t === "cot" }), h("span", { text: t })));
  }
  form.n.max = S.app.info.limits.examples;
  form.max_new_tokens.max = S.app.info.limits.chain_tokens;
  form.task.value = "rationale-unfaithful";
  form.addEventListener("submit", (e) => { e.preventDefault(); run(); });
}

export function restore(q) {
  if (q.tests) for (const el of form.querySelectorAll("input[name^=t_]")) el.checked = q.tests.split(",").includes(el.name.slice(2));
  fillForm(form, q);
  if (q.run === "1") run();
}

async function run() {
  S.app.showError("");
  const v = formData(form);
  const tests = S.app.info.selfexplain.tests.filter((t) => v[`t_${t}`]);
  const file = form.upload.files[0];
  const organism = v.answerer === "organism" && !file;
  const body = { kind: "selfexplain", model: S.app.model(), n: v.n, seed: v.seed, tests, organism };
  if (v.max_new_tokens !== undefined) body.max_new_tokens = v.max_new_tokens;
  if (v.bias) body.bias = v.bias;
  clear(S.out).hidden = true;
  try {
    if (file) {
      if (file.size > S.app.info.limits.upload_bytes) throw new Error(`${file.name} has ${file.size} bytes, over the limit of ${S.app.info.limits.upload_bytes}`);
      Object.assign(body, { jsonl: await S.readFile(file), name: file.name });
    } else {
      body.task = v.task;
      S.app.setUrl("judge", { sub: "selfexplain", task: v.task, answerer: v.answerer, n: v.n, seed: v.seed,
        max_new_tokens: v.max_new_tokens, bias: v.bias, tests: tests.join(","), run: 1 });
    }
    draw(await runJob(body, S.job));
  } catch (e) {
    S.app.showError(e.message === "cancelled" ? "Cancelled." : e.message);
  }
}

const interval = (m) => (m.lo === null || m.hi === null ? "\u2014" : `[${fmt(m.lo, 2)}, ${fmt(m.hi, 2)}]`);

function testRows(t) {
  const measures = t.measures.length ? t.measures : [{ name: "\u2014", value: null, lo: null, hi: null }];
  const counts = `n=${t.n ?? "\u2014"}, ${t.parse_failed ?? 0} unparsed`;
  return measures.map((m, i) => h("tr", { class: i === measures.length - 1 ? "section-end" : "", "data-test": t.test },
    i === 0 ? h("th", { rowspan: measures.length, class: "test" }, h("div", { text: t.test }), h("div", { class: "muted", text: counts })) : null,
    h("td", { class: "measure", text: m.name }), h("td", { class: "num", "data-value": m.value, text: fmt(m.value, 2) }), h("td", { class: "num", text: interval(m) }),
    i === 0 ? h("td", { rowspan: measures.length, class: `se-verdict se-${t.verdict.replace("/", "")}`, text: t.verdict }) : null));
}

function draw(res) {
  const table = h("table", { class: "board selfexplain" },
    h("thead", {}, h("tr", {}, ...["test", "measure", "value", "95% CI", "verdict"].map((c) => h("th", { class: `col-${c.replace(/\W/g, "")}`, text: c })))),
    h("tbody", {}, ...res.tests.flatMap(testRows)));
  const facts = `model ${res.generator} \u00b7 format ${res.format} \u00b7 ${res.n_items} items \u00b7 data ${res.data}`;
  S.out.append(h("h3", { text: "Self-explanation faithfulness" }), h("p", { class: "muted", text: facts }), table);
  if (res.examples.length) {
    S.out.append(h("h4", { text: `First ${res.examples.length} examples` }),
      h("table", { class: "board examples" },
        h("thead", {}, h("tr", {}, h("th", { text: "id" }), h("th", { text: "explanation" }), h("th", { text: "verdicts" }))),
        h("tbody", {}, ...res.examples.map((ex) => h("tr", {},
          h("td", { text: ex.id }), h("td", { class: "explanation", text: ex.explanation }),
          h("td", { text: Object.entries(ex.verdicts).map(([t, v]) => `${t}: ${v}`).join("; ") }))))));
  }
  S.out.append(exportLinks(res.job.id, 1));
  S.out.hidden = false;
}
