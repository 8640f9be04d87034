// iapas inspection station page: plain JavaScript, no build step, nothing loaded from elsewhere.
// Live by polling: every POLL_MS the page asks GET /v1/results?after=... for the parts stored
// since, whoever posted them; a poll that fails or times out turns the screen OFFLINE.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500, POLL_TIMEOUT_MS = 2000, OVERLAP_MS = 5000;
const ID = /^[0-9a-f]{32}$/;
const state = {
  review: false, items: [], seen: new Set(), current: null, kind: "overlay", blobs: new Map(), busy: 0,
  offlineSince: null, pollTimer: null, flying: 0,
};

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

function status(text) { $("status").textContent = text; $("status").title = text; }

function fmt(value, digits = 4) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

// A station id starts with its time: 12 hex digits of epoch milliseconds (iapas.serve.store).
function idTime(id) { return ID.test(id || "") ? parseInt(id.slice(0, 12), 16) : null; }
function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour12: false }); }
function partName(item) {
  const file = item.filename || item.key || item.id;
  return item.part_id ? item.part_id + (file && file !== item.part_id ? " (" + file + ")" : "") : file;
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

// The big picture is always the shown part's: it is cleared when the part changes, and a
// picture that answers after another part (or kind) was chosen is dropped, never painted.
async function showPicture() {
  const item = state.current, kind = state.kind, img = $("overlay");
  if (img.dataset.part !== (item ? item.id : "") || img.dataset.kind !== kind) {
    img.removeAttribute("src"); img.dataset.part = item ? item.id : ""; img.dataset.kind = kind;
  }
  if (!item) { img.alt = "no part shown"; return; }
  img.alt = "loading the " + kind + " of " + partName(item);
  const readable = { map: "heat", mask: "outline" }[kind];  // the map in colour with its bar; the mask as an outline
  let url;
  try { url = await picture(item, readable && item.urls[readable] ? readable : kind); } catch (e) {
    if (state.current === item && state.kind === kind) { img.removeAttribute("src"); img.alt = "cannot load the " + kind + ": " + e.message; }
    return;
  }
  if (state.current !== item || state.kind !== kind) return;  // a later part (or kind) is shown now
  img.src = url;
  img.alt = kind + " of " + partName(item);
}

// The verdict box: one of READY, INSPECTING, OK, NG, NOT JUDGED, OFFLINE, with what it is about.
function screen(kind, big, line, reason = "") {
  const verdict = $("verdict");
  verdict.textContent = big; verdict.className = kind;
  $("verdict-part").textContent = line;
  $("verdict-reason").textContent = reason; $("verdict-reason").hidden = !reason;
  if (kind !== "OK" && kind !== "NG" && kind !== "none") {
    state.current = null;
    $("score").textContent = "score – / threshold –";
    $("facts").replaceChildren(); $("timings").tBodies[0].replaceChildren(); $("boxes").replaceChildren();
    markCurrent(); showPicture();
  }
}

function markCurrent() {
  const id = state.current ? state.current.id : null;
  for (const button of document.querySelectorAll("#history button")) button.setAttribute("aria-current", String(button.dataset.id === id));
}

function show(item) {
  if (state.offlineSince) return;  // nothing is judged on screen while the station does not answer
  state.current = item;
  const when = idTime(item.id);
  const line = "part " + partName(item) + " · product " + item.category + (when ? " · " + clock(when) : "");
  if (item.decision) screen(item.decision, item.decision, line, item.decision === "NG" ? mainReason(item) : "");
  else screen("none", "NOT JUDGED", line, "no threshold for the product " + item.category + " (not calibrated)");
  $("score").textContent = item.decision
    ? "score " + fmt(item.decision_score) + " / threshold " + fmt(item.threshold)
    : "image score " + fmt(item.image_score) + " (uncalibrated profile)";
  const facts = [
    ["part", partName(item)], ["product", item.category],
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
  markCurrent();
  const gt = document.querySelector(".toggles button[data-kind='gt']");
  gt.hidden = !item.urls.gt;  // a reviewed evaluate folder's ground truth
  if (gt.hidden && state.kind === "gt") { setKind("overlay"); return; }
  showPicture();
}

// The main reason for an NG in words: the kept box's phrase with the highest score.
function mainReason(item) {
  const kept = (item.kept || []).slice().sort((a, b) => (b.score || 0) - (a.score || 0));
  return kept.length && kept[0].phrase ? "main reason: " + kept[0].phrase : "";
}

// Whether a part shows in the history: "NG only", and in a review the chosen product only.
function visible(item) {
  if ($("ng-only").checked && item.decision !== "NG") return false;
  return !state.review || item.category === $("category").value;
}

function applyFilter() {
  for (const li of $("history").children) {
    if (li.id === "more") continue;
    const item = state.items.find((i) => i.id === li.firstChild.dataset.id);
    li.hidden = !item || !visible(item);
  }
}

// Thumbnails (at most 160 px, made by the station) are fetched only when their button scrolls into the history strip.
const thumbs = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    thumbs.unobserve(entry.target);
    loadThumb(entry.target);
  }
}, { root: null, rootMargin: "0px 400px" }) : null;

