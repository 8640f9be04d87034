"""The station's side of the feedback loop: dispositions, the audit draw, observed rates, drift.

- ``POST /v1/results/{id}/disposition`` (JSON ``{"disposition", "who", "note"}``) records what
  a person says about a result (:mod:`iapas.engine.dispositions`); ``GET /v1/results/{id}``
  answers one result with its history.
- :class:`AuditDraw`: with ``serve --audit-rate R``, every inspection, OK and NG alike, gets
  one draw ``u ~ U[0, 1)`` from the station's own seeded generator, before its score exists;
  its record keeps ``"audit": u < R`` and ``"audit_rate": R``. An audited OK is "to audit".
- :class:`FeedbackMonitor`: per product, the observed false-alarm and escape rates with exact
  intervals (:func:`iapas.product.feedback.observed_rates`) and the drift alarms
  (:func:`iapas.product.feedback.drift_alarm`) against the profile's calibrated target rate and
  ``--max-escape-rate``, for ``GET /v1/health``; one warning log line when an alarm starts.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from iapas.engine.dispositions import DISPOSITIONS, check_disposition, disposition_entry, verdict_problem
from iapas.product.feedback import cases_from_records, drift_alarm, observed_rates
from iapas.product.profile import Profile
from iapas.serve.store import StoreError

logger = logging.getLogger(__name__)

DEFAULT_MAX_ESCAPE_RATE = 0.01
MAX_WHO = 80
MAX_NOTE = 1000
TOKEN_WHO = "token"  # who a disposition is from when the station has a token and the body names nobody


def check_rate(value: float, name: str) -> float:
    """``value`` when it is a number in [0, 1]; a one-line ValueError naming ``name`` else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number from 0 to 1, not {value!r}")
    return float(value)


class AuditDraw:
    """One independent ``U[0, 1)`` draw per inspection from a generator seeded once per station
    (``seed`` None: from the operating system's entropy); ``rate`` 0 draws nothing."""

    def __init__(self, rate: float = 0.0, seed: int | None = None) -> None:
        self.rate = check_rate(rate, "--audit-rate")
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def draw(self) -> dict[str, Any]:
        """The fields the inspection's record gets: ``{"audit": bool, "audit_rate": R}``, or {} when off."""
        if self.rate <= 0.0:
            return {}
        with self._lock:
            u = float(self._rng.random())
        return {"audit": u < self.rate, "audit_rate": self.rate}


