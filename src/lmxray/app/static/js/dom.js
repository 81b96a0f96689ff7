// DOM helpers: every piece of data goes in through textContent or setAttribute, never innerHTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") el.textContent = v;
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c) el.append(c);
  return el;
}

export function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }

// A token as shown: spaces and newlines made visible, the text itself untouched otherwise.
export function showToken(t) {
  return String(t).replace(/\n/g, "\u21b5").replace(/^ /, "\u2423").replace(/ $/, "\u2423") || "\u2205";
}

// Diverging colour for a signed value scaled by `scale` (red positive, blue negative).
export function diverging(v, scale) {
  if (v === null || v === undefined || Number.isNaN(v)) return "transparent";
  const x = Math.max(-1, Math.min(1, scale > 0 ? v / scale : 0));
  const a = Math.abs(x);
  return x >= 0 ? `rgba(214, 39, 40, ${(0.08 + 0.82 * a).toFixed(3)})`
                : `rgba(31, 119, 180, ${(0.08 + 0.82 * a).toFixed(3)})`;
}

// Sequential colour for a value in [lo, hi].
export function sequential(v, lo = 0, hi = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "transparent";
  const x = hi > lo ? Math.max(0, Math.min(1, (v - lo) / (hi - lo))) : 0;
  return `rgba(88, 80, 236, ${(0.05 + 0.85 * x).toFixed(3)})`;
}

export function fmt(v, digits = 3) {
  return v === null || v === undefined || Number.isNaN(v) ? "\u2014" : Number(v).toFixed(digits);
}

export function maxAbs(values) {
  let m = 0;
  for (const v of values) if (v !== null && v !== undefined && Math.abs(v) > m) m = Math.abs(v);
  return m;
}

// A grid (table) of coloured cells. opts: rows, cols (labels), value(r, c), color(v),
// label(r, c, v) (cell text), title(r, c, v), onClick(r, c), mark(r, c) (extra class).
export function grid(opts) {
  const head = h("tr", {}, h("th", { class: "corner", text: opts.corner || "" }),
    ...opts.cols.map((c) => h("th", { class: "col", text: showToken(c), title: String(c) })));
  const body = opts.rows.map((rlabel, r) => h("tr", {},
    h("th", { class: "row", text: String(rlabel) }),
    ...opts.cols.map((_, c) => {
      const v = opts.value(r, c);
      const td = h("td", {
        class: "cell" + (opts.mark && opts.mark(r, c) ? " marked" : "") + (opts.onClick ? " clickable" : ""),
        title: opts.title ? opts.title(r, c, v) : fmt(v),
        "data-row": r, "data-col": c, "data-value": v === null || v === undefined ? "" : String(v),
        style: { background: opts.color(v) },
        text: opts.label ? opts.label(r, c, v) : fmt(v, 2),
      });
      if (opts.onClick) td.addEventListener("click", () => opts.onClick(r, c));
      return td;
    })));
  return h("div", { class: "grid-wrap" }, h("table", { class: "grid " + (opts.cls || "") }, h("thead", {}, head), h("tbody", {}, body)));
}

export function formData(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name || el.type === "file" || el.type === "submit") continue;
    if (el.type === "checkbox") out[el.name] = el.checked;
    else if (el.type === "number") out[el.name] = el.value === "" ? undefined : Number(el.value);
    else out[el.name] = el.value;
  }
  return out;
}

export function fillForm(form, values) {
  for (const el of form.elements) {
    if (!el.name || !(el.name in values) || el.type === "file") continue;
    if (el.type === "checkbox") el.checked = values[el.name] === "1" || values[el.name] === "true";
    else el.value = values[el.name];
  }
}
