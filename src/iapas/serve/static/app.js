// iapas inspection station page: plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { review: false, items: [], current: null, kind: "overlay", blobs: new Map(), busy: 0 };

function token() { return sessionStorage.getItem("iapas-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { $("auth").hidden = false; $("token").focus(); }
  return response;
}

async function detail(response) {
  try { return (await response.json()).detail || response.statusText; } catch (e) { return response.statusText; }
}

function status(text) { $("status").textContent = text; }

function fmt(value, digits = 4) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

// The promise of each picture's object URL is kept, not the URL, so that a second request made
// before the first has answered (a new part's thumbnail, then show()) waits for the same fetch.
function picture(item, kind) {
  const key = item.id + "/" + kind;
  if (state.blobs.has(key)) return state.blobs.get(key);
  const promise = (async () => {
    const response = await api(item.urls[kind]);
    if (!response.ok) throw new Error(await detail(response));
    return URL.createObjectURL(await response.blob());
  })();
  state.blobs.set(key, promise);
  promise.catch(() => { if (state.blobs.get(key) === promise) state.blobs.delete(key); });  // retried next time
  if (state.blobs.size > 240) {  // keep memory bounded: drop the oldest pictures
    const [oldKey, oldPromise] = state.blobs.entries().next().value;
    state.blobs.delete(oldKey);
    oldPromise.then((url) => URL.revokeObjectURL(url), () => {});
  }
  return promise;
}

async function showPicture() {
  const item = state.current, img = $("overlay");
  if (!item) return;
  try {
    img.src = await picture(item, state.kind);
    img.alt = state.kind + " of " + (item.filename || item.key);
  } catch (e) { img.removeAttribute("src"); img.alt = "cannot load the " + state.kind + ": " + e.message; }
}

function show(item) {
  state.current = item;
  const verdict = $("verdict");
  verdict.textContent = item.decision || "no threshold";
  verdict.className = item.decision || "none";
  $("score").textContent = item.decision
    ? "score " + fmt(item.decision_score) + " / threshold " + fmt(item.threshold)
    : "image score " + fmt(item.image_score) + " (uncalibrated profile)";
  const facts = [
    ["part", item.filename || item.key], ["product", item.category],
    ["normalised score", fmt(item.normalized_score, 3)], ["image score", fmt(item.image_score)],
    ["object", item.object && item.object.box ? item.object.source + " " + fmt(item.object.score, 2) : (item.object || {}).source || "–"],
    ["size", item.width && item.height ? item.width + " × " + item.height : "–"],
  ];
  if (item.batch_size) facts.push(["batch", String(item.batch_size)]);
  $("facts").replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v; return [dt, dd];
  }));
  const rows = Object.entries(item.timings_ms || {}).map(([stage, ms]) => {
    const tr = document.createElement("tr");
    for (const text of [stage, fmt(ms, 1)]) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
    return tr;
  });
  $("timings").tBodies[0].replaceChildren(...rows);
  const boxes = [...(item.kept || []).map((b) => [b, ""]), ...(item.dropped || []).map((b) => [b, "dropped"])];
  $("boxes").replaceChildren(...(boxes.length ? boxes : [[null, ""]]).map(([b, cls]) => {
    const li = document.createElement("li");
    if (!b) { li.textContent = "no box"; return li; }
    li.className = cls;
    li.textContent = (b.phrase || "?") + " " + fmt(b.score, 2) + (cls ? " (dropped: too large)" : "");
    return li;
  }));
  for (const button of document.querySelectorAll("#history button")) {
    button.setAttribute("aria-current", String(button.dataset.id === item.id));
  }
  showPicture();
}

// Whether a part shows in the history: "NG only", and in a review the chosen product only.
function visible(item) {
  if ($("ng-only").checked && item.decision !== "NG") return false;
  return !state.review || item.category === $("category").value;
}

function applyFilter() {
  for (const li of $("history").children) {
    const item = state.items.find((i) => i.id === li.firstChild.dataset.id);
    li.hidden = !item || !visible(item);
  }
}

