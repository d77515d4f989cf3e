// The compare page: two or more runs' curves overlaid, their metrics with differences, and the recipe keys
// that differ.
"use strict";

const chosen = new URLSearchParams(window.location.search).getAll("runs");
const followers = chosen.map(name => new MetricsFollower(name));
let comparison = null;
let chosenMetric = null;

function showError(text) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.classList.toggle("hidden", !text);
}

async function renderPicker() {
  const data = await api("/api/runs");
  const list = document.getElementById("picker-list");
  list.replaceChildren(...data.runs.filter(r => r.status).map(row =>
    el("label", {}, el("input", {type: "checkbox", value: row.name, checked: chosen.includes(row.name)}), " ",
       row.name, " ", el("span", {class: "muted"}, row.method || ""))));
  document.getElementById("picker-go").onclick = () => {
    const names = [...list.querySelectorAll("input:checked")].map(box => box.value);
    window.location.href = `/compare?${names.map(n => `runs=${encodeURIComponent(n)}`).join("&")}`;
  };
}

function drawCurves() {
  const curves = followers.map(f => curvesOf(f.lines));
  lineChart(document.getElementById("loss-chart"),
            curves.map((c, i) => ({label: chosen[i], points: c.loss})),
            {xLabel: "optimizer step", yLabel: "loss", id: "loss-svg"});
  const names = [...new Set(curves.flatMap(c => Object.keys(c.validation)))].sort();
  const select = document.getElementById("metric-select");
  if (names.join() !== [...select.options].map(o => o.value).join()) {
    select.replaceChildren(...names.map(n => el("option", {value: n}, n.replace("validation_", ""))));
  }
  chosenMetric = names.includes(chosenMetric) ? chosenMetric : preferredMetric(names);
  if (chosenMetric) select.value = chosenMetric;
  lineChart(document.getElementById("validation-chart"),
            curves.map((c, i) => ({label: chosen[i], points: (chosenMetric && c.validation[chosenMetric]) || []})),
            {xLabel: "epoch", yLabel: (chosenMetric || "").replace("validation_", ""), id: "validation-svg"});
}

function difference(value, reference) {
  if (typeof value !== "number" || typeof reference !== "number") return el("td", {class: "num"}, "–");
  const delta = value - reference;
  return el("td", {class: `num ${delta > 0 ? "diff-pos" : delta < 0 ? "diff-neg" : ""}`},
            `${delta > 0 ? "+" : ""}${fmt(delta, 4)}`);
}

function renderMetrics() {
  const runs = comparison.runs;
  const rows = [];
  for (const split of ["test", "validation"]) {
    const names = [...new Set(runs.flatMap(r => Object.keys(r[split])))].filter(n => n !== "n_examples").sort();
    for (const name of names) rows.push({split, name, values: runs.map(r => r[split][name])});
  }
  const header = el("tr", {}, el("th", {}, "split"), el("th", {}, "metric"),
                    runs.map(r => el("th", {class: "num"}, r.name)),
                    runs.slice(1).map(r => el("th", {class: "num"}, `Δ ${r.name} − ${runs[0].name}`)));
  document.getElementById("metrics").replaceChildren(el("thead", {}, header), el("tbody", {}, rows.map(row =>
    el("tr", {}, el("td", {}, row.split), el("td", {}, row.name),
       row.values.map(v => el("td", {class: "num"}, fmt(v, 4))),
       row.values.slice(1).map(v => difference(v, row.values[0]))))));
  const keys = comparison.differing_keys;
  const keyHeader = el("tr", {}, el("th", {}, "key"), runs.map(r => el("th", {}, r.name)));
  document.getElementById("differing").replaceChildren(el("thead", {}, keyHeader), el("tbody", {},
    keys.length ? keys.map(k => el("tr", {"data-key": k.key}, el("td", {}, el("code", {}, k.key)),
                                  k.values.map(v => el("td", {}, v === null ? "–" : JSON.stringify(v))))) :
                  el("tr", {}, el("td", {colspan: runs.length + 1, class: "muted"}, "the recipes are the same"))));
}

async function refresh() {
  try {
    comparison = await api(`/api/compare?${chosen.map(n => `runs=${encodeURIComponent(n)}`).join("&")}`);
    let changed = false;
    for (const follower of followers) changed = (await follower.poll()) || changed;
    if (changed) drawCurves();
    renderMetrics();
    document.getElementById("comparison").classList.remove("hidden");
    showError("");
  } catch (error) {
    showError(error.message);
  }
  const running = comparison && comparison.runs.some(r => ["running", "starting"].includes(r.row.state));
  setTimeout(refresh, running ? 1500 : 5000);
}

document.addEventListener("DOMContentLoaded", async () => {
  markCurrentPage("/compare");
  document.getElementById("metric-select").addEventListener("change", event => {
    chosenMetric = event.target.value;
    drawCurves();
  });
  await renderPicker();
  if (chosen.length >= 2) {
    await refresh();
    drawCurves();
  }
});
