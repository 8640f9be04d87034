"""iapas.product.feedback: intervals, observed rates, the drift alarm and the recalibration
sample, on small synthetic histories with values computed by hand."""

from __future__ import annotations

import math

import pytest

from iapas.product.decision import conformal_threshold
from iapas.product.feedback import (
    Case,
    binomial_interval,
    case_from_record,
    cases_from_records,
    drift_alarm,
    naive_normal_sample,
    observed_rates,
    recalibration_sample,
)


def _tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k), X ~ Binomial(n, p), summed by hand (the oracle: no scipy)."""
    def term(i: int) -> float:  # comb(n, i) p^i (1-p)^(n-i), in logs (n may be 1000s)
        log = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        return math.exp(log + i * math.log(p) + (n - i) * math.log1p(-p))

    return sum(term(i) for i in range(k, n + 1))


@pytest.mark.parametrize("k,n", [(1, 4), (2, 4), (3, 10), (7, 20), (1, 200), (5, 37)])
def test_interval_ends_solve_the_binomial_tails(k, n):
    """Clopper-Pearson's definition: at ``low``, P(X >= k) = 2.5%; at ``high``, P(X <= k) = 2.5%."""
    est = binomial_interval(k, n)
    assert (est.k, est.n, est.method) == (k, n, "clopper-pearson")
    assert est.rate == k / n
    assert _tail_at_least(k, n, est.low) == pytest.approx(0.025, abs=1e-9)
    assert 1 - _tail_at_least(k + 1, n, est.high) == pytest.approx(0.025, abs=1e-9)


def test_interval_closed_forms():
    # 0 of 10: high = 1 - 0.025^(1/10) = 0.308497...; 10 of 10: low = 0.025^(1/10)
    zero = binomial_interval(0, 10)
    assert (zero.rate, zero.low) == (0.0, 0.0)
    assert zero.high == pytest.approx(1 - 0.025 ** 0.1, abs=1e-12)
    assert zero.high == pytest.approx(0.308497, abs=1e-6)
    full = binomial_interval(10, 10)
    assert (full.rate, full.high) == (1.0, 1.0)
    assert full.low == pytest.approx(0.691503, abs=1e-6)
    # 1 of 4: low = 1 - 0.975^(1/4) = 0.0063095; 3 of 4: high = 0.975^(1/4) = 0.9936905
    assert binomial_interval(1, 4).low == pytest.approx(1 - 0.975 ** 0.25, abs=1e-12)
    assert binomial_interval(3, 4).high == pytest.approx(0.975 ** 0.25, abs=1e-12)
    # the textbook value of 1/4: [0.0063, 0.8059]
    assert binomial_interval(1, 4).high == pytest.approx(0.805880, abs=1e-6)
    empty = binomial_interval(0, 0)
    assert (empty.rate, empty.low, empty.high) == (None, 0.0, 1.0)
    assert empty.to_dict() == {"k": 0, "n": 0, "rate": None, "low": 0.0, "high": 1.0,
                               "method": "clopper-pearson", "confidence": 0.95}


