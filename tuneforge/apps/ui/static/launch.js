// The launch page: a recipe file and/or model, data, method and overrides; validate (errors beside their
// field), plan (memory and time), start. A started run opens on its own page, where it can be stopped.
"use strict";

const FIELDS = ["recipe", "model", "data", "method", "overrides"];
let checked = false;

function form() {
  const values = {};
  for (const name of FIELDS) values[name] = document.getElementById(name).value;
  return values;
}

function clearErrors() {
  for (const name of FIELDS) document.getElementById(`error-${name}`).textContent = "";
}

function showFieldErrors(errors) {
  for (const [name, lines] of Object.entries(errors || {})) {
    const target = document.getElementById(`error-${name}`) || document.getElementById("error-recipe");
    target.textContent = lines.join("\n");
  }
}

function show(id, text, kind) {
  const node = document.getElementById(id);
  node.replaceChildren(...(Array.isArray(text) ? text : [text]));
  node.className = `${id === "plan-result" ? "plan-box" : "message"} ${kind || ""}`;
}

function hide(id) { document.getElementById(id).classList.add("hidden"); }

function setChecked(value) {
  checked = value;
  document.getElementById("start").disabled = !value;
  document.getElementById("start-hint").textContent = value ? "" : "check the form first";
}

function failed(error, where) {
  if (error.data && error.data.errors) {
    showFieldErrors(error.data.errors);
    show(where, "see the messages beside the fields", "error");
  } else {
    show(where, error.message, "error");
  }
}

async function check() {
  clearErrors();
  hide("plan-result");
  show("check-result", "checking the recipe, its data and model…");
  try {
    const {job} = await postJSON("/api/validate", form());
    const rows = job.rows;
    show("check-result", `valid: ${job.name} — task ${job.task}, ` +
         `${job.labels ? job.labels + " labels, " : ""}train ${rows.train}, validation ${rows.validation}, ` +
         `test ${rows.test} rows; model ${job.model} (${job.model_type}); method ${job.method}; ` +
         `${job.epochs} epoch(s)` + (job.notes.length ? "\n" + job.notes.map(n => `note: ${n}`).join("\n") : ""),
         "ok");
    setChecked(true);
    return true;
  } catch (error) {
    failed(error, "check-result");
    setChecked(false);
    return false;
  }
}

async function plan() {
  clearErrors();
  show("plan-result", "estimating: the model runs a few training steps in a separate process (nothing is saved)…");
  try {
    const {plan} = await postJSON("/api/plan", form());
    const lines = [
      el("div", {}, el("b", {}, `${plan.method}: peak memory ≈ ${plan.peak_gb.toFixed(2)} GB, ` +
                   `≈ ${plan.minutes_per_epoch.toFixed(1)} min per epoch, ≈ ${plan.minutes.toFixed(1)} min for ` +
                   `${plan.epochs} epoch(s)`)),
      el("div", {class: "muted"}, `${plan.trainable_params.toLocaleString()} of ${plan.total_params.toLocaleString()} ` +
                                  `parameters trained; on ${plan.device} (this machine: times measured)`),
      ...plan.explanation.map(line => el("div", {}, line)),
    ];
    show("plan-result", lines);
  } catch (error) {
    failed(error, "plan-result");
  }
}

async function start() {
  if (!checked && !(await check())) return;
  document.getElementById("start").disabled = true;
  show("message", "starting…");
  try {
    const {run} = await postJSON("/api/launch", form());
    show("message", ["started ", runLink(run)], "ok");
    window.location.href = `/run?name=${encodeURIComponent(run)}`;
  } catch (error) {
    failed(error, "message");
    setChecked(false);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  markCurrentPage("/launch");
  const choices = await api("/api/launch");
  document.getElementById("recipe").append(...choices.recipes.map(r => el("option", {value: r.id}, r.label)));
  document.getElementById("method").append(...choices.methods.map(m => el("option", {value: m}, m)));
  document.getElementById("aliases").append(...choices.aliases.map(a => el("option", {value: a})));
  document.getElementById("folders").textContent =
    `recipes from ${choices.recipe_dirs.join(", ") || "(no folder given: use --recipes DIR)"}; ` +
    `runs go to ${choices.runs_dir}`;
  // /launch?recipe=ID[&check=1]: a link to a recipe, checked at once (the docs' screenshot uses it)
  const query = new URLSearchParams(window.location.search);
  if (query.get("recipe")) document.getElementById("recipe").value = query.get("recipe");
  for (const name of FIELDS) {
    document.getElementById(name).addEventListener("input", () => setChecked(false));
  }
  document.getElementById("check").addEventListener("click", check);
  document.getElementById("plan").addEventListener("click", plan);
  document.getElementById("start").addEventListener("click", start);
  document.getElementById("launch-form").addEventListener("submit", event => event.preventDefault());
  if (query.get("check")) check();
});
