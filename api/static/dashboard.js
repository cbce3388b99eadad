// The Secateurs dashboard: a client of the public REST API (/v1) with the same Bearer keys.
//
// The key lives in sessionStorage: it is sent only where this code puts it (the Authorization header),
// never automatically with a request, so no other site can make the browser act with it (no CSRF), and it
// is gone when the tab closes. Script could read it, which is why the page runs only its own files
// (Content-Security-Policy: script-src 'self') and writes every value from the API as text, never as HTML.
import {barChart, channelMap, fmt, layerChart, scatter} from "./charts.js";

const KEY = "secateurs.key";
const STAGES = ["import", "search", "analyse", "score", "plan", "apply", "recover", "export", "verify", "report", "fidelity"];
const ACTIVE = ["queued", "running"];
const TERMINAL = ["succeeded", "failed", "cancelled"];
const state = {key: sessionStorage.getItem(KEY) || "", jobs: new Map(), models: [], datasets: [], signals: [],
               schema: null, events: new Map(), stream: null, onEvent: null};
const $ = (id) => document.getElementById(id);
const main = $("main");

// ------------------------------------------------------------------------------------------------ DOM

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

function alertBox(message) {
  const box = $("alert");
  box.hidden = !message;
  box.textContent = message || "";
}

const announce = (text) => { $("status").textContent = text; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%");
const when = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") : "");

// ------------------------------------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.errors = (body && body.errors) || [];
  }
}

async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {...(opts.headers || {}), Authorization: `Bearer ${state.key}`}});
  if (r.ok && opts.raw) return r.blob();
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : null;
  if (!r.ok) {
    const err = new ApiError(r.status, body);
    if (r.status === 401) keyRefused(err.message);
    throw err;
  }
  return body;
}

async function allPages(path) {
  const out = [];
  let cursor = null;
  do {
    const page = await api(path + (path.includes("?") ? "&" : "?") + "limit=200" + (cursor ? `&cursor=${cursor}` : ""));
    out.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor && out.length < 2000);
  return out;
}

async function readSSE(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

// One stream for every job of the tenant (GET /v1/events): fetch rather than EventSource, so the key
// travels in a header and never in a URL. Resolves once the stream answers, so a list loaded afterwards
// misses no event; reconnects with Last-Event-ID.
function startStream() {
  if (state.stream) state.stream.abort();
  const ctl = new AbortController();
  state.stream = ctl;
  let last = null, opened;
  const ready = new Promise((resolve) => { opened = resolve; });
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        const headers = {Authorization: `Bearer ${state.key}`, Accept: "text/event-stream"};
        if (last !== null) headers["Last-Event-ID"] = String(last);
        const r = await fetch("/v1/events", {headers, signal: ctl.signal});
        if (r.status === 401) { keyRefused("unknown or revoked API key"); break; }
        if (r.ok) {
          opened();
          await readSSE(r, (ev) => { last = ev.id; onEvent(ev); });
        }
      } catch (e) {
        if (ctl.signal.aborted) break;
      }
      opened();
      await sleep(2000);
    }
    opened();
  })();
  return ready;
}

// The newer of two snapshots of a job: a list read while the stream ran must not undo what it told.
function keep(fresh) {
  const old = state.jobs.get(fresh.id);
  const rank = (j) => (TERMINAL.includes(j.status) ? 2 : j.status === "running" ? 1 : 0) + (j.progress || 0) / 2;
  if (!old || rank(fresh) >= rank(old)) state.jobs.set(fresh.id, fresh);
  return state.jobs.get(fresh.id);
}

function mergeEvents(id, events) {
  const byId = new Map([...(state.events.get(id) || []), ...events].map((e) => [e.id, e]));
  state.events.set(id, [...byId.values()].sort((a, b) => a.id - b.id));
}

function onEvent(ev) {
  mergeEvents(ev.job_id, [ev]);
  const job = state.jobs.get(ev.job_id);
  if (job && !TERMINAL.includes(ev.type)) {
    if (ev.type === "running" || ev.type === "progress" || ev.type === "resumed") job.status = "running";
    if (ev.type === "requeued") job.status = "queued";
    if (ev.stage) job.stage = ev.stage;
    if (ev.progress !== null && ev.progress !== undefined) job.progress = ev.progress;
    changed(job, ev);
  } else {  // a job this page has not seen, or one that ended: its row holds the truth (metrics, error)
    api(`/v1/jobs/${ev.job_id}`).then((fresh) => {
      fresh = keep(fresh);
      if (TERMINAL.includes(fresh.status)) announce(`Job ${fresh.id} ${fresh.status}`);
      changed(fresh, ev);
    }).catch(() => {});
  }
}

function changed(job, ev) {
  if (state.onEvent) state.onEvent(job, ev);
}

// ------------------------------------------------------------------------------------------------ key

function keyRefused(message) {
  state.key = "";
  sessionStorage.removeItem(KEY);
  if (state.stream) state.stream.abort();
  keyControls();
  $("key").setAttribute("aria-invalid", "true");
  alertBox(`The API key was refused: ${message}. Enter a valid key.`);
}

function keyControls() {
  $("forget-key").hidden = !state.key;
  $("key").placeholder = state.key ? `key in use: …${state.key.slice(-4)}` : "sk_...";
  $("key").required = !state.key;
}

$("key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const candidate = $("key").value.trim();
  if (!candidate) return;
  state.key = candidate;
  try {
    await api("/v1/jobs?limit=1");
  } catch (err) {
    if (err.status !== 401) alertBox(`Could not check the key: ${err.message}`);
    $("key").focus();
    return;
  }
  sessionStorage.setItem(KEY, candidate);
  $("key").value = "";
  $("key").removeAttribute("aria-invalid");
  alertBox("");
  keyControls();
  announce("Key accepted");
  await startStream();
  route();
});

