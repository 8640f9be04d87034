"""The bench's result and its files: :class:`BenchResult` (per dataset and variant, the
evaluation or the error; the table's rows) and :func:`write_bench` (``bench.md``, ``bench.csv``,
``bench.json``, ``bench.html``). :mod:`~iapas.evaluation.bench` fills it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapas.evaluation.results import DatasetResult, json_safe
from iapas.evaluation.variants import DEFAULT_VARIANT, Variant
from iapas.core.files import atomic_write_text

TRANSFER_DIR = "prompt-transfer"
# the metrics of the bench table, per variant
BENCH_METRICS: tuple[str, ...] = ("pixel_ap", "pixel_f1_max", "pixel_f1_max_100")

BENCH_MD = "bench.md"
BENCH_CSV = "bench.csv"
BENCH_JSON = "bench.json"
BENCH_HTML = "bench.html"


@dataclass
class BenchResult:
    """The bench table's data: per dataset and variant, the evaluation (or the error)."""

    out_dir: Path
    variants: list[Variant]
    datasets: dict[str, Path]
    results: dict[str, dict[str, DatasetResult]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ablation_categories: dict[str, list[str]] = field(default_factory=dict)  # where the ablations run on fewer categories
    # prompt-transfer: dataset -> source category (whose profile) -> the run of the other categories
    transfer: dict[str, dict[str, DatasetResult]] = field(default_factory=dict)
    test_pool_references: int | None = None  # every column's test set is the one this many references leave
    stopped: str | None = None  # why the bench stopped early (the disk is full), see iapas.core.storage

    @property
    def failed(self) -> bool:
        runs = [r for by in (self.results, self.transfer) for rs in by.values() for r in rs.values()]
        return self.stopped is not None or bool(self.errors) or any(r.failed for r in runs)

    def transfer_matrix(self, dataset: str) -> dict[str, Any] | None:
        """The prompt-transfer matrix of ``dataset``: ``{"categories": [...], "own": {target: metrics},
        "matrix": {target: {source: metrics}}}`` with metrics ``{pixel_ap, pixel_f1_max, pixel_f1_max_100}``
        (None where not evaluated); ``own`` is the default column's. None without a transfer run."""
        runs = self.transfer.get(dataset)
        if not runs:
            return None
        default = self.results.get(dataset, {}).get(DEFAULT_VARIANT.name)
        sources = list(runs)
        targets = list(dict.fromkeys(sources + [c.name for r in runs.values() for c in r.categories]))

        def pick(result: DatasetResult | None, name: str) -> dict[str, float] | None:
            c = next((c for c in result.categories if c.name == name), None) if result is not None else None
            if c is None or c.metrics is None:
                return None
            return {k: float(getattr(c.metrics, k)) for k in BENCH_METRICS}

        matrix = {t: {s: (pick(runs[s], t) if s != t else None) for s in sources} for t in targets}
        return {"categories": targets, "sources": sources, "own": {t: pick(default, t) for t in targets}, "matrix": matrix}

    def _transfer_mean(self, dataset: str) -> dict[str, Any] | None:
        data = self.transfer_matrix(dataset)
        if data is None:
            return None
        cells = [v for row in data["matrix"].values() for v in row.values() if v is not None]
        out: dict[str, Any] = {}
        for k in BENCH_METRICS:
            finite = [c[k] for c in cells if math.isfinite(c[k])]
            out[k] = sum(finite) / len(finite) if finite else float("nan")
        out["categories"] = len(cells)
        out["failed"] = any(r.failed for r in self.transfer[dataset].values())
        return out

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.datasets:
            runs = self.results.get(name, {})
            title = next((r.title for r in runs.values()), name)
            row: dict[str, Any] = {"dataset": title, "name": name}
            for v in self.variants:
                if v.transfer:  # the mean over the matrix's cells (category, other category's profile)
                    row[v.name] = self._transfer_mean(name)
                    continue
                r = runs.get(v.name)
                if r is None:
                    row[v.name] = None
                    continue
                mean = r.mean()
                row[v.name] = {
                    **{k: mean[k] for k in BENCH_METRICS},
                    "seconds_per_image": seconds_per_image(r),
                    "categories": len([c for c in r.categories if c.metrics is not None]),
                    "failed": r.failed,
                }
            rows.append(row)
        return rows

    def column_labels(self) -> list[tuple[str, str]]:
        return [(v.name, v.label) for v in self.variants]


def seconds_per_image(result: DatasetResult) -> float:
    """The mean stage-2 seconds per image of ``result``: each segmented image's recorded timings
    (detection, segmentation, fusion) summed, averaged over every category's images (resumed ones
    included, as recorded when they ran); NaN when no image has timings."""
    times: list[float] = []
    for c in result.categories:
        path = result.out_dir / c.predictions if c.predictions else None
        if path is None or not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line: the evaluation reports it
            timings = record.get("timings") if isinstance(record, dict) and record.get("status") == "ok" else None
            if isinstance(timings, dict) and timings:
                times.append(sum(float(t) for t in timings.values()))
    return sum(times) / len(times) if times else float("nan")


def write_bench(bench: BenchResult) -> dict[str, Path]:
    """Write bench.md, bench.csv, bench.json and bench.html into the bench folder."""
    from iapas.evaluation.tables import bench_csv, bench_markdown, transfer_markdown
    from iapas.evaluation.report import write_bench_report

    out = bench.out_dir
    rows = bench.rows()
    labels = bench.column_labels()
    matrices = {name: m for name in bench.datasets if (m := bench.transfer_matrix(name)) is not None}
    notes = _bench_notes(bench, matrices)
    markdown = bench_markdown(rows, labels, "IAP-AS benchmark", notes)
    for name, matrix in matrices.items():
        title = next((r.title for r in bench.results.get(name, {}).values()), name)
        markdown += "\n" + transfer_markdown(title, matrix)
    paths = {"md": out / BENCH_MD, "csv": out / BENCH_CSV, "json": out / BENCH_JSON, "html": out / BENCH_HTML}
    atomic_write_text(paths["md"], markdown)
    atomic_write_text(paths["csv"], bench_csv(rows, labels))
    data = {
        "variants": [
            {"name": v.name, "label": v.label, **{k: m for k in ("detector", "segmenter") if (m := getattr(v, k)) is not None}}
            for v in bench.variants
        ],
        "datasets": {k: str(v) for k, v in bench.datasets.items()},
        "rows": rows,
        "errors": bench.errors,
        "ablation_categories": bench.ablation_categories,
        "test_pool_references": bench.test_pool_references,
        "prompt_transfer": matrices,
        "notes": notes,
    }
    atomic_write_text(paths["json"], json.dumps(json_safe(data), indent=2) + "\n")
    write_bench_report(paths["html"], "IAP-AS benchmark", markdown, _report_links(bench))
    return paths


def _bench_notes(bench: BenchResult, matrices: dict[str, Any]) -> list[str]:
    """The notes under the bench table: the protocol and models, the ablation categories, the
    shared test set, the transfer matrices, and what was not evaluated or failed."""
    from iapas.evaluation.tables import pct

    first = next((r for runs in bench.results.values() for r in runs.values()), None)
    notes = list(bench.notes)
    if first is not None:
        notes.insert(0, first.protocol_sentence())
        s = first.settings
        notes.insert(1, f"Mode {s.mode}; models: detector {first.models.get('detector')}, segmenter {first.models.get('segmenter')}; iapas {first.iapas_version}.")
        if s.limit is not None:
            notes.append(f"Quick check: at most {s.limit} test images per category; not full-benchmark numbers.")
    for name, chosen in bench.ablation_categories.items():
        runs = bench.results.get(name, {})
        title = next((r.title for r in runs.values()), name)
        note = (
            f"{title}: the {DEFAULT_VARIANT.label} column is the mean over every category; the ablation columns are over "
            f"the paper's ablation categories only ({', '.join(chosen)})"
        )
        default = runs.get(DEFAULT_VARIANT.name)
        if default is not None:
            mean = default.mean(chosen)
            note += f"; over those, {DEFAULT_VARIANT.label} has pixel AP {pct(mean['pixel_ap'])}, F1-max {pct(mean['pixel_f1_max'])}"
        notes.append(note + ".")
    if bench.test_pool_references is not None:
        notes.append(
            f"Every column of a dataset is scored on the same test images: the test set is drawn once, with the "
            f"references of the largest count ({bench.test_pool_references}) excluded, where the references come from "
            "the normal test images."
        )
    if matrices:
        notes.append(
            "The prompt-transfer column is the mean over the matrix's cells: each category segmented with another "
            "category's stage-1 profile (its object tag, object size and caption); the matrices follow."
        )
    for name, errs in bench.errors.items():
        for variant, message in errs.items():
            notes.append(f"{name} {'' if variant == '*' else variant + ' '}not evaluated: {message}")
    for name, runs in bench.results.items():
        for variant, r in runs.items():
            if r.failed:
                notes.append(f"{name} {variant}: some images or categories failed (see its report).")
    for name, by_source in bench.transfer.items():
        for source, r in by_source.items():
            if r.failed:
                notes.append(f"{name} prompt-transfer from {source}: some images or categories failed (see its report).")
    return notes


def _report_links(bench: BenchResult) -> dict[str, str]:
    """``{caption: report path relative to the bench folder}`` of every run that wrote its report."""
    out = bench.out_dir
    links = {
        f"{name} / {variant}": f"{name}/{variant}/report.html"
        for name, runs in bench.results.items()
        for variant in runs
        if (out / name / variant / "report.html").exists()
    }
    links.update(
        {
            f"{name} / {TRANSFER_DIR} from {source}": f"{name}/{TRANSFER_DIR}/from-{source}/report.html"
            for name, by_source in bench.transfer.items()
            for source in by_source
            if (out / name / TRANSFER_DIR / f"from-{source}" / "report.html").exists()
        }
    )
    return links
