/* adcopilot web page: what the inspector does. Choose queries and references (files or a stored
   reference set), inspect every query (one request each, the service runs them one at a time), show
   the chosen one, re-judge all at the threshold on the slider from the maps already returned,
   download results, ask questions (the answer streams in from the chat endpoint as it is written;
   Stop ends it). A result is shown only for the inputs it was made from: any change of inputs
   clears the results, and a failed request shows no verdict. */
"use strict";

const $ = (id) => document.getElementById(id);
const IMAGE_TYPES = /\.(png|jpe?g|bmp|webp|gif)$/i;  // what a browser shows by itself; others come as previews
const state = {
  queries: [], refs: [], setId: "", sets: [], setFiles: new Map(),  // set id -> the files saved from this page
  rows: [], selected: -1, generation: 0,  // generation: results of older inputs are dropped on arrival
  modelThreshold: null, touched: false, threshold: null,
  refImg: null, queryImg: null, history: [], heat: new WeakMap(),
  chat: null,  // the AbortController of the question being answered
};

// ------------------------------------------------------------------ small helpers
function authHeaders() {
  const key = $("apikey").value.trim();
  try { localStorage.setItem("adcopilot-key", key); } catch (e) { /* private mode */ }
  return key ? { "X-API-Key": key } : {};
}
try { $("apikey").value = localStorage.getItem("adcopilot-key") || ""; } catch (e) { /* private mode */ }

function setStatus(text, error) { const s = $("status"); s.textContent = text; s.className = error ? "error" : ""; }

function setBusy(text) {
  $("busy").hidden = !text; $("busy-text").textContent = text || "";
  for (const id of ["viewer", "results"]) $(id).setAttribute("aria-busy", text ? "true" : "false");
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

const urls = new WeakMap();
function fileUrl(f) { if (!urls.has(f)) urls.set(f, URL.createObjectURL(f)); return urls.get(f); }
async function fileImage(f) {
  if (!f || !IMAGE_TYPES.test(f.name)) return null;
  try { return await loadImage(fileUrl(f)); } catch (e) { return null; }
}

async function api(method, url, body) {
  const r = await fetch(url, { method, body, headers: authHeaders() });
  let data;
  try { data = await r.json(); } catch (e) { data = { detail: r.statusText || "no answer" }; }
  if (!r.ok) throw new Error(`${r.status}: ${typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)}`);
  return data;
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function stem(name) { return name.replace(/\.[^.]*$/, "") || "result"; }

// ------------------------------------------------------------------ inputs
function thumbs(el, files) {
  el.textContent = "";
  for (const f of files) {
    const img = document.createElement("img");
    img.alt = f.name; img.title = f.name;
    img.onerror = () => { const s = document.createElement("span"); s.textContent = f.name; img.replaceWith(s); };
    img.src = fileUrl(f);
    el.appendChild(img);
  }
}

function setupDrop(zone, input, onFiles) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    const files = Array.from(e.dataTransfer.files || []);
    if (files.length) onFiles(files);
  });
  input.addEventListener("change", () => onFiles(Array.from(input.files || [])));
}

/** The inputs changed: results of the old ones go at once (never shown as if judged), the new images show. */
async function inputsChanged() {
  const gen = ++state.generation;
  state.rows = []; state.selected = -1; state.history = [];
  state.refImg = null; state.queryImg = null;
  if (!$("busy").hidden) setBusy("finishing the earlier request…");  // its answer will be dropped
  if (state.chat) state.chat.abort();  // an answer about the old images is not wanted
  if ($("chat-log").childElementCount) say("note", "page", "Inputs changed: earlier answers were about other images.");
  setStatus("");
  render();
  const refFiles = state.setId ? state.setFiles.get(state.setId) || [] : state.refs;
  const [q, r] = await Promise.all([fileImage(state.queries[0]), fileImage(refFiles[0])]);
  if (gen !== state.generation) return;
  state.queryImg = q; state.refImg = r;
  render();
}

setupDrop($("query-drop"), $("query-file"), (files) => {
  state.queries = files; thumbs($("query-thumbs"), files); inputsChanged();
});
setupDrop($("ref-drop"), $("ref-files"), (files) => {
  state.refs = files; thumbs($("ref-thumbs"), files);
  if (state.setId) { state.setId = ""; $("ref-set").value = ""; $("forget-set").hidden = true; }
  inputsChanged();
});
$("ref-set").addEventListener("change", () => {
  state.setId = $("ref-set").value; $("forget-set").hidden = !state.setId; inputsChanged();
});

