"use strict";
// Sweeps: the list, one sweep (trials table sortable by value, best highlighted, value against each
// parameter), and starting a sweep from a template with knob ranges. Uses app.js's helpers.

function sweepsView() {
  const tbody = h("tbody");
  main.replaceChildren(
    h("section", { class: "card" }, h("div", { class: "row" }, h("h1", {}, "Sweeps"), h("span", { class: "spacer" }),
      h("a", { href: "#/sweeps/new", id: "new-sweep" }, "Start a sweep")),
      h("table", { class: "jobs", "data-testid": "sweeps" },
        h("thead", {}, h("tr", {}, ["Sweep", "State", "Method", "Trials", "Best"].map((t) => h("th", {}, t)))), tbody)));
  every(2000, async () => {
    const sweeps = await api("GET", "/api/sweeps");
    if (!sweeps.length) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no sweeps yet")));
      return;
    }
    tbody.replaceChildren(...sweeps.reverse().map((s) => h("tr", {},
      h("td", {}, h("a", { href: `#/sweeps/${encodeURIComponent(s.id)}` }, s.id)),
      h("td", {}, badge(s.state)), h("td", {}, s.method), h("td", { class: "num" }, `${s.trials.length}/${s.run_cap}`),
      h("td", { class: "num" }, s.best ? `${s.metric.name} ${fmtNumber(s.best.value)}` : "–"))));
  });
}