$("forget-key").addEventListener("click", () => {
  state.key = "";
  sessionStorage.removeItem(KEY);
  if (state.stream) state.stream.abort();
  keyControls();
  announce("Key forgotten");
  route();
  $("key").focus();
});

// ------------------------------------------------------------------------------------------------ routing

function parseHash() {
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  return {parts: path.split("/").filter(Boolean), params: new URLSearchParams(query || "")};
}

async function route(focus = false) {
  const {parts, params} = parseHash();
  state.onEvent = null;
  const section = parts[0] || "";
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").slice(2);
    if (target === section || (target === "" && section === "jobs")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const out = h("div");  // this view's own box: a slower earlier view that finishes late draws into nothing
  main.replaceChildren(out);
  if (!state.key) {
    out.append(h("section", {}, h("h1", {}, "Enter your API key"),
      h("p", {}, "Type the key that ", h("code", {}, "secateurs keys create --tenant NAME"),
        " printed into the API key field at the top, then press Use key.")));
    return;
  }
  try {
    if (section === "jobs" && parts[1]) await jobView(out, parts[1]);
    else if (section === "new") await newView(out);
    else if (section === "compare") await compareView(out, params);
    else await jobsView(out);
  } catch (e) {
    if (e.status !== 401) out.append(h("section", {}, h("h1", {}, "Could not load this page"), h("p", {class: "bad"}, e.message)));
  }
  if (focus) main.focus();
}

window.addEventListener("hashchange", () => route(true));

async function loadCatalogue() {
  const [models, datasets] = await Promise.all([allPages("/v1/models"), allPages("/v1/datasets")]);
  state.models = models;
  state.datasets = datasets;
  if (!state.signals.length) state.signals = (await (await fetch("/v1/signals")).json()).data;
  if (!state.schema) state.schema = (await (await fetch("/openapi.json")).json()).components.schemas;
}

const modelName = (id) => {
  const m = state.models.find((x) => x.id === id);
  return m ? m.filename : id;
};
const signalOf = (job) => (typeof job.spec.signal === "string" ? job.spec.signal : "compose");
const searches = (job) => !job.spec.target && job.spec.fidelity?.max_drop !== null && job.spec.fidelity?.max_drop !== undefined;
const targetOf = (job) => searches(job) ? `smallest within a drop of ${job.spec.fidelity.max_drop} points (search)`
  : Object.entries(job.spec.target || {}).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`).join(", ");

function badge(status) {
  return h("span", {class: `badge ${status}`}, status);
}

function progressBar(job) {
  const label = `Progress of ${job.id}`;
  return h("progress", {max: 1, value: job.progress || 0, "aria-label": label});
}

// ------------------------------------------------------------------------------------------------ jobs

async function jobsView(out) {
  const tbody = h("tbody");
  const table = h("table", {}, h("caption", {class: "visually-hidden"}, "Your jobs, newest first; status updates live"),
    h("thead", {}, h("tr", {}, ["Job", "Model", "Signal", "Target", "Status", "Progress", "Result", "Stage", "Created"]
      .map((t, i) => h("th", {scope: "col", class: i > 5 ? "hide-narrow" : null}, t)))), tbody);
  out.append(h("section", {}, h("h1", {}, "Jobs"), h("div", {class: "table-wrap"}, table)));
  // the stream first: every event after the list's moment arrives through it
  if (!state.stream || state.stream.signal.aborted) await startStream();
  const [jobs] = await Promise.all([allPages("/v1/jobs"), loadCatalogue()]);
  for (const j of jobs) keep(j);
  const row = (j) => h("tr", {"data-job-id": j.id},
    h("td", {}, h("a", {href: `#/jobs/${j.id}`}, j.id)), h("td", {}, modelName(j.model_id)),
    h("td", {}, signalOf(j)), h("td", {}, targetOf(j)), h("td", {}, badge(j.status)),
    h("td", {}, progressBar(j), ` ${Math.round((j.progress || 0) * 100)}%`), h("td", {class: "hide-narrow"}, result(j)),
    h("td", {class: "hide-narrow"}, j.stage || ""),
    h("td", {class: "hide-narrow"}, when(j.created_at)));
  const render = () => {
    const list = [...state.jobs.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    tbody.replaceChildren(...list.map(row));
    if (!list.length) tbody.append(h("tr", {}, h("td", {colspan: 9}, "No jobs yet. ", h("a", {href: "#/new"}, "Submit one"), ".")));
  };
  if (out.isConnected) state.onEvent = (job) => {
    const old = tbody.querySelector(`tr[data-job-id="${CSS.escape(job.id)}"]`);
    if (!old) return render();
    const focused = old.contains(document.activeElement);
    const fresh = row(job);
    old.replaceWith(fresh);
    if (focused) fresh.querySelector("a").focus();
  };
  render();
}

function result(j) {
  const m = j.metrics;
  if (j.status === "failed") return j.error ? `${j.error.type}: ${j.error.message}`.slice(0, 60) : "";
  if (!m) return "";
  const quality = m.accuracy_after !== undefined ? `, accuracy ${pct(m.accuracy_after)}`
    : m.agreement !== undefined ? `, agreement ${pct(m.agreement)}` : "";
  return `${pct(m.macs_kept)} MACs, ${m.speedup ? m.speedup.toFixed(2) + "×" : "–"}${quality}`;
}

// ------------------------------------------------------------------------------------------------ a job