async function loadSets(choose) {
  try {
    state.sets = (await api("GET", "/v1/references")).reference_sets;
  } catch (e) { setStatus(`reference sets: ${e.message}`, true); return; }
  const sel = $("ref-set");
  sel.length = 1;
  for (const s of state.sets) {
    const o = document.createElement("option");
    const what = s.product ? `, ${s.product}${s.material ? ` (${s.material})` : ""}` : "";
    o.value = s.id; o.textContent = `set “${s.name}” (${s.count} image${s.count > 1 ? "s" : ""}${what})`;
    sel.appendChild(o);
  }
  if (choose !== undefined) state.setId = choose;
  if (!state.sets.some((s) => s.id === state.setId)) state.setId = "";
  sel.value = state.setId; $("forget-set").hidden = !state.setId;
}

$("save-set").addEventListener("click", async () => {
  if (!state.refs.length) { setStatus("Choose the good images to save as a set first.", true); return; }
  const fd = new FormData();
  for (const f of state.refs) fd.append("references", f, f.name);
  for (const [field, id] of [["name", "set-name"], ["product", "set-product"], ["material", "set-material"]]) {
    const value = $(id).value.trim();
    if (value) fd.append(field, value);
  }
  try {
    const s = await api("POST", "/v1/references", fd);
    state.setFiles.set(s.id, state.refs);
    await loadSets(s.id);
    setStatus(`Saved set “${s.name}”; inspections now use it.`);
    inputsChanged();
  } catch (e) { setStatus(`saving the set: ${e.message}`, true); }
});

$("forget-set").addEventListener("click", async () => {
  const id = state.setId;
  try { await api("DELETE", `/v1/references/${encodeURIComponent(id)}`); } catch (e) { setStatus(e.message, true); }
  state.setFiles.delete(id);
  await loadSets("");
  inputsChanged();
});

// ------------------------------------------------------------------ inspection
function pairForm(file) {
  const fd = new FormData();
  fd.append("query", file, file.name);
  if (state.setId) fd.append("reference_set", state.setId);
  else for (const f of state.refs) fd.append("references", f, f.name);
  return fd;
}

async function inspectAll() {
  if (!state.queries.length) { setStatus("Choose at least one query image.", true); return; }
  if (!state.setId && !state.refs.length) { setStatus("Choose a normal reference image or a reference set.", true); return; }
  const gen = ++state.generation;
  state.rows = state.queries.map((file) => ({ file, status: "waiting" }));
  state.selected = 0; state.history = [];
  setStatus(""); render();
  $("inspect-btn").disabled = true;
  try {
    const failed = await inspectRows(gen);
    if (gen === state.generation) setStatus(failed ? `${failed} of ${state.rows.length} could not be inspected (see the table).` : "", failed > 0);
  } finally {
    setBusy(""); $("inspect-btn").disabled = false;
  }
}

/** Inspect the rows one by one; stops as soon as the inputs change. The number that failed. */
async function inspectRows(gen) {
  const needRefPreview = !state.refImg;
  let failed = 0;
  for (const [i, row] of state.rows.entries()) {
    setBusy(`inspecting ${i + 1} of ${state.rows.length}…`);
    row.status = "working"; render();
    const fd = pairForm(row.file);
    fd.append("heatmap", "true");
    const showable = IMAGE_TYPES.test(row.file.name);
    if (!showable || (needRefPreview && i === 0)) fd.append("preview", "true");
    if (state.touched) fd.append("threshold", String(state.threshold));
    const t0 = performance.now();
    try {
      const res = await api("POST", "/v1/inspect", fd);
      if (gen !== state.generation) return failed;  // inputs changed meanwhile: this answer is for other images
      row.grid = res.anomaly_grid ? AdcBoxes.decodeGrid(res.anomaly_grid) : null;
      row.img = (showable ? await fileImage(row.file) : null) || (res.preview ? await loadImage(res.preview) : null);
      if (res.reference_preview && !state.refImg) state.refImg = await loadImage(res.reference_preview);
      if (gen !== state.generation) return failed;
      row.res = res; row.ms = performance.now() - t0; row.status = "done";
    } catch (e) {
      if (gen !== state.generation) return failed;
      row.status = "error"; row.error = e.message; failed++;
    }
    render();
  }
  return failed;
}