def test_interval_agrees_with_scipy_binomtest():
    from scipy.stats import binomtest

    for k, n in [(0, 5), (2, 9), (13, 100), (50, 50)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        est = binomial_interval(k, n)
        assert (est.low, est.high) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_interval_refuses_nonsense():
    with pytest.raises(ValueError, match="k=5, n=4"):
        binomial_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        binomial_interval(1, 4, confidence=1.5)


def _case(name, decision, audit, disposition, score=0.5, minute=0):
    return Case(result_id=name, at=f"2026-12-07T10:{minute:02d}:00+00:00", score=score, decision=decision,
                audit=audit, disposition=disposition)


HISTORY = [  # 13 parts; 7 audited
    _case("a1", "OK", True, "confirmed_ok", minute=1),
    _case("a2", "OK", True, "confirmed_ok", minute=2),
    _case("a3", "OK", True, "confirmed_ok", minute=3),
    _case("a4", "OK", True, "missed_defect", minute=4),
    _case("a5", "OK", True, None, minute=5),  # an audit not done yet
    _case("a6", "NG", True, "false_call", minute=6),
    _case("a7", "NG", True, "confirmed_ng", minute=7),
    _case("u1", "OK", False, None, minute=8),  # unaudited OK: no evidence
    _case("u2", "OK", False, None, minute=9),
    _case("u3", "NG", False, "false_call", minute=10),  # a false call outside the sample
    _case("u4", "NG", False, None, minute=11),  # an NG not reviewed yet
    _case("u5", "NG", False, "confirmed_ng", minute=12),
    _case("u6", "OK", False, "missed_defect", minute=13),  # a complaint, not a sampled escape
]


def test_observed_rates_count_only_the_sample():
    rates = observed_rates(HISTORY)
    # false alarms: audited normals a1 a2 a3 a6, one NG (a6) -> 1/4
    assert (rates.false_alarm.k, rates.false_alarm.n) == (1, 4)
    assert rates.false_alarm.low == pytest.approx(0.0063095, abs=1e-7)
    assert rates.false_alarm.high == pytest.approx(0.805880, abs=1e-6)
    # escapes: audited OKs with a disposition a1 a2 a3 a4, one missed defect (a4) -> 1/4
    assert (rates.escape.k, rates.escape.n, rates.escape.rate) == (1, 4, 0.25)
    assert (rates.ng_open, rates.audits_open) == (1, 1)  # u4; a5
    assert (rates.parts, rates.ng, rates.audited) == (13, 5, 7)
    assert (rates.false_calls, rates.missed_defects) == (2, 2)
    # the census: false calls a6 u3 among the 9 parts not known defective (all but a4 a7 u5 u6);
    # the floor solves P(X >= 2 | 9, p) = 2.5% (0.028145 by hand)
    assert (rates.false_calls_ng, rates.possible_normals) == (2, 9)
    assert _tail_at_least(2, 9, rates.false_alarm_floor) == pytest.approx(0.025, abs=1e-9)
    assert rates.false_alarm_floor == pytest.approx(0.028145, abs=1e-6)
    data = rates.to_dict()
    assert data["false_alarm"]["k"] == 1 and data["escape"]["n"] == 4 and data["ng_open"] == 1


def test_observed_rates_window():
    # since minute 6: a6 a7 u1..u6 -> audited normals: a6 only (NG): 1/1
    rates = observed_rates(HISTORY, since="2026-12-07T10:06:00Z")
    assert (rates.false_alarm.k, rates.false_alarm.n, rates.parts) == (1, 1, 8)
    # the last 10 parts (a4..u6): audited normals a6 -> 1/1; audited OK with disposition a4 -> 1/1
    last = observed_rates(list(reversed(HISTORY)), last=10)
    assert (last.parts, last.false_alarm.n, last.escape.k, last.escape.n, last.audits_open) == (10, 1, 1, 1, 1)
    # a date without time is midnight UTC; a zone is honoured (11:06+01:00 is 10:06Z)
    assert observed_rates(HISTORY, since="2026-12-08").parts == 0
    assert observed_rates(HISTORY, since="2026-12-07T11:06:00+01:00").parts == 8
    with pytest.raises(ValueError, match="since: 'yesterday' is not an ISO-8601"):
        observed_rates(HISTORY, since="yesterday")


def test_drift_alarm_needs_the_whole_interval_above():
    history = [_case(f"n{i}", "NG" if i < 30 else "OK", True, "false_call" if i < 30 else "confirmed_ok")
               for i in range(100)]
    rates = observed_rates(history)  # 30/100: exact 95% CI [0.212406, 0.399815] (solved from the tails by hand)
    assert rates.false_alarm.low == pytest.approx(0.212406, abs=1e-6)
    alarms = drift_alarm(rates, target_rate=0.1)
    assert alarms == ["drift: observed false-alarm rate 30/100 = 30% (95% CI 21%-40%) is above the calibrated target 10%"]
    assert drift_alarm(rates, target_rate=0.25) == []  # 0.25 lies inside the interval: no alarm
    assert drift_alarm(rates, target_rate=None) == []
    # escapes: 3 of 20 audited OKs missed -> low = 0.03207 > 0.02 fires; > 0.05 does not
    oks = [_case(f"o{i}", "OK", True, "missed_defect" if i < 3 else "confirmed_ok") for i in range(20)]
    esc = observed_rates(oks)
    assert esc.escape.low == pytest.approx(0.032070, abs=1e-6)
    assert drift_alarm(esc, 0.1, max_escape_rate=0.02) == [
        "drift: audits found escapes at 3/20 = 15% (95% CI 3.2%-38%), above the limit 2%"]
    assert drift_alarm(esc, 0.1, max_escape_rate=0.05) == []
    assert drift_alarm(observed_rates([]), 0.01, 0.01) == []  # no evidence, no alarm


def test_drift_alarm_from_the_census_of_false_calls():
    """2 of 22 audited normals were NG (low end 1.1%: no alarm from the audit), but every NG is
    reviewed: 152 false calls among at most 1022 parts not known defective -> at least 12.7%."""
    history = [_case(f"a{i}", "NG" if i < 2 else "OK", True, "false_call" if i < 2 else "confirmed_ok") for i in range(22)]
    history += [_case(f"f{i}", "NG", False, "false_call") for i in range(150)]
    history += [_case(f"o{i}", "OK", False, None) for i in range(850)]
    history += [_case(f"d{i}", "NG", False, "confirmed_ng") for i in range(40)]  # known defective: not counted
    rates = observed_rates(history)
    assert rates.false_alarm.low == pytest.approx(0.011206, abs=1e-6)
    assert (rates.false_calls_ng, rates.possible_normals) == (152, 1022)
    assert rates.false_alarm_floor == pytest.approx(0.127460, abs=1e-6)
    assert drift_alarm(rates, 0.1) == [
        "drift: false-alarm rate above the calibrated target 10%: 152 false call(s) of at most 1022 normal parts: "
        "at least 13% (every NG reviewed; audit sample 2/22 = 9.1% (95% CI 1.1%-29%))"]
    assert drift_alarm(rates, 0.13) == []
    # open NGs count as possible normals but as no false call: 100 open lower the floor below 10%
    opened = observed_rates(history + [_case(f"n{i}", "NG", False, None) for i in range(100)])
    assert (opened.possible_normals, opened.ng_open) == (1122, 100)
    assert _tail_at_least(152, 1122, opened.false_alarm_floor) == pytest.approx(0.025, abs=1e-9)
    assert drift_alarm(opened, 0.13) == []


def _bias_history() -> list[Case]:
    """Target 10%, old threshold 0.91. 18 audited parts confirmed OK (scores 0.05 .. 0.90), one
    audited false call (0.95), three false calls the audit did not draw (0.92, 0.97, 0.99), one
    unaudited OK an operator happened to confirm (0.30), defects and open parts."""
    cases = [_case(f"ok{i:02d}", "OK", True, "confirmed_ok", score=round(0.05 * i, 2), minute=i) for i in range(1, 19)]
    cases.append(_case("fa", "NG", True, "false_call", score=0.95, minute=20))
    cases += [_case(f"fu{i}", "NG", False, "false_call", score=s, minute=21 + i) for i, s in enumerate([0.92, 0.97, 0.99])]
    cases.append(_case("seen", "OK", False, "confirmed_ok", score=0.30, minute=30))
    cases.append(_case("bad", "NG", True, "confirmed_ng", score=0.98, minute=31))
    cases.append(_case("open", "OK", True, None, score=0.20, minute=32))
    return cases


def test_recalibration_sample_versus_all_false_calls():
    cases = _bias_history()
    right = recalibration_sample(cases)
    assert len(right) == 19 and {c.result_id for c in right} >= {"fa", "ok01", "ok18"}
    # n = 19: k = ceil(20 * 0.9) = 18 -> the 18th smallest = 0.90
    assert conformal_threshold([c.score for c in right], 0.1) == 0.90
    biased = naive_normal_sample(cases)
    # n = 23 (+ 0.92, 0.97, 0.99, 0.30): k = ceil(24 * 0.9) = 22 -> the 22nd smallest = 0.97
    assert len(biased) == 23
    assert conformal_threshold([c.score for c in biased], 0.1) == 0.97
    assert [c.result_id for c in recalibration_sample(cases, since="2026-12-07T10:18:00Z")] == ["ok18", "fa"]


def test_cases_from_records():
    rid = "0193a5b2c3d4" + "ab" * 10  # 0x193a5b2c3d4 ms since the epoch
    records = [
        {"key": rid, "decision": "NG", "decision_score": 0.7, "audit": True, "audit_rate": 0.02},
        {"id": "x1", "at": "2026-12-07T10:00:00Z", "decision": "OK", "decision_score": 0.1},
        {"key": "x2", "decision": None, "decision_score": None},  # no verdict: left out
        {"key": "x3", "decision": "OK", "decision_score": float("nan")},
        {"key": "zz-not-hex", "decision": "OK", "decision_score": 0.1},  # no time anywhere: left out
    ]
    history = {rid: [{"disposition": "confirmed_ng"}, {"disposition": "false_call"}]}
    cases = cases_from_records(records, history)
    assert [c.result_id for c in cases] == [rid, "x1"]
    assert cases[0] == Case(rid, "2024-12-08T09:56:16.468+00:00", 0.7, "NG", True, "false_call")
    assert (cases[1].audit, cases[1].disposition, cases[1].at) == (False, None, "2026-12-07T10:00:00Z")
    assert case_from_record({"key": "y", "decision": "OK", "decision_score": True, "at": "2026-01-01"}) is None


def test_a_rate_of_one_reads_100_percent_in_alarm_lines():
    """2/2 false calls: the line says 100%, not 1e+02% (two significant digits elsewhere)."""
    from iapas.product.feedback import binomial_interval

    assert binomial_interval(2, 2).text().startswith("2/2 = 100% (95% CI 16%-100%)")
