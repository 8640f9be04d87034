// The feedback loop on the station page: confirm or overrule the shown part's verdict (buttons,
// keys C and X), its disposition history, the "to audit" marker and the audit queue of sampled
// OK parts (key A), the product's observed rates with their 95% intervals and the drift banner.
// POST /v1/results/ID/disposition, GET /v1/results/ID, the feedback of GET /v1/health. Uses app.js's helpers.
"use strict";

const FEEDBACK_MS = 3000;
const CHOICES = {  // [confirm, overrule] of each verdict: [disposition, button label]
  NG: [["confirmed_ng", "Confirm NG"], ["false_call", "False call"]],
  OK: [["confirmed_ok", "Confirm OK"], ["missed_defect", "Missed defect"]],
};
const WORDS = { confirmed_ng: "confirmed NG", false_call: "false call", confirmed_ok: "confirmed OK", missed_defect: "missed defect" };
const fb = { queue: [], timer: null, seq: 0 };

function pct(x) {  // two significant digits, as the station's log lines write them
  if (x === null || x === undefined) return "–";
  const v = 100 * x;
  return (v >= 10 ? v.toFixed(0) : v.toPrecision(2)) + "%";
}
function estimate(e) {
  return e.n ? e.k + "/" + e.n + " = " + pct(e.rate) + " (95% CI " + pct(e.low) + "–" + pct(e.high) + ")" : "0/0 (no evidence yet)";
}
function toAudit(item) { return item.audit && item.decision === "OK" && !item.disposition; }

function renderDisposition() {
  const item = state.current, box = $("disposition");
  box.hidden = !item || !item.decision;
  if (box.hidden) return;
  $("audit-mark").hidden = !toAudit(item);
  const choices = CHOICES[item.decision];
  for (const [i, id] of ["d-confirm", "d-overrule"].entries()) {
    const button = $(id);
    button.dataset.disposition = choices[i][0];
    button.textContent = choices[i][1] + " (" + (i ? "X" : "C") + ")";
    button.setAttribute("aria-pressed", String(item.disposition === choices[i][0]));
    button.hidden = state.review;
  }
  $("who-label").hidden = state.review;
  $("disposition-now").textContent = item.disposition ? "disposition: " + WORDS[item.disposition] : "no disposition yet";
  $("disposition-history").replaceChildren(...(item.history || []).map((h) => {
    const li = document.createElement("li");
    const at = new Date(h.at);
    li.textContent = (isNaN(at) ? h.at : at.toLocaleString([], { hour12: false })) + " · " + WORDS[h.disposition] +
      (h.who ? " · " + h.who : "") + (h.note ? " · " + h.note : "");
    return li;
  }));
}

function markButton(item) {  // the history strip's button of a part: "to audit" and disposed marks
  const button = document.querySelector("#history button[data-id='" + item.id + "']");
  if (!button) return;
  button.classList.toggle("audit", toAudit(item));
  button.dataset.disposition = item.disposition || "";
}

async function loadHistory(item) {  // the shown part's history, fresh (another client may have disposed it)
  const seq = ++fb.seq;
  let response;
  try { response = await api("/v1/results/" + item.id); } catch (e) { return; }
  if (!response.ok || seq !== fb.seq) return;
  const body = await response.json();
  Object.assign(item, { disposition: body.disposition, history: body.history });
  markButton(item);
  if (state.current === item) renderDisposition();
}

async function dispose(which) {
  const item = state.current, button = $(which);
  if (!item || !item.decision || state.review || button.hidden) return;
  const who = $("who").value.trim();
  let response;
  try {
    response = await api("/v1/results/" + item.id + "/disposition", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ disposition: button.dataset.disposition, who: who || null }),
    });
  } catch (e) { status("error: the station did not answer"); return; }
  if (!response.ok) { status("error: " + (await detail(response))); return; }
  const body = await response.json();
  for (const same of [item, state.items.find((i) => i.id === item.id)]) {
    if (same) Object.assign(same, { disposition: body.disposition, history: body.history });
  }
  markButton(item);
  if (state.current === item) renderDisposition();
  status(partName(item) + ": " + WORDS[body.disposition]);
  refreshFeedback();
}