/** A row's verdict and boxes at the current threshold: the service's own when it is the threshold the
    service used, otherwise re-computed here from the returned map. */
function judgement(row) {
  const res = row.res;
  const t = state.touched ? state.threshold : res.threshold;
  if (Math.abs(t - res.threshold) <= 5e-7) {
    return { threshold: res.threshold, verdict: res.verdict, boxes: res.boxes, description: res.description, served: true };
  }
  const j = AdcBoxes.judge(res, row.grid, t);
  const n = j.boxes.length;
  const description = res.image_check ? res.description :
    j.verdict === "normal" ? "Normal at this threshold: the image score is below it." :
    !row.grid ? "Anomalous at this threshold; inspect again to see its boxes (this model returns no map)." :
    `${n} defect region${n === 1 ? "" : "s"} at this threshold (re-drawn on the page from the returned map).`;
  return { threshold: t, verdict: j.verdict, boxes: row.grid ? j.boxes : [], description, served: false };
}

// ------------------------------------------------------------------ rendering
function render() { renderVerdict(); renderViewer(); renderTable(); }

function selectedRow() { return state.rows[state.selected] || null; }

function renderVerdict() {
  const row = selectedRow(), v = $("verdict");
  let text = "not inspected", cls = "none", file = "", score = "", desc = "";
  if (row) file = row.file.name;
  else if (state.queries.length) { file = state.queries[0].name; desc = "Press Inspect to judge it."; }
  if (row && (row.status === "waiting" || row.status === "working")) { text = "inspecting…"; }
  else if (row && row.status === "error") { text = "not judged"; desc = `Could not be inspected: ${row.error}`; }
  else if (row && row.status === "done") {
    const j = judgement(row);
    text = j.verdict.toUpperCase(); cls = j.verdict; desc = j.description;
    // Why the image was not judged as the product ("blank image", "not the reference product", ...).
    if (row.res.image_check) text += ` — ${row.res.image_check}`;
    // What the service noted about the input (an elongated image squeezed into the model's square).
    for (const note of row.res.notes || []) desc += ` Note: ${note}.`;
    score = `score ${row.res.score.toFixed(4)} · threshold ${j.threshold.toFixed(4)}`;
  }
  v.textContent = text; v.className = cls;
  $("verdict-file").textContent = file; $("score").textContent = score; $("description").textContent = desc;
  const done = row && row.status === "done";
  $("download-json").disabled = !done; $("download-image").disabled = !done;
  $("download-all").disabled = !state.rows.some((r) => r.status === "done");
}

function scaleTop(row) {
  const thr = state.modelThreshold ?? (row && row.res ? row.res.threshold : null);
  return thr > 0 ? 2 * thr : (row && row.grid ? row.grid.max : 1);
}

function heatOf(row, vmax) {
  let h = state.heat.get(row);
  if (!h || h.vmax !== vmax) { h = { vmax, image: AdcViewer.heatImage(row.grid, vmax) }; state.heat.set(row, h); }
  return h.image;
}

function renderViewer() {
  const row = selectedRow(), done = row && row.status === "done";
  const qimg = done ? row.img : state.queryImg;
  const [w, h] = done ? row.res.image_size : qimg ? [qimg.naturalWidth, qimg.naturalHeight] : [1, 1];
  const rimg = state.refImg;
  AdcViewer.showImage($("ref-view"), rimg, rimg ? rimg.naturalWidth : w, rimg ? rimg.naturalHeight : h);
  AdcViewer.showImage($("query-view"), qimg, w, h);
  const j = done ? judgement(row) : null;
  const vmax = scaleTop(row);
  const heat = done && row.grid && $("show-heat").checked ? heatOf(row, vmax) : null;
  const view = $("view");  // drawn in query pixels, whatever the canvas's own size
  AdcViewer.drawOverlay(AdcViewer.fitCanvas(view, w, h), qimg, w, h, heat, done && row.grid ? row.grid.cell : 1,
                        Number($("opacity").value), j ? j.boxes : [], false);
  AdcViewer.placeBoxes($("boxes"), $("boxlist"), j ? j.boxes : [], w, h);
  // Not judged (inputs just changed, working, failed): grey, so nothing looks like a verdict.
  $("viewer").classList.toggle("stale", !done);
  const thr = j ? j.threshold : (state.touched ? state.threshold : state.modelThreshold);
  AdcViewer.drawScale($("scale-bar"), $("scale-ticks"), vmax, thr);
  const t = done ? row.res.timings_ms || {} : {};
  $("timing").textContent = done ? `model ${row.res.model} · ${Math.round(t.total || 0)} ms in the model` : "";
}

