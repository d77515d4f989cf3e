// The run page: live curves while the run trains, then its evaluations, report, recipe and files.
"use strict";

const runName = new URLSearchParams(window.location.search).get("name") || "";
const runPath = `/api/runs/${encodeURIComponent(runName)}`;
const follower = new MetricsFollower(runName);
let details = null;
let chosenMetric = null;

function showMessage(text, kind) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = `message ${kind || ""}`;
}

function live() {
  const state = details && details.row ? details.row.state : "starting";
  return state === "running" || state === "starting" || (details && details.process.alive);
}

function drawCurves() {
  const curves = curvesOf(follower.lines);
  lineChart(document.getElementById("loss-chart"), [{label: "", points: curves.loss}],
            {xLabel: "optimizer step", yLabel: "loss", id: "loss-svg",
             empty: live() ? "no training loss logged yet" :
                    "no training loss in metrics.jsonl (the run had fewer steps than train.log_every_steps)"});
  const names = Object.keys(curves.validation);
  const select = document.getElementById("metric-select");
  const options = [...select.options].map(o => o.value);
  if (names.length && names.join() !== options.join()) {
    select.replaceChildren(...names.map(n => el("option", {value: n}, n.replace("validation_", ""))));
  }
  chosenMetric = names.includes(chosenMetric) ? chosenMetric : preferredMetric(names);
  if (chosenMetric) select.value = chosenMetric;
  lineChart(document.getElementById("validation-chart"),
            [{label: "", points: chosenMetric ? curves.validation[chosenMetric] : []}],
            {xLabel: "epoch", yLabel: (chosenMetric || "").replace("validation_", ""), id: "validation-svg",
             empty: "no validation yet (one point per epoch)"});
}

function renderFacts() {
  const row = details.row || {name: runName, state: "starting"};
  const status = details.status || {};
  document.getElementById("run-status").replaceChildren(statusBadge(row.state, row.note));
  const facts = [
    ["task", row.task], ["model", row.model], ["method", row.method],
    ["main metric", row.metric ? `${row.metric} = ${fmt(row.value, 4)}` : null],
    ["minutes", row.minutes === undefined || row.minutes === null ? null : fmt(row.minutes, 1)],
    ["integrity", row.checked], ["best epoch", status.best_epoch], ["started", row.started],
    ["trainable parameters", status.trainable_params ? status.trainable_params.toLocaleString() : null],
  ];
  if (status.error) facts.push(["error", status.error]);
  document.getElementById("facts").replaceChildren(...facts.map(([label, value]) =>
    el("div", {}, el("span", {}, label), value === null || value === undefined ? "–" : String(value))));
  document.getElementById("stop").classList.toggle("hidden", !row.can_stop);
  document.getElementById("resume").classList.toggle("hidden", !row.can_resume);
}

function fileUrl(path, download) {
  const encoded = path.split("/").map(encodeURIComponent).join("/");
  return `${runPath}/files/${encoded}${download ? "?download=1" : ""}`;
}

function renderEvaluations() {
  const container = document.getElementById("evaluations");
  container.replaceChildren(...details.evaluations.map(evaluation => {
    const metrics = Object.entries(evaluation.metrics);
    const parts = [el("h2", {}, `Evaluation: ${evaluation.split}`)];
    if (metrics.length) {
      parts.push(el("table", {class: "metrics"}, el("tbody", {}, metrics.map(([k, v]) =>
        el("tr", {}, el("th", {}, k), el("td", {class: "num"}, k === "n_examples" ? fmt(v) : fmt(v, 4)))))));
    }
    if (evaluation.confusion_matrix) {
      parts.push(el("h2", {}, "Confusion matrix"),
                 el("img", {class: "matrix", src: fileUrl(evaluation.confusion_matrix), alt: "confusion matrix"}));
    }
    if (evaluation.errors) {
      const {columns, rows} = evaluation.errors;
      parts.push(el("h2", {}, "Most confident errors ",
                    el("a", {href: fileUrl(evaluation.errors_file, true)}, "errors.csv")));
      parts.push(rows.length ? el("div", {class: "scroll"}, el("table", {class: "errors"},
        el("thead", {}, el("tr", {}, columns.map(c => el("th", {}, c)))),
        el("tbody", {}, rows.map(r => el("tr", {}, r.map(v => el("td", {}, v))))))) :
        el("p", {class: "muted"}, "no errors"));
    }
    return el("section", {class: "card", "data-split": evaluation.split}, parts);
  }));
}

function renderDetails() {
  renderFacts();
  renderEvaluations();
  const reportSection = document.getElementById("report-section");
  reportSection.classList.toggle("hidden", !details.report);
  const report = document.getElementById("report");
  if (details.report && !report.getAttribute("src")) {
    report.setAttribute("src", fileUrl("report.html"));
    document.getElementById("report-link").setAttribute("href", fileUrl("report.html"));
  }
  document.getElementById("recipe").textContent = details.config || "(no config.yaml yet)";
  document.querySelector("#files tbody").replaceChildren(...details.files.map(file =>
    el("tr", {}, el("td", {}, el("a", {href: fileUrl(file.path, true)}, file.path)),
       el("td", {class: "num"}, fmtBytes(file.bytes)))));
  document.getElementById("log-section").classList.toggle("hidden", !details.log);
  document.getElementById("log").textContent = details.log || "";
}

async function refreshDetails() {
  try {
    details = await api(runPath);
    renderDetails();
  } catch (error) {
    showMessage(error.message, "error");
  }
}

async function tick() {
  const wasLive = live();
  try {
    if (await follower.poll()) drawCurves();
  } catch (error) {
    if (error.status !== 404) showMessage(error.message, "error");
  }
  await refreshDetails();
  if (wasLive && !live()) {  // it just ended: the final lines and files are there now
    await follower.poll();
    drawCurves();
  }
}

async function act(action) {
  try {
    await postJSON(`${runPath}/${action}`, {});
    if (action === "resume") {  // the resumed run cuts metrics.jsonl back to its checkpoint: read it anew
      follower.offset = 0;
      follower.lines = [];
    }
    showMessage(action === "stop" ? "stopping: the run saves a checkpoint at the end of this optimizer step" :
                "resuming from the newest checkpoint", "ok");
    await refreshDetails();
  } catch (error) {
    showMessage(error.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("run-name").textContent = runName;
  document.title = `${runName} · tuneforge`;
  document.getElementById("compare-link").setAttribute("href", `/compare?runs=${encodeURIComponent(runName)}`);
  document.getElementById("stop").addEventListener("click", () => act("stop"));
  document.getElementById("resume").addEventListener("click", () => act("resume"));
  document.getElementById("metric-select").addEventListener("change", event => {
    chosenMetric = event.target.value;
    drawCurves();
  });
  await tick();
  drawCurves();
  const loop = async () => {
    if (live()) await tick();
    else await refreshDetails();  // a status written late, or a resume
    setTimeout(loop, live() ? 700 : 4000);
  };
  setTimeout(loop, 700);
});