function renderRates(health) {
  const product = (state.current && state.current.category) || $("category").value;
  const f = (health.feedback || {})[product];
  $("rates-product").textContent = product || "–";
  $("rate-far").textContent = f ? estimate(f.false_alarm) + (f.target_rate !== null ? " · target " + pct(f.target_rate) : "") +
    (f.false_calls_ng ? " · every NG reviewed: at least " + pct(f.false_alarm_floor) + " (" + f.false_calls_ng + " false call(s) of " +
     f.possible_normals + " parts)" : "") : "–";
  $("rate-escape").textContent = f ? estimate(f.escape) + (f.max_escape_rate !== null ? " · limit " + pct(f.max_escape_rate) : "") : "–";
  $("rate-open").textContent = f ? f.ng_open + " NG, " + f.audits_open + " audit(s)" : "–";
  const drift = health.drift || [];
  $("drift").hidden = !drift.length;
  // "screw: drift: observed ..." reads "DRIFT ALARM · screw: observed ..." under the banner's own title
  $("drift").textContent = drift.length ? "DRIFT ALARM · " + drift.map((d) => d.replace(": drift: ", ": ")).join(" · ") : "";
}

async function refreshQueue() {
  const product = $("category").value;
  if (!product || state.review) { $("audit-queue-box").hidden = true; return; }
  const response = await api("/v1/results?audit=true&decision=OK&disposition=none&limit=50&category=" + encodeURIComponent(product));
  if (!response.ok) return;
  const listed = await response.json();
  fb.queue = listed.results;
  $("audit-queue-box").hidden = !listed.total;
  $("audit-count").textContent = listed.total;
  $("audit-queue").replaceChildren(...fb.queue.map((q) => {
    const li = document.createElement("li"), button = document.createElement("button");
    button.type = "button"; button.dataset.id = q.id; button.textContent = partName(q);
    button.addEventListener("click", () => showQueued(q));
    li.append(button);
    return li;
  }));
  for (const q of fb.queue) { const item = state.items.find((i) => i.id === q.id); if (item) markButton(item); }
}

function showQueued(q) {
  setFollow(false);
  show(state.items.find((i) => i.id === q.id) || q);
}

async function refreshFeedback() {
  clearTimeout(fb.timer);
  try {
    const response = await api("/v1/health");
    if (response.ok) renderRates(await response.json());
    await refreshQueue();
  } catch (e) { /* the poll of app.js says OFFLINE */ }
  fb.timer = setTimeout(refreshFeedback, FEEDBACK_MS);
}

// app.js's show() and screen() paint the panel: the disposition box follows the part shown.
const showPart = show, paintScreen = screen, makeHistoryButton = historyButton;
show = (item) => { showPart(item); renderDisposition(); if (item && item.decision) loadHistory(item); };
screen = (...args) => { paintScreen(...args); renderDisposition(); };
historyButton = (item) => {
  const li = makeHistoryButton(item);
  li.firstChild.classList.toggle("audit", toAudit(item));
  li.firstChild.dataset.disposition = item.disposition || "";
  return li;
};

$("d-confirm").addEventListener("click", () => dispose("d-confirm"));
$("d-overrule").addEventListener("click", () => dispose("d-overrule"));
$("who").value = localStorage.getItem("iapas-who") || "";
$("who").addEventListener("change", () => localStorage.setItem("iapas-who", $("who").value.trim()));
$("category").addEventListener("change", refreshFeedback);
KEYS.c = () => dispose("d-confirm");
KEYS.x = () => dispose("d-overrule");
KEYS.a = () => { if (fb.queue.length) showQueued(fb.queue[fb.queue.length - 1]); };  // the oldest part to audit
refreshFeedback();