function renderTable() {
  const body = $("results-body");
  body.textContent = "";
  state.rows.forEach((row, i) => {
    const tr = document.createElement("tr");
    if (i === state.selected) { tr.className = "selected"; tr.setAttribute("aria-current", "true"); }
    const cell = (text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; };
    cell(String(i + 1), "num");
    const name = document.createElement("button");
    name.type = "button"; name.className = "show"; name.textContent = row.file.name;
    name.setAttribute("aria-label", `Show ${row.file.name}`);
    name.addEventListener("click", () => { state.selected = i; state.history = []; render(); });
    cell("").appendChild(name);
    if (row.status === "done") {
      const j = judgement(row);
      cell(row.res.image_check ? `${j.verdict} (${row.res.image_check})` : j.verdict, `v-${j.verdict}`);
      cell(row.res.score.toFixed(4), "num"); cell(String(j.boxes.length), "num");
      cell(`${Math.round(row.ms)} ms`, "num");
    } else {
      cell(row.status === "error" ? `not judged: ${row.error}` : row.status === "working" ? "inspecting…" : "waiting",
           row.status === "error" ? "v-error" : "v-waiting");
      cell(""); cell(""); cell("");
    }
    body.appendChild(tr);
  });
}

// ------------------------------------------------------------------ threshold, heat, zoom
function setThresholdControls(value) {
  $("threshold-range").value = String(value);
  $("threshold").value = String(Number(value.toPrecision(6)));
  $("threshold-range").setAttribute("aria-valuetext", value.toFixed(4));
}

function onThreshold(value) {
  if (!Number.isFinite(value) || value < 0) return;
  state.touched = true; state.threshold = value;
  setThresholdControls(value);
  renderVerdict(); renderViewer(); renderTable();
}
$("threshold-range").addEventListener("input", () => onThreshold(Number($("threshold-range").value)));
$("threshold").addEventListener("change", () => onThreshold(Number($("threshold").value)));
$("threshold-reset").addEventListener("click", () => {
  state.touched = false; state.threshold = state.modelThreshold;
  if (state.modelThreshold != null) setThresholdControls(state.modelThreshold);
  render();
});
$("opacity").addEventListener("input", renderViewer);
$("show-heat").addEventListener("change", renderViewer);
const stages = Array.from(document.querySelectorAll(".stage"));
$("zoom-in").addEventListener("click", () => AdcViewer.zoom(1, stages, $("zoom-level")));
$("zoom-out").addEventListener("click", () => AdcViewer.zoom(-1, stages, $("zoom-level")));
$("zoom-fit").addEventListener("click", () => AdcViewer.zoom(0, stages, $("zoom-level")));
AdcViewer.syncScroll(Array.from(document.querySelectorAll(".pane")));

// ------------------------------------------------------------------ downloads
function resultJson(row) {
  const { heatmap, preview, reference_preview, anomaly_grid, ...res } = row.res;  // images stay out of the file
  const j = judgement(row);
  if (!j.served) res.on_page = { threshold: j.threshold, verdict: j.verdict, boxes: j.boxes, note: j.description };
  return res;
}

$("download-json").addEventListener("click", () => {
  const row = selectedRow(); if (!row || row.status !== "done") return;
  download(`${stem(row.file.name)}.adcopilot.json`, new Blob([JSON.stringify(resultJson(row), null, 2)], { type: "application/json" }));
});

$("download-all").addEventListener("click", () => {
  const all = state.rows.map((r) => (r.status === "done" ? resultJson(r) : { query: r.file.name, error: r.error || r.status }));
  download("adcopilot-results.json", new Blob([JSON.stringify(all, null, 2)], { type: "application/json" }));
});

$("download-image").addEventListener("click", () => {
  const row = selectedRow(); if (!row || row.status !== "done") return;
  const [w, h] = row.res.image_size, c = document.createElement("canvas");
  c.width = w; c.height = h;
  const heat = row.grid && $("show-heat").checked ? heatOf(row, scaleTop(row)) : null;
  AdcViewer.drawOverlay(c.getContext("2d"), row.img, w, h, heat, row.grid ? row.grid.cell : 1,
                        Number($("opacity").value), judgement(row).boxes, true);
  c.toBlob((blob) => download(`${stem(row.file.name)}.annotated.png`, blob), "image/png");
});