function loadThumb(button) {
  const item = state.items.find((i) => i.id === button.dataset.id), img = button.querySelector("img");
  if (item) picture(item, item.urls.thumb ? "thumb" : "overlay").then((url) => { img.src = url; }).catch(() => {});
}

function historyButton(item) {
  const li = document.createElement("li"), button = document.createElement("button");
  button.type = "button"; button.dataset.id = item.id; button.className = item.decision || "";
  button.title = partName(item) + ": " + (item.decision || "not judged") + ", score " + fmt(item.image_score);
  const img = document.createElement("img"), label = document.createElement("span");
  img.alt = ""; label.textContent = (item.decision || "–") + " " + (item.part_id || item.filename || item.key || "");
  button.append(img, label);
  button.addEventListener("click", () => { if (!state.review) setFollow(false); show(item); });
  li.append(button);
  li.hidden = !visible(item);
  return li;
}

function observe(li) {
  if (thumbs) thumbs.observe(li.firstChild); else loadThumb(li.firstChild);
}

function renderCounts() {  // in a review, of the chosen product
  const items = state.review ? state.items.filter((i) => i.category === $("category").value) : state.items;
  const ng = items.filter((i) => i.decision === "NG").length;
  $("counts").textContent = items.length + " part(s), " + ng + " NG";
  renderShift();
}

// The operator's shift counters: the station's OK and NG parts stored since the last reset
// (counted by the station, not only the parts listed here; the reset time is this browser's clock).
function shiftStart() { return Number(localStorage.getItem("iapas-shift-start") || "0"); }
let shiftTimer = null;
function renderShift() {
  if (state.review) return;
  clearTimeout(shiftTimer);
  shiftTimer = setTimeout(countShift, 200);  // once for a burst of parts
}
async function countShift() {
  const since = shiftStart(), after = since ? "&after=" + since.toString(16).padStart(12, "0") : "";
  const total = async (decision) => {
    const response = await api("/v1/results?limit=1&decision=" + decision + after);
    if (!response.ok) throw new Error(await detail(response));
    return (await response.json()).total;
  };
  let ok, ng;
  try { [ok, ng] = await Promise.all([total("OK"), total("NG")]); } catch (e) { return; }
  $("shift-ok").textContent = ok; $("shift-ng").textContent = ng;
  $("shift-rate").textContent = ok + ng ? (100 * ng / (ok + ng)).toFixed(1) + " %" : "–";
  $("shift-since").textContent = since ? "since " + clock(since) : "all parts stored";
}

// Station history: newest first, by id (ids sort by time), whatever order the answers came in.
function addItem(item) {
  if (state.seen.has(item.id)) return false;
  state.seen.add(item.id);
  const li = historyButton(item), list = $("history");
  if (state.review) { state.items.unshift(item); list.prepend(li); } else {
    let at = state.items.findIndex((i) => i.id < item.id);
    if (at < 0) at = state.items.length;
    const before = list.children[at] || null;
    state.items.splice(at, 0, item); list.insertBefore(li, before);
  }
  observe(li);
  renderCounts();
  return true;
}

// "Older parts": the next page of the history, the 100 stored before the oldest listed.
function moreButton() {
  const li = document.createElement("li"), button = document.createElement("button");
  li.id = "more"; button.type = "button"; button.textContent = "older parts…";
  button.addEventListener("click", async () => {
    const oldest = state.items[state.items.length - 1];
    const response = await api("/v1/results?limit=100&before=" + (oldest ? oldest.id : "f"));
    if (!response.ok) { status("error: " + (await detail(response))); return; }
    const listed = await response.json();
    for (const item of listed.results) addItem(item);
    if (listed.total <= listed.results.length) li.remove(); else $("history").append(li);
  });
  li.append(button);
  return li;
}

