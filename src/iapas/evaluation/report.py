"""A self-contained HTML report of an evaluation: one file, images inlined, opens offline.

``write_report(result, out_dir)`` writes ``OUT/report.html`` with the protocol, mode, models,
notes and iapas version at the top, the metrics table in the paper's layout, a precision-recall
curve per category (matplotlib, Agg backend), per category the image-score histograms with the
calibrated OK/NG threshold and the image ROC and PR curves (:mod:`iapas.evaluation.report_tool`), the
profiles used, per category a gallery of
the best and worst images by score alone: the highest-scoring anomalous images, the
highest-scoring normal images and the lowest-scoring anomalous images,
each shown as the image, its ground truth and the anomaly map overlaid with the kept boxes (red,
with phrase and score), the dropped boxes (grey) and the object box (green), and last a sortable
table of every image with its verdict, false alarms and misses first. Every picture is a base64
PNG inside the file, the only script is the table's inline sorter; nothing is fetched from anywhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import iapas.evaluation.report_tool as report_tool
from iapas.core.files import atomic_write_text
from iapas.evaluation.report_parts import THUMB, _boxes_text, _esc, _img, gallery_panels, image_score

if TYPE_CHECKING:
    from iapas.evaluation.results import CategoryResult, DatasetResult

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
GALLERY_SIZE = 4  # images per gallery row
# Above this many categories (KSDD1's 50 folders) the page stays light: per-category figures for the
# FIGURE_CATEGORIES with the lowest pixel AP only, one picture per gallery row, galleries collapsed.
MANY_CATEGORIES = 12
FIGURE_CATEGORIES = 12

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 7px}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.mean td{font-weight:bold;background:#f3f3f3}
ul.meta li{margin:2px 0}.note{color:#7a4b00}.err{color:#b00020}
.curves{display:flex;flex-wrap:wrap;gap:8px}.gallery{display:flex;flex-wrap:wrap;gap:12px}
.item{border:1px solid #ddd;padding:6px;font-size:11px;max-width:620px}.item img{margin-right:3px;vertical-align:top}
.item .cap{margin-top:4px;word-break:break-word}code{background:#f5f5f5;padding:0 3px}
"""


# --- PR curves -----------------------------------------------------------------------------------


def pr_figure(category: CategoryResult) -> np.ndarray | None:
    """The category's pixel PR curve as an RGB array (None without a curve)."""
    if category.pr is None or category.metrics is None:
        return None
    recall = np.asarray(category.pr["recall"], dtype=float)
    precision = np.asarray(category.pr["precision"], dtype=float)
    if not np.isfinite(recall).any():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 4.0), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    m = category.metrics
    ax.plot(recall, precision, lw=1.5, color="#1f5fbf")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall", fontsize=10)
    ax.set_ylabel("precision", fontsize=10)
    ax.tick_params(labelsize=9)
    ax.grid(alpha=0.3)
    ap = "-" if not math.isfinite(m.pixel_ap) else f"{100 * m.pixel_ap:.1f}"
    f1 = "-" if not math.isfinite(m.pixel_f1_max) else f"{100 * m.pixel_f1_max:.1f}"
    ax.set_title(f"{category.name}: pixel AP {ap}, F1-max {f1}", fontsize=11)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# --- gallery -------------------------------------------------------------------------------------


