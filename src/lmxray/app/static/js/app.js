// The explorer: tabs, the model picker, the URL state, errors; each view is its own module.
import { api } from "./api.js";
import * as explain from "./explain.js";
import * as inside from "./inside.js";
import * as judge from "./judge.js";
import { h } from "./dom.js";

const VIEWS = { explain, inside, judge };
const $ = (s) => document.querySelector(s);

export const app = {
  info: null,
  model() { return $("#model").value; },
  showError(msg) {
    const el = $("#error");
    if (!msg) { el.hidden = true; el.textContent = ""; return; }
    el.textContent = msg;
    el.hidden = false;
  },
  // Put the view's inputs into the address bar (never the token) so the URL reproduces it.
  setUrl(view, params) {
    const q = new URLSearchParams();
    q.set("view", view);
    q.set("model", app.model());
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined || v === null || v === "" || v === false) continue;
      q.set(k, v === true ? "1" : String(v));
    }
    history.replaceState(null, "", `${location.pathname}?${q.toString()}`);
  },
};

function select(view) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== `view-${view}`;
  document.body.dataset.view = view;
}

async function main() {
  try {
    app.info = await api("GET", "/api/info");
  } catch (e) {
    app.showError(e.message);
    return;
  }
  $("#version").textContent = `v${app.info.version}`;
  for (const m of app.info.models) $("#model").append(h("option", { value: m, text: m }));
  const q = new URLSearchParams(location.search);
  if (q.has("token")) { q.delete("token"); history.replaceState(null, "", `${location.pathname}?${q}`); }
  if (q.get("model") && app.info.models.includes(q.get("model"))) $("#model").value = q.get("model");
  for (const v of Object.values(VIEWS)) v.init(app);
  for (const b of document.querySelectorAll(".tab")) {
    b.addEventListener("click", () => { app.showError(""); select(b.dataset.view); app.setUrl(b.dataset.view, {}); });
  }
  const view = VIEWS[q.get("view")] ? q.get("view") : "explain";
  select(view);
  VIEWS[view].restore(Object.fromEntries(q.entries()));
  document.body.dataset.ready = "1";
}

main();
