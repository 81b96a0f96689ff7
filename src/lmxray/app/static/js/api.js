// The JSON API and the job runner: submit, follow progress (server-sent events, polling as a
// fallback), fetch the result; cancel on demand.
import { h, clear } from "./dom.js";

export class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

export async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try { r = await fetch(path, init); } catch (e) { throw new ApiError("the server cannot be reached: " + e.message, 0); }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) throw new ApiError((data && data.error) || `HTTP ${r.status}`, r.status);
  return data;
}

const TERMINAL = ["done", "error", "cancelled"];

function follow(id, onUpdate) {
  return new Promise((resolve) => {
    let finished = false;
    const finish = (s) => { if (!finished) { finished = true; resolve(s); } };
    const poll = async () => {
      while (!finished) {
        try {
          const s = await api("GET", `/api/jobs/${id}`);
          onUpdate(s);
          if (TERMINAL.includes(s.state)) return finish(s);
        } catch (e) { return finish({ state: "error", error: e.message, status: e.status }); }
        await new Promise((r) => setTimeout(r, 150));
      }
    };
    if (!window.EventSource) { poll(); return; }
    const es = new EventSource(`/api/jobs/${id}/events`);
    es.onmessage = (ev) => {
      const s = JSON.parse(ev.data);
      onUpdate(s);
      if (TERMINAL.includes(s.state)) { es.close(); finish(s); }
    };
    es.onerror = () => { es.close(); if (!finished) poll(); };
  });
}

// A job's progress line: bar, label, elapsed time and a Cancel button.
export class JobView {
  constructor(el) { this.el = el; }
  start(id) {
    this.id = id;
    this.bar = h("progress", { max: 1, value: 0 });
    this.label = h("span", { class: "job-label", text: "queued" });
    this.time = h("span", { class: "muted job-time" });
    this.cancel = h("button", { type: "button", class: "cancel", text: "Cancel",
      onclick: () => api("DELETE", `/api/jobs/${this.id}`).catch(() => {}) });
    clear(this.el).append(this.bar, this.label, this.time, this.cancel);
    this.el.hidden = false;
    this.el.dataset.state = "queued";
    this.el.dataset.job = id;
  }
  update(s) {
    this.el.dataset.state = s.state;
    if (s.total > 0) { this.bar.max = s.total; this.bar.value = s.done; } else this.bar.removeAttribute("value");
    this.label.textContent = s.state === "running" ? s.label : s.state === "error" ? "failed" : s.label;
    this.time.textContent = `${s.elapsed.toFixed(1)} s` + (s.forwards ? ` · ${s.forwards} forward passes` : "");
    if (TERMINAL.includes(s.state)) {
      this.cancel.disabled = true;
      if (s.state === "done") { this.bar.max = 1; this.bar.value = 1; }
    }
  }
}

export async function runJob(body, view) {
  const sub = await api("POST", "/api/jobs", body);
  view.start(sub.id);
  const s = await follow(sub.id, (st) => view.update(st));
  if (s.state === "cancelled") throw new ApiError("cancelled", 409);
  if (s.state === "error") throw new ApiError(s.error || "the job failed", s.status || 400);
  return api("GET", `/api/jobs/${sub.id}/result`);
}

export function exportLinks(jobId, count, labels) {
  const out = h("div", { class: "exports" }, h("span", { class: "muted", text: "Export" }));
  for (let i = 0; i < count; i++) {
    const tag = labels && labels[i] ? ` ${labels[i]}` : "";
    out.append(
      h("a", { href: `/api/jobs/${jobId}/export?format=json&index=${i}`, download: "", text: `JSON${tag}` }),
      h("a", { href: `/api/jobs/${jobId}/export?format=html&index=${i}`, download: "", text: `HTML report${tag}` }));
  }
  return out;
}