class FeedbackMonitor:
    """The observed rates and drift alarms of each product, from the store's records and their
    dispositions; recomputed only when a result or a disposition was added."""

    def __init__(self, store: Any, profiles: dict[str, Profile], categories: list[str],
                 max_escape_rate: float | None = DEFAULT_MAX_ESCAPE_RATE) -> None:
        self.store, self.profiles, self.categories = store, profiles, categories
        self.max_escape_rate = None if max_escape_rate is None else check_rate(max_escape_rate, "--max-escape-rate")
        self.changes = 0  # dispositions added: part of the cache key
        self._active: set[tuple[str, str]] = set()  # (product, kind) of the alarms on now
        self._cache: tuple[Any, dict[str, Any], list[str]] | None = None
        self._lock = threading.Lock()

    def target(self, category: str) -> float | None:
        profile = self.profiles.get(category)
        return profile.decision.target_rate if profile is not None and profile.decision is not None else None

    def report(self) -> tuple[dict[str, Any], list[str]]:
        """``({product: rates, counts, target_rate, max_escape_rate, alarm}, [every alarm line])``."""
        records = self.store.records()
        key = (len(records), records[-1].get("id") or records[-1].get("key") if records else None, self.changes)
        with self._lock:
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1], self._cache[2]
            by_product: dict[str, list[dict[str, Any]]] = {c: [] for c in self.categories}
            for record in records:
                by_product.setdefault(str(record.get("category")), []).append(record)
            feedback, alarms = {}, {}
            for category, chosen in by_product.items():
                feedback[category], found = self._product(category, chosen)
                alarms.update({(category, kind): f"{category}: {line}" for kind, line in found})
            for started in sorted(set(alarms) - self._active):  # one log line when an alarm starts
                logger.warning("%s", alarms[started])
            self._active = set(alarms)
            lines = list(alarms.values())
            self._cache = (key, feedback, lines)
            return feedback, lines

    def _product(self, category: str, records: list[dict[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        history = {r.get("id") or r.get("key"): r.get("dispositions") for r in records if r.get("dispositions")}
        rates = observed_rates(cases_from_records(records, history))
        target = self.target(category)
        alarms = [("false-alarm", line) for line in drift_alarm(rates, target, None)]
        alarms += [("escape", line) for line in drift_alarm(rates, None, self.max_escape_rate)]
        entry = {**rates.to_dict(), "target_rate": target, "max_escape_rate": self.max_escape_rate,
                 "alarm": [line for _, line in alarms]}
        return entry, alarms


def check_filter(value: str) -> str | None:
    """Why ``value`` cannot be the ``disposition=`` filter of ``GET /v1/results``, None when it can."""
    if value == "none" or value in DISPOSITIONS:
        return None
    return f"disposition must be one of {', '.join(DISPOSITIONS)} or none (not yet given), not {value[:40]!r}"


def _text(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null, not {type(value).__name__}")
    value = "".join(c for c in value if c.isprintable()).strip()
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long: at most {limit}")
    return value or None


def parse_disposition(raw: bytes, result_id: str, token: str | None) -> dict[str, Any]:
    """The checked dispositions-file entry of a request body (one-line ValueError else); ``who``
    defaults to :data:`TOKEN_WHO` on a station with a token."""
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValueError('the body must be a JSON object: {"disposition": ..., "who": ..., "note": ...}')
    unknown = sorted(set(body) - {"disposition", "who", "note"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}: send disposition, who and note")
    check_disposition(body.get("disposition"))
    who = _text(body, "who", MAX_WHO)
    if who is None and token is not None:
        who = TOKEN_WHO
    return disposition_entry(result_id, body["disposition"], who, _text(body, "note", MAX_NOTE))


def add_feedback_routes(app: Any, station: Any, summary: Callable[[dict[str, Any]], dict[str, Any]],
                        bad_request: Callable[..., Exception], valid_id: Callable[[str], bool]) -> None:
    """The disposition route and the one-result route; ``station`` is the app's
    :class:`iapas.serve.app.Station` (its ``store``, ``settings``, ``feedback``)."""

    def answer(record: dict[str, Any]) -> dict[str, Any]:
        return {**summary(record), "history": list(record.get("dispositions", []))}

    def find(result_id: str) -> dict[str, Any]:
        record = station.store.get(result_id) if valid_id(result_id) else None
        if record is None:
            raise bad_request(404, f"no result {result_id[:40]!r} (unknown, or no longer kept)")
        return record

    @app.get("/v1/results/{result_id}", summary="One result with its dispositions")
    async def one_result(result_id: str) -> JSONResponse:
        """The result's summary, its current `disposition` and its `history` (oldest first)."""
        return JSONResponse(answer(find(result_id)))

    @app.post("/v1/results/{result_id}/disposition", summary="Confirm or overrule a verdict",
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": {
                  "type": "object", "required": ["disposition"], "properties": {
                      "disposition": {"type": "string", "enum": ["confirmed_ng", "false_call", "missed_defect", "confirmed_ok"]},
                      "who": {"type": "string"}, "note": {"type": "string"}}}}}}})
    async def dispose(result_id: str, request: Request) -> JSONResponse:
        """What a person found: an NG is `confirmed_ng` or a `false_call`, an OK is
        `confirmed_ok` or a `missed_defect`. Appended to the result's history (a later one
        supersedes); answers the result with its current disposition and history."""
        if getattr(station.store, "readonly", False):
            raise bad_request(405, "this station is a read-only review: it records no dispositions")
        record = find(result_id)
        try:
            entry = parse_disposition(await request.body(), result_id, station.settings.token)
        except ValueError as exc:
            raise bad_request(422, str(exc)) from None
        if problem := verdict_problem(record.get("decision"), entry["disposition"]):
            raise bad_request(422, problem)
        try:
            record = await run_in_threadpool(station.store.dispose, result_id, entry)
        except StoreError as exc:
            raise bad_request(exc.status, exc.detail) from None
        if record is None:
            raise bad_request(404, f"no result {result_id!r} (no longer kept)")
        station.feedback.changes += 1
        await run_in_threadpool(station.feedback.report)  # the alarm's log line when this starts one
        return JSONResponse(answer(record))

