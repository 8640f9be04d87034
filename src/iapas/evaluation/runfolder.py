"""An evaluation folder's run file (``run.json``): the signature a resumed run must match, and
discarding a folder's results."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iapas.engine.log import RunConflictError
from iapas.evaluation.predictions import MAPS_DIR, PREDICTIONS_DIR, predictions_path
from iapas.evaluation.settings import EvalSettings
from iapas.models.fingerprint import signature_diff

RUN_FILE = "run.json"


def _read_run(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunConflictError(f"{path}: unreadable ({exc}); use another --out folder, or --restart to discard it") from None
    return data if isinstance(data, dict) else None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _has_predictions(out_dir: Path, category: str | None = None) -> bool:
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


def run_signature(dataset: str, settings: EvalSettings, models: Mapping[str, Any]) -> dict[str, Any]:
    """The run-wide settings that decide the predictions: dataset, :meth:`EvalSettings.signature`
    and the models (see :func:`model_names`)."""
    return {"dataset": dataset, **settings.signature(), **models}


def check_existing_run(out_dir: str | Path, signature: Mapping[str, Any]) -> None:
    """Raise :class:`RunConflictError` when ``out_dir`` holds predictions made with another
    signature: other settings, other models by fingerprint (paths are informative only), or no
    fingerprints (an older iapas), see :func:`iapas.models.fingerprint.signature_diff`.

    Cheap (reads ``run.json``): a command line can call it before loading any model.
    """
    out = Path(out_dir)
    previous = _read_run(out / RUN_FILE) or {}
    if not _has_predictions(out):
        return
    recorded = previous.get("signature")
    if not isinstance(recorded, dict):
        raise RunConflictError(f"{out} holds predictions but no readable {RUN_FILE} signature; use another --out folder, or --restart to discard them")
    diff = signature_diff(recorded, signature)
    if diff:
        details = [item for item in _differences(recorded, dict(signature)) if item.split(":", 1)[0] in diff.changed]
        raise RunConflictError(
            f"{out} holds results {diff.describe(details)}; use another --out folder, or --restart to discard them"
        )