// The optional sound on NG (a short tone, made here: nothing is downloaded).
function isNg(item) { return item.decision === "NG"; }
function beep() {
  if (!$("sound").checked) return;
  try {
    const ctx = new AudioContext(), osc = ctx.createOscillator();
    osc.frequency.value = 880; osc.connect(ctx.destination); osc.start(); osc.stop(ctx.currentTime + 0.25);
    osc.onended = () => ctx.close();
  } catch (e) { /* no audio device: the screen still says NG */ }
}

function following() { return $("follow").checked; }
function setFollow(on) { $("follow").checked = on; }
function newest() { return state.items[0]; }

async function inspectFile(file, category) {
  for (let attempt = 0; attempt < 20; attempt++) {
    const form = new FormData();
    form.append("category", category); form.append("file", file, file.name);
    let response;
    try { response = await api("/v1/inspect", { method: "POST", body: form }); } catch (e) {
      throw new Error(file.name + ": the station did not answer");
    }
    if (response.status === 503 && response.headers.get("Retry-After")) {  // the queue is full: wait as told, then retry
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
  const names = Array.from(files).map((f) => f.name);
  state.busy += files.length;
  screen("inspecting", "INSPECTING", "part " + names.join(", ") + " · product " + category);
  status("inspecting " + state.busy + " image(s)…");
  const errors = [];
  await Promise.all(Array.from(files).map(async (file) => {
    try { const item = await inspectFile(file, category); if (addItem(item) && isNg(item)) beep(); show(item); } catch (e) { errors.push(e.message); } finally { state.busy -= 1; }
  }));
  if (errors.length && !state.offlineSince) screen("notjudged", "NOT JUDGED", "product " + category, errors.join("; "));
  status(errors.length ? "error: " + errors.join("; ") : (state.busy ? "inspecting " + state.busy + " image(s)…" : "ready"));
}

function setOffline(why) {
  if (state.offlineSince) return;
  state.offlineSince = Date.now();
  $("offline").hidden = false;
  $("offline-text").textContent = "OFFLINE since " + clock(state.offlineSince) + ": the station does not answer (" + why + ")";
  screen("offline", "OFFLINE", "since " + clock(state.offlineSince), "no verdict is shown until the station answers");
  status("offline");
}

function setOnline() {
  if (!state.offlineSince) return;
  state.offlineSince = null;
  $("offline").hidden = true;
  screen("idle", "READY", "waiting for the next part");
  status("ready");
}

// The poll's lower bound: OVERLAP_MS before the newest id seen, so that a part stored a little
// after a later one (ids are taken before the files are written) is still found; seen ids are skipped.
function cursor() {
  const t = idTime(newest() ? newest().id : "");
  return t === null ? "0" : Math.max(0, t - OVERLAP_MS).toString(16).padStart(12, "0");
}

async function poll() {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), POLL_TIMEOUT_MS);
  try {
    const response = await api("/v1/results?limit=1000&after=" + cursor(), { signal: controller.signal });
    if (response.status >= 500) throw new Error("HTTP " + response.status);
    if (!response.ok) return;
    const listed = await response.json();
    setOnline();
    const added = listed.results.filter(addItem);  // every new part, whatever order the store wrote them in
    if (added.some(isNg)) beep();  // any new NG part, not only the last one listed
    const flying = listed.in_flight || 0;
    if (following() && !state.busy) {  // the page's own uploads say INSPECTING and their outcome themselves
      if (added.length) show(newest());
      else if (flying > 0) {
        if ($("verdict").className !== "inspecting") screen("inspecting", "INSPECTING", flying + " part(s) sent to the station, in flight");
      } else if (state.flying > 0 && $("verdict").className === "inspecting") {
        screen("notjudged", "NOT JUDGED", "the part that was in flight", "it was refused or failed: its sender got the reason");
      }
    }
    state.flying = flying;
  } catch (e) {
    setOffline(e.name === "AbortError" ? "no answer in " + POLL_TIMEOUT_MS / 1000 + " s" : e.message);
  } finally {
    clearTimeout(timer);
    state.pollTimer = setTimeout(poll, POLL_MS);
  }
}

function chooseProduct(options) {
  const wanted = new URLSearchParams(location.search).get("product") || localStorage.getItem("iapas-product");
  if (wanted && options.includes(wanted)) $("category").value = wanted;
  rememberProduct();
}

