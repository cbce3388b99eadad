"""`GET /`: the web dashboard. One self-contained page (no CDN, no build step) that talks to the same
REST API with the same Bearer keys; the key stays in the browser's localStorage."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Secateurs</title>
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f7f8}
 header{background:#23412e;color:#fff;padding:10px 20px;display:flex;gap:16px;align-items:center}
 header h1{font-size:18px;margin:0;flex:1} main{display:grid;grid-template-columns:340px 1fr;gap:16px;padding:16px}
 section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin-bottom:16px}
 h2{font-size:15px;margin:0 0 8px} label{display:block;margin:6px 0 2px;font-size:12px;color:#555}
 input,select,button{font:inherit;padding:4px 6px;box-sizing:border-box} input,select{width:100%}
 button{margin-top:8px;cursor:pointer} table{width:100%;border-collapse:collapse}
 td,th{text-align:left;padding:4px 6px;border-bottom:1px solid #eee;font-size:13px} tr.job{cursor:pointer}
 tr.job:hover{background:#f0f5f1} .bar{background:#e6e6e6;height:8px;border-radius:4px;min-width:80px}
 .bar>div{background:#3a7d4f;height:8px;border-radius:4px} .err{color:#b00020;white-space:pre-wrap}
 pre{background:#f3f3f3;padding:8px;max-height:260px;overflow:auto;font-size:12px} .muted{color:#777}
</style></head><body>
<header><h1>Secateurs &mdash; structured channel pruning</h1>
 <input id="key" type="password" placeholder="API key (sk_...)" style="width:320px">
 <button id="save-key" style="margin:0">Use key</button></header>
<main><div>
 <section><h2>Upload a model</h2>
  <form id="model-form"><label>ONNX, or safetensors weights</label><input type="file" name="file" required>
  <label>arch (for safetensors, e.g. resnet50, resnet56_cifar)</label><input name="arch">
  <label>num_classes</label><input name="num_classes" type="number" min="1">
  <button>Upload</button></form><div id="model-msg"></div></section>
 <section><h2>Upload data (.npz with x, optional y)</h2>
  <form id="data-form"><input type="file" name="file" required><button>Upload</button></form>
  <div id="data-msg"></div></section>
 <section><h2>New job</h2><form id="job-form">
  <label>model</label><select name="model" required></select>
  <label>signal</label><select name="signal"></select>
  <label>target (fraction kept, or latency_ms)</label>
  <div style="display:flex;gap:6px"><select name="kind" style="width:45%"><option>macs</option><option>params</option>
   <option>channels</option><option>latency_ms</option></select><input name="value" value="0.5" required></div>
  <label>calibration data</label><select name="calibration"><option value="">none</option></select>
  <label>recovery</label><select name="recovery"><option>none</option><option>reconstruct</option>
   <option>distill</option><option>finetune</option></select>
  <button>Submit</button></form><div id="job-msg"></div></section>
</div><div>
 <section><h2>Jobs</h2><table><thead><tr><th>job</th><th>status</th><th>progress</th><th>stage</th>
  <th>created</th></tr></thead><tbody id="jobs"></tbody></table></section>
 <section id="detail" hidden><h2 id="detail-title"></h2><div id="detail-body"></div>
  <button id="cancel">Cancel</button> <button id="dl-model">Download model.onnx</button>
  <button id="dl-report">Download report.json</button><h2 style="margin-top:12px">Events</h2>
  <pre id="events"></pre></section>
</div></main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let key = localStorage.getItem("secateurs_key") || "", current = null, stream = null;
$("key").value = key;
$("save-key").onclick = () => { key = $("key").value.trim(); localStorage.setItem("secateurs_key", key); refresh(); };
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {...(opts.headers || {}), Authorization: "Bearer " + key}});
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : await r.blob();
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}
function show(id, text, bad) { $(id).innerHTML = `<div class="${bad ? "err" : "muted"}">${esc(text)}</div>`; }
async function upload(form, path, msg) {
  try { const o = await api(path, {method: "POST", body: new FormData(form)}); show(msg, "uploaded " + o.id); form.reset(); refresh(); }
  catch (e) { show(msg, e.message, true); }
}
$("model-form").onsubmit = (e) => { e.preventDefault(); upload(e.target, "/v1/models", "model-msg"); };
$("data-form").onsubmit = (e) => { e.preventDefault(); upload(e.target, "/v1/datasets", "data-msg"); };
$("job-form").onsubmit = async (e) => {
  e.preventDefault(); const f = e.target;
  const spec = {signal: f.signal.value, target: {[f.kind.value]: Number(f.value.value)}, recovery: {method: f.recovery.value}};
  if (f.calibration.value) spec.calibration = {dataset_id: f.calibration.value};
  try {
    const j = await api("/v1/jobs", {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify({model_id: f.model.value, spec})});
    show("job-msg", "submitted " + j.id); refresh(); select(j.id);
  } catch (err) { show("job-msg", err.message, true); }
};
function fill(sel, items, label, keep) {
  const old = sel.value;
  sel.innerHTML = keep + items.map((i) => `<option value="${esc(i.id)}">${esc(label(i))}</option>`).join("");
  if ([...sel.options].some((o) => o.value === old)) sel.value = old;
}
async function refresh() {
  if (!key) return;
  try {
    const [jobs, models, data] = await Promise.all([api("/v1/jobs?limit=50"), api("/v1/models?limit=200"),
                                                    api("/v1/datasets?limit=200")]);
    const f = $("job-form");
    fill(f.model, models.data, (m) => `${m.filename} (${m.format}${m.arch ? ", " + m.arch : ""}) ${m.id}`, "");
    fill(f.calibration, data.data, (d) => `${d.filename} (${d.samples} samples) ${d.id}`, '<option value="">none</option>');
    $("jobs").innerHTML = jobs.data.map((j) => `<tr class="job" data-id="${esc(j.id)}"><td>${esc(j.id)}</td>
      <td>${esc(j.status)}</td><td><div class="bar"><div style="width:${Math.round(j.progress * 100)}%"></div></div></td>
      <td>${esc(j.stage)}</td><td>${esc((j.created_at || "").slice(0, 19).replace("T", " "))}</td></tr>`).join("");
    document.querySelectorAll("tr.job").forEach((tr) => tr.onclick = () => select(tr.dataset.id));
    if (current) detail(await api("/v1/jobs/" + current));
  } catch (e) { show("job-msg", e.message, true); }
}
function detail(j) {
  $("detail").hidden = false; $("detail-title").textContent = `${j.id} — ${j.status}`;
  const m = j.metrics || {}, rows = [["stage", j.stage], ["progress", Math.round(j.progress * 100) + "%"]];
  if (m.macs_before) rows.push(["MACs", `${m.macs_before} → ${m.macs_after} (${(m.macs_kept * 100).toFixed(1)}% kept)`],
    ["params", `${m.params_before} → ${m.params_after}`],
    ["latency (ms)", `${(m.latency_ms_before ?? 0).toFixed(3)} → ${(m.latency_ms_after ?? 0).toFixed(3)}`]);
  if (m.agreement !== undefined) rows.push(["top-1 agreement", (m.agreement * 100).toFixed(2) + "%"]);
  $("detail-body").innerHTML = "<table>" + rows.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("") +
    "</table>" + (j.error ? `<p class="err">${esc(j.error)}</p>` : "");
  $("cancel").hidden = !["queued", "running"].includes(j.status);
  $("dl-model").hidden = $("dl-report").hidden = j.status !== "succeeded";
}
async function select(id) {
  current = id; if (stream) stream.abort(); $("events").textContent = "";
  detail(await api("/v1/jobs/" + id));
  stream = new AbortController();
  try {  // Server-Sent Events read with fetch, so the key travels in a header rather than the URL
    const r = await fetch(`/v1/jobs/${id}/events`, {signal: stream.signal,
      headers: {Authorization: "Bearer " + key, Accept: "text/event-stream"}});
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader(); let buf = "";
    for (;;) {
      const {value, done} = await reader.read(); if (done) break; buf += value; let i;
      while ((i = buf.indexOf("\\n\\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        const data = block.split("\\n").find((l) => l.startsWith("data: "));
        if (!data) continue;
        const e = JSON.parse(data.slice(6)), pct = e.progress == null ? "    " : String(Math.round(e.progress * 100)).padStart(3) + "%";
        $("events").textContent += `${pct} ${e.type.padEnd(10)} ${(e.stage || "").padEnd(8)} ${e.message || ""}\\n`;
        $("events").scrollTop = 1e9;
      }
    }
    refresh();
  } catch (e) { if (e.name !== "AbortError") $("events").textContent += e.message; }
}
async function download(name) {
  const r = await fetch(`/v1/jobs/${current}/artifacts/${name}`, {headers: {Authorization: "Bearer " + key}});
  if (!r.ok) { $("events").textContent += (await r.json()).detail + "\\n"; return; }
  const blob = await r.blob(), a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = `${current}-${name}`; a.click(); URL.revokeObjectURL(a.href);
}
$("dl-model").onclick = () => download("model.onnx");
$("dl-report").onclick = () => download("report.json");
$("cancel").onclick = async () => { await api(`/v1/jobs/${current}/cancel`, {method: "POST"}); refresh(); };
fetch("/v1/signals").then((r) => r.json()).then((s) => {
  $("job-form").signal.innerHTML = s.data.map((x) => `<option ${x.name === "l2_norm" ? "selected" : ""}>${esc(x.name)}</option>`).join("");
});
refresh(); setInterval(refresh, 3000);
</script></body></html>
"""


@router.get("/", include_in_schema=False)
def dashboard() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                  "script-src 'unsafe-inline'; img-src 'self' blob: data:"})
