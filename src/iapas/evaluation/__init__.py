"""Benchmark evaluation: stage 2 over a dataset's test images, the paper's protocol, tables.

>>> from iapas.evaluation import EvalSettings, Stage1Options, evaluate_dataset
>>> result = evaluate_dataset("mtd", "data/MTD", "runs/mtd", pipeline,          # doctest: +SKIP
...                           EvalSettings(protocol="paper"), stage1=Stage1Options(llm="knowledge"))
>>> result.mean()["pixel_f1_max"]                                               # doctest: +SKIP

Modules: :mod:`~iapas.evaluation.protocol` (resizing, stack normalisation, PR curves),
:mod:`~iapas.evaluation.profiles` (stage-1 profiles: cached or built),
:mod:`~iapas.evaluation.settings` (what an evaluation does), :mod:`~iapas.evaluation.core`
(its work for the run engine, and metrics), :mod:`~iapas.evaluation.predictions` (per-image
files), :mod:`~iapas.evaluation.results` (what the tables and the report read),
:mod:`~iapas.evaluation.run` (:func:`evaluate_dataset`: all of it, then the tables),
:mod:`~iapas.evaluation.tables` (CSV, JSON, Markdown), :mod:`~iapas.evaluation.bench`
(every dataset under a folder, and the paper's ablations: its columns are
:mod:`~iapas.evaluation.variants`, its table and files :mod:`~iapas.evaluation.bench_results`).
The HTML report is :mod:`iapas.evaluation.report`; :mod:`~iapas.evaluation.coco` exports a run's
kept instances (segment, evaluate or station folders) as a COCO instances file.
"""

from iapas.evaluation.core import (
    METRIC_COLUMNS,
    CategoryResult,
    DatasetResult,
    EvalSettings,
    ImageFailure,
    ProgressHooks,
    RunConflictError,
    evaluate_category,
    metrics_from_predictions,
)
from iapas.evaluation.profiles import Stage1Models, Stage1Options, get_profile, wrong_object_tags
from iapas.evaluation.protocol import EVAL_SIZE, limit_samples, normalize_stack, pr_curve, resize_map, resize_mask
from iapas.evaluation.run import evaluate_dataset

__all__ = [
    "EVAL_SIZE",
    "METRIC_COLUMNS",
    "CategoryResult",
    "DatasetResult",
    "EvalSettings",
    "ImageFailure",
    "ProgressHooks",
    "RunConflictError",
    "Stage1Models",
    "Stage1Options",
    "evaluate_category",
    "evaluate_dataset",
    "get_profile",
    "limit_samples",
    "metrics_from_predictions",
    "normalize_stack",
    "pr_curve",
    "resize_map",
    "resize_mask",
    "wrong_object_tags",
]