async function jobView(out, id) {
  if (!state.stream || state.stream.signal.aborted) await startStream();
  const [fetched, events] = await Promise.all([api(`/v1/jobs/${id}`), allPages(`/v1/jobs/${id}/events`)]);
  await loadCatalogue();
  const job = keep(fetched);
  mergeEvents(id, events);

  const stageList = h("ol", {class: "stages", "aria-label": "Stages"});
  const bar = h("progress", {max: 1, value: job.progress || 0, id: "job-progress", "aria-label": "Job progress"});
  const head = h("p", {id: "job-status"});
  const log = h("pre", {class: "log", role: "log", "aria-label": "Event log", tabindex: 0});
  const search = searches(job) ? searchView(job) : null;
  const paint = (j) => {
    if (search) search.paint(state.events.get(id));
    head.replaceChildren(badge(j.status), ` ${j.stage || ""} · ${Math.round((j.progress || 0) * 100)}%`);
    bar.value = j.progress || 0;
    stageList.replaceChildren(...stageItems(j, state.events.get(id)));
    log.textContent = state.events.get(id).map(eventLine).join("\n");
    log.scrollTop = log.scrollHeight;
  };
  const actions = h("div", {class: "actions"});
  if (ACTIVE.includes(job.status)) {
    actions.append(h("button", {type: "button", class: "secondary", onclick: async (e) => {
      e.target.disabled = true;
      try { await api(`/v1/jobs/${id}/cancel`, {method: "POST"}); announce("Cancel requested"); }
      catch (err) { alertBox(err.message); }
    }}, "Cancel job"));
  }
  if (job.status === "succeeded") {
    for (const name of ["model.onnx", "report.json"]) {
      actions.append(h("button", {type: "button", onclick: () => download(id, name)}, `Download ${name}`));
    }
  }
  out.append(h("section", {},
    h("h1", {}, `Job ${job.id}`), head, bar,
    h("p", {}, "Model ", h("a", {href: `#/compare?model=${job.model_id}&a=${job.id}`}, modelName(job.model_id)),
      ` · signal ${signalOf(job)} · target ${targetOf(job)} · recovery ${job.spec.recovery?.method || "none"}`),
    job.error ? h("p", {class: "bad"}, h("strong", {}, job.error.type), `: ${job.error.message}`) : null, actions,
    h("h2", {}, "Stages"), stageList));
  if (search) out.append(search.section);
  if (out.isConnected) state.onEvent = (j, ev) => {
    if (j.id !== id) return;
    if (TERMINAL.includes(j.status) && TERMINAL.includes(ev.type)) return route();  // figures and downloads
    paint(j);
  };
  paint(job);
  if (job.metrics) await report(out, job);
  out.append(h("section", {}, h("h2", {}, "Events"), log));
  // it may have ended while this page was being drawn: draw it again with its figures
  if (out.isConnected && TERMINAL.includes(state.jobs.get(id).status) && !TERMINAL.includes(job.status)) route();
}

// The budget search's probes as they arrive: fidelity (100 less the worst output's drop, in points) against the
// MACs kept, each probe within the budget or over it.
function searchView(job) {
  const box = h("div", {class: "chart-box", id: "search-chart", tabindex: 0, "aria-labelledby": "search-heading"});
  const rows = h("tbody");
  const section = h("section", {},
    h("h2", {id: "search-heading"}, `Budget search: fidelity against MACs kept (budget: ${job.spec.fidelity.max_drop} points)`),
    h("ul", {class: "legend"}, h("li", {class: "held"}, "within the budget"), h("li", {class: "over"}, "over it")),
    box, h("details", {}, h("summary", {}, "The probes as a table"), h("div", {class: "table-wrap"}, h("table", {},
      h("thead", {}, h("tr", {}, ["Probe", "MACs asked", "MACs kept", "Drop (points)", "Verdict"].map((t) => h("th", {scope: "col"}, t)))),
      rows))));
  const paint = (events) => {
    const probes = (events || []).filter((e) => e.stage === "search" && e.data && typeof e.data.macs_fraction === "number")
      .map((e) => e.data);
    const points = probes.map((p, i) => ({p, i})).filter(({p}) => typeof p.drop_points === "number").map(({p, i}) => ({
      id: `probe-${i + 1}`, x: p.macs_kept ?? p.macs_fraction, y: 100 - p.drop_points, cls: p.held ? "held" : "over",
      label: `probe ${i + 1} (${p.held ? "within" : "over"})`}));
    box.replaceChildren(points.length
      ? scatter(points, {title: "Fidelity against fraction of MACs kept, budget search probes", xLabel: "MACs kept",
                         yLabel: "fidelity (points)"})
      : h("p", {class: "hint"}, "No probe has finished yet."));
    rows.replaceChildren(...probes.map((p, i) => h("tr", {}, [i + 1, pct(p.macs_fraction), pct(p.macs_kept),
      p.drop_points ?? "–", p.held ? "within" : (p.reason ? "cannot be reached" : "over")].map((c, k) => h("td", {class: k ? "num" : null}, String(c))))));
  };
  return {section, paint};
}

function eventLine(e) {
  const p = e.progress === null || e.progress === undefined ? "    " : String(Math.round(e.progress * 100)).padStart(3) + "%";
  return `${when(e.created_at).slice(11)} ${p} ${(e.type || "").padEnd(10)} ${(e.stage || "").padEnd(8)} ${e.message || ""}`;
}

