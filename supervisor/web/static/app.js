// ml-supervisor web page: launch a template, watch a job, list jobs and GPUs.
// No framework and no build step (the daemon ships this file as is). Every value
// from the API is put in the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "ml-supervisor-token";
const LOG_TAIL = 64 * 1024;
const TERMINAL = new Set(["completed", "failed", "stopped"]);
// Start-up chatter of Lightning, PyTorch and W&B that buries the lines a person looks for (the last
// error, the last progress line). The page hides whole lines that match, unless "show everything" is on;
// the log files keep everything.
const LOG_NOISE = [
  /^(GPU|TPU|HPU|IPU) available: /,
  /^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES/,
  /\bTip: /, // Lightning's "💡 Tip: ..." advertisements
  /^wandb: (?!ERROR)/, // W&B's prefixed start-up and sync lines (its errors stay)
  /^\/?\S+\.py:\d+: /, // Python warnings (and Lightning's rank_zero_warn): "path/file.py:123: ..."
  /^\s*\|\s*Name\s*\|/, /^-{5,}\s*$/, /^\d+\s*\|\s*\S+\s*\|/, // the model summary table
  /^\s*[\d.]+\s*[KMGT]?\s+(Trainable params|Non-trainable params|Total params|Total estimated model params size|Modules in (train|eval) mode)/i,
  /^Seed set to \d+/,
  /torch\.set_float32_matmul_precision/,
  /^`Trainer\(.*\)` was configured/,
  /^Using (16bit|bfloat16|16-mixed|bf16)/,
];

function isLogNoise(line) {
  return LOG_NOISE.some((pattern) => pattern.test(line));
}

// The lines of a log chunk without the noise: a matched line and the indented lines right after it
// (a warning's "  warnings.warn(" source line). Returns [kept text, hidden line count].
function filterLogNoise(text) {
  const kept = [];
  let hidden = 0, inNoise = false;
  for (const line of text.split("\n")) {
    if (isLogNoise(line) || (inNoise && /^\s+\S/.test(line))) { hidden += 1; inNoise = true; continue; }
    inNoise = false;
    kept.push(line);
  }
  return [kept.join("\n"), hidden];
}

const SERIES_COLOURS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];

// -- the token: taken from the URL fragment once, then kept for this tab and sent as a header ----------
(function takeTokenFromFragment() {
  const match = location.hash.match(/^#token=([A-Za-z0-9_\-]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, match[1]);
    history.replaceState(null, "", location.pathname + "#/launch");
  }
})();

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.fields = error.fields || {};
  }
}

async function api(method, path, body) {
  const headers = { "Authorization": `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new ApiError(response.status, (data && data.error) || {});
    if (response.status === 401) showTokenPrompt(error.message);
    throw error;
  }
  return data;
}

// -- tiny DOM helpers ---------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "style") Object.assign(el.style, value); // CSSOM: allowed by the page's CSP, unlike style=""
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function badge(state) {
  return h("span", { class: `badge state-${state}`, "data-testid": "state" }, state);
}

function fmtTime(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const d = Math.floor(seconds / 86400), hh = Math.floor((seconds % 86400) / 3600);
  const mm = Math.floor((seconds % 3600) / 60), ss = seconds % 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${String(mm).padStart(2, "0")}m`;
  if (mm) return `${mm}m ${String(ss).padStart(2, "0")}s`;
  return `${ss}s`;
}

function fmtNumber(x) {
  if (x === null || x === undefined) return "–";
  if (Number.isInteger(x)) return String(x);
  return Math.abs(x) >= 1000 || Math.abs(x) < 0.001 ? x.toExponential(3) : x.toPrecision(4);
}

function basename(path) {
  return path ? path.split("/").pop() : "–";
}

// "41 it/s", "2.5 it/s", or "3.2 s/it" below a step a second (as tqdm and supervisorctl write them)
function fmtRate(stepsPerS) {
  if (!stepsPerS) return "– it/s";
  if (stepsPerS >= 10) return `${Math.round(stepsPerS)} it/s`;
  if (stepsPerS >= 1) return `${stepsPerS.toFixed(1)} it/s`;
  return `${(1 / stepsPerS).toFixed(1)} s/it`;
}

// status --json's progress as a bar and its numbers: "68% · 41 it/s · ETA 2h 13m" (the budget's share when
// nothing else bounds the run; "budget ends first" when it ends before the target)
function progressCell(progress) {
  const p = progress || {};
  const known = p.percent !== null && p.percent !== undefined;
  const share = known ? `${Math.round(p.percent)}%${p.target_from === "budget" ? " of budget" : ""}` : "?";
  const eta = p.eta_s !== null && p.eta_s !== undefined
    ? `ETA ${fmtDuration(p.eta_s)}${p.ends_by === "budget" && p.target_from !== "budget" ? " · budget ends first" : ""}` : null;
  const target = p.target_step !== null && p.target_step !== undefined && p.target_from !== "budget"
    ? `step ${p.step} of ${p.target_step}` : null;
  return h("div", { class: "progress", "data-testid": "progress", title: target || "" },
    h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": known ? Math.round(p.percent) : null },
      h("div", { class: "fill", style: { width: `${known ? Math.min(100, Math.max(0, p.percent)) : 0}%` } })),
    h("span", { class: "numbers" }, [share, fmtRate(p.steps_per_s), eta].filter(Boolean).join(" · ")));
}

// time lost to faults: "3m 12s (4.2% of the run): downtime 2m 01s, 310 steps redone"
function lostText(progress) {
  const p = progress || {};
  if (!p.lost_s) return "none";
  const share = p.lost_share !== null && p.lost_share !== undefined ? ` (${(100 * p.lost_share).toFixed(1)}% of the run)` : "";
  return `${fmtDuration(p.lost_s)}${share}: downtime ${fmtDuration(p.downtime_s)}, ${p.recomputed_steps} steps redone`;
}

