"""``iapas bench``: every dataset under a root folder and the paper's ablations, each variant an
``iapas evaluate`` run, with one table side by side at the end.

Exit codes: 0 all evaluated, 1 some run failed or the disk filled up (the bench stops early and says
how to resume), 2 bad options or a bench folder in use by another run, 130 interrupted (run the
same command again to resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from iapas.cli.common import console, fail, hold_output_lock, print_stopped, setup_logging
from iapas.cli.eval_common import (
    CHANGES, SHARED, _Bars, _fmt, _pipeline, _prepare, _run_guarded, print_fallback,
)
from iapas.data.registry import dataset_names
from iapas.cli.options import shared
from iapas.models.registry import help_table
from iapas.workflows.options import LOGGING, Settings


def register(app: typer.Typer) -> None:
    app.command("bench", epilog=help_table())(bench_cmd)


@shared(*SHARED, *LOGGING, **CHANGES)
def bench_cmd(
    ctx: typer.Context,
    root_dir: Path = typer.Option(..., "--root-dir", help="Folder holding the datasets (MVTecAD, MPDD, BTAD, KolektorSDD, Magnetic-tile-defect, DTD-Synthetic, DAGM2007)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bench folder: DATASET/VARIANT/ runs and bench.md/csv/json/html."),
    datasets: list[str] = typer.Option(None, "--datasets", help=f"Only these datasets (comma separated): {', '.join(dataset_names(bench=True))}."),
    categories: list[str] = typer.Option(None, "--categories", help="DATASET:cat1,cat2 (repeatable). Default: all; the ablation columns on mvtec: carpet, grid, leather, tile, wood (the default column: all)."),
    ablation: list[str] = typer.Option(None, "--ablation", help="references, prompt, size-filter, size-sweep, wrong-tag, prompt-style, prompt-transfer, detector=NAME or segmenter=NAME (repeatable; NAME: a model name below, a hub id or a folder; a column with that stage-2 model, the default column's profiles)."),
    sizes: str = typer.Option("0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5", "--sizes", help="Size thresholds of --ablation size-sweep."),
    settings: Settings = None,  # type: ignore[assignment]  (the shared options: SHARED)
) -> None:
    """Run the benchmark on every dataset found under --root-dir, and the paper's ablations.

    Each dataset (and each ablation variant) is an 'iapas evaluate' run in OUT/DATASET/VARIANT/;
    stage-1 profiles are shared by the variants that do not change them. Writes OUT/bench.md (one
    row per dataset: mean pixel AP, F1-max and seconds per image of each variant side by side),
    bench.csv, bench.json and bench.html. --ablation detector=NAME (or segmenter=NAME) adds a
    column that runs stage 2 with that model on the same images and profiles.

    Example: iapas bench --root-dir datasets --out runs/bench --datasets mvtec --ablation size-filter --ablation prompt
    """
    options = {**locals(), **settings.values}  # every option by name, for the library's set-up
    setup_logging(settings.verbose, settings.quiet)
    from iapas.evaluation.bench import ABLATIONS, is_ablation, run_bench
    from iapas.workflows.evaluate import bench_categories, check_bench_categories, split_list

    ablations = split_list(ablation)
    unknown = [a for a in ablations if not is_ablation(a)]
    if unknown:
        raise fail(
            f"unknown --ablation {', '.join(unknown)}; choose from {', '.join(ABLATIONS)}, detector=NAME or segmenter=NAME"
        )
    try:
        size_list = [float(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise fail(f"--sizes must be comma-separated numbers, got {sizes!r}") from None
    setup = _prepare(options)
    from iapas.data import canonical_name

    try:
        wanted = [canonical_name(d) for d in split_list(datasets)] or None
        per_dataset = bench_categories(categories)
        check_bench_categories(root_dir, per_dataset, settings.protocol)  # a wrong --categories: one line, before any model loads
    except ValueError as exc:
        raise fail(str(exc)) from None
    hold_output_lock(ctx, out, "bench")  # the whole bench folder, with every evaluation in it
    s = settings
    pipeline = _pipeline(s.detector, s.segmenter, s.device, setup.dtype, s.mode, s.box_threshold, s.text_threshold, s.fuse_object_detection)
    bars = _Bars(s.quiet)

    def on_run(name: str, variant: Any) -> None:
        bars.prefix = f"{name}/{variant.name}: "

    with bars:
        bench = _run_guarded(
            lambda: run_bench(
                root_dir, out, pipeline, setup.settings, stage1=setup.stage1, ablations=ablations, sizes=size_list,
                datasets=wanted, categories=per_dataset, restart=s.restart, report=s.report, progress=bars.hooks(), on_run=on_run,
            )
        )
    _print_bench(bench)
    if bench.failed:
        raise typer.Exit(1)


def _print_bench(bench: Any) -> None:
    from rich.table import Table

    table = Table(title="IAP-AS benchmark: mean pixel AP / F1-max / paper's 100-thr. F1-max (%) / s per image")
    table.add_column("dataset")
    labels = bench.column_labels()
    for _, label in labels:
        table.add_column(escape(label), justify="right")
    for row in bench.rows():
        cells = []
        for name, _ in labels:
            v = row.get(name)
            t = v.get("seconds_per_image") if v is not None else None
            t_cell = f"{t:.3f}s" if isinstance(t, float) and t == t else "-"
            cells.append("-" if v is None else f"{_fmt(v['pixel_ap'])} / {_fmt(v['pixel_f1_max'])} / {_fmt(v['pixel_f1_max_100'])} / {t_cell}")
        table.add_row(escape(str(row["dataset"])), *cells)
    console.print(table)
    for name, errs in bench.errors.items():
        for variant, message in errs.items():
            console.print(f"[bold red]{escape(name)} {escape(variant)}:[/] {escape(message)}", highlight=False, soft_wrap=True)
    print_fallback({
        f"{name}/{variant}/{c.name}": c.profile.llm_fallback
        for name, runs in bench.results.items() for variant, run in runs.items()
        for c in run.categories if c.profile.llm_fallback
    })
    console.print(f"wrote {bench.out_dir / 'bench.md'}, bench.csv, bench.json, bench.html", highlight=False, soft_wrap=True)
    if bench.stopped:
        print_stopped(bench.stopped, "the bench did not finish")