function stageItems(job, events) {
  const seen = events.map((e) => e.stage).filter((s) => STAGES.includes(s));
  const seconds = (job.metrics && job.metrics.stage_seconds) || {};
  const lastSeen = seen.length ? STAGES.indexOf(seen[seen.length - 1]) : -1;
  const skipRecover = (job.spec.recovery?.method || "none") === "none" && !seen.includes("recover");
  return STAGES.filter((s) => !(s === "recover" && skipRecover) && !(s === "search" && !searches(job))).map((s) => {
    let cls = "pending", text = "waiting";
    const i = STAGES.indexOf(s);
    if (s in seconds || job.status === "succeeded") { cls = "done"; text = s in seconds ? `${fmt(seconds[s])} s` : "done"; }
    else if (job.status === "running" && i === lastSeen) { cls = "current"; text = "running"; }
    else if (seen.includes(s) || i < lastSeen) { cls = "done"; text = "done"; }
    if (job.status === "failed" && i === lastSeen) { cls = "current"; text = "failed here"; }
    return h("li", {class: cls}, s, h("span", {}, text));
  });
}

function card(label, value, detail) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value, detail ? h("small", {}, detail) : null));
}

async function report(out, job) {
  const m = job.metrics;
  const cards = h("dl", {class: "cards"},
    card("MACs", `${fmt(m.macs_before)} → ${fmt(m.macs_after)}`, `${pct(m.macs_kept)} kept`),
    card("Parameters", `${fmt(m.params_before)} → ${fmt(m.params_after)}`, `${pct(m.params_kept)} kept`),
    card("Latency (ms)", `${fmt(m.latency_ms_before)} → ${fmt(m.latency_ms_after)}`,
         m.speedup ? `${m.speedup.toFixed(2)}× faster, batch ${m.latency_batch}, ${m.latency_threads} thread(s)` : null),
    m.accuracy_before !== undefined ? card("Accuracy", `${pct(m.accuracy_before)} → ${pct(m.accuracy_after)}`,
                                           `on ${m.evaluated_on || "evaluation"} data`) : null,
    m.agreement !== undefined ? card("Top-1 agreement", pct(m.agreement), "with the original model") : null,
    ...fidelityCards(m.fidelity),
    card("ONNX file", `${fmt(m.onnx_bytes_before)}B → ${fmt(m.onnx_bytes_after)}B`),
    card("ONNX vs PyTorch", `max |diff| ${m.max_abs_diff?.toExponential(1) ?? "–"}`,
         m.target_met === undefined ? null : m.target_met ? "target met" : "target not met"));
  out.append(h("section", {}, h("h2", {}, "Report"), cards));

  const layers = (m.layers || []).map((l) => ({name: l.name, before: l.channels_before}));
  const after = Object.fromEntries((m.layers || []).map((l) => [l.name, l.channels_after]));
  if (layers.length) {
    out.append(h("section", {}, h("h2", {id: "channels-heading"}, "Channels per layer"),
      h("ul", {class: "legend"}, h("li", {class: "before"}, "before"), h("li", {class: "s0"}, "after")),
      h("div", {class: "chart-scroll", id: "channels-chart", tabindex: 0, "aria-labelledby": "channels-heading"},
        layerChart(layers, [{label: "after", values: after}], `Channels per layer of ${job.id}, before and after`)),
      dataTable("Channels per layer as a table", ["Layer", "Before", "After", "Kept"],
        (m.layers || []).map((l) => [l.name, l.channels_before, l.channels_after, pct(l.channels_after / l.channels_before)]))));
  }
  const seconds = Object.entries(m.stage_seconds || {}).map(([label, value]) => ({label, value}));
  if (seconds.length) {
    out.append(h("section", {}, h("h2", {}, "Stage timings"),
      h("div", {class: "chart-box", tabindex: 0, "aria-label": "Stage timings chart"},
        barChart(seconds, `Seconds per stage of ${job.id}`, "s")),
      dataTable("Stage timings as a table", ["Stage", "Seconds"], seconds.map((s) => [s.label, s.value]))));
  }
  await sameModel(out, job);
}

// One card per output: its metric against the original, on which data and how many samples, and the budget.
function fidelityCards(f) {
  if (!f) return [];
  if (!f.measured) return [card("Fidelity", "not measured", f.reason || "no data")];
  const budget = f.max_drop === null || f.max_drop === undefined ? "" : `; budget ${f.max_drop} points ${f.held ? "held" : "missed"}`;
  return (f.outputs || []).map((o) => card(`Fidelity of ${o.output}`, `${o.metric} ${o.value.toFixed(4)}`,
    `${o.kind}, drop ${o.drop_points} points, ${o.samples} ${f.data} samples${budget}`));
}

async function sameModel(out, job) {
  const jobs = (await allPages(`/v1/jobs?model_id=${job.model_id}&status=succeeded`)).filter((j) => j.metrics);
  const hasAcc = jobs.some((j) => j.metrics.accuracy_after !== undefined);
  const yKey = hasAcc ? "accuracy_after" : "agreement", yLabel = hasAcc ? "accuracy after" : "top-1 agreement";
  const points = jobs.filter((j) => typeof j.metrics[yKey] === "number")
    .map((j) => ({id: j.id, x: j.metrics.macs_kept, y: j.metrics[yKey], label: `${j.id} (${signalOf(j)})`}));
  const box = h("section", {}, h("h2", {}, `Jobs on ${modelName(job.model_id)}: ${yLabel} against MACs kept`));
  if (points.length) {
    box.append(h("ul", {class: "legend"}, h("li", {class: "current"}, "this job"), h("li", {class: "others"}, "other jobs")),
      h("div", {class: "chart-box", tabindex: 0, "aria-label": "Accuracy against MACs chart"},
        scatter(points, {title: `${yLabel} against fraction of MACs kept, jobs on this model`, xLabel: "MACs kept",
                         yLabel, current: job.id})),
      dataTable("The points as a table", ["Job", "Signal", "MACs kept", yLabel],
        points.map((p) => [p.id, signalOf(jobs.find((j) => j.id === p.id)), pct(p.x), pct(p.y)])));
  } else {
    box.append(h("p", {class: "hint"}, "No job on this model has accuracy or agreement yet: give calibration or evaluation data."));
  }
  box.append(h("p", {}, h("a", {href: `#/compare?model=${job.model_id}&a=${job.id}`}, "Compare this job's channels with another signal on the same model")));
  out.append(box);
}

