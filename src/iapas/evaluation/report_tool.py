"""The report's working parts: the threshold figures and the table of every image.

Per category (:func:`threshold_section`): the histograms of the raw image scores of the normal
and the defective test images with the calibrated OK/NG threshold drawn (when there is one), and
the image ROC and PR curves of those scores. Then (:func:`image_table`) one sortable table of
every evaluated image: category, key, label, image score, verdict at the calibrated threshold
and kept boxes; the false alarms and misses at that threshold come first. Each row's key opens
(``<details>``) its image, ground truth and overlay; only the first :data:`FULL_IMAGES` rows and
every false alarm and miss carry their pictures, so the file stays light on large datasets (the
page says so). Sorting is a few lines of inline script; nothing is fetched from anywhere.

An image is NG when its raw score (the raw full-resolution map's maximum) is strictly above the
threshold, as :mod:`iapas.evaluation.decisions` counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iapas.product.decision import verdict_at
from iapas.evaluation.report_parts import _boxes_text, _esc, _img, gallery_panels, image_score

if TYPE_CHECKING:
    from iapas.evaluation.results import CategoryResult

logger = logging.getLogger(__name__)

FULL_IMAGES = 60  # rows of the image table that carry their pictures (plus every false alarm and miss)
ROW_IMAGE = 160  # longest side of the pictures opened from a table row

CSS = """
table.images th{cursor:pointer;background:#f3f3f3;user-select:none}table.images th:after{content:" \\2195";color:#999}
tr.fa td{background:#fff0f0}tr.miss td{background:#fff7e0}td.NG{color:#b00020;font-weight:bold}
details summary{cursor:pointer}details img{margin:4px 3px 0 0;vertical-align:top}
"""

# Click a header: sort by its column (numbers by value, then text); click again: reverse.
SORT_JS = """
document.querySelectorAll('table.images').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var b=t.tBodies[0],rows=Array.from(b.rows),dir=th.dataset.dir==='asc'?-1:1;
    t.querySelectorAll('th').forEach(function(h){delete h.dataset.dir});th.dataset.dir=dir>0?'asc':'desc';
    rows.sort(function(r,s){var a=r.cells[i].dataset.v,c=s.cells[i].dataset.v,x=parseFloat(a),y=parseFloat(c);
      if(!isNaN(x)&&!isNaN(y))return dir*(x-y);return dir*a.localeCompare(c)});
    rows.forEach(function(r){b.appendChild(r)});});});});
"""


@dataclass(frozen=True)
class ImageRow:
    """One evaluated image in the table."""

    category: str
    record: Mapping[str, Any]
    score: float  # raw image score (map_max)
    verdict: str  # "NG", "OK" or "-" (no calibrated threshold)
    kind: str  # "false alarm", "miss" or ""

    @property
    def label(self) -> int:
        return int(self.record.get("label", 0))


def verdict(score: float, threshold: float | None) -> str:
    """'NG' when ``score`` is strictly above ``threshold``, 'OK' otherwise, '-' without one."""
    return "-" if threshold is None else verdict_at(score, threshold)


def image_rows(category: str, records: Sequence[Mapping[str, Any]], threshold: float | None) -> list[ImageRow]:
    """The finished images of one category: false alarms (highest score first), misses (lowest
    score first), then the rest (highest score first); ties keep test order."""
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        score = image_score(r)
        v = verdict(score, threshold)
        label = int(r.get("label", 0))
        kind = "false alarm" if (label == 0 and v == "NG") else "miss" if (label == 1 and v == "OK") else ""
        rows.append(ImageRow(category, r, score, v, kind))
    fa = sorted((r for r in rows if r.kind == "false alarm"), key=lambda r: -r.score)
    miss = sorted((r for r in rows if r.kind == "miss"), key=lambda r: r.score)
    rest = sorted((r for r in rows if not r.kind), key=lambda r: -r.score)
    return fa + miss + rest


def roc_pr(scores: Sequence[float], labels: Sequence[int]) -> dict[str, np.ndarray] | None:
    """Image ROC (fpr, tpr) and PR (recall, precision) points, one per distinct score (ties
    together), from the highest score down; None without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(y == 1)[last].astype(np.float64)
    fp = np.cumsum(y == 0)[last].astype(np.float64)
    return {
        "fpr": np.r_[0.0, fp / n_neg],
        "tpr": np.r_[0.0, tp / n_pos],
        "recall": tp / n_pos,
        "precision": tp / (tp + fp),
    }