// -- views: one at a time; each registers its timers so navigation stops them -----------------------
const main = document.getElementById("main");
let timers = [];
let viewId = 0;

function every(ms, fn) {
  const mine = viewId;
  let handle = null;
  const run = async () => {
    if (mine !== viewId) return;
    try { await fn(); } catch (err) { if (!(err instanceof ApiError)) console.error(err); }
    if (mine === viewId) { handle = setTimeout(run, typeof ms === "function" ? ms() : ms); timers.push(handle); }
  };
  run();
}

function route() {
  viewId += 1;
  timers.forEach(clearTimeout);
  timers = [];
  const hash = location.hash || "#/launch";
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === parts[0]));
  main.replaceChildren();
  if (!sessionStorage.getItem(TOKEN_KEY)) { showTokenPrompt(); return; }
  try {
    if (parts[0] === "sweeps" && parts[1] === "new") sweepLaunchView().catch(showError);
    else if (parts[0] === "sweeps" && parts[1]) sweepView(parts[1]);
    else if (parts[0] === "sweeps") sweepsView();
    else if (parts[0] === "jobs" && parts[1]) jobView(parts[1]);
    else if (parts[0] === "jobs") jobsView();
    else launchView(parts[1]).catch(showError);
  } catch (err) { showError(err); }
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401) return; // the token prompt is showing
  main.replaceChildren(h("section", { class: "card" }, h("p", { class: "error" }, err.message || String(err))));
}

function showTokenPrompt(message) {
  viewId += 1;
  timers.forEach(clearTimeout);
  const input = h("input", { type: "password", id: "token", autocomplete: "off", size: 50 });
  main.replaceChildren(h("section", { class: "card narrow" },
    h("h1", {}, "Token needed"),
    h("p", {}, message || "Open the address the daemon printed at start; `supervisorctl web-url` prints it again."),
    h("form", { onsubmit: (ev) => { ev.preventDefault(); sessionStorage.setItem(TOKEN_KEY, input.value.trim()); route(); } },
      h("label", { for: "token" }, "Token "), input, " ", h("button", { type: "submit" }, "Use"))));
}

