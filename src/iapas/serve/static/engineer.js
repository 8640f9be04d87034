// The engineer's threshold what-if: the chosen product's stored scores as a histogram with the
// calibrated threshold, and a slider that judges them again on the station (GET /v1/whatif, no
// model run), with how many parts change verdict and which. Uses app.js's helpers.
"use strict";

const whatif = { open: false, range: null, seq: 0, timer: null };

function toggleWhatif(open = !whatif.open) {
  whatif.open = open;
  $("engineer").hidden = !open; $("viewer").hidden = open;
  $("whatif-open").setAttribute("aria-pressed", String(open));
  if (open) { whatif.range = null; refreshWhatif(null); }
}

async function refreshWhatif(threshold) {
  const seq = ++whatif.seq, category = $("category").value;
  const query = "/v1/whatif?category=" + encodeURIComponent(category) + (threshold === null ? "" : "&threshold=" + threshold);
  let response;
  try { response = await api(query); } catch (e) { return; }
  if (seq !== whatif.seq) return;  // a later move of the slider answers instead
  if (!response.ok) { $("whatif-summary").textContent = await detail(response); $("whatif-bars").replaceChildren(); $("whatif-changed").replaceChildren(); return; }
  renderWhatif(await response.json());
}

function renderWhatif(w) {
  const edges = w.histogram.edges, lo = edges[0], hi = edges[edges.length - 1];
  if (!whatif.range) {  // the slider spans the histogram, once per opening
    whatif.range = [lo, hi];
    const slider = $("whatif-slider");
    slider.min = lo; slider.max = hi; slider.step = (hi - lo) / 1000 || 0.001; slider.value = w.what_if;
  }
  const top = Math.max(1, ...w.histogram.counts);
  $("whatif-bars").replaceChildren(...w.histogram.counts.map((c, i) => {
    const bar = document.createElement("div");
    bar.style.height = (100 * c / top) + "%";
    bar.className = edges[i] >= w.what_if ? "ng" : "ok";
    bar.title = fmt(edges[i]) + " – " + fmt(edges[i + 1]) + ": " + c + " part(s)";
    return bar;
  }));
  const at = (t) => (100 * (t - whatif.range[0]) / ((whatif.range[1] - whatif.range[0]) || 1)) + "%";
  $("whatif-stored").style.left = at(w.threshold); $("whatif-mark").style.left = at(w.what_if);
  $("whatif-summary").textContent = "threshold " + fmt(w.what_if) + ": OK " + w.counts.OK + ", NG " + w.counts.NG +
    " of " + w.n + " · calibrated " + fmt(w.threshold) + ": OK " + w.stored.OK + ", NG " + w.stored.NG +
    " · " + w.n_changed + " part(s) change verdict";
  $("whatif-ok").textContent = w.counts.OK; $("whatif-ng").textContent = w.counts.NG; $("whatif-n-changed").textContent = w.n_changed;
  $("whatif-changed").replaceChildren(...w.changed.map((c) => {
    const li = document.createElement("li");
    li.textContent = (c.part_id || c.filename || c.id) + ": " + c.from + " → " + c.to + " (score " + fmt(c.decision_score) + ")";
    li.dataset.id = c.id;
    return li;
  }));
}

$("whatif-open").addEventListener("click", () => toggleWhatif());
$("whatif-slider").addEventListener("input", (e) => {
  clearTimeout(whatif.timer);
  const value = e.target.value;
  whatif.timer = setTimeout(() => refreshWhatif(value), 60);
});
$("category").addEventListener("change", () => { if (whatif.open) toggleWhatif(true); });
KEYS.w = () => toggleWhatif();