def _canvas(width: float, height: float, cols: int = 1) -> tuple[Any, Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    canvas = FigureCanvasAgg(fig)
    return fig, canvas, [fig.add_subplot(1, cols, i + 1) for i in range(cols)]


def _rgb(fig: Any, canvas: Any) -> np.ndarray:
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def histogram_figure(name: str, rows: Sequence[ImageRow], threshold: float | None) -> np.ndarray | None:
    """Histograms of the raw image scores of normal and defective images, the threshold drawn."""
    normal = [r.score for r in rows if r.label == 0]
    defective = [r.score for r in rows if r.label == 1]
    if not normal and not defective:
        return None
    fig, canvas, (ax,) = _canvas(5.0, 3.2)
    values = normal + defective + ([threshold] if threshold is not None else [])
    lo, hi = min(values), max(values)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
    if normal:
        ax.hist(normal, bins=bins, alpha=0.6, color="#2a7f3f", label=f"normal ({len(normal)})")
    if defective:
        ax.hist(defective, bins=bins, alpha=0.6, color="#c0392b", label=f"defective ({len(defective)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold {threshold:.4g}")
    ax.set_xlabel("image score (raw map maximum)", fontsize=9)
    ax.set_ylabel("images", fontsize=9)
    ax.set_title(f"{name}: image scores", fontsize=10)
    ax.legend(fontsize=8)
    ax.tick_params(labelsize=8)
    return _rgb(fig, canvas)


def curves_figure(name: str, rows: Sequence[ImageRow], threshold: float | None) -> np.ndarray | None:
    """The image ROC and PR curves of the raw scores, the calibrated operating point marked."""
    curves = roc_pr([r.score for r in rows], [r.label for r in rows])
    if curves is None:
        return None
    fig, canvas, (roc, pr) = _canvas(8.0, 3.4, cols=2)
    auc = float(np.trapezoid(curves["tpr"], curves["fpr"])) if hasattr(np, "trapezoid") else float(np.trapz(curves["tpr"], curves["fpr"]))
    roc.plot(curves["fpr"], curves["tpr"], lw=1.8, color="#1f5fbf")
    roc.plot([0, 1], [0, 1], color="#bbb", lw=1)
    roc.set_xlabel("false-alarm rate", fontsize=9)
    roc.set_ylabel("detection rate", fontsize=9)
    roc.set_title(f"{name}: image ROC (AUC {100 * auc:.1f})", fontsize=10)
    pr.plot(curves["recall"], curves["precision"], lw=1.8, color="#1f5fbf", marker=".")
    pr.set_xlabel("recall", fontsize=9)
    pr.set_ylabel("precision", fontsize=9)
    pr.set_title(f"{name}: image PR", fontsize=10)
    if threshold is not None:
        n_pos = sum(r.label == 1 for r in rows)
        n_neg = len(rows) - n_pos
        tp = sum(r.label == 1 and r.verdict == "NG" for r in rows)
        fp = sum(r.label == 0 and r.verdict == "NG" for r in rows)
        roc.plot([fp / n_neg], [tp / n_pos], "ko", label="calibrated threshold")
        roc.legend(fontsize=8, loc="lower right")
        if tp + fp:
            pr.plot([tp / n_pos], [tp / (tp + fp)], "ko")
    for ax in (roc, pr):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.04)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    return _rgb(fig, canvas)