// ------------------------------------------------------------------ questions
function message(kind, who, text) {
  const m = document.createElement("div"); m.className = `msg ${kind}`;
  const b = document.createElement("b"); b.textContent = who + ": ";
  m.appendChild(b); m.appendChild(document.createTextNode(text));
  return m;
}

function say(kind, who, text) {
  const m = message(kind, who, text);
  $("chat-log").appendChild(m); $("chat-log").scrollTop = 1e9;
  return m;
}

function oneLine(text) { return String(text).replace(/\s+/g, " ").trim(); }

/** A file as a data URL the chat endpoint reads (its image type from the name when the browser has none). */
function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => {
      const ext = (file.name.match(/\.([a-z0-9]+)$/i) || [, "png"])[1].toLowerCase();
      resolve(String(r.result).replace(/^data:(?!image\/)[^;,]*/, `data:image/${ext}`));
    };
    r.onerror = () => reject(new Error(`${file.name}: the browser could not read the file`));
    r.readAsDataURL(file);
  });
}

/** The chat request for a question about ``file``: the references (or the set) and the query as images
    in the first user turn, the earlier turns, the question last; streamed. */
async function chatRequest(file, question) {
  const images = [...(state.setId ? [] : state.refs), file];
  const parts = [];
  for (const f of images) parts.push({ type: "image_url", image_url: { url: await dataUrl(f) } });
  // The latest earlier turns within the service's default caps (16 turns, 8,000 characters).
  let earlier = state.history.slice(-16);
  while (earlier.length && earlier.reduce((n, t) => n + t.content.length, 0) > 8000) earlier = earlier.slice(2);
  const turns = [...earlier, { role: "user", content: question }];
  const messages = turns.map((t) => ({ role: t.role, content: t.content }));
  messages[0] = { role: "user", content: [...parts, { type: "text", text: turns[0].content }] };
  const body = { model: "adcopilot", messages, stream: true };
  if (state.setId) body.reference_set = state.setId;
  return body;
}

/** The data of each server-sent event of a streamed response, as it arrives. */
async function* sseData(response) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, at); buf = buf.slice(at + 2);
      for (const line of block.split("\n")) if (line.startsWith("data: ")) yield line.slice(6);
    }
  }
}

/** The error of a refused chat request, in one line; the images it names by their place in the
    request ("messages[0].content[1]...") named by their files. */
async function chatError(r, names) {
  let text = r.statusText || "no answer";
  try { const d = await r.json(); text = d.error ? d.error.message : typeof d.detail === "string" ? d.detail : JSON.stringify(d); } catch (e) { /* not JSON */ }
  text = text.replace(/messages\[0\]\.content\[(\d+)\](\.image_url\.url)?/g, (m, i) => names[Number(i)] || m);
  return new Error(`${r.status}: ${text}`);
}

/** Ask about the shown query. The answer is written into the log as its tokens arrive, hidden from
    screen readers until it is whole (then it is added to the polite log once); the working indicator
    stays until the first token; Stop aborts the request. */