function sweepView(sweepId) {
  const head = h("div", { class: "job-head" });
  const table = h("table", { class: "jobs", "data-testid": "trials" });
  const plots = h("div", { class: "plots", "data-testid": "plots" });
  main.replaceChildren(h("section", { class: "card" }, head, table),
    h("section", { class: "card" }, h("h2", {}, "Value against each parameter"), plots));
  let sortDir = 0; // 0: by trial number; 1: value ascending; -1: descending
  let last = null;
  const render = (s) => {
    last = s;
    const stop = h("button", { id: "stop-sweep", disabled: s.state !== "running", onclick: async () => {
      stop.disabled = true;
      try { render(await api("POST", `/api/sweeps/${encodeURIComponent(sweepId)}/stop`)); } catch (err) { alert(err.message); }
    } }, "Stop sweep");
    head.replaceChildren(h("div", { class: "row" }, h("h1", {}, s.id), h("span", { id: "sweep-state" }, badge(s.state)), h("span", { class: "spacer" }), stop),
      h("p", { class: "muted" }, `${s.method} · ${s.metric.goal} ${s.metric.name} · ${s.trials.length}/${s.run_cap} trials, ` +
        `${s.parallel} at once` + (s.note ? ` · ${s.note}` : "") + (s.detail ? ` · ${s.detail}` : "")),
      h("p", { "data-testid": "best" }, s.best ? `Best: ${s.metric.name} ${fmtNumber(s.best.value)} (${s.best.job_id})` : "No best yet"));
    const keys = s.parameters.map((p) => p.key);
    const rows = s.trials.slice();
    if (sortDir) rows.sort((a, b) => ((a.value ?? Infinity) - (b.value ?? Infinity)) * sortDir);
    const valueHead = h("th", { class: "num sortable", id: "sort-value", onclick: () => { sortDir = sortDir === 1 ? -1 : 1; render(last); } },
      `${s.metric.name} ${sortDir === 1 ? "▲" : sortDir === -1 ? "▼" : "↕"}`);
    table.replaceChildren(
      h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Job"), h("th", {}, "State"), valueHead, keys.map((k) => h("th", {}, k)))),
      h("tbody", {}, rows.map((t) => h("tr", { class: s.best && t.job_id === s.best.job_id ? "best" : null, "data-n": t.n },
        h("td", {}, t.n),
        h("td", {}, t.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(t.job_id)}` }, t.job_id) : "–"),
        h("td", {}, badge(t.state), t.detail ? h("div", { class: "muted small" }, t.detail) : null),
        h("td", { class: "num value" }, t.value === null ? "–" : fmtNumber(t.value)),
        keys.map((k) => h("td", {}, typeof t.params[k] === "number" ? fmtNumber(t.params[k]) : String(t.params[k])))))));
    plots.replaceChildren(...s.parameters.filter((p) => p.distribution !== "constant").map((p) => scatter(s, p.key)));
  };
  every(2000, async () => render(await api("GET", `/api/sweeps/${encodeURIComponent(sweepId)}`)));
}

function scatter(sweep, key) {
  const W = 320, H = 200, P = 34;
  const done = sweep.trials.filter((t) => t.value !== null && t.value !== undefined);
  const numeric = done.every((t) => typeof t.params[key] === "number");
  const xs = numeric ? done.map((t) => t.params[key]) : [];
  const cats = numeric ? [] : [...new Set(done.map((t) => JSON.stringify(t.params[key])))];
  const xOf = (t) => numeric ? t.params[key] : cats.indexOf(JSON.stringify(t.params[key]));
  const [x0, x1] = numeric ? [Math.min(...xs), Math.max(...xs)] : [-0.5, cats.length - 0.5];
  const vs = done.map((t) => t.value);
  const [y0, y1] = [Math.min(...vs), Math.max(...vs)];
  const sx = (x) => P + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - 2 * P);
  const sy = (y) => H - P + (y1 > y0 ? -(y - y0) / (y1 - y0) : -0.5) * (H - 2 * P);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "scatter", "data-param": key },
    s("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, class: "axis" }),
    s("line", { x1: P, y1: P, x2: P, y2: H - P, class: "axis" }),
    s("text", { x: W / 2, y: H - 6, "text-anchor": "middle", class: "label" }, key),
    s("text", { x: 4, y: P - 8, class: "label" }, done.length ? fmtNumber(y1) : ""),
    s("text", { x: 4, y: H - P + 4, class: "label" }, done.length ? fmtNumber(y0) : ""),
    ...(numeric && done.length ? [s("text", { x: P, y: H - P + 12, class: "label" }, fmtNumber(x0)),
      s("text", { x: W - P, y: H - P + 12, "text-anchor": "end", class: "label" }, fmtNumber(x1))]
      : cats.map((c, i) => s("text", { x: sx(i), y: H - P + 12, "text-anchor": "middle", class: "label" }, c))),
    ...done.map((t) => s("circle", { cx: sx(xOf(t)), cy: sy(t.value), r: 4,
      class: sweep.best && t.job_id === sweep.best.job_id ? "dot best" : "dot" }, s("title", {}, `trial ${t.n}: ${t.value}`))));
  return h("figure", {}, svg);
}

async function sweepLaunchView() {
  const mine = viewId;
  const templates = (await api("GET", "/api/templates")).filter((t) => !t.error);
  if (mine !== viewId) return; // navigated away while the templates loaded
  const section = h("section", { class: "card" }, h("h1", {}, "Start a sweep"));
  main.replaceChildren(section);
  if (!templates.length) { section.append(h("p", {}, "No usable templates.")); return; }
  const picker = h("select", { id: "sweep-template" }, templates.map((t) => h("option", { value: t.name }, t.title)));
  const method = h("select", { id: "sweep-method" }, ["bayes", "random", "grid"].map((m) => h("option", { value: m }, m)));
  const metric = h("input", { id: "sweep-metric", type: "text", value: "val_loss" });
  const goal = h("select", { id: "sweep-goal" }, ["minimize", "maximize"].map((g) => h("option", { value: g }, g)));
  const runCap = h("input", { id: "sweep-run-cap", type: "number", min: 1, value: 10 });
  const parallel = h("input", { id: "sweep-parallel", type: "number", min: 1, value: 1 });
  const knobsBox = h("div", { class: "grid" });
  const formError = h("p", { class: "error", id: "sweep-error", role: "alert" });
  let rows = [];
  const showKnobs = () => {
    const template = templates.find((t) => t.name === picker.value);
    rows = template.knobs.filter((k) => k.type !== "str").map((knob) => {
      const on = h("input", { type: "checkbox", "data-search": knob.key });
      let read;
      let body;
      if (knob.type === "choice" || knob.type === "bool") {
        const choices = knob.type === "bool" ? [true, false] : knob.choices;
        const labels = knob.type === "bool" ? ["on", "off"] : knob.labels;
        const boxes = choices.map((c, i) => h("label", { class: "small" }, h("input", { type: "checkbox", checked: true, "data-choice": i }), ` ${labels[i]} `));
        body = h("div", {}, boxes);
        read = () => ({ values: choices.filter((c, i) => boxes[i].querySelector("input").checked) });
      } else {
        const lo = h("input", { type: "number", step: "any", value: knob.min ?? knob.default, "data-min": knob.key, size: 8 });
        const hi = h("input", { type: "number", step: "any", value: knob.max ?? knob.default, "data-max": knob.key, size: 8 });
        const log = h("input", { type: "checkbox" });
        body = h("div", {}, "from ", lo, " to ", hi, knob.type === "float" ? h("label", { class: "small" }, " ", log, " log scale") : null);
        read = () => ({ min: Number(lo.value), max: Number(hi.value), log: log.checked });
      }
      return { knob, on, read, el: h("div", { class: "field" }, h("label", {}, on, ` search ${knob.label}`), body) };
    });
    knobsBox.replaceChildren(...rows.map((r) => r.el));
  };
  picker.addEventListener("change", showKnobs);
  showKnobs();
  const start = h("button", { type: "submit", id: "start-sweep", class: "primary" }, "Start sweep");
  section.append(h("form", { id: "sweep-form", onsubmit: async (ev) => {
    ev.preventDefault();
    formError.textContent = "";
    const ranges = {};
    rows.filter((r) => r.on.checked).forEach((r) => { ranges[r.knob.key] = r.read(); });
    const body = { template: picker.value, method: method.value, metric: metric.value, goal: goal.value,
      run_cap: Number(runCap.value), parallel: Number(parallel.value), ranges };
    if (method.value === "grid") delete body.run_cap;
    start.disabled = true;
    try {
      const sweep = await api("POST", "/api/sweeps", body);
      location.hash = `#/sweeps/${encodeURIComponent(sweep.id)}`;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      const fields = Object.entries(err.fields || {}).map(([k, v]) => `${k}: ${v}`);
      formError.textContent = fields.length ? fields.join("; ") : err.message;
      start.disabled = false;
    }
  } },
  h("div", { class: "grid" },
    h("div", { class: "field" }, h("label", { for: "sweep-template" }, "Template"), picker),
    h("div", { class: "field" }, h("label", { for: "sweep-method" }, "Method"), method),
    h("div", { class: "field" }, h("label", { for: "sweep-metric" }, "Metric"), metric, goal),
    h("div", { class: "field" }, h("label", { for: "sweep-run-cap" }, "Trials (run cap)"), runCap),
    h("div", { class: "field" }, h("label", { for: "sweep-parallel" }, "At once"), parallel)),
  h("h2", {}, "Knob ranges"), knobsBox, formError, h("div", { class: "actions" }, start)));
}