// -- launch page ------------------------------------------------------------------------------------
async function launchView(chosen) {
  const mine = viewId;
  const templates = await api("GET", "/api/templates");
  if (mine !== viewId) return; // navigated away while the templates loaded (it would draw over the new view)
  const section = h("section", { class: "card" }, h("h1", {}, "Launch a training run"));
  main.replaceChildren(section);
  if (!templates.length) {
    section.append(h("p", {}, "No templates: put a job config with a ui: section in the daemon's template folder."));
    return;
  }
  const usable = templates.filter((t) => !t.error);
  const current = templates.find((t) => t.name === chosen) || usable[0] || templates[0];
  const picker = h("select", { id: "template", name: "template", "data-testid": "template",
    onchange: (ev) => { location.hash = `#/launch/${encodeURIComponent(ev.target.value)}`; } },
    templates.map((t) => h("option", { value: t.name, selected: t.name === current.name },
      t.error ? `${t.title} (${t.file}: invalid)` : `${t.title} (${t.file})`)));
  section.append(h("div", { class: "field" }, h("label", { for: "template" }, "Template"), picker));
  if (current.description) section.append(h("p", { class: "muted" }, current.description));
  if (current.error) {
    section.append(h("p", { class: "error" }, current.error));
    return;
  }
  const formError = h("p", { class: "error", id: "form-error", role: "alert" });
  const inputs = new Map();
  const errors = new Map();
  const fields = current.knobs.map((knob) => {
    const id = `knob-${knob.key.replace(/[^A-Za-z0-9_-]/g, "-")}`;
    const input = knobInput(knob, id);
    const error = h("div", { class: "field-error", "data-error-for": knob.key, role: "alert" });
    input.addEventListener("input", () => { error.textContent = ""; }); // a changed value: the old error is stale
    inputs.set(knob.key, { knob, input });
    errors.set(knob.key, error);
    return h("div", { class: "field" },
      h("label", { for: id }, knob.label),
      input,
      knob.help ? h("div", { class: "help muted" }, knob.help) : null,
      error);
  });
  const nameInput = h("input", { id: "job-name", name: "name", type: "text", placeholder: "(the config's name)",
    pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}" });
  const nameError = h("div", { class: "field-error", "data-error-for": "name", role: "alert" });
  errors.set("name", nameError);
  const start = h("button", { type: "submit", id: "start", class: "primary" }, "Start");
  const form = h("form", { id: "launch", novalidate: true, onsubmit: async (ev) => {
    ev.preventDefault();
    errors.forEach((el) => { el.textContent = ""; });
    formError.textContent = "";
    const values = {};
    let bad = false;
    for (const [key, { knob, input }] of inputs) {
      try { values[key] = readKnob(knob, input); } catch (err) { errors.get(key).textContent = err.message; bad = true; }
    }
    if (bad) return;
    start.disabled = true;
    start.textContent = "Checking…";
    try {
      const body = { template: current.name, values };
      if (nameInput.value.trim()) body.name = nameInput.value.trim();
      const job = await api("POST", "/api/launch", body);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      let shown = false;
      for (const [key, message] of Object.entries(err.fields || {})) {
        const el = errors.get(key);
        if (el) { el.textContent = message; shown = true; }
      }
      if (!shown) formError.textContent = err.message;
      start.disabled = false;
      start.textContent = "Start";
    }
  } },
  h("div", { class: "grid" }, fields,
    h("div", { class: "field" }, h("label", { for: "job-name" }, "Job name (optional)"), nameInput, nameError)),
  formError,
  h("div", { class: "actions" }, start,
    h("span", { class: "muted" }, " The config is validated (schema and imports) before the job is queued.")));
  section.append(form);
  section.append(inspectPanel(current, () => {
    const values = {};
    let bad = false;
    errors.forEach((el) => { el.textContent = ""; });
    for (const [key, { knob, input }] of inputs) {
      try { values[key] = readKnob(knob, input); } catch (err) { errors.get(key).textContent = err.message; bad = true; }
    }
    return bad ? null : values;
  }, errors));
  main.append(gpuPanel());
}

// -- "Inspect" on the launch page: the data samples and the model table for the chosen values, before Start
function inspectPanel(template, readValues, errors) {
  const out = h("div", { class: "inspect-out", "data-testid": "inspect-out", "aria-live": "polite" });
  const buttons = [];
  const run = async (what) => {
    const values = readValues();
    if (values === null) return;
    buttons.forEach((b) => { b.disabled = true; });
    const doing = what === "lr" ? "Running the learning-rate finder (100 steps" : `Inspecting the ${what} (`;
    out.replaceChildren(h("p", { class: "muted" }, `${doing}; a child process on the CPU; the first look loads torch)…`));
    try {
      const result = await api("POST", "/api/inspect", { template: template.name, values, what });
      out.replaceChildren(what === "data" ? dataView(result) : what === "lr" ? lrView(result) : modelView(result));
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      for (const [key, message] of Object.entries(err.fields || {})) {
        const el = errors.get(key);
        if (el) el.textContent = message;
      }
      out.replaceChildren(h("p", { class: "error", role: "alert" }, err.message));
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  buttons.push(h("button", { type: "button", id: "inspect-data", onclick: () => run("data") }, "Inspect data"),
    h("button", { type: "button", id: "inspect-model", onclick: () => run("model") }, "Inspect model"),
    h("button", { type: "button", id: "inspect-lr", onclick: () => run("lr") }, "Suggest a learning rate"));
  return h("div", { class: "inspect" }, h("h2", {}, "Look before you train"),
    h("div", { class: "actions" }, ...buttons,
      h("span", { class: "muted" }, " Samples of the training data, the layers, parameters and FLOPs of one batch, or the learning-rate finder's suggestions, for the values above.")),
    out);
}

function dataView(result) {
  const r = result.report;
  const facts = [
    `items per split: ${Object.entries(r.num_items).map(([k, v]) => `${k} ${v ?? "?"}`).join(", ")}`,
    ...Object.entries(r.batch_shapes).map(([k, shape]) => `${k}: batch shape [${(shape || []).join(", ")}], ${r.dtypes[k]}, shown as ${r.kinds[k]}`),
    r.label_counts ? `label counts (${r.label_counts_items} items): ${Object.entries(r.label_counts).map(([k, v]) => `${k}: ${v}`).join(", ")}`
      : "no class labels in the batches",
  ];
  return h("div", {},
    h("p", { class: "muted" }, `${r.n} ${r.split} samples${result.cached ? " (cached)" : ""}`),
    result.image ? h("img", { src: result.image, alt: `${r.n} samples of the ${r.split} split`, class: "samples", "data-testid": "samples-image" }) : null,
    h("ul", { class: "facts" }, facts.map((f) => h("li", {}, f))));
}

function modelView(result) {
  const r = result.report;
  const shape = (x) => (x === null || x === undefined ? "?" : JSON.stringify(x));
  return h("div", {},
    h("table", { class: "layers", "data-testid": "model-table" },
      h("thead", {}, h("tr", {}, ["Name", "Type", "Params", "Trainable", "Out sizes", "FLOPs"].map((t) =>
        h("th", { class: ["Params", "Trainable", "FLOPs"].includes(t) ? "num" : null }, t)))),
      h("tbody", {}, r.layers.map((l) => h("tr", {},
        h("td", {}, l.name), h("td", {}, l.type), h("td", { class: "num" }, fmtCount(l.params)),
        h("td", { class: "num" }, fmtCount(l.trainable)), h("td", {}, shape(l.output_shape)), h("td", { class: "num" }, fmtCount(l.flops)))))),
    h("p", { "data-testid": "model-totals" },
      `${fmtCount(r.total_params)} parameters (${fmtCount(r.trainable_params)} trainable) · `,
      `${fmtCount(r.flops)}FLOPs for one forward of a batch of ${r.batch_size} · input ${shape(r.input_shape)} → output ${shape(r.output_shape)}`,
      result.cached ? " (cached)" : ""));
}

// the learning-rate finder: its plot, every rule's rate (the default marked), the warnings, the override to use
function lrView(result) {
  const r = result.report;
  const rate = (x) => Number(x).toPrecision(3).replace(/\.?0+(e|$)/, "$1");
  const rows = r.suggestions.map((s) => h("tr", { class: s.default ? "default" : null },
    h("td", {}, s.default ? `${s.rule} (default)` : s.rule), h("td", { class: "num" }, rate(s.lr)),
    h("td", {}, s.description + (s.before_descent ? " · before the loss falls" : ""))));
  if (r.config_lr !== null && r.config_lr !== undefined) {
    rows.push(h("tr", {}, h("td", {}, "config"), h("td", { class: "num" }, rate(r.config_lr)), h("td", {}, "the rate set above")));
  }
  return h("div", {},
    r.suggested_lr !== null
      ? h("p", { "data-testid": "lr-suggestion" }, "Suggested learning rate: ", h("strong", {}, rate(r.suggested_lr)),
        ` (${r.default_rule}, the middle of valley, steepest_descent and minimum_div_10)${result.cached ? " (cached)" : ""}`)
      : h("p", { class: "error", role: "alert", "data-testid": "lr-suggestion" }, `No suggestion: ${r.reason}`),
    r.warnings.length ? h("ul", { class: "facts" }, r.warnings.map((w) => h("li", {}, `warning: ${w}`))) : null,
    h("table", { class: "layers", "data-testid": "lr-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Rule"), h("th", { class: "num" }, "Rate"), h("th", {}, ""))),
      h("tbody", {}, rows)),
    r.override ? h("p", { class: "muted" }, `Use it with ${r.override}, or run ml-supervisor tune lr CONFIG --verify to compare short fits.`) : null,
    result.image ? h("img", { src: result.image, alt: "loss against learning rate", class: "plot", "data-testid": "lr-plot" }) : null);
}

function fmtCount(n) {
  for (const [unit, scale] of [["T", 1e12], ["G", 1e9], ["M", 1e6], ["K", 1e3]]) {
    if (Math.abs(n) >= scale) return `${(n / scale).toFixed(1)} ${unit}`;
  }
  return String(n);
}

function knobInput(knob, id) {
  const common = { id, name: knob.key, "data-key": knob.key };
  if (knob.type === "choice") {
    return h("select", common, knob.choices.map((choice, i) =>
      h("option", { value: String(i), selected: JSON.stringify(choice) === JSON.stringify(knob.default) }, knob.labels[i])));
  }
  if (knob.type === "bool") {
    return h("select", common,
      h("option", { value: "true", selected: knob.default === true }, "on"),
      h("option", { value: "false", selected: knob.default !== true }, "off"));
  }
  if (knob.type === "int" || knob.type === "float") {
    return h("input", { ...common, type: "number", value: knob.default ?? "", min: knob.min ?? null, max: knob.max ?? null,
      step: knob.step ?? (knob.type === "int" ? 1 : "any") });
  }
  return h("input", { ...common, type: "text", value: knob.default ?? "", pattern: knob.pattern || null });
}

function readKnob(knob, input) {
  if (knob.type === "choice") return knob.choices[Number(input.value)];
  if (knob.type === "bool") return input.value === "true";
  if (knob.type === "int" || knob.type === "float") {
    if (input.value.trim() === "") throw new Error("a number is required");
    const value = Number(input.value);
    if (!Number.isFinite(value)) throw new Error("must be a number");
    if (knob.type === "int" && !Number.isInteger(value)) throw new Error("must be a whole number");
    return value;
  }
  return input.value;
}

// -- GPU panel ------------------------------------------------------------------------------------
function gpuPanel() {
  const body = h("div", { class: "gpus", "data-testid": "gpus" }, "…");
  const panel = h("section", { class: "panel" }, h("h2", {}, "GPUs"), body);
  every(5000, async () => {
    const answer = await api("GET", "/api/gpus");
    if (!answer.nvml || !answer.gpus.length) {
      body.replaceChildren(h("p", { class: "muted wide" }, answer.nvml ? "no GPUs" : "no GPUs (NVML is not available on this node)"));
      return;
    }
    body.replaceChildren(...answer.gpus.map((g) => {
      const used = g.memory_used_mib, total = g.memory_total_mib;
      const pct = used !== null && total ? Math.round((100 * used) / total) : null;
      return h("div", { class: `gpu health-${g.health}` },
        h("div", { class: "gpu-head" }, h("strong", {}, `GPU ${g.index}`), " ", h("span", { class: "muted" }, g.name || ""),
          " ", h("span", { class: `badge gpu-${g.health}` }, g.health)),
        h("div", {}, `${g.temperature_c ?? "–"} °C · ${used ?? "–"} / ${total ?? "–"} MiB`),
        pct === null ? null : h("div", { class: "bar" }, h("div", { class: "fill", style: { width: `${pct}%` } })),
        gpuPerformance(g.performance || {}),
        g.reasons && g.reasons.length ? h("div", { class: "error" }, g.reasons.join("; ")) : null,
        g.jobs && g.jobs.length ? h("div", {}, "jobs: ", g.jobs.map((j) => h("a", { href: `#/jobs/${encodeURIComponent(j)}` }, j, " "))) : null);
    }));
  });
  return panel;
}

// What explains a slow GPU (a straggler's): clocks against their maximum, power, the PCIe link, throttle reasons.
function gpuPerformance(perf) {
  const facts = [
    perf.sm_clock_mhz != null ? `${perf.sm_clock_mhz}/${perf.sm_clock_max_mhz ?? "–"} MHz` : null,
    perf.power_w != null ? `${Math.round(perf.power_w)}/${perf.power_limit_w != null ? Math.round(perf.power_limit_w) : "–"} W` : null,
    perf.pcie_width != null ? `PCIe gen${perf.pcie_gen ?? "?"} x${perf.pcie_width} (max gen${perf.pcie_gen_max ?? "?"} x${perf.pcie_width_max ?? "?"})` : null,
  ].filter(Boolean);
  const throttled = (perf.throttle_reasons || []).filter((r) => r !== "gpu_idle");
  if (!facts.length && !throttled.length) return null;
  return h("div", { class: "gpu-perf", "data-testid": "gpu-performance" },
    facts.length ? h("div", { class: "muted" }, facts.join(" · ")) : null,
    throttled.length ? h("div", { class: "error" }, `throttled: ${throttled.join(", ")}`) : null);
}

// -- jobs list -------------------------------------------------------------------------------------
// The active jobs (their full status: progress bars) on every page, then the finished ones 50 at a time, the
// latest to end first (store summaries: a finished job shows its end, not a bar). A daemon of months holds
// thousands of finished jobs: the page asks for one page of them, never all.
const JOBS_PAGE = 50;

function finishedCell(j) {
  return h("div", { class: "muted small", "data-testid": "finished" },
    `${j.end_reason || j.state}${j.pruned_at ? " · pruned" : ""}`, j.ended_at ? ` · ${fmtTime(j.ended_at)}` : "");
}

function jobsView() {
  const tbody = h("tbody");
  const pager = h("div", { class: "pager", "data-testid": "pager" });
  let offset = 0;
  main.replaceChildren(
    h("section", { class: "card" }, h("h1", {}, "Jobs"),
      h("table", { class: "jobs", "data-testid": "jobs" },
        h("thead", {}, h("tr", {}, ["Job", "State", "Progress", "Step", "Restarts", "Budget left", "Best", "Created"].map((t, i) =>
          h("th", { class: i >= 3 && i <= 6 ? "num" : null }, t)))),
        tbody),
      pager),
    gpuPanel());
  const refresh = async () => {
    const page = await api("GET", `/api/jobs-page?limit=${JOBS_PAGE}&offset=${offset}`);
    const active = page.jobs.slice(0, page.active).sort((a, b) => b.created_at - a.created_at);
    const jobs = [...active, ...page.jobs.slice(page.active)];
    const finished = page.finished;
    if (!jobs.length && offset > 0 && finished.total > 0) { offset = Math.max(0, finished.total - JOBS_PAGE); return refresh(); }
    renderPager(finished);
    if (!jobs.length) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "no jobs yet: ", h("a", { href: "#/launch" }, "launch one"))));
      return;
    }
    tbody.replaceChildren(...jobs.map((j) => h("tr", {},
      h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id)),
      h("td", {}, badge(j.state), j.wait_reason ? h("div", { class: "muted small" }, j.wait_reason) : null),
      h("td", { class: "progress-cell" }, j.summary ? finishedCell(j) : progressCell(j.progress)),
      h("td", { class: "num" }, j.global_step ?? "–"),
      h("td", { class: "num" }, j.restarts),
      h("td", { class: "num" }, j.budget.remaining === null ? "no budget" : fmtDuration(j.budget.remaining)),
      h("td", { class: "num" }, j.best_checkpoint && j.best_checkpoint.score !== null && j.best_checkpoint.score !== undefined
        ? `${j.best_checkpoint.monitor || "score"} ${fmtNumber(j.best_checkpoint.score)}` : "–"),
      h("td", {}, fmtTime(j.created_at)))));
  };
  const go = (to) => { offset = Math.max(0, to); refresh().catch(showError); };
  function renderPager(finished) {
    if (finished.total <= JOBS_PAGE && offset === 0) { pager.replaceChildren(); return; }
    const first = finished.shown ? offset + 1 : 0;
    pager.replaceChildren(
      h("button", { "data-testid": "newer", disabled: offset === 0, onclick: () => go(offset - JOBS_PAGE) }, "← Newer"),
      h("span", { class: "muted", "data-testid": "page-range" },
        ` finished jobs ${first.toLocaleString()}–${(offset + finished.shown).toLocaleString()} of ${finished.total.toLocaleString()} `),
      h("button", { "data-testid": "older", disabled: offset + finished.shown >= finished.total, onclick: () => go(offset + JOBS_PAGE) }, "Older →"));
  }
  every(2000, refresh);
}

