"""What an evaluation folder adds to the run-folder rules of :mod:`iapas.engine.runfolder`: its
signature (the dataset, the settings, then the one models signature of
:mod:`iapas.engine.signature`), its predictions as the results a resumed run must match, and
discarding a folder's results."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iapas.engine.records import RUN_FILE
from iapas.engine.runfolder import check_recorded, read_run
from iapas.engine.signature import RunModels, models_signature
from iapas.evaluation.predictions import MAPS_DIR, PREDICTIONS_DIR, predictions_path
from iapas.evaluation.settings import EvalSettings


def has_predictions(out_dir: Path, category: str | None = None) -> bool:
    """Whether ``out_dir`` holds predictions (of ``category``, when given)."""
    folder = out_dir / PREDICTIONS_DIR
    if category is not None:
        p = predictions_path(out_dir, category)
        return p.exists() and p.stat().st_size > 0
    return folder.is_dir() and any(p.stat().st_size > 0 for p in folder.glob("*.jsonl"))


def discard_results(out_dir: Path) -> None:
    """Delete the predictions, maps and tables of an evaluation folder (profiles are kept)."""
    for name in (PREDICTIONS_DIR, MAPS_DIR):
        folder = out_dir / name
        if folder.is_dir():
            shutil.rmtree(folder)
    for name in (RUN_FILE, "metrics.csv", "metrics.json", "metrics.md", "curves.json", "report.html"):
        (out_dir / name).unlink(missing_ok=True)


def run_signature(dataset: str, settings: EvalSettings, config: Any, models: RunModels) -> dict[str, Any]:
    """The run-wide settings that decide the predictions: dataset, :meth:`EvalSettings.signature`
    and the pipeline ``config``'s models and settings (:func:`iapas.engine.signature.models_signature`).
    ``models``: :meth:`RunModels.loaded` of the pipeline, or before loading it :meth:`RunModels.named`
    of its config (the models known by content only: the check before loading)."""
    return {"dataset": dataset, **settings.signature(), **models_signature(config, models, evaluation=True)}


def check_existing_run(out_dir: str | Path, signature: Mapping[str, Any]) -> None:
    """Raise :class:`~iapas.engine.runfolder.RunConflictError` when ``out_dir`` holds predictions
    made with another signature (see :func:`iapas.engine.runfolder.check_recorded`); an
    unreadable ``run.json`` is refused even without predictions.

    Cheap (reads ``run.json``): a command line can call it before loading any model.
    """
    out = Path(out_dir)
    previous = read_run(out / RUN_FILE) or {}
    if has_predictions(out):
        check_recorded(out, previous.get("signature"), signature, unreadable=f"{out} holds predictions but no readable {RUN_FILE} signature",
                       detailed=True)