function rememberProduct() {
  const product = $("category").value;
  if (!product) return;
  localStorage.setItem("iapas-product", product);
  const url = new URL(location.href);
  url.searchParams.set("product", product);
  history.replaceState(null, "", url);
  $("product-now").textContent = product;
}

async function load() {
  let health;
  try { health = await api("/v1/health"); } catch (e) { setOffline(e.message); setTimeout(load, 1000); return; }
  if (!health.ok) { status("error: " + (await detail(health))); return; }
  setOnline();
  const info = await health.json();
  state.review = info.review;
  document.body.classList.toggle("review", info.review);
  $("mode-label").textContent = info.review ? "review (read-only)" : "inspection station";
  $("upload-controls").hidden = info.review;
  $("history-title").textContent = info.review ? "All parts, highest score first" : "Recent parts, newest first";
  const profiles = await (await api("/v1/profiles")).json();
  $("category").replaceChildren(...profiles.profiles.map((p) => {
    const option = document.createElement("option");
    option.value = p.category;
    option.textContent = p.category + (p.decision ? " (threshold " + fmt(p.decision.threshold) + ")" : " (no threshold)");
    return option;
  }));
  chooseProduct(profiles.profiles.map((p) => p.category));
  const query = info.review ? "/v1/results?sort=score&limit=1000" : "/v1/results?limit=40";
  const listed = await (await api(query)).json();
  const items = listed.results.slice().reverse();  // addItem prepends: oldest (or lowest) first
  for (const item of items) addItem(item);
  if (!info.review && listed.total > listed.results.length) $("history").append(moreButton());
  if (info.review) {
    if (state.items.length) show(state.items.find(visible) || state.items[0]);  // the first one listed
    status(listed.total + " part(s) in this run");
    return;
  }
  screen("idle", "READY", "waiting for the next part");  // never the last verdict of an earlier session
  status("ready: " + (info.models ? info.models.detector + " + " + info.models.segmenter : "") + " on " + info.device);
  if (!state.pollTimer) state.pollTimer = setTimeout(poll, POLL_MS);
}

function setKind(kind) {
  state.kind = kind;
  for (const b of document.querySelectorAll(".toggles button")) b.setAttribute("aria-pressed", String(b.dataset.kind === kind));
  showPicture();
}

function step(delta) {  // the next (older) or previous (newer) part in the history
  const shown = state.items.filter(visible);
  const at = state.current ? shown.indexOf(state.current) : -1;
  const next = shown[Math.min(shown.length - 1, Math.max(0, at + delta))];
  if (next) { if (!state.review) setFollow(false); show(next); }
}

const KEYS = {
  o: () => setKind("overlay"), m: () => setKind("map"), k: () => setKind("mask"),
  g: () => { if (state.current && state.current.urls.gt) setKind("gt"); },
  f: () => { setFollow(!following()); if (following() && newest()) show(newest()); },
  n: () => { $("ng-only").checked = !$("ng-only").checked; applyFilter(); },
  ArrowLeft: () => step(-1), ArrowRight: () => step(1),
};

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
  const action = KEYS[e.key];
  if (action) { e.preventDefault(); action(); }
});
$("files").addEventListener("change", (e) => { inspectFiles(e.target.files).then(() => { e.target.value = ""; }); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); inspectFiles(e.dataTransfer.files); });
for (const button of document.querySelectorAll(".toggles button")) button.addEventListener("click", () => setKind(button.dataset.kind));
$("ng-only").addEventListener("change", applyFilter);
$("follow").addEventListener("change", () => { if (following() && newest()) show(newest()); });
$("category").addEventListener("change", () => {
  rememberProduct(); applyFilter(); renderCounts();
  if (state.review) { const first = state.items.find(visible); if (first) show(first); else screen("idle", "–", "no part of this product"); }
});
$("sound").checked = localStorage.getItem("iapas-sound") === "1";
$("sound").addEventListener("change", () => localStorage.setItem("iapas-sound", $("sound").checked ? "1" : "0"));
$("shift-reset").addEventListener("click", () => { localStorage.setItem("iapas-shift-start", String(Date.now())); renderShift(); });
$("auth").addEventListener("submit", () => {
  sessionStorage.setItem("iapas-token", $("token").value.trim());
  $("auth").hidden = true; $("history").replaceChildren(); state.items = []; state.seen.clear();
  load();
});
load().catch((e) => status("error: " + e.message));
