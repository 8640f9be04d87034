"""An evaluation from start to finish: predictions and metrics (:func:`~iapas.evaluation.core.measure_dataset`),
then the tables and the HTML report that read them. The top of the evaluation package: nothing
below imports it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from iapas.evaluation.core import measure_dataset
from iapas.evaluation.results import DatasetResult
from iapas.evaluation.tables import write_tables
from iapas.core.storage import is_disk_full, stop_reason

logger = logging.getLogger(__name__)


def evaluate_dataset(*args: Any, report: bool = True, **kwargs: Any) -> DatasetResult:
    """:func:`~iapas.evaluation.core.measure_dataset` (same arguments), then write
    ``metrics.{csv,json,md}``, ``curves.json`` and, with ``report``, ``report.html`` into its
    output folder. A full disk while writing them sets ``stopped``."""
    ds_result = measure_dataset(*args, **kwargs)
    out = Path(ds_result.out_dir)
    try:
        write_tables(ds_result, out)
        if report:
            from iapas.evaluation.report import write_report

            write_report(ds_result, out)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.error("%s: cannot write the tables: %s", out, exc)
        ds_result.stopped = ds_result.stopped or stop_reason(exc)
    return ds_result
