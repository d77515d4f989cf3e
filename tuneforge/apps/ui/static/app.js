// tuneforge ui: helpers shared by the pages — JSON requests, building elements, and line charts in SVG.
// No library and nothing loaded from elsewhere: the dashboard works offline.
"use strict";

const COLORS = ["#2463c9", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];

async function api(path, options) {
  const response = await fetch(path, Object.assign({credentials: "same-origin"}, options || {}));
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.data = data;
    throw error;
  }
  return data;
}

function postJSON(path, body) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body || {})});
}

// el("a", {href: "/x", class: "y"}, "text", child): text is always text (never parsed as HTML).
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A number for a table: `digits` decimals when given (metrics: 4), else integers as they are and 4 decimals.
function fmt(value, digits) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value !== "number") return String(value);
  if (digits === undefined && Number.isInteger(value)) return String(value);
  return Math.abs(value) >= 1e5 ? value.toFixed(0) : value.toFixed(digits === undefined ? 4 : digits);
}

function fmtBytes(bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function statusBadge(state, note) {
  return el("span", {}, el("span", {class: `status status-${state}`, "data-state": state}, state),
            note ? el("span", {class: "status-note"}, note) : null);
}

function runLink(name) {
  return el("a", {href: `/run?name=${encodeURIComponent(name)}`}, name);
}

function markCurrentPage(path) {
  for (const link of document.querySelectorAll("header.top a[data-page]")) {
    if (link.dataset.page === path) link.classList.add("current");
  }
}

// A nice step for about `count` ticks over `span`.
function tickStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const scaled = raw / power;
  return (scaled < 1.5 ? 1 : scaled < 3 ? 2 : scaled < 7 ? 5 : 10) * power;
}

// Draw line series into `container` as one SVG:
// series = [{label, color, points: [[x, y], ...]}]; options = {xLabel, yLabel, width, height, id}.
function lineChart(container, series, options) {
  const o = Object.assign({width: 560, height: 260, xLabel: "", yLabel: ""}, options || {});
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", o.width);
  svg.setAttribute("height", o.height);
  svg.setAttribute("viewBox", `0 0 ${o.width} ${o.height}`);
  if (o.id) svg.setAttribute("id", o.id);
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  const margin = {left: 58, right: 14, top: 10, bottom: 38};
  const plotW = o.width - margin.left - margin.right, plotH = o.height - margin.top - margin.bottom;
  const all = series.flatMap(s => s.points).filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (!all.length) {
    add("text", {x: o.width / 2, y: o.height / 2, "text-anchor": "middle"}, o.empty || "no points yet");
    container.replaceChildren(svg);
    return svg;
  }
  let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
  let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 0.1; y0 -= pad; y1 += pad; }
  const yPad = (y1 - y0) * 0.05; y0 -= yPad; y1 += yPad;
  const sx = x => margin.left + (x - x0) / (x1 - x0) * plotW;
  const sy = y => margin.top + (1 - (y - y0) / (y1 - y0)) * plotH;
  const yStep = tickStep(y1 - y0, 5);
  for (let y = Math.ceil(y0 / yStep) * yStep; y <= y1; y += yStep) {
    add("line", {class: "grid", x1: margin.left, x2: margin.left + plotW, y1: sy(y), y2: sy(y)});
    add("text", {x: margin.left - 6, y: sy(y) + 4, "text-anchor": "end"}, +y.toPrecision(4));
  }
  const xStep = tickStep(x1 - x0, 6);
  for (let x = Math.ceil(x0 / xStep) * xStep; x <= x1; x += xStep) {
    add("line", {class: "axis", x1: sx(x), x2: sx(x), y1: margin.top + plotH, y2: margin.top + plotH + 4});
    add("text", {x: sx(x), y: margin.top + plotH + 16, "text-anchor": "middle"}, +x.toPrecision(4));
  }
  add("line", {class: "axis", x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH});
  add("line", {class: "axis", x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH, y2: margin.top + plotH});
  add("text", {x: margin.left + plotW / 2, y: o.height - 4, "text-anchor": "middle"}, o.xLabel);
  add("text", {x: 12, y: margin.top + plotH / 2, "text-anchor": "middle",
               transform: `rotate(-90 12 ${margin.top + plotH / 2})`}, o.yLabel);
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const points = s.points.filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    add("polyline", {class: "series", stroke: color, points: points.map(p => `${sx(p[0])},${sy(p[1])}`).join(" "),
                     "data-label": s.label || "", "data-count": points.length});
    if (points.length <= 40) {
      for (const p of points) add("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color});
    }
  });
  const wrapper = document.createElement("div");
  wrapper.append(svg);
  if (series.length > 1 || (series[0] && series[0].label)) {
    wrapper.append(el("div", {class: "legend"}, series.map((s, i) => {
      const swatch = el("i");
      swatch.style.background = s.color || COLORS[i % COLORS.length];  // CSSOM, allowed by the page's policy
      return el("span", {}, swatch, s.label || "");
    })));
  }
  container.replaceChildren(wrapper);
  return svg;
}

// The curves in a run's metrics.jsonl lines: training loss per logged step, validation metrics per epoch.
function curvesOf(lines) {
  const loss = [], validation = {};
  for (const line of lines) {
    if (typeof line.loss === "number" && typeof line.step === "number") loss.push([line.step, line.loss]);
    for (const [key, value] of Object.entries(line)) {
      if (key.startsWith("validation_") && key !== "validation_n_examples" && typeof value === "number") {
        (validation[key] = validation[key] || []).push([line.epoch, value]);
      }
    }
  }
  return {loss, validation};
}

function preferredMetric(names) {
  for (const name of ["validation_f1_macro", "validation_accuracy", "validation_loss", "validation_perplexity"]) {
    if (names.includes(name)) return name;
  }
  return names.sort()[0] || null;
}

// Follows a run's metrics.jsonl from the server, byte offset by byte offset.
class MetricsFollower {
  constructor(name) { this.name = name; this.offset = 0; this.lines = []; }
  async poll() {
    const data = await api(`/api/runs/${encodeURIComponent(this.name)}/metrics?offset=${this.offset}`);
    if (data.reset) this.lines = [];  // a resume cut the log back to its checkpoint
    this.lines.push(...data.lines);
    this.offset = data.offset;
    return data.lines.length > 0 || data.reset;
  }
}
