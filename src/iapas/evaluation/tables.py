"""Metric tables of an evaluation: CSV, JSON and Markdown in the paper's layout.

Rows are the categories and their mean; the first two columns are the paper's pixel AP and pixel
F1-max (exact: every distinct threshold), then the companions (the reference code's 100-threshold
pixel F1-max, labelled as the paper's, pixel AUROC and AUPRO, image AUROC, AP, F1-max and the
paper's 100-threshold image F1-max), the images evaluated and, of those, the defective images
without a mask (left out of the pixel metrics, kept in the image metrics). CSV and JSON hold fractions in [0, 1] at full precision; Markdown
shows percentages with two decimals, as the paper does. Undefined values (e.g. image AUROC
without normal test images) are empty in CSV, null in JSON, '-' in Markdown, and left out of
the mean.

With calibration (``iapas evaluate --calibration-images``), each row also has the OK/NG columns
(:data:`DECISION_COLUMNS`): the category's conformal threshold, the target and the observed
false-alarm rate on its normal test images, the detection rate on its defective ones and the
confusion counts; the mean row sums the counts and gives the rates of the sums. Markdown shows
them in a table of their own.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iapas.core.files import atomic_write_text
from iapas.core.caption import fixed_caption

if TYPE_CHECKING:
    from iapas.evaluation.results import DatasetResult

METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
CURVES_JSON = "curves.json"

F1_SENTENCE = (
    "F1-max is exact (the best F1 over every distinct score); the columns marked paper's 100 thr. are the "
    "reference code's F1-max over the 100 thresholds np.linspace(0, 1, 100) of the normalised scores "
    "(score >= t), the numbers to compare with the paper's."
)


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals; '-' when undefined."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100.0 * value:.2f}"


def _csv_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.6f}"


# the OK/NG columns of the CSV (see ThresholdEvidence), in order
DECISION_COLUMNS: tuple[str, ...] = (
    "calibration_images", "threshold", "target_false_alarm_rate", "false_alarm_rate", "detection_rate", "tp", "fp", "tn", "fn",
)


def decision_rows(result: DatasetResult) -> list[dict[str, Any]]:
    """The OK/NG columns per category (all None without calibration) and for the sums."""
    rows: list[dict[str, Any]] = []
    calibrated: dict[str, int] = {}  # calibration set -> images segmented (a product's parts share one set)
    for c in result.categories:
        d = c.decision
        if d is not None:
            calibrated[d.calibration_set or c.name] = d.n_calibration
        rows.append({
            "category": c.name,
            "calibration_images": d.n_calibration if d else None,
            "threshold": d.threshold if d else None,
            "target_false_alarm_rate": d.target_rate if d else None,
            **{k: getattr(d, k) if d else None for k in ("false_alarm_rate", "detection_rate", "tp", "fp", "tn", "fn")},
            "reason": d.reason if d else "",
        })
    decided = [r for r in rows if r["threshold"] is not None]
    total = {k: sum(r[k] for r in decided) for k in ("tp", "fp", "tn", "fn")} if decided else dict.fromkeys(("tp", "fp", "tn", "fn"))
    targets = {r["target_false_alarm_rate"] for r in rows if r["target_false_alarm_rate"] is not None}
    normals = (total["fp"] + total["tn"]) if decided else 0
    anomalous = (total["tp"] + total["fn"]) if decided else 0
    rows.append({
        "category": "mean",
        "calibration_images": sum(calibrated.values()) if targets else None,  # what ran: each set once
        "threshold": None,
        "target_false_alarm_rate": targets.pop() if len(targets) == 1 else None,
        "false_alarm_rate": total["fp"] / normals if normals else None,
        "detection_rate": total["tp"] / anomalous if anomalous else None,
        **total,
        "reason": "",
    })
    return rows


def metric_rows(result: DatasetResult) -> list[dict[str, Any]]:
    """One dict per category and one for the mean: name, metrics (fractions), counts."""
    from iapas.evaluation.results import METRIC_COLUMNS

    rows: list[dict[str, Any]] = []
    for c in result.categories:
        row: dict[str, Any] = {"category": c.name}
        for key, _ in METRIC_COLUMNS:
            row[key] = getattr(c.metrics, key) if c.metrics is not None else None
        row.update(
            images=c.n_done,
            anomalous_images=c.metrics.n_anomalous_images if c.metrics else None,
            without_mask=c.metrics.n_pixel_excluded if c.metrics else None,
            failed=len(c.failures),
            error=c.error or "",
        )
        rows.append(row)
    mean = {"category": "mean", **result.mean()}
    mean.update(
        images=sum(c.n_done for c in result.categories),
        anomalous_images=sum(c.metrics.n_anomalous_images for c in result.categories if c.metrics),
        without_mask=sum(c.metrics.n_pixel_excluded for c in result.categories if c.metrics),
        failed=result.n_failed_images,
        error="",
    )
    rows.append(mean)
    return rows


def metrics_csv(result: DatasetResult) -> str:
    from iapas.evaluation.results import METRIC_COLUMNS

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    keys = [k for k, _ in METRIC_COLUMNS]
    writer.writerow(["category", *keys, "images", "anomalous_images", "without_mask", "failed", "error", *DECISION_COLUMNS])
    for row, dec in zip(metric_rows(result), decision_rows(result)):
        counts = [row[k] if row[k] is not None else "" for k in ("anomalous_images", "without_mask")]
        decision = [
            "" if dec[k] is None else (dec[k] if isinstance(dec[k], int) else _csv_value(dec[k])) for k in DECISION_COLUMNS
        ]
        writer.writerow([row["category"], *(_csv_value(row[k]) for k in keys), row["images"], *counts, row["failed"], row["error"], *decision])
    return buf.getvalue()


def markdown_table(result: DatasetResult) -> str:
    """The metrics table in the paper's layout (percentages)."""
    from iapas.evaluation.results import METRIC_COLUMNS

    header = ["category", *(label for _, label in METRIC_COLUMNS), "images", "no mask", "failed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in metric_rows(result):
        name = "**mean**" if row["category"] == "mean" and row is not None else row["category"]
        no_mask = "-" if row["without_mask"] is None else str(row["without_mask"])
        cells = [name, *(pct(row[k]) for k, _ in METRIC_COLUMNS), str(row["images"]), no_mask, str(row["failed"])]
        if row["error"]:
            cells[-1] = f"{row['failed']} ({row['error']})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def decision_table(result: DatasetResult) -> str:
    """The OK/NG table (percentages; threshold in raw score units); '' without calibration."""
    rows = decision_rows(result)
    if all(r["target_false_alarm_rate"] is None for r in rows[:-1]):
        return ""
    header = ["category", "calibration images", "threshold", "false-alarm rate (target)", "detection rate", "TP", "FP", "TN", "FN"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        name = "**all**" if r is rows[-1] else r["category"]
        target = "-" if r["target_false_alarm_rate"] is None else pct(r["target_false_alarm_rate"])
        counts = ["-" if r[k] is None else str(r[k]) for k in ("tp", "fp", "tn", "fn")]
        threshold = "-" if r["threshold"] is None else f"{r['threshold']:.6g}"
        n = "-" if r["calibration_images"] is None else str(r["calibration_images"])
        lines.append("| " + " | ".join([name, n, threshold, f"{pct(r['false_alarm_rate'])} ({target})", pct(r["detection_rate"]), *counts]) + " |")
    return "\n".join(lines) + "\n"


DECISION_SENTENCE = (
    "OK/NG at each category's conformal threshold, calibrated on its held-out normal images for the target "
    "false-alarm rate (raw image scores: the raw full-resolution map's maximum; NG when strictly above): the "
    "false-alarm rate on the normal test images next to the target, the detection rate on the defective ones "
    "and the counts (TP: defective NG, FP: normal NG, TN: normal OK, FN: defective OK), in %; the last row sums "
    "the counts of the categories with a threshold."
)


def header_lines(result: DatasetResult) -> list[str]:
    """The sentences every report starts with: protocol, mode, models, version."""
    s = result.settings
    models = result.models
    size = (
        "no size filter"
        if s.mode == "base" or not s.size_filter
        else f"size threshold {s.size_threshold if s.size_threshold is not None else 'from each profile (0.8 by default)'}"
    )
    mode = "iapas (image-aware caption from the profile, size filter)" if s.mode == "iapas" else f"base ('{fixed_caption(s.protocol)}', no size filter)"
    if s.caption is not None:
        mode += f", fixed caption '{s.caption}'"
    lines = [
        f"Dataset: {result.title} ({result.dataset}) at {result.root}",
        f"Protocol: {result.protocol_sentence()}",
        f"Mode: {mode}; {size}.",
        f"Models: detector {models.get('detector')}, segmenter {models.get('segmenter')} "
        f"(box threshold {models.get('box_threshold')}, text threshold {models.get('text_threshold')}, NMS IoU {models.get('nms_iou')})"
        + ("; object box taken from the caption's forward (not the paper's method)." if models.get("fuse_object_detection") else "."),
        f"Reference images requested per category: {s.n_references} (seed {s.seed}); the numbers used are in the profiles table.",
        f"iapas {result.iapas_version}; run started {result.created}.",
    ]
    stage1 = models.get("stage1")
    if stage1:
        text = ", the reference code's text processing" if stage1.get("text_processing") == "reference" else ""
        lines.insert(
            4,
            f"Stage 1 (for profiles it had to make): tagger {stage1.get('tagger')}"
            f"{' ' + str(stage1.get('tagger_model')) if stage1.get('tagger_model') else ''}, LLM {stage1.get('llm')}"
            f"{' ' + str(stage1.get('llm_model')) if stage1.get('llm_model') else ''}"
            f"{', object tag given: ' + str(stage1.get('object_tag')) if stage1.get('object_tag') else ''}{text}.",
        )
    return lines


def all_notes(result: DatasetResult) -> list[str]:
    """Run notes, then each category's notes, failures and undefined metrics, as sentences."""
    from iapas.evaluation.results import METRIC_COLUMNS

    notes = list(result.notes)
    for c in result.categories:
        notes.extend(f"{c.name}: {n}" for n in c.notes)
        if c.failures:
            notes.append(f"{c.name}: {len(c.failures)} test image(s) failed and are left out of the metrics.")
        if c.metrics is not None and c.metrics.n_pixel_excluded:
            notes.append(
                f"{c.name}: {c.metrics.n_pixel_excluded} defective test image(s) have no mask: left out of the pixel "
                "metrics (their pixels are unknown, not normal) and kept in the image metrics."
            )
        if c.error:
            notes.append(f"{c.name}: not evaluated: {c.error}.")
        if c.decision is not None and c.decision.threshold is None:
            notes.append(f"{c.name}: no OK/NG threshold: {c.decision.reason}.")
    labels = dict(METRIC_COLUMNS)
    for key, names in result.undefined().items():
        notes.append(f"{labels[key]} is undefined for {', '.join(names)} and left out of the mean.")
    return notes


def metrics_markdown(result: DatasetResult) -> str:
    s = result.settings
    parts = [f"# IAP-AS evaluation: {result.title}, {s.protocol} protocol, mode {s.mode}", ""]
    parts += [f"- {line}" for line in header_lines(result)]
    parts += ["", "Values in %." + (" Mean over the categories." if len(result.categories) > 1 else "") + " " + F1_SENTENCE, "", markdown_table(result)]
    decisions = decision_table(result)
    if decisions:
        parts += [DECISION_SENTENCE, "", decisions]
    notes = all_notes(result)
    if notes:
        parts += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def write_tables(result: DatasetResult, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.csv, metrics.json, metrics.md and curves.json into ``out_dir``."""
    out = Path(out_dir)
    paths = {
        "csv": out / METRICS_CSV,
        "json": out / METRICS_JSON,
        "md": out / METRICS_MD,
        "curves": out / CURVES_JSON,
    }
    atomic_write_text(paths["csv"], metrics_csv(result))
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    atomic_write_text(paths["md"], metrics_markdown(result))
    curves = {c.name: c.pr for c in result.categories if c.pr is not None}
    atomic_write_text(paths["curves"], json.dumps(curves) + "\n")
    return paths


# --- bench ---------------------------------------------------------------------------------------

# (key, column suffix) of the bench table, per variant
BENCH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pixel_ap", "AP"),
    ("pixel_f1_max", "F1-max"),
    ("pixel_f1_max_100", "F1-max (paper's 100 thr.)"),
)


def _seconds(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _cells(value: dict[str, Any] | None) -> list[str]:
    cells = [pct(value.get(k)) if value else "-" for k, _ in BENCH_COLUMNS]
    return cells + [_seconds(value.get("seconds_per_image")) if value else "-"]


def bench_markdown(rows: Sequence[dict[str, Any]], variants: Sequence[tuple[str, str]], title: str, notes: Sequence[str] = ()) -> str:
    """One row per dataset, mean pixel AP, exact F1-max and the paper's 100-threshold F1-max (%)
    for each variant side by side.

    ``rows``: ``{"dataset": title, variant_name: {"pixel_ap": .., "pixel_f1_max": ..,
    "pixel_f1_max_100": ..} | None}``; ``variants``: ``(name, label)`` in column order.
    """
    header = ["dataset"]
    for _, label in variants:
        header += [f"{label} {suffix}" for _, suffix in BENCH_COLUMNS] + [f"{label} s/image"]
    lines = [
        f"# {title}", "",
        f"Mean pixel AP and pixel F1-max over each dataset's categories, in %. {F1_SENTENCE} "
        "s/image: the mean stage-2 seconds per image (detection, segmentation, fusion).", "",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [str(row["dataset"])]
        for name, _ in variants:
            cells += _cells(row.get(name))
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def transfer_markdown(title: str, matrix: dict[str, Any]) -> str:
    """The prompt-transfer matrix of one dataset (see :meth:`BenchResult.transfer_matrix`): one row
    per category segmented, its own profile's pixel AP / F1-max first, then each other category's
    profile's ('own' on the diagonal)."""
    sources = list(matrix["sources"])
    header = ["segmented \\ profile of", "own profile", *sources]
    lines = [
        f"## Prompt transfer: {title}",
        "",
        "Pixel AP / F1-max (%) of each row's category segmented with the profile of each column's category.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]

    def pair(value: dict[str, float] | None) -> str:
        return "-" if value is None else f"{pct(value['pixel_ap'])} / {pct(value['pixel_f1_max'])}"

    for target in matrix["categories"]:
        cells = [target, pair(matrix["own"].get(target))]
        cells += ["own" if s == target else pair(matrix["matrix"][target].get(s)) for s in sources]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bench_csv(rows: Sequence[dict[str, Any]], variants: Sequence[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "variant", *(k for k, _ in BENCH_COLUMNS), "seconds_per_image", "categories", "failed"])
    for row in rows:
        for name, _ in variants:
            value = row.get(name)
            if value is None:
                writer.writerow([row["dataset"], name, *([""] * len(BENCH_COLUMNS)), "", "", ""])
            else:
                writer.writerow(
                    [row["dataset"], name, *(_csv_value(value.get(k)) for k, _ in BENCH_COLUMNS),
                     _csv_value(value.get("seconds_per_image")), value.get("categories", ""), value.get("failed", "")]
                )
    return buf.getvalue()