def select_gallery(records: Sequence[Mapping[str, Any]], n: int = GALLERY_SIZE) -> dict[str, list[Mapping[str, Any]]]:
    """The ``n`` highest-scoring anomalous images, highest-scoring normal ones and lowest-scoring anomalous ones.

    Ranked by :func:`image_score` (the raw maximum: the paper's normalised score is 1 for every image with a
    box, so it cannot rank them). Ties keep test order. An
    image can be both a detection and a miss when there are fewer than ``2 n`` anomalous images.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    anomalous = [r for r in ok if int(r.get("label", 0)) == 1]
    normal = [r for r in ok if int(r.get("label", 0)) == 0]
    by_score_desc = lambda rs: sorted(rs, key=lambda r: -image_score(r))  # noqa: E731
    return {
        "detections": by_score_desc(anomalous)[:n],
        "false alarms": by_score_desc(normal)[:n],
        "misses": sorted(anomalous, key=image_score)[:n],
    }


# The gallery ranks by score alone; "false alarm" and "miss" are kept for the verdicts at the
# calibrated threshold (the image table), so the page names the gallery rows by their rank.
_GALLERY_HEADINGS = {
    "detections": "highest-scoring defective images",
    "false alarms": "highest-scoring normal images",
    "misses": "lowest-scoring defective images",
}


def _gallery_item(out_dir: Path, record: Mapping[str, Any], hi: float, size: int, image_norm: bool) -> str:
    rgb, gt, overlay = gallery_panels(out_dir, record, hi, size, image_norm=image_norm)
    score = image_score(record)
    kind = "anomalous" if int(record.get("label", 0)) == 1 else "normal"
    return (
        '<div class="item">'
        + _img(rgb, "image")
        + _img(gt, "ground truth")
        + _img(overlay, "anomaly map and boxes")
        + '<div class="cap">'
        + f"<b>{_esc(record.get('key'))}</b> ({kind}, {_esc(record.get('defect_type'))}), image score {score:.3f} (max of the raw map)<br>"
        + f"kept: {_boxes_text(record.get('kept', []))}<br>dropped: {_boxes_text(record.get('dropped', []))}"
        + "</div></div>"
    )


# --- the page ------------------------------------------------------------------------------------


def _metrics_table(result: DatasetResult) -> str:
    from iapas.evaluation.results import METRIC_COLUMNS
    from iapas.evaluation.tables import metric_rows, pct

    head = "".join(f"<th>{_esc(label)}</th>" for _, label in METRIC_COLUMNS)
    rows = []
    for row in metric_rows(result):
        cls = ' class="mean"' if row["category"] == "mean" else ""
        cells = "".join(f'<td class="n">{pct(row[k])}</td>' for k, _ in METRIC_COLUMNS)
        failed = str(row["failed"]) + (f' <span class="err">{_esc(row["error"])}</span>' if row["error"] else "")
        no_mask = "-" if row["without_mask"] is None else row["without_mask"]
        rows.append(
            f"<tr{cls}><td>{_esc(row['category'])}</td>{cells}<td class=\"n\">{row['images']}</td>"
            f"<td class=\"n\">{no_mask}</td><td>{failed}</td></tr>"
        )
    return f"<table><tr><th>category</th>{head}<th>images</th><th>no mask</th><th>failed</th></tr>{''.join(rows)}</table>"


def _profiles_table(result: DatasetResult) -> str:
    rows = []
    for c in result.categories:
        p = c.profile
        size = "-" if p.object_size is None else f"{p.object_size:.3f}"
        llm = str(p.models.get("llm") or "")
        if p.llm_fallback:
            nouns = f"knowledge vocabulary (LLM fallback: {p.llm_fallback})"
        elif llm:
            nouns = "knowledge vocabulary" if llm == "knowledge" else f"LLM {llm}"
        else:
            nouns = "-"  # a profile made by hand, or base mode
        rows.append(
            f"<tr><td>{_esc(c.name)}</td><td>{_esc(p.source)}</td><td>{_esc(p.object_tag or '-')}</td><td>{size}</td>"
            f"<td><code>{_esc(p.caption or '-')}</code></td><td>{_esc(nouns)}</td><td class=\"n\">{c.n_references}</td></tr>"
        )
    return (
        "<table><tr><th>category</th><th>profile</th><th>object tag</th><th>object size</th><th>caption (as in the profile)</th>"
        f"<th>anomaly nouns from</th><th>references</th></tr>{''.join(rows)}</table>"
    )


def _failures(result: DatasetResult, limit: int = 50) -> str:
    parts = []
    for c in result.categories:
        if not c.failures:
            continue
        items = "".join(f"<li><code>{_esc(f.image)}</code>: {_esc(f.error)}</li>" for f in c.failures[:limit])
        more = f"<li>... and {len(c.failures) - limit} more (see {_esc(c.predictions)})</li>" if len(c.failures) > limit else ""
        parts.append(f"<h3>{_esc(c.name)}: {len(c.failures)} failed (left out of the metrics)</h3><ul>{items}{more}</ul>")
    return "".join(parts)


def render_report(
    result: DatasetResult, *, gallery: int = GALLERY_SIZE, thumb: int = THUMB, full_images: int | None = None
) -> str:
    """The report's HTML text (``full_images``: rows of the image table that carry their
    pictures besides the false alarms and misses; default :data:`iapas.evaluation.report_tool.FULL_IMAGES`)."""
    from iapas.evaluation.tables import F1_SENTENCE, all_notes, header_lines

    out_dir = Path(result.out_dir)
    s = result.settings
    title = f"IAP-AS evaluation: {result.title}, {s.protocol} protocol, mode {s.mode}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}{report_tool.CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        '<ul class="meta">' + "".join(f"<li>{_esc(line)}</li>" for line in header_lines(result)) + "</ul>",
    ]
    notes = all_notes(result)
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{_esc(n)}</li>' for n in notes) + "</ul>")
    parts.append("<h2>Metrics (%)</h2>" + _metrics_table(result))
    score = (
        "each image's maximum of the normalised 400x400 stack (the reference code's)"
        if result.settings.image_score_method == "paper"
        else "the maxima of the raw full-resolution maps (before resizing and normalisation; --image-score raw)"
    )
    parts.append(
        f"<p>{_esc(F1_SENTENCE)} AUPRO is integrated to 30% FPR. Image scores are {_esc(score)}. 'no mask' counts the "
        "defective images without a mask file: they are left out of the pixel metrics and kept in the image "
        "metrics.</p>"
    )
    many = len(result.categories) > MANY_CATEGORIES
    drawn = _figure_categories(result) if many else {c.name for c in result.categories}
    if many:
        gallery = min(gallery, 1)
        parts.append(
            f"<p>{len(result.categories)} categories: the figures are drawn for the {len(drawn)} with the lowest "
            "pixel AP (every number is in the tables, metrics.json and curves.json), and each category's gallery "
            "(one picture per row) is folded: click its name.</p>"
        )
    parts += _pr_curves(result, drawn)
    tabled = []  # (category, its table rows) of the categories with metrics
    for c in result.categories:
        if c.metrics is None:
            continue
        chosen = _records(out_dir, c)
        threshold = c.decision.threshold if c.decision is not None else None
        tabled.append((c, report_tool.image_rows(c.name, chosen, threshold)))
    if tabled:
        parts.append(report_tool.threshold_section([(c, rows) for c, rows in tabled if c.name in drawn]))
    parts.append("<h2>Profiles</h2>" + _profiles_table(result))
    failures = _failures(result)
    if failures:
        parts.append("<h2>Failed images</h2>" + failures)
    if gallery > 0:
        parts += _gallery_section(result, gallery, thumb, many)
    if tabled:
        cap = report_tool.FULL_IMAGES if full_images is None else full_images
        parts.append(report_tool.image_table(out_dir, tabled, s.image_norm, cap))
    parts.append("</body></html>")
    return _without_machine_paths("\n".join(parts) + "\n", result)


def _records(out_dir: Path, category: CategoryResult) -> list[Mapping[str, Any]]:
    """The prediction records of ``category`` (those of its keys, when it names them), in order."""
    from iapas.engine.log import ResultsLog

    records = ResultsLog(out_dir / category.predictions).read()
    return [records[k] for k in category.keys if k in records] if category.keys else list(records.values())


def _pr_curves(result: DatasetResult, drawn: set[str]) -> list[str]:
    """The pixel PR curves of the categories in ``drawn`` (none without a curve)."""
    parts: list[str] = []
    figures = [(c, pr_figure(c)) for c in result.categories if c.name in drawn]
    figures = [(c, f) for c, f in figures if f is not None]
    if figures:
        parts.append("<h2>Pixel precision-recall curves</h2><div class=\"curves\">")
        parts += [_img(f, f"PR curve of {c.name}") for c, f in figures]
        parts.append("</div>")
    return parts


def _gallery_section(result: DatasetResult, gallery: int, thumb: int, many: bool) -> list[str]:
    """The galleries: per category the ``gallery`` best and worst images by score (folded when ``many``)."""
    out_dir = Path(result.out_dir)
    s = result.settings
    parts = [
        "<h2>Gallery</h2><p>Each item: the image, its ground truth, and the anomaly map over the image with "
        "the kept boxes (red, phrase and score), the dropped boxes (grey) and the object box (green). Images are "
        "ranked by their image score (the raw map's maximum); the map is shown "
        + ("normalised per image, " if s.image_norm else "")
        + "coloured up to the category's maximum.</p>"
    ]
    for c in result.categories:
        if c.metrics is None or c.score_range is None:
            continue
        chosen = _records(out_dir, c)
        _, hi = c.score_range
        if many:
            parts.append(f"<details><summary>{_esc(c.name)}</summary>")
        for label, group in select_gallery(chosen, gallery).items():
            if not group:
                continue
            heading = _GALLERY_HEADINGS.get(label, label)
            parts.append(f"<h3>{_esc(c.name)}: {heading}</h3><div class=\"gallery\">")
            parts += [_gallery_item(out_dir, r, hi, thumb, s.image_norm) for r in group]
            parts.append("</div>")
        if many:
            parts.append("</details>")
    return parts


def _figure_categories(result: DatasetResult) -> set[str]:
    """The :data:`FIGURE_CATEGORIES` evaluated categories with the lowest pixel AP (the ones to look at)."""
    scored = [c for c in result.categories if c.metrics is not None]
    scored.sort(key=lambda c: (c.metrics.pixel_ap if c.metrics.pixel_ap == c.metrics.pixel_ap else -1.0, c.name))
    return {c.name for c in scored[:FIGURE_CATEGORIES]}


def _strings(value: Any) -> list[str]:
    """Every string inside nested dicts and lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _without_machine_paths(html: str, result: DatasetResult) -> str:
    """The page without this machine's absolute paths: the dataset's folder shown by its name,
    the evaluation folder as ``.``, model folders by their name (the page is shared, the paths
    say nothing to its readers and tell them about the machine)."""
    names: dict[str, str] = {}
    candidates = [(result.out_dir, "."), (result.root, Path(str(result.root)).name)]
    candidates += [(v, Path(v).name) for v in _strings(result.models) if v.startswith("/") and "\n" not in v]
    for path, shown in candidates:
        if not str(path):
            continue
        for form in {str(path), str(Path(path).resolve()), str(Path(path).absolute())}:
            if Path(form).is_absolute() and form != "/":
                names[form] = shown
    for form in sorted(names, key=len, reverse=True):  # the longest first: a folder inside another
        html = html.replace(_esc(form), _esc(names[form])).replace(form, names[form])
    return html


