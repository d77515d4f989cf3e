// The runs page: every run of the folder, sortable, filterable, refreshed every two seconds.
"use strict";

const COLUMNS = [
  {key: "name", label: "name"}, {key: "task", label: "task"}, {key: "model", label: "model"},
  {key: "method", label: "method"}, {key: "metric", label: "main metric"},
  {key: "value", label: "value", numeric: true}, {key: "minutes", label: "minutes", numeric: true},
  {key: "state", label: "status"}, {key: "checked", label: "integrity"}, {key: "started", label: "started"},
];
const view = {rows: [], sortKey: "started", descending: true, selected: new Set()};

function shortModel(model) {
  if (!model) return "–";
  return model.length > 38 ? "…" + model.slice(-37) : model;
}

function cell(row, column) {
  const value = row[column.key];
  if (column.key === "name") return el("td", {}, runLink(row.name));
  if (column.key === "state") return el("td", {}, statusBadge(row.state, row.note));
  if (column.key === "model") return el("td", {title: value || ""}, shortModel(value));
  if (column.key === "checked") {
    return el("td", {class: value === "failed" ? "diff-neg" : value === "passed" ? "diff-pos" : ""}, value || "–");
  }
  if (column.key === "value") return el("td", {class: "num"}, fmt(value, 4));
  if (column.key === "minutes") return el("td", {class: "num"}, fmt(value, 1));
  return el("td", {}, value === null || value === undefined ? "–" : String(value));
}

function compareValues(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;  // runs without the value go last either way
  if (b === null || b === undefined) return -1;
  return typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
}

function visibleRows() {
  const text = document.getElementById("filter").value.trim().toLowerCase();
  const status = document.getElementById("status-filter").value;
  let rows = view.rows.filter(row => {
    if (status && row.state !== status) return false;
    if (!text) return true;
    return ["name", "task", "model", "method", "metric", "state", "note"].some(
      key => String(row[key] || "").toLowerCase().includes(text));
  });
  rows = rows.slice().sort((a, b) => {
    const order = compareValues(a[view.sortKey], b[view.sortKey]);
    const missing = a[view.sortKey] === null || a[view.sortKey] === undefined ||
                    b[view.sortKey] === null || b[view.sortKey] === undefined;
    return view.descending && !missing ? -order : order;
  });
  return rows;
}

function renderHeader() {
  const header = document.getElementById("runs-header");
  header.replaceChildren(el("th", {}, ""), ...COLUMNS.map(column => {
    const sorted = view.sortKey === column.key ? (view.descending ? " sorted-desc" : " sorted-asc") : "";
    return el("th", {class: `sortable${sorted}${column.numeric ? " num" : ""}`, "data-key": column.key,
                     onclick: () => {
                       if (view.sortKey === column.key) view.descending = !view.descending;
                       else { view.sortKey = column.key; view.descending = false; }
                       render();
                     }}, column.label);
  }));
}

function render() {
  renderHeader();
  const rows = visibleRows();
  const body = document.getElementById("runs-body");
  body.replaceChildren(...rows.map(row => {
    const box = el("input", {type: "checkbox", "aria-label": `select ${row.name}`, checked: view.selected.has(row.name),
                             onchange: event => {
                               if (event.target.checked) view.selected.add(row.name);
                               else view.selected.delete(row.name);
                               updateCompareButton();
                             }});
    return el("tr", {"data-run": row.name, "data-state": row.state}, el("td", {}, box),
              ...COLUMNS.map(column => cell(row, column)));
  }));
  document.getElementById("count").textContent =
    `${rows.length} of ${view.rows.length} run${view.rows.length === 1 ? "" : "s"}`;
  document.getElementById("empty").hidden = view.rows.length > 0;
  updateCompareButton();
}

function updateCompareButton() {
  const known = new Set(view.rows.map(row => row.name));
  for (const name of [...view.selected]) if (!known.has(name)) view.selected.delete(name);
  document.getElementById("compare-selected").disabled = view.selected.size < 2;
}

async function refresh() {
  const message = document.getElementById("message");
  try {
    const data = await api("/api/runs");
    view.rows = data.runs;
    document.getElementById("runs-dir").textContent = data.runs_dir;
    message.classList.add("hidden");
    render();
  } catch (error) {
    message.textContent = `could not read the runs: ${error.message}`;
    message.classList.remove("hidden");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  markCurrentPage("/");
  document.getElementById("filter").addEventListener("input", render);
  document.getElementById("status-filter").addEventListener("change", render);
  document.getElementById("compare-selected").addEventListener("click", () => {
    const query = [...view.selected].map(name => `runs=${encodeURIComponent(name)}`).join("&");
    window.location.href = `/compare?${query}`;
  });
  refresh();
  setInterval(refresh, 2000);  // running runs update live
});