function dataTable(summary, headings, rows) {
  return h("details", {}, h("summary", {}, summary), h("div", {class: "table-wrap"}, h("table", {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", {class: i ? "num" : null}, String(c)))))))));
}

async function download(jobId, name) {
  try {
    const blob = await api(`/v1/jobs/${jobId}/artifacts/${name}`, {raw: true});
    const a = h("a", {href: URL.createObjectURL(blob), download: `${jobId}-${name}`});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    announce(`Downloaded ${name}`);
  } catch (e) {
    alertBox(`Download failed: ${e.message}`);
  }
}

// ------------------------------------------------------------------------------------------------ submit

// Client-side checks from the API's own rules: bounds and choices from its OpenAPI schema, the signal's
// needs from the catalogue, and the same data checks the server makes before it accepts a job.
function numberRule(schemaName, prop) {
  const p = state.schema?.[schemaName]?.properties?.[prop] || {};
  return (p.anyOf || [p]).find((s) => s.type === "number" || s.type === "integer") || {};
}

function enumOf(schemaName, prop) {
  const p = state.schema?.[schemaName]?.properties?.[prop] || {};
  return p.enum || (p.anyOf || []).find((s) => s.enum)?.enum || [];
}

function validateJob(f) {
  const errors = {};
  const model = state.models.find((m) => m.id === f.model.value);
  if (!model) errors.model = "Choose a model, or upload one first.";
  const value = Number(f.value.value), rule = numberRule("Target", f.kind.value);
  if (f.value.value.trim() === "" || !Number.isFinite(value)) errors.value = "Give a number.";
  else if (rule.exclusiveMinimum !== undefined && !(value > rule.exclusiveMinimum)) errors.value = `Must be more than ${rule.exclusiveMinimum}.`;
  else if (rule.maximum !== undefined && value > rule.maximum) errors.value = `Must be at most ${rule.maximum} (the fraction of the original kept).`;
  const signal = state.signals.find((s) => s.name === f.signal.value);
  const calib = state.datasets.find((d) => d.id === f.calibration.value);
  const method = f.recovery.value;
  if (!calib && signal?.needs_data) errors.calibration = `Signal ${signal.name} needs calibration data: upload an .npz above.`;
  else if (!calib && method !== "none") errors.calibration = `Recovery ${method} needs calibration data: upload an .npz above.`;
  else if (calib && method === "finetune" && !calib.labelled) errors.calibration = "Recovery finetune needs labelled data (a y array).";
  for (const field of ["calibration", "evaluation"]) {
    const ds = state.datasets.find((d) => d.id === f[field].value);
    const why = model && ds ? dataMisfit(model, ds) : null;
    if (why) errors[field] = why;
  }
  return errors;
}

const dims = (shape) => `[${shape.map((d) => d ?? "?").join(", ")}]`;  // null: not fixed, no name
const kindOf = (dtype) => ({f: "float", i: "integer", u: "integer", b: "bool"})[dtype[0]];

// The arrays the server takes for the model's inputs, matched by name as it matches them (data.used_keys): x, else
// the input's own name, for a model with one input; one key per input name for a model with several; other keys
// are ignored. Each is then checked as at submission, from what the two objects list: sample shape, kind of dtype.
function dataMisfit(model, ds) {
  const inputs = model.inputs || [], arrays = new Map((ds.arrays || []).map((a) => [a.key, a]));
  if (!inputs.length) return null;
  const keys = [...arrays.keys()].join(", ") || "none";
  let pairs;
  if (inputs.length === 1) {
    const name = inputs[0].name, key = arrays.has("x") || !name ? "x" : name;
    if (!arrays.has(key)) return `The model has one input${name ? ` (${name})` : ""}: give its samples under key x (keys: ${keys}).`;
    pairs = [[inputs[0], key]];
  } else {
    const missing = inputs.find((i) => !arrays.has(i.name));
    if (missing) {
      return `The dataset has no key ${missing.name}: a model with several inputs takes one key per input name (${inputs.map((i) => i.name).join(", ")}); keys: ${keys}.`;
    }
    pairs = inputs.map((i) => [i, i.name]);
  }
  for (const [input, key] of pairs) {
    const a = arrays.get(key), want = input.shape.slice(1), got = a.shape.slice(1);
    if (a.dtype && !kindOf(a.dtype)) return `Key ${key} holds ${a.dtype}: model inputs are numbers (float, integer or bool).`;
    if (a.dtype && input.dtype && kindOf(a.dtype) !== kindOf(input.dtype)) {
      return `Key ${key} holds ${a.dtype}, but the model's input ${input.name} takes ${input.dtype}.`;
    }
    // a string or null dimension is free; a scalar (shape []) has no samples
    if (!a.shape.length || got.length !== want.length || want.some((w, i) => typeof w === "number" && w !== got[i])) {
      return `${pairs.length > 1 ? `Key ${key}: samples` : "Samples"} of shape [${got.join(", ")}] do not fit the model's input${input.name ? ` ${input.name}` : ""} ${dims(input.shape)}.`;
    }
  }
  return null;
}

// What the model's .npz must hold, from its inputs: the keys and each sample's shape and dtype.
function dataNeeds(model) {
  const inputs = model?.inputs || [];
  const one = (i) => (i.shape.length > 1 ? `${dims(i.shape.slice(1))}${i.dtype ? " " + i.dtype : ""}`
    : `one ${i.dtype ?? "number"} per sample`);
  if (!inputs.length) return "";
  if (inputs.length === 1) {
    const name = inputs[0].name;
    return `Its data: samples ${one(inputs[0])} under key x${name && name !== "x" ? ` (or ${name})` : ""}.`;
  }
  return `Its data: one key per input, ${inputs.map((i) => `${i.name}: ${one(i)}`).join("; ")}.`;
}

const SERVER_FIELDS = {"model_id": "model", "spec.signal": "signal", "spec.target": "value",
                       "spec.calibration.dataset_id": "calibration", "spec.evaluation.dataset_id": "evaluation",
                       "spec.recovery.method": "recovery", "spec.recovery": "recovery"};

function showErrors(form, errors) {
  for (const el of form.querySelectorAll(".field-error")) el.remove();
  for (const el of form.querySelectorAll("[aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    el.setAttribute("aria-describedby", el.dataset.describedby || "");
  }
  let first = null;
  for (const [name, message] of Object.entries(errors)) {
    const input = form.elements[name];
    if (!input) continue;
    const id = `${form.id}-${name}-error`;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", `${input.dataset.describedby || ""} ${id}`.trim());
    input.insertAdjacentElement("afterend", h("p", {class: "field-error", id}, message));
    first = first || input;
  }
  if (first) first.focus();
  return !first;
}

function field(label, input, hint) {
  const id = input.id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) {
    input.setAttribute("aria-describedby", hintId);
    input.dataset.describedby = hintId;
  }
  return h("div", {}, h("label", {for: id}, label), hint ? h("p", {class: "hint", id: hintId}, hint) : null, input);
}

function options(items, label, blank) {
  return [blank ? h("option", {value: ""}, blank) : null, ...items.map((i) => h("option", {value: i.id}, label(i)))];
}

async function newView(out) {
  await loadCatalogue();
  const shapes = (m) => (m.inputs?.length > 1 ? `inputs ${m.inputs.map((i) => `${i.name} ${dims(i.shape)}`).join(", ")}`
    : `input ${m.inputs?.length ? dims(m.inputs[0].shape) : `[${m.input_shape}]`}`);
  const modelLabel = (m) => `${m.filename} (${m.format}${m.arch ? ", " + m.arch : ""}, ${shapes(m)}) ${m.id}`;
  const dataLabel = (d) => `${d.filename} (${d.samples} samples${d.labelled ? ", labelled" : ""}${d.arrays?.length ? `; keys ${d.arrays.map((a) => a.key).join(", ")}` : ""}) ${d.id}`;
  const msg = (id) => h("p", {id, role: "status", class: "hint"});

  const modelForm = h("form", {id: "model-form", novalidate: true},
    field("Model file (.onnx, or .safetensors with an architecture)", h("input", {id: "model-file", name: "file", type: "file", accept: ".onnx,.safetensors"})),
    field("Architecture (safetensors only)", h("input", {id: "model-arch", name: "arch", placeholder: "resnet50, resnet56_cifar"}),
          "A torchvision classifier name or one of the CIFAR ResNets."),
    field("Number of classes (safetensors only)", h("input", {id: "model-classes", name: "num_classes", type: "number", min: 1})),
    h("div", {class: "actions"}, h("button", {type: "submit"}, "Upload model")), msg("model-msg"));
  const dataForm = h("form", {id: "data-form", novalidate: true},
    field("Data file (.npz: x = inputs, or one key per input name; optional y = labels)", h("input", {id: "data-file", name: "file", type: "file", accept: ".npz"})),
    h("div", {class: "actions"}, h("button", {type: "submit"}, "Upload data")), msg("data-msg"));

  const signalSel = h("select", {id: "job-signal", name: "signal"},
    state.signals.map((s) => h("option", {value: s.name, selected: s.name === "l2_norm"}, `${s.name}${s.needs_data ? " (needs data)" : ""}`)));
  const signalDesc = h("p", {class: "hint", id: "job-signal-desc"});
  signalSel.setAttribute("aria-describedby", "job-signal-desc");
  signalSel.dataset.describedby = "job-signal-desc";
  const describe = () => {
    const s = state.signals.find((x) => x.name === signalSel.value);
    signalDesc.textContent = s ? `${s.description} Needs: ${s.needs.join(", ")}.` : "";
  };
  signalSel.addEventListener("change", describe);
  describe();
  const kinds = Object.keys(state.schema?.Target?.properties || {macs: 1, params: 1, channels: 1, latency_ms: 1});
  const kindSel = h("select", {id: "job-kind", name: "kind"}, kinds.map((k) => h("option", {value: k}, k)));
  const valueHint = h("p", {class: "hint", id: "job-value-hint"});
  const valueInput = h("input", {id: "job-value", name: "value", type: "number", step: "any", value: "0.5", "aria-describedby": "job-value-hint", "data-describedby": "job-value-hint"});
  const hintValue = () => {
    valueHint.textContent = kindSel.value === "latency_ms" ? "ONNX Runtime latency budget in milliseconds."
      : `Fraction of the original ${kindSel.value} kept, more than 0 and at most 1.`;
  };
  kindSel.addEventListener("change", hintValue);
  hintValue();
  const methods = enumOf("Recovery", "method");
  const modelSel = h("select", {id: "job-model", name: "model", "aria-describedby": "job-model-hint", "data-describedby": "job-model-hint"},
    options(state.models, modelLabel, state.models.length ? null : "no model uploaded yet"));
  const modelHint = h("p", {class: "hint", id: "job-model-hint"});
  const hintModel = () => { modelHint.textContent = dataNeeds(state.models.find((m) => m.id === modelSel.value)); };
  modelSel.addEventListener("change", hintModel);
  hintModel();
  const jobForm = h("form", {id: "job-form", novalidate: true},
    h("div", {}, h("label", {for: "job-model"}, "Model"), modelHint, modelSel),
    h("label", {for: "job-signal"}, "Signal"), signalSel, signalDesc,
    h("div", {class: "row"}, field("Target", kindSel), h("div", {}, h("label", {for: "job-value"}, "Value"), valueInput)), valueHint,
    field("Calibration data", h("select", {id: "job-calibration", name: "calibration"}, options(state.datasets, dataLabel, "none")),
          "Needed by data-driven signals and by every recovery method."),
    field("Evaluation data", h("select", {id: "job-evaluation", name: "evaluation"}, options(state.datasets, dataLabel, "none")),
          "Labelled data gives accuracy before and after."),
    field("Recovery", h("select", {id: "job-recovery", name: "recovery"}, (methods.length ? methods : ["none"]).map((m) => h("option", {value: m}, m)))),
    h("div", {class: "actions"}, h("button", {type: "submit"}, "Submit job")), msg("job-msg"));

  out.append(h("h1", {}, "New job"), h("div", {class: "grid"},
    h("div", {}, h("section", {}, h("h2", {}, "1. Upload a model"), modelForm),
                 h("section", {}, h("h2", {}, "2. Upload data (optional)"), dataForm)),
    h("section", {}, h("h2", {}, "3. Prune"), jobForm)));

  modelForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = modelForm.elements.file.files[0], errors = {};
    if (!file) errors.file = "Choose a model file.";
    else if (/\.(pt|pth|pkl|pt2|ckpt|bin)$/i.test(file.name)) errors.file = "Pickled PyTorch files are refused: export to ONNX, or save the state dict as .safetensors and give the architecture.";
    else if (/\.safetensors$/i.test(file.name) && !modelForm.elements.arch.value.trim()) errors.arch = "Safetensors weights need the architecture name.";
    if (!showErrors(modelForm, errors)) return;
    const body = new FormData();
    body.append("file", file);
    for (const k of ["arch", "num_classes"]) if (modelForm.elements[k].value.trim()) body.append(k, modelForm.elements[k].value.trim());
    await submitting(modelForm, async () => {
      const m = await api("/v1/models", {method: "POST", body});
      state.models.unshift(m);
      jobForm.elements.model.replaceChildren(...options(state.models, modelLabel));
      jobForm.elements.model.value = m.id;
      hintModel();
      modelForm.reset();
      $("model-msg").textContent = `Uploaded ${m.filename} as ${m.id}; it is chosen below.`;
    }, {file: "file", arch: "arch", num_classes: "num_classes"});
  });
  dataForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = dataForm.elements.file.files[0];
    if (!showErrors(dataForm, file ? {} : {file: "Choose an .npz file."})) return;
    const body = new FormData();
    body.append("file", file);
    await submitting(dataForm, async () => {
      const d = await api("/v1/datasets", {method: "POST", body});
      state.datasets.unshift(d);
      for (const name of ["calibration", "evaluation"]) jobForm.elements[name].replaceChildren(...options(state.datasets, dataLabel, "none"));
      jobForm.elements.calibration.value = d.id;
      dataForm.reset();
      $("data-msg").textContent = `Uploaded ${d.filename} (${d.samples} samples) as ${d.id}; chosen as calibration data.`;
    }, {file: "file"});
  });
  jobForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = jobForm.elements;
    if (!showErrors(jobForm, validateJob(f))) return;
    const spec = {signal: f.signal.value, target: {[f.kind.value]: Number(f.value.value)}, recovery: {method: f.recovery.value}};
    if (f.calibration.value) spec.calibration = {dataset_id: f.calibration.value};
    if (f.evaluation.value) spec.evaluation = {dataset_id: f.evaluation.value};
    await submitting(jobForm, async () => {
      const job = await api("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify({model_id: f.model.value, spec})});
      state.jobs.set(job.id, job);
      announce(`Submitted ${job.id}`);
      location.hash = `#/jobs/${job.id}`;
    }, SERVER_FIELDS);
  });
}

