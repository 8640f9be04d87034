"""What the line says back: observed false-alarm and escape rates, the drift alarm, and the
sample a threshold can be recalibrated on, from verdicts and the dispositions people gave them.

Each stored inspection is a :class:`Case`: its verdict (``decision`` "OK"/"NG" and the
``score`` the rule thresholded), whether the station drew it for audit (``audit``: a draw
``u < audit_rate`` made for EVERY part, OK and NG alike, independent of its score) and its
current disposition (the last one given; see :mod:`iapas.engine.dispositions`):

- ``confirmed_ok`` and ``false_call`` say the part is good (normal);
- ``confirmed_ng`` and ``missed_defect`` say the part is bad (defective).

The sampling design decides what counts. Every NG is reviewed, but an OK is looked at only when
it was drawn for audit, so the audited parts are the only simple random sample of the
production: an unaudited OK is evidence of nothing, and the false calls outside the audit
sample are a biased view of the normal parts (they are the normal parts that scored HIGH).

- **False-alarm rate** ``P(NG | normal)``: among the audited parts with a normal disposition
  (the random sample of normal parts), the fraction judged NG.
- **Escape rate** ``P(defective | OK)``: among the audited OK parts with a disposition, the
  fraction found defective (``missed_defect``).
- Open work is counted, never guessed: NGs without a disposition (``ng_open``) and audited OKs
  without one (``audits_open``). An undispositioned audited part is left out of both samples,
  which biases the estimates only if whether a part gets reviewed depends on what it is.

Intervals are exact Clopper-Pearson (:func:`binomial_interval`): conservative, they cover the
true rate with at least the stated probability for every ``n``, which the drift alarm relies on.

The recalibration sample (:func:`recalibration_sample`) is the same random sample of normal
parts: its scores are exchangeable with the next normal part's, so the conformal threshold
(:func:`iapas.product.decision.conformal_threshold`) keeps its guarantee. Taking every false
call instead (:func:`naive_normal_sample`) adds the high-scoring normals that the audit did
not draw and raises the threshold: it is here to show the bias, not to use.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

NORMAL = ("confirmed_ok", "false_call")  # dispositions that say the part is good
DEFECTIVE = ("confirmed_ng", "missed_defect")  # dispositions that say the part is bad
CONFIDENCE = 0.95
METHOD = "clopper-pearson"


@dataclass(frozen=True)
class Case:
    """One inspected part as feedback sees it (plain values, from a stored record)."""

    result_id: str
    at: str  # when it was inspected, ISO-8601 (UTC)
    score: float  # the score the decision rule thresholded (the record's decision_score)
    decision: str  # "OK" or "NG"
    audit: bool  # drawn for audit (independently of its score)
    disposition: str | None  # the current disposition, None when nobody gave one

    @property
    def normal(self) -> bool:
        return self.disposition in NORMAL

    @property
    def defective(self) -> bool:
        return self.disposition in DEFECTIVE


@dataclass(frozen=True)
class Estimate:
    """``k`` of ``n`` with its interval; ``rate`` is None (and the interval [0, 1]) when ``n`` is 0."""

    k: int
    n: int
    rate: float | None
    low: float
    high: float
    method: str = METHOD
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """``'3/200 = 1.5% (95% CI 0.31%-4.3%)'``, or ``'0/0 (no evidence yet)'``."""
        if self.rate is None:
            return "0/0 (no evidence yet)"
        return (f"{self.k}/{self.n} = {_percent(self.rate)} ({self.confidence * 100:g}% CI "
                f"{_percent(self.low)}-{_percent(self.high)})")


def _percent(value: float) -> str:
    """Two significant digits, but never ``1e+02%``: 99.5% and more keep three."""
    percent = value * 100
    return f"{percent:.3g}%" if percent >= 99.5 else f"{percent:.2g}%"


def binomial_interval(k: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """The exact (Clopper-Pearson) interval of a binomial rate from ``k`` successes in ``n``.

    ``low = Beta(a/2; k, n-k+1)`` quantile (0 when ``k = 0``), ``high = Beta(1-a/2; k+1, n-k)``
    quantile (1 when ``k = n``), with ``a = 1 - confidence``. For ``k = 0`` the high end is
    ``1 - (a/2)^(1/n)`` in closed form, e.g. 0/10 -> [0, 0.3085]."""
    from scipy.stats import beta

    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return Estimate(0, 0, None, 0.0, 1.0, METHOD, confidence)
    tail = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return Estimate(k, n, k / n, low, high, METHOD, confidence)


@dataclass(frozen=True)
class FeedbackRates:
    """The observed rates of one product and the counts behind them (see the module's docstring)."""

    false_alarm: Estimate  # NG among audited normal parts
    escape: Estimate  # defective among audited OK parts with a disposition
    ng_open: int  # NGs without a disposition
    audits_open: int  # audited OKs without a disposition
    parts: int  # every case counted
    ng: int  # judged NG
    audited: int  # drawn for audit
    false_calls: int  # every false call, audited or not (the complete count)
    missed_defects: int  # every missed defect, audited or not (found outside the audit too)
    false_alarm_floor: float = 0.0  # census lower bound of the false-alarm rate (see observed_rates)
    false_calls_ng: int = 0  # its numerator: NGs whose disposition says normal
    possible_normals: int = 0  # its denominator: every part not known to be defective

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["false_alarm"], data["escape"] = self.false_alarm.to_dict(), self.escape.to_dict()
        return data


def observed_rates(cases: Iterable[Case], since: str | None = None, last: int | None = None,
                   confidence: float = CONFIDENCE) -> FeedbackRates:
    """The false-alarm and escape rates of ``cases`` with exact intervals, counting only what the
    design allows: the false-alarm rate from the audited parts whose disposition says normal
    (``k`` = those judged NG), the escape rate from the audited OK parts with a disposition
    (``k`` = ``missed_defect``). Unaudited OKs count only in ``parts``; unaudited false calls
    and missed defects only in the complete counts ``false_calls`` and ``missed_defects``.

    Every NG is reviewed, so the false calls are also counted completely: ``false_alarm_floor``
    is the exact one-sided lower bound (at ``1 - (1 - confidence) / 2``) of ``false_calls`` among
    ``possible_normals``, every part not known to be defective (false calls, open NGs, every OK
    without a ``missed_defect``). That is at least the number of normal parts whatever the
    unaudited OKs are (nothing is assumed about an OK: it is counted where it lowers the bound),
    and an open NG counts as no false call, so the floor stays a valid lower bound of
    ``P(NG | normal)``; it is far tighter than the audit interval's low end, since it uses every
    part instead of the audited few.

    ``since`` (ISO date or date-time, UTC when no zone is given) keeps the cases inspected then
    or later; ``last`` then keeps the ``last`` most recent (a window, for the drift alarm)."""
    chosen = window(cases, since, last)
    normal = [c for c in chosen if c.audit and c.normal]
    audited_ok = [c for c in chosen if c.audit and c.decision == "OK" and c.disposition is not None]
    false_calls = sum(c.decision == "NG" and c.normal for c in chosen)
    possible = sum(not c.defective for c in chosen)  # every part not known to be defective
    return FeedbackRates(
        false_alarm=binomial_interval(sum(c.decision == "NG" for c in normal), len(normal), confidence),
        escape=binomial_interval(sum(c.defective for c in audited_ok), len(audited_ok), confidence),
        ng_open=sum(c.decision == "NG" and c.disposition is None for c in chosen),
        audits_open=sum(c.audit and c.decision == "OK" and c.disposition is None for c in chosen),
        parts=len(chosen),
        ng=sum(c.decision == "NG" for c in chosen),
        audited=sum(c.audit for c in chosen),
        false_calls=sum(c.disposition == "false_call" for c in chosen),
        missed_defects=sum(c.disposition == "missed_defect" for c in chosen),
        false_alarm_floor=binomial_interval(false_calls, possible, confidence).low,
        false_calls_ng=false_calls,
        possible_normals=possible,
    )


def drift_alarm(rates: FeedbackRates, target_rate: float | None, max_escape_rate: float | None = None) -> list[str]:
    """One line per alarm, [] when none. The false-alarm alarm fires when the evidence excludes
    ``target_rate``: the audit interval's LOW end is above it, or the false calls' census floor
    is (``false_alarm_floor``, see :func:`observed_rates`; each a one-sided 97.5% bound at the
    default confidence, so with no drift either fires on one check with probability at most
    5%). The escape alarm fires when the escape interval's low end is above ``max_escape_rate``.
    Either limit may be None (not checked). A rate whose interval merely contains values above
    the limit is no alarm: noise, until the evidence excludes the limit."""
    alarms = []
    far = rates.false_alarm
    floor = (f"{rates.false_calls_ng} false call(s) of at most {rates.possible_normals} normal parts: "
             f"at least {_percent(rates.false_alarm_floor)}")
    if target_rate is not None and far.rate is not None and far.low > target_rate:
        extra = f"; {floor}" if rates.false_alarm_floor > far.low else ""
        alarms.append(f"drift: observed false-alarm rate {far.text()} is above the calibrated target "
                      f"{_percent(target_rate)}{extra}")
    elif target_rate is not None and rates.false_alarm_floor > target_rate:
        alarms.append(f"drift: false-alarm rate above the calibrated target {_percent(target_rate)}: {floor} "
                      f"(every NG reviewed; audit sample {far.text()})")
    esc = rates.escape
    if max_escape_rate is not None and esc.rate is not None and esc.low > max_escape_rate:
        alarms.append(f"drift: audits found escapes at {esc.text()}, above the limit {_percent(max_escape_rate)}")
    return alarms


def recalibration_sample(cases: Iterable[Case], since: str | None = None) -> list[Case]:
    """The exchangeable sample of normal parts: the audited parts (inspected at or after
    ``since``) whose disposition says normal, i.e. audited parts confirmed OK plus the false
    calls that the audit drew (false calls subsampled at the audit rate)."""
    return [c for c in window(cases, since) if c.audit and c.normal]


def naive_normal_sample(cases: Iterable[Case], since: str | None = None) -> list[Case]:
    """BIASED, for comparison only: every part with a normal disposition, audited or not. All
    NGs are reviewed, so this takes every false call (the high-scoring normals) but only the
    audited share of the low-scoring ones: its quantile is too high."""
    return [c for c in window(cases, since) if c.normal]


def window(cases: Iterable[Case], since: str | None = None, last: int | None = None) -> list[Case]:
    """``cases`` inspected at or after ``since``, in time order; the ``last`` most recent of them."""
    start = None if since is None else parse_time(since, "since")
    chosen = sorted(cases, key=lambda c: (_utc(c.at, c.result_id), c.result_id))
    if start is not None:
        chosen = [c for c in chosen if _utc(c.at, c.result_id) >= start]
    if last is not None:
        if last < 1:
            raise ValueError(f"last must be at least 1, got {last}")
        chosen = chosen[-last:]
    return chosen


def parse_time(text: str, what: str = "time") -> _dt.datetime:
    """An ISO-8601 date or date-time as an aware UTC datetime (no zone given: UTC); a one-line
    ValueError naming ``what`` else."""
    try:
        value = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not an ISO-8601 date or date-time (e.g. 2026-12-01)") from None
    return value.replace(tzinfo=_dt.timezone.utc) if value.tzinfo is None else value.astimezone(_dt.timezone.utc)


@functools.lru_cache(maxsize=65536)
def _utc(text: str, what: str) -> _dt.datetime:
    return parse_time(text, what)  # a history is read again on every page view: parse each time once


def id_time(result_id: str) -> str:
    """When a station result id was made: its first 12 hex digits are epoch milliseconds
    (:func:`iapas.serve.store.new_id`); ISO-8601 UTC."""
    millis = int(result_id[:12], 16)
    return _dt.datetime.fromtimestamp(millis / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds")


def case_from_record(record: dict[str, Any], history: list[dict[str, Any]] | None = None) -> Case | None:
    """The :class:`Case` of one stored record (``results.jsonl`` line or station record) and its
    disposition history (oldest first, the last in force); None for a record without a verdict
    or a finite decision score. ``at`` is the record's ``at`` if any, else the time in its id."""
    result_id = record.get("id") or record.get("key")
    score = record.get("decision_score")
    if (not isinstance(result_id, str) or record.get("decision") not in ("OK", "NG")
            or isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)):
        return None
    at = record.get("at")
    if not isinstance(at, str):
        try:
            at = id_time(result_id)
        except ValueError:
            return None
    return Case(result_id=result_id, at=at, score=float(score), decision=record["decision"],
                audit=record.get("audit") is True, disposition=history[-1]["disposition"] if history else None)


def cases_from_records(records: Iterable[dict[str, Any]], dispositions: dict[str, list[dict[str, Any]]]) -> list[Case]:
    """:func:`case_from_record` over ``records`` with ``dispositions`` (id -> history, as
    :func:`iapas.engine.dispositions.read_dispositions` reads them); records without a verdict are left out."""
    cases = (case_from_record(r, dispositions.get(r.get("id") or r.get("key") or "")) for r in records)
    return [c for c in cases if c is not None]