async function ask(question) {
  const row = selectedRow(), file = row ? row.file : state.queries[0];
  if (!file || (!state.setId && !state.refs.length)) { say("error", "page", "Choose a query and a normal reference first."); return; }
  say("user", "you", question);
  const log = $("chat-log"), controller = new AbortController(), gen = state.generation;
  state.chat = controller;
  const thinking = document.createElement("div");
  thinking.className = "msg thinking";
  thinking.innerHTML = '<span class="spinner" aria-hidden="true"></span><span>thinking…</span>';
  log.appendChild(thinking); log.setAttribute("aria-busy", "true"); log.scrollTop = 1e9;
  const t0 = performance.now();
  const tick = setInterval(() => { thinking.lastChild.textContent = `thinking… ${Math.round((performance.now() - t0) / 1000)} s`; }, 1000);
  $("ask-btn").disabled = true; $("stop-btn").hidden = false;
  let growing = null, text = "", problem = null;
  try {
    const body = await chatRequest(file, question);
    const r = await fetch("/v1/chat/completions", {
      method: "POST", body: JSON.stringify(body), signal: controller.signal,
      headers: { ...authHeaders(), "Content-Type": "application/json" },
    });
    if (!r.ok) throw await chatError(r, [...(state.setId ? [] : state.refs), file].map((f) => f.name));
    for await (const data of sseData(r)) {
      if (data === "[DONE]" || controller.signal.aborted) break;  // events already received stay unread once stopped
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      const piece = event.choices && event.choices.length ? event.choices[0].delta.content : "";
      if (!piece) continue;
      if (!growing) {  // the first token: the indicator goes, the answer starts
        clearInterval(tick); thinking.remove();
        growing = message("assistant streaming", "adcopilot", "");
        growing.setAttribute("aria-hidden", "true");  // not read token by token
        log.appendChild(growing);
      }
      text += piece;
      growing.lastChild.textContent = text; log.scrollTop = 1e9;
    }
  } catch (e) {
    problem = controller.signal.aborted ? null : e;
  } finally {
    clearInterval(tick); thinking.remove();
    const stopped = controller.signal.aborted;
    if (growing) growing.replaceWith(message("assistant", "adcopilot", text));  // read once, whole
    // Stopped because the inputs changed: the page has said so already.
    if (stopped && gen === state.generation) say("note", "page", "Stopped: the answer above is unfinished.");
    if (problem) say("error", "error", oneLine(problem.message));
    if (text && gen === state.generation) state.history.push({ role: "user", content: question }, { role: "assistant", content: text });
    if (state.chat === controller) state.chat = null;
    log.setAttribute("aria-busy", "false"); $("ask-btn").disabled = false; $("stop-btn").hidden = true;
  }
}

$("stop-btn").addEventListener("click", () => { if (state.chat) state.chat.abort(); });
$("inspect-btn").addEventListener("click", inspectAll);
$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("question").value.trim();
  if (q) { $("question").value = ""; ask(q); }
});

// ------------------------------------------------------------------ the model and the stored sets
// The model's own thresholds with two references or more: a short range on the model line (it must stay
// short on a phone), each count's in its title ("2 references: 0.485 · 3: 0.475 · 4: 0.4551 · 5 or more: 0.4403").
function referenceThresholds(m) {
  const steps = Object.entries(m.threshold_by_references || {}).map(([k, v]) => [Number(k), v])
    .sort((a, b) => a[0] - b[0]).filter(([k]) => k >= 2);
  const two = m.threshold_with_2_or_more_references;  // a service of an earlier version sends this alone
  if (!m.threshold_by_references && two != null && Math.abs(two - m.threshold) > 5e-7) steps.push([2, two]);
  if (!steps.length) return { text: "", title: "" };
  const values = steps.map(([, v]) => v);
  const lo = Math.min(...values), hi = Math.max(...values);
  const text = `, ${lo === hi ? lo.toFixed(4) : `${lo.toFixed(4)}-${hi.toFixed(4)}`} with 2+ references`;
  const title = steps.map(([k, v], i) => {
    const last = i + 1 === steps.length, next = last ? null : steps[i + 1][0];
    const span = last ? `${k} or more` : next === k + 1 ? `${k}` : `${k}-${next - 1}`;
    return `${span}${i === 0 ? " references" : ""}: ${v.toFixed(4)}`;
  }).join(" · ");
  return { text, title };
}
async function modelInfo() {
  try {
    const r = await fetch("/v1/models", { headers: authHeaders() });
    if (!r.ok) { $("model").textContent = r.status === 401 ? "enter the API key" : `model information: ${r.status}`; return; }
    const m = (await r.json()).models[0];
    const more = referenceThresholds(m);
    $("model").title = more.title;
    $("model").textContent = `model ${m.name} · ${m.image_size} px · threshold ${m.threshold.toFixed(4)}` +
      (m.threshold_source === "calibration" ? " (calibrated)" : "") + more.text +
      (m.language ? " · answers questions" : " · no language model");
    state.modelThreshold = m.threshold;
    const top = 3 * m.threshold > 0 ? 3 * m.threshold : 1;
    $("threshold-range").max = String(top); $("threshold-range").step = String(top / 1000);
    if (!state.touched) { state.threshold = m.threshold; setThresholdControls(m.threshold); }
    render();
    loadSets();
  } catch (e) { $("model").textContent = "service unreachable"; }
}
$("apikey").addEventListener("change", modelInfo);
render();
modelInfo();