// Runs one submission with its button disabled; the API's 4xx lands on the field it names, else on the form.
async function submitting(form, work, fields) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    const named = (err.errors || []).map((x) => [fields[x.field] || fields[(x.field || "").split(".").slice(0, 2).join(".")], x.message])
      .filter(([k]) => k && form.elements[k]);
    if (named.length) showErrors(form, Object.fromEntries(named));
    else if (err.status !== 401) form.querySelector("[role=status]").textContent = `Refused: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------------ compare

async function compareView(out, params) {
  await loadCatalogue();
  const modelId = params.get("model") || state.models[0]?.id || "";
  const jobs = modelId ? (await allPages(`/v1/jobs?model_id=${modelId}&status=succeeded`)).filter((j) => j.metrics?.layers) : [];
  const jobLabel = (j) => `${j.id}: ${signalOf(j)}, ${targetOf(j)} (${pct(j.metrics.macs_kept)} MACs)`;
  const a = params.get("a") || jobs[0]?.id || "", b = params.get("b") || jobs.find((j) => j.id !== a)?.id || "";
  const go = () => {
    const f = form.elements;
    location.hash = `#/compare?model=${f.model.value}&a=${f.a.value}&b=${f.b.value}`;
  };
  const form = h("form", {id: "compare-form", class: "grid", onchange: go, onsubmit: (e) => { e.preventDefault(); go(); }},
    field("Model", h("select", {id: "cmp-model", name: "model"}, options(state.models, (m) => `${m.filename} ${m.id}`))),
    field("Job A", h("select", {id: "cmp-a", name: "a"}, options(jobs, jobLabel, "choose"))),
    field("Job B", h("select", {id: "cmp-b", name: "b"}, options(jobs, jobLabel, "choose"))));
  form.elements.model.value = modelId;
  form.elements.a.value = a;
  form.elements.b.value = b;
  out.append(h("section", {}, h("h1", {}, "Compare signals on one model"),
    h("p", {class: "hint"}, "Two finished jobs on the same model, side by side: how many channels each signal kept in every layer, and which ones it cut."),
    form));
  const ja = jobs.find((j) => j.id === a), jb = jobs.find((j) => j.id === b);
  if (!ja || !jb || ja === jb) {
    out.append(h("section", {}, h("p", {}, jobs.length < 2
      ? "This model needs two succeeded jobs to compare: submit another with a different signal."
      : "Choose two different jobs.")));
    return;
  }
  const values = (j) => Object.fromEntries(j.metrics.layers.map((l) => [l.name, l.channels_after]));
  const va = values(ja), vb = values(jb);
  const layers = ja.metrics.layers.map((l) => ({name: l.name, before: l.channels_before}));
  const differ = layers.filter((l) => va[l.name] !== vb[l.name]).length;
  const la = `A: ${signalOf(ja)}`, lb = `B: ${signalOf(jb)}`;
  const row = (label, f) => [label, f(ja.metrics), f(jb.metrics)];
  out.append(h("section", {}, h("h2", {}, "Figures"), h("div", {class: "table-wrap"}, h("table", {},
    h("thead", {}, h("tr", {}, ["", la, lb].map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, [row("MACs kept", (m) => pct(m.macs_kept)), row("Parameters kept", (m) => pct(m.params_kept)),
                    row("Latency after (ms)", (m) => fmt(m.latency_ms_after)),
                    row("Accuracy after", (m) => pct(m.accuracy_after)), row("Top-1 agreement", (m) => pct(m.agreement))]
      .map((r) => h("tr", {}, h("th", {scope: "row"}, r[0]), h("td", {class: "num"}, r[1]), h("td", {class: "num"}, r[2]))))))));
  out.append(h("section", {}, h("h2", {id: "compare-heading"}, `Channels kept per layer (${differ} of ${layers.length} layers differ)`),
    h("ul", {class: "legend"}, h("li", {class: "before"}, "before"), h("li", {class: "s0"}, la), h("li", {class: "s1"}, lb)),
    h("div", {class: "chart-scroll", id: "compare-chart", tabindex: 0, "aria-labelledby": "compare-heading"},
      layerChart(layers, [{label: la, values: va}, {label: lb, values: vb}], `Channels kept per layer: ${la} against ${lb}`)),
    dataTable("Channels per layer as a table", ["Layer", "Before", la, lb, "A − B"],
      layers.map((l) => [l.name, l.before, va[l.name] ?? 0, vb[l.name] ?? 0, (va[l.name] ?? 0) - (vb[l.name] ?? 0)]))));
  out.append(cutComparison(ja, jb, la, lb));
}