def write_report(result: DatasetResult, out_dir: str | Path | None = None, *, gallery: int = GALLERY_SIZE, thumb: int = THUMB) -> Path:
    """Write ``report.html`` (default into the evaluation folder) and return its path."""
    path = Path(out_dir if out_dir is not None else result.out_dir) / REPORT_FILE
    atomic_write_text(path, render_report(result, gallery=gallery, thumb=thumb))
    return path


def write_bench_report(path: str | Path, title: str, markdown: str, links: Mapping[str, str]) -> Path:
    """A one-page HTML version of the bench table, with relative links to each run's report."""
    blocks: list[str] = []  # the tables, each after its '## ' heading when it has one
    rows: list[list[str]] = []

    def close_table() -> None:
        if rows:
            head = "".join(f"<th>{_esc(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f'<td class="n">{_esc(c)}</td>' for c in r) + "</tr>" for r in rows[1:])
            blocks.append(f"<table><tr>{head}</tr>{body}</table>")
            rows.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        close_table()
        if line.startswith("## "):
            blocks.append(f"<h2>{_esc(line[3:])}</h2>")
    close_table()
    table = "".join(blocks)
    notes = [line[2:] for line in markdown.splitlines() if line.startswith("- ")]
    link_items = "".join(f'<li><a href="{_esc(href)}">{_esc(name)}</a></li>' for name, href in links.items())
    text = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title><style>{_CSS}</style></head>'
        f"<body><h1>{_esc(title)}</h1><p>Mean pixel AP and pixel F1-max over each dataset's categories, in %.</p>{table}"
        + ("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{_esc(n)}</li>' for n in notes) + "</ul>" if notes else "")
        + (f"<h2>Runs</h2><ul>{link_items}</ul>" if link_items else "")
        + "</body></html>\n"
    )
    out = Path(path)
    atomic_write_text(out, text)
    return out

