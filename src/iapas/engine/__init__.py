"""The run engine: one run over work items for ``segment`` and ``evaluate`` (see :mod:`.core`),
with executors :mod:`.local` (threads) and :mod:`.ray` (Ray Data, the ``iapas[ray]`` extra)."""

from iapas.engine.base import EngineError, Executor, ItemError, Job, PlainJob, RunSummary, Sink, WorkItem, precision_signature
from iapas.engine.core import run_items
from iapas.engine.local import LocalExecutor
from iapas.engine.log import ResultsLog, RunConflictError, check_signature

__all__ = [
    "EngineError",
    "Executor",
    "ItemError",
    "Job",
    "LocalExecutor",
    "PlainJob",
    "ResultsLog",
    "RunConflictError",
    "RunSummary",
    "Sink",
    "WorkItem",
    "check_signature",
    "precision_signature",
    "run_items",
]