// Channel i of a layer is bit 3 - i % 4 of hex digit i / 4 (the report's `cut`).
function bitsOf(hex, n) {
  const bits = new Uint8Array(n);
  for (let i = 0; i < n; i++) bits[i] = (parseInt(hex[i >> 2], 16) >> (3 - (i & 3))) & 1;
  return bits;
}

function cutComparison(ja, jb, la, lb) {
  const box = h("section", {}, h("h2", {id: "cut-heading"}, "Which channels each signal cut"));
  const cutsB = Object.fromEntries(jb.metrics.layers.map((l) => [l.name, l.cut]));
  const rows = ja.metrics.layers.filter((l) => l.cut && cutsB[l.name]).map((l) => {
    const a = bitsOf(l.cut, l.channels_before), b = bitsOf(cutsB[l.name], l.channels_before);
    return {name: l.name, who: Array.from(a, (x, i) => x + 2 * b[i])};
  });
  if (!rows.length) {
    box.append(h("p", {class: "hint"}, "These reports predate the per-channel record: run the jobs again to compare channel by channel."));
    return box;
  }
  const count = (r, c) => r.who.filter((x) => x === c).length;
  const both = rows.reduce((s, r) => s + count(r, 3), 0), either = rows.reduce((s, r) => s + r.who.filter(Boolean).length, 0);
  box.append(h("p", {id: "cut-overlap"}, `Of the ${either} channels either signal cut, both cut ${both} (${pct(either ? both / either : 1)} overlap).`),
    h("ul", {class: "legend"}, h("li", {class: "cut3"}, "cut by both"), h("li", {class: "cut1"}, `cut by ${la} only`),
      h("li", {class: "cut2"}, `cut by ${lb} only`), h("li", {class: "before"}, "kept by both")),
    h("div", {class: "chart-scroll", id: "cut-chart", tabindex: 0, "aria-labelledby": "cut-heading"},
      channelMap(rows, [la, lb], `Channels cut per layer: ${la} against ${lb}, each row a layer's channels in order`)),
    dataTable("Cut channels per layer as a table", ["Layer", "Cut by both", `${la} only`, `${lb} only`, "Overlap"],
      rows.map((r) => {
        const any = r.who.filter(Boolean).length;
        return [r.name, count(r, 3), count(r, 1), count(r, 2), any ? pct(count(r, 3) / any) : "–"];
      })));
  return box;
}

// ------------------------------------------------------------------------------------------------ start

keyControls();
if (state.key) startStream().then(() => route());
else route();