function historyButton(item) {
  const li = document.createElement("li"), button = document.createElement("button");
  button.type = "button"; button.dataset.id = item.id; button.className = item.decision || "";
  button.title = (item.filename || item.key) + ": " + (item.decision || "no threshold") + ", score " + fmt(item.image_score);
  const img = document.createElement("img"), label = document.createElement("span");
  img.alt = ""; label.textContent = (item.decision || "–") + " " + (item.filename || item.key || "");
  button.append(img, label);
  button.addEventListener("click", () => show(item));
  li.append(button);
  li.hidden = !visible(item);
  picture(item, "overlay").then((url) => { img.src = url; }).catch(() => {});
  return li;
}

function renderCounts() {
  const ng = state.items.filter((i) => i.decision === "NG").length;
  $("counts").textContent = state.items.length + " part(s), " + ng + " NG";
}

function addItem(item) {
  state.items.unshift(item);
  $("history").prepend(historyButton(item));
  renderCounts();
}

async function inspectFile(file, category) {
  for (let attempt = 0; attempt < 20; attempt++) {
    const form = new FormData();
    form.append("category", category); form.append("file", file, file.name);
    const response = await api("/v1/inspect", { method: "POST", body: form });
    if (response.status === 503) {  // the queue is full: wait as told, then retry
      const wait = Number(response.headers.get("Retry-After") || "1");
      await new Promise((r) => setTimeout(r, 1000 * wait));
      continue;
    }
    if (!response.ok) throw new Error(file.name + ": " + (await detail(response)));
    return response.json();
  }
  throw new Error(file.name + ": the station stayed busy; try again");
}

async function inspectFiles(files) {
  const category = $("category").value;
  if (!files.length || !category) return;
  state.busy += files.length;
  status("inspecting " + state.busy + " image(s)…");
  const errors = [];
  await Promise.all(Array.from(files).map(async (file) => {
    try { const item = await inspectFile(file, category); addItem(item); show(item); }
    catch (e) { errors.push(e.message); }
    finally { state.busy -= 1; }
  }));
  status(errors.length ? "error: " + errors.join("; ") : (state.busy ? "inspecting " + state.busy + " image(s)…" : "ready"));
}

async function load() {
  const health = await api("/v1/health");
  if (!health.ok) { status("error: " + (await detail(health))); return; }
  const info = await health.json();
  state.review = info.review;
  $("mode-label").textContent = info.review ? "review (read-only)" : "inspection station";
  $("upload-controls").hidden = info.review;
  $("history-title").textContent = info.review ? "All parts, highest score first" : "Recent parts";
  const profiles = await (await api("/v1/profiles")).json();
  $("category").replaceChildren(...profiles.profiles.map((p) => {
    const option = document.createElement("option");
    option.value = p.category;
    option.textContent = p.category + (p.decision ? "" : " (no threshold)");
    return option;
  }));
  const query = info.review ? "/v1/results?sort=score&limit=1000" : "/v1/results?limit=40";
  const listed = await (await api(query)).json();
  const items = listed.results.slice().reverse();  // addItem prepends: oldest (or lowest) first
  for (const item of items) addItem(item);
  if (state.items.length) show(state.items.find(visible) || state.items[0]);  // the first one listed
  status(info.review ? listed.total + " part(s) in this run" :
    "ready: " + (info.models ? info.models.detector + " + " + info.models.segmenter : "") + " on " + info.device);
}

$("files").addEventListener("change", (e) => { inspectFiles(e.target.files).then(() => { e.target.value = ""; }); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); inspectFiles(e.dataTransfer.files); });
for (const button of document.querySelectorAll(".toggles button")) {
  button.addEventListener("click", () => {
    state.kind = button.dataset.kind;
    for (const b of document.querySelectorAll(".toggles button")) b.setAttribute("aria-pressed", String(b === button));
    showPicture();
  });
}
$("ng-only").addEventListener("change", applyFilter);
$("category").addEventListener("change", applyFilter);
$("auth").addEventListener("submit", () => {
  sessionStorage.setItem("iapas-token", $("token").value.trim());
  $("auth").hidden = true; $("history").replaceChildren(); state.items = [];
  load();
});
load().catch((e) => status("error: " + e.message));
