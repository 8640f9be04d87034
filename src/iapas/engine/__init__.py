"""The run engine: one run over work items for ``segment`` and ``evaluate`` (see :mod:`.core`),
with executors :mod:`.local` (threads) and :mod:`.ray_executor` (Ray Data, the ``iapas[ray]``
extra); the run folders they write: the one signature (:mod:`.signature`), the run-folder rules
(:mod:`.runfolder`) and segment's record format (:mod:`.records`)."""

from iapas.engine.base import EngineError, Executor, ItemError, Job, PlainJob, RunSummary, Sink, WorkItem
from iapas.engine.core import run_items
from iapas.engine.local import LocalExecutor
from iapas.engine.log import ResultsLog
from iapas.engine.runfolder import RunConflictError, check_signature
from iapas.engine.signature import precision_signature

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