def threshold_section(categories: Sequence[tuple[CategoryResult, list[ImageRow]]]) -> str:
    """Per category: a line on the threshold, the histograms and the image ROC/PR curves."""
    parts = [
        "<h2>Image scores and the OK/NG threshold</h2><p>Raw image scores (the raw full-resolution map's "
        "maximum) of the normal and defective test images; an image is NG when its score is strictly above "
        "the category's threshold, calibrated on held-out normal images for the target false-alarm rate.</p>"
    ]
    for c, rows in categories:
        d = c.decision
        if d is None:
            line = "no calibrated threshold (no calibration images): no verdicts"
        elif d.threshold is None:
            line = f"no calibrated threshold: {d.reason}"
        else:
            line = (
                f"threshold {d.threshold:.6g} from {d.n_calibration} calibration images for a target false-alarm "
                f"rate of {100 * d.target_rate:g}%: {d.fp} false alarm(s), {d.fn} miss(es)"
            )
        parts.append(f"<h3>{_esc(c.name)}</h3><p>{_esc(line)}</p><div class=\"curves\">")
        threshold = d.threshold if d is not None else None
        figures = (
            ("histogram", "score histogram", histogram_figure(c.name, rows, threshold)),
            ("curves", "image ROC and PR", curves_figure(c.name, rows, threshold)),
        )
        for cls, alt, fig in figures:
            if fig is not None:
                parts.append(_img(fig, f"{alt} of {c.name}").replace("<img ", f'<img class="{cls}" ', 1))
        parts.append("</div>")
    return "".join(parts)


def _row_html(out_dir: Path, row: ImageRow, embed: bool, vmax: float, image_norm: bool) -> str:
    r = row.record
    key = _esc(r.get("key"))
    label = "defective" if row.label == 1 else "normal"
    if embed:
        rgb, gt, overlay = gallery_panels(out_dir, r, vmax, ROW_IMAGE, image_norm=image_norm)
        pictures = _img(rgb, "image") + _img(gt, "ground truth") + _img(overlay, "anomaly map and boxes")
    else:
        pictures = "<i>pictures not embedded (see the cap above)</i>"
    cls = {"false alarm": ' class="fa"', "miss": ' class="miss"'}.get(row.kind, "")
    kept = r.get("kept", [])
    return (
        f"<tr{cls}><td data-v=\"{_esc(row.category)}\">{_esc(row.category)}</td>"
        f"<td data-v=\"{key}\"><details><summary>{key}</summary>{pictures}</details></td>"
        f"<td data-v=\"{label}\">{label} ({_esc(r.get('defect_type'))})</td>"
        f"<td class=\"n\" data-v=\"{row.score:.9g}\">{row.score:.4f}</td>"
        f"<td class=\"{row.verdict}\" data-v=\"{row.verdict}\">{row.verdict}</td>"
        f"<td data-v=\"{_esc(row.kind)}\">{_esc(row.kind)}</td>"
        f"<td data-v=\"{len(kept)}\">{_boxes_text(kept)}</td></tr>"
    )


def image_table(
    out_dir: Path, categories: Sequence[tuple[CategoryResult, list[ImageRow]]], image_norm: bool, full_images: int = FULL_IMAGES
) -> str:
    """The sortable table of every image, false alarms and misses first (over all categories)."""
    entries = [(c, row) for c, rows in categories for row in rows]
    entries.sort(key=lambda e: {"false alarm": 0, "miss": 1}.get(e[1].kind, 2))  # stable: each category's order kept
    n_flagged = sum(1 for _, row in entries if row.kind)
    body = []
    for i, (c, row) in enumerate(entries):
        vmax = c.score_range[1] if c.score_range else 1.0
        body.append(_row_html(out_dir, row, i < full_images or bool(row.kind), vmax, image_norm))
    cap = (
        f"All {len(entries)} images carry their pictures."
        if len(entries) <= max(full_images, n_flagged)
        else f"Only the first {full_images} rows and every false alarm and miss carry their pictures "
        f"({max(full_images, n_flagged)} of {len(entries)} images), to keep this file light."
    )
    head = "".join(f"<th>{h}</th>" for h in ("category", "key", "label", "score", "verdict", "at the threshold", "kept boxes"))
    return (
        f"<h2>Every image</h2><p>{n_flagged} false alarm(s) and miss(es) at the calibrated threshold come first; "
        "click a header to sort, a key to open the image, its ground truth and the overlay. "
        f"{_esc(cap)}</p><table class=\"images\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<script>{SORT_JS}</script>"
    )


__all__ = ["FULL_IMAGES", "ImageRow", "curves_figure", "histogram_figure", "image_rows", "image_table", "roc_pr", "threshold_section", "verdict"]