// -- one job ---------------------------------------------------------------------------------------
function jobView(jobId) {
  const head = h("div", { class: "job-head" });
  const summary = h("dl", { class: "summary" });
  const timeline = h("div", { class: "timeline" });
  const attemptsBody = h("tbody");
  const metricPicker = h("select", { id: "metric", "aria-label": "metric" });
  const chart = h("div", { class: "chart", "data-testid": "chart" });
  const logBox = h("pre", { class: "log", "data-testid": "log" });
  const logAll = h("input", { type: "checkbox", id: "log-all" });
  const logHidden = h("span", { class: "muted small", id: "log-hidden" });
  const eventsList = h("ol", { class: "events" });
  // the profiler's report (trainer.profiler), shown once an attempt has written one
  const profileBox = h("section", { class: "card", id: "profile", hidden: true });
  let profileShown = null;
  main.replaceChildren(
    h("section", { class: "card" }, head, summary),
    h("section", { class: "card" }, h("div", { class: "row" }, h("h2", {}, "Curve"), metricPicker), chart),
    h("section", { class: "card" }, h("h2", {}, "Attempts"), timeline,
      h("table", { class: "attempts" }, h("thead", {}, h("tr", {},
        ["#", "Started", "Ended", "Ran", "Cause", "Detail", "Resumed from", "Steps", "New ckpts"].map((t) =>
          h("th", { class: ["Ran", "Steps", "New ckpts"].includes(t) ? "num" : null }, t)))),
      attemptsBody)),
    h("section", { class: "card" }, h("div", { class: "row" }, h("h2", {}, "Log tail"), logHidden, h("span", { class: "spacer" }),
      h("label", { class: "muted small", for: "log-all" }, logAll, " show everything")), logBox),
    profileBox,
    h("section", { class: "card" }, h("h2", {}, "Events"), eventsList));

  let status = null;
  // curve state: every point read so far, and where to read on
  const points = [];
  let cursor = { attempt: 0, offset: 0 };
  let chosenMetric = null;
  metricPicker.addEventListener("change", () => { chosenMetric = metricPicker.value; drawCurve(); });
  // log state: the attempt being followed and the offsets read
  let logAttempt = null;
  let logOffsets = null;
  let logChunks = []; // [stream, text], oldest first, trimmed to LOG_TAIL characters
  let lastEvent = 0;
  let lastCheckpoint = null; // {attempt, step, kinds, message, text}: the newest checkpoint line, to merge into

  function renderHead(job) {
    const terminal = TERMINAL.has(job.state);
    const stop = h("button", { id: "stop", class: "danger", disabled: terminal || job.state === "stopping",
      onclick: async () => { stop.disabled = true; try { renderAll(await api("POST", `/api/jobs/${encodeURIComponent(jobId)}/stop`)); } catch (err) { alert(err.message); } } },
      "Stop");
    const restart = h("button", { id: "restart", disabled: job.state === "stopping" || job.state === "queued",
      onclick: async () => { if (!confirm("Relaunch this job from its best checkpoint?")) return;
        try { renderAll(await api("POST", `/api/jobs/${encodeURIComponent(jobId)}/restart`)); } catch (err) { alert(err.message); } } },
      "Restart");
    head.replaceChildren(
      h("div", { class: "row" }, h("h1", {}, job.id), badge(job.state),
        job.end_reason ? h("span", { class: "muted" }, `(${job.end_reason})`) : null,
        h("span", { class: "spacer" }), restart, stop),
      job.detail || job.wait_reason ? h("p", { class: "muted", "data-testid": "detail" }, job.wait_reason || job.detail) : null);
  }

  function renderSummary(job) {
    const best = job.best_checkpoint;
    const items = [
      ["Name", job.name],
      ["Config", job.config_source],
      ["Created", fmtTime(job.created_at)],
      ["Started", fmtTime(job.first_started_at)],
      ["Ended", fmtTime(job.ended_at)],
      ["Step / epoch", `${job.global_step ?? "–"} / ${job.epoch ?? (points.length ? points[points.length - 1].epoch : null) ?? "–"}${job.phase ? ` (${job.phase})` : ""}`],
      ["Progress", progressCell(job.progress)],
      ["Restarts", String(job.restarts)],
      ["Lost to faults", lostText(job.progress)],
      ["Budget", job.budget.seconds === null ? "none" : `${fmtDuration(job.budget.used)} used of ${fmtDuration(job.budget.seconds)}, ${fmtDuration(job.budget.remaining)} left`],
      ["Best checkpoint", best ? `${basename(best.path)}${best.score !== null && best.score !== undefined ? ` · ${best.monitor || "score"} ${fmtNumber(best.score)}` : ""}${best.step !== null && best.step !== undefined ? ` · step ${best.step}` : ""}` : "none yet"],
      ["Latest metrics", Object.entries(latestMetrics(job)).map(([k, v]) => `${k} ${fmtNumber(v)}`).join(" · ") || "–"],
    ];
    summary.replaceChildren(...items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k }, v)]),
      h("dt", {}, "W&B"), h("dd", { "data-field": "W&B" }, wandbCell(job.wandb || {})));
  }

  // Online: links to the run and its -supervisor alert run. Offline: the command that uploads the runs.
  function wandbCell(wandb) {
    const link = (href, id, text) => h("a", { href, id, target: "_blank", rel: "noopener noreferrer" }, text);
    if (wandb.url) {
      return h("span", {}, link(wandb.url, "wandb-link", "W&B run page"),
        wandb.alerts_url ? [" · ", link(wandb.alerts_url, "wandb-alerts-link", "alerts run")] : null);
    }
    const text = `${wandb.mode || "–"}${wandb.run_id ? ` (run ${wandb.run_id})` : ""}`;
    if (!wandb.sync_command) return text;
    return h("span", {}, text, h("div", { class: "muted small" }, "upload it with: ",
      h("code", { id: "wandb-sync", class: "copy" }, wandb.sync_command)));
  }

  function renderAttempts(job) {
    const attempts = job.attempts || [];
    const now = Date.now() / 1000;
    const first = attempts.length ? attempts[0].started_at : now;
    const last = attempts.length ? (attempts[attempts.length - 1].ended_at ?? now) : now;
    const span = Math.max(1, last - first);
    timeline.replaceChildren(...attempts.map((a) => {
      const end = a.ended_at ?? now;
      const cause = a.reason || (a.ended_at ? "ended" : "running");
      const left = (100 * (a.started_at - first)) / span, width = Math.max(0.5, (100 * (end - a.started_at)) / span);
      return h("div", { class: `seg cause-${cause}`, style: { left: `${left}%`, width: `${width}%` },
        title: `attempt ${a.n}: ${cause}${a.resumed_from ? ` · resumed from ${basename(a.resumed_from)}` : ""}` },
        `#${a.n} ${cause}`);
    }));
    attemptsBody.replaceChildren(...attempts.map((a) => h("tr", {},
      h("td", {}, a.n),
      h("td", {}, fmtTime(a.started_at)),
      h("td", {}, fmtTime(a.ended_at)),
      h("td", { class: "num" }, fmtDuration((a.ended_at ?? now) - a.started_at)),
      h("td", {}, a.reason ? h("span", { class: `cause cause-${a.reason}` }, a.reason) : h("span", { class: "muted" }, "running")),
      h("td", { class: "detail" }, a.detail || "",
        a.slurm_job_id ? h("div", { class: "muted small", "data-testid": "slurm-attempt" },
          `Slurm job ${a.slurm_job_id} on ${a.nodes || "–"}`) : null,
        a.accumulate_grad_batches != null ? h("div", { class: "muted small", "data-testid": "attempt-size" },
          `${a.world_size} rank${a.world_size === 1 ? "" : "s"} × ${a.accumulate_grad_batches} accumulated`) : null),
      h("td", { title: a.resumed_from || "" }, a.resumed_from ? basename(a.resumed_from) : "from scratch"),
      h("td", { class: "num" }, a.global_step ?? "–"),
      h("td", { class: "num" }, a.new_checkpoints ?? "–"))));
  }

  // the live heartbeat's metrics; once the attempt has ended, the last line of the curve
  function latestMetrics(job) {
    if (job.metrics && Object.keys(job.metrics).length) return job.metrics;
    return points.length ? points[points.length - 1].metrics : {};
  }

  function renderAll(job) {
    status = job;
    renderHead(job);
    renderSummary(job);
    renderAttempts(job);
  }

  function drawCurve() {
    const names = new Set();
    points.forEach((p) => Object.keys(p.metrics).forEach((k) => names.add(k)));
    const sorted = [...names].sort();
    if (!chosenMetric || !names.has(chosenMetric)) {
      // the per-step training loss moves between validations: the liveliest default
      chosenMetric = ["train_loss", "loss", "val_loss"].find((n) => names.has(n)) || sorted[0] || null;
    }
    if (metricPicker.options.length !== sorted.length) {
      metricPicker.replaceChildren(...sorted.map((n) => h("option", { value: n, selected: n === chosenMetric }, n)));
    }
    if (!chosenMetric) {
      chart.replaceChildren(h("p", { class: "muted" }, "no metrics yet (they arrive with the trainer's heartbeats)"));
      return;
    }
    // One series per attempt; a value repeated from the previous line is the same logged value, not a new point.
    const series = new Map();
    for (const p of points) {
      const v = p.metrics[chosenMetric];
      if (v === undefined) continue;
      const list = series.get(p.attempt) || [];
      if (!list.length || list[list.length - 1].v !== v) list.push({ step: p.step, v });
      series.set(p.attempt, list);
    }
    const all = [...series.values()].flat();
    if (!all.length) { chart.replaceChildren(h("p", { class: "muted" }, `no ${chosenMetric} values yet`)); return; }
    const W = 720, H = 260, L = 60, R = 16, T = 12, B = 34;
    let x0 = Math.min(...all.map((p) => p.step)), x1 = Math.max(...all.map((p) => p.step));
    let y0 = Math.min(...all.map((p) => p.v)), y1 = Math.max(...all.map((p) => p.v));
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
    const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "curve", role: "img", "aria-label": `${chosenMetric} by step` });
    for (let i = 0; i <= 4; i++) {
      const yv = y0 + ((y1 - y0) * i) / 4, y = Y(yv);
      svg.append(s("line", { x1: L, x2: W - R, y1: y, y2: y, class: "gridline" }));
      svg.append(s("text", { x: L - 6, y: y + 4, class: "tick", "text-anchor": "end" }, String(Number(yv.toPrecision(3)))));
    }
    for (let i = 0; i <= 4; i++) {
      const xv = Math.round(x0 + ((x1 - x0) * i) / 4), x = X(xv);
      svg.append(s("text", { x, y: H - B + 16, class: "tick", "text-anchor": "middle" }, String(xv)));
    }
    svg.append(s("text", { x: (L + W - R) / 2, y: H - 4, class: "axis", "text-anchor": "middle" }, "step"));
    // each restart after a fault: a mark on the x-axis at the step it resumed from, and the span it made again
    // (up to the step the attempt before had reached) shaded
    const inRange = (x) => Math.min(Math.max(x, x0), x1);
    for (const r of (status && status.progress && status.progress.restarts) || []) {
      if (r.resumed_step === null || r.resumed_step === undefined || r.resumed_step > x1 || r.resumed_step < x0) continue;
      const xr = X(r.resumed_step);
      if (r.reached_step !== null && r.reached_step !== undefined && r.reached_step > r.resumed_step) {
        const xe = X(inRange(r.reached_step));
        svg.append(s("rect", { x: xr.toFixed(1), y: T, width: Math.max(1, xe - xr).toFixed(1), height: H - T - B,
          class: "recomputed", "data-attempt": r.attempt },
          s("title", {}, `attempt ${r.attempt} redid steps ${r.resumed_step}–${r.reached_step} after a ${r.after || "fault"}`)));
      }
      svg.append(s("line", { x1: xr.toFixed(1), x2: xr.toFixed(1), y1: T, y2: H - B + 4, class: "restart-mark", "data-attempt": r.attempt }));
      svg.append(s("text", { x: (xr + 3).toFixed(1), y: T + 10, class: "restart-label" }, `↻ ${r.attempt}`));
    }
    // each divergence: a mark at the first bad step (the rollback's resume mark above shows where it went back to)
    for (const step of (status && status.divergence && status.divergence.first_bad_steps) || []) {
      if (step === null || step === undefined || step < x0 || step > x1) continue;
      const xb = X(step);
      svg.append(s("line", { x1: xb.toFixed(1), x2: xb.toFixed(1), y1: T, y2: H - B + 4, class: "diverged-mark",
        "data-step": step }, s("title", {}, `the loss diverged at step ${step}: rolled back to a checkpoint before it`)));
      svg.append(s("text", { x: (xb + 3).toFixed(1), y: T + 22, class: "diverged-label" }, `✕ ${step}`));
    }
    const legend = h("div", { class: "legend" });
    [...series.entries()].forEach(([attempt, list], i) => {
      const colour = SERIES_COLOURS[i % SERIES_COLOURS.length];
      const d = list.map((p, j) => `${j ? "L" : "M"}${X(p.step).toFixed(1)},${Y(p.v).toFixed(1)}`).join(" ");
      svg.append(s("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "data-attempt": attempt }));
      list.forEach((p) => svg.append(s("circle", { cx: X(p.step).toFixed(1), cy: Y(p.v).toFixed(1), r: 2.5, fill: colour },
        s("title", {}, `attempt ${attempt} · step ${p.step} · ${chosenMetric} ${fmtNumber(p.v)}`))));
      legend.append(h("span", { class: "key" }, h("span", { class: "swatch", style: { background: colour } }), `attempt ${attempt}`));
    });
    chart.replaceChildren(svg, legend);
  }

  async function pollCurve() {
    for (let rounds = 0; rounds < 20; rounds++) {
      const answer = await api("GET", `/api/jobs/${encodeURIComponent(jobId)}/metrics?attempt=${cursor.attempt}&offset=${cursor.offset}`);
      points.push(...answer.points);
      cursor = answer.cursor;
      if (!answer.more) break;
    }
    drawCurve();
  }

  async function pollLog() {
    const latest = status && status.attempts.length ? status.attempts[status.attempts.length - 1].n : null;
    if (latest === null) { logBox.textContent = "(no attempt yet)"; return; }
    const path = `/api/jobs/${encodeURIComponent(jobId)}/logs?attempt=${latest}`;
    let answer;
    const fresh = latest !== logAttempt || !logOffsets;
    if (fresh) {
      answer = await api("GET", `${path}&tail=${LOG_TAIL}`);
      logAttempt = latest;
      logChunks = [];
    } else {
      answer = await api("GET", `${path}&stdout=${logOffsets.stdout}&stderr=${logOffsets.stderr}`);
    }
    logOffsets = answer.offsets;
    // The two streams come separately (their interleaving is not recorded); stderr is shown in its own colour.
    if (answer.stdout) logChunks.push(["stdout", answer.stdout]);
    if (answer.stderr) logChunks.push(["stderr", answer.stderr]);
    if (answer.stdout || answer.stderr || fresh) {
      let total = logChunks.reduce((n, [, text]) => n + text.length, 0);
      while (total > LOG_TAIL && logChunks.length > 1) total -= logChunks.shift()[1].length;
      renderLog();
    }
  }

  function renderLog() {
    if (logAttempt === null) return;
    const atBottom = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 20;
    let hidden = 0;
    const shown = logChunks.map(([stream, text]) => {
      let kept = text;
      if (!logAll.checked) { const [k, n] = filterLogNoise(text); kept = k; hidden += n; }
      return stream === "stderr" ? h("span", { class: "stderr" }, kept) : kept;
    });
    logHidden.textContent = hidden ? ` ${hidden} start-up lines hidden` : "";
    logBox.replaceChildren(h("span", { class: "muted" }, `── attempt ${logAttempt} ──\n`), ...shown);
    if (atBottom) logBox.scrollTop = logBox.scrollHeight;
  }
  logAll.addEventListener("change", renderLog);

  // A save writes the top-k file and last.ckpt of the same step: one line per step, naming the files.
  function checkpointKinds(kinds) {
    const topK = status && status.checkpointing ? status.checkpointing.save_top_k : null;
    const label = { topk: topK !== null && topK !== undefined && topK >= 0 ? `top-${topK}` : "top-k", last: "last" };
    return [...kinds].sort((a, b) => (a === "last") - (b === "last")).map((k) => label[k] || k).join(", ");
  }

  async function pollProfile() {
    const latest = status && status.attempts.length ? status.attempts[status.attempts.length - 1] : null;
    // reports are written when a fit ends: look again only until the attempt's report is shown
    if (!latest || (profileShown === latest.n && latest.ended_at)) return;
    const answer = await api("GET", `/api/jobs/${encodeURIComponent(jobId)}/profile?attempt=${latest.n}`);
    if (!answer.files.length) return;
    profileShown = latest.n;
    profileBox.hidden = false;
    profileBox.replaceChildren(h("h2", {}, `Profiler report · attempt ${answer.attempt}`),
      ...answer.files.map((f) => h("div", {}, h("p", { class: "muted" }, `${f.name} (${fmtCount(f.size)}B${f.truncated ? ", cut" : ""})`),
        f.text !== null ? h("pre", { class: "log profile", "data-testid": "profile-text" }, f.text) : null)));
  }

  async function pollEvents() {
    const events = await api("GET", `/api/jobs/${encodeURIComponent(jobId)}/events?after=${lastEvent}`);
    for (const e of events) {
      lastEvent = Math.max(lastEvent, e.id);
      const data = e.data || {};
      if (e.kind === "checkpoint" && lastCheckpoint && lastCheckpoint.attempt === e.attempt && lastCheckpoint.step === data.step) {
        lastCheckpoint.kinds.add(data.kind || "topk");
        if (data.kind !== "last" || !lastCheckpoint.message) lastCheckpoint.message = e.message;
        lastCheckpoint.text.textContent = ` ${lastCheckpoint.message} (${checkpointKinds(lastCheckpoint.kinds)})`;
        continue;
      }
      const text = h("span", { class: "message" }, ` ${e.message}`);
      if (e.kind === "checkpoint") {
        lastCheckpoint = { attempt: e.attempt, step: data.step, kinds: new Set([data.kind || "topk"]), message: e.message, text };
        text.textContent = ` ${e.message} (${checkpointKinds(lastCheckpoint.kinds)})`;
      }
      eventsList.prepend(h("li", {}, h("span", { class: "muted" }, fmtTime(e.time)), " ", h("span", { class: "kind" }, e.kind), text));
    }
  }

  every(() => (status && TERMINAL.has(status.state) ? 5000 : 1000), async () => {
    try {
      renderAll(await api("GET", `/api/jobs/${encodeURIComponent(jobId)}`));
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        main.replaceChildren(h("section", { class: "card" }, h("p", { class: "error" }, err.message)));
        viewId += 1;
        return;
      }
      throw err;
    }
    await Promise.all([pollCurve(), pollLog(), pollEvents(), pollProfile()]);
  });
}

// -- start ----------------------------------------------------------------------------------------
async function showDaemon() {
  try {
    const info = await api("GET", "/api/ping");
    document.getElementById("daemon").textContent = `v${info.version} · pid ${info.pid}`;
  } catch (err) { /* the view shows the problem */ }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route); // after every script (sweeps.js) has loaded
if (sessionStorage.getItem(TOKEN_KEY)) showDaemon();
