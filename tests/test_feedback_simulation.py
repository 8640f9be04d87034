"""The feedback loop in simulation (issue 23): a line whose normal parts score N(0.5, 0.1) and
defective parts (2%) N(0.9, 0.1); verdicts at a threshold; every part drawn for audit with
probability 2% independently of its score; every NG and every audited OK given its true
disposition. The statements checked, over many seeds:

1. Recalibration keeps the guarantee. The threshold recalibrated from each history's audit
   sample (``recalibration_sample`` -> ``conformal_threshold``) has a false-alarm rate on fresh
   normal parts, ``P(N(0.5, 0.1) > t) = norm.sf((t - 0.5) / 0.1)``, whose mean over the seeds is
   at most the target 10% plus three standard errors of that mean; more precisely it equals the
   conformal rule's exact expectation ``(n + 1 - k) / (n + 1)`` (averaged over the seeds' sample
   sizes n; at most 10%) within three standard errors. The two wrong samples fail the same check:
   without the audited false calls (too low a threshold: about 20%), with every false call (too
   high: about 1%).
2. The drift alarm. At the threshold whose false-alarm rate is exactly the target (the normal
   quantile), the alarm checked once per block of 200 parts (on that block) fires on a stable
   line in at most 5% of the checks (the two one-sided 2.5% bounds it uses), checked as: the
   count of alarms over all stable blocks is at most the 99.9% quantile of Binomial(blocks, 5%).
   When the normal parts' mean moves to 0.6 (false-alarm rate 39%), it fires on the first block
   after the shift, i.e. within 200 parts, in at least 99% of the seeds; there the census floor
   lies above the true 39% in no more seeds than a 97.5% lower bound allows (the 99.9% quantile
   of Binomial(seeds, 2.5%)).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom, norm

from iapas.product.decision import conformal_rank, conformal_threshold
from iapas.product.feedback import Case, drift_alarm, naive_normal_sample, observed_rates, recalibration_sample

MEAN, SD, DEFECT_MEAN, DEFECT_SHARE, AUDIT_RATE, TARGET = 0.5, 0.1, 0.9, 0.02, 0.02, 0.1
EXACT = MEAN + SD * norm.ppf(1 - TARGET)  # the threshold whose false-alarm rate is exactly 10%


def line(rng: np.random.Generator, n: int, threshold: float, mean: float = MEAN, start: int = 0) -> list[Case]:
    """``n`` parts from the line, judged at ``threshold``, with their audit draws and dispositions."""
    defective = rng.random(n) < DEFECT_SHARE
    scores = np.where(defective, rng.normal(DEFECT_MEAN, SD, n), rng.normal(mean, SD, n))
    audit = rng.random(n) < AUDIT_RATE  # drawn independently of the score
    cases = []
    for i in range(n):
        ng = bool(scores[i] > threshold)
        if ng:
            disposition = "confirmed_ng" if defective[i] else "false_call"  # every NG is reviewed
        elif audit[i]:
            disposition = "missed_defect" if defective[i] else "confirmed_ok"
        else:
            disposition = None
        minute, second = divmod(start + i, 60)
        cases.append(Case(f"p{start + i:07d}", f"2026-12-01T{minute // 60:02d}:{minute % 60:02d}:{second:02d}+00:00",
                          float(scores[i]), "NG" if ng else "OK", bool(audit[i]), disposition))
    return cases


def _far(threshold: float) -> float:
    """The false-alarm rate of ``threshold`` on fresh normal parts, exactly."""
    return float(norm.sf((threshold - MEAN) / SD))


def test_recalibrated_threshold_keeps_its_false_alarm_rate():
    seeds, parts = 300, 1500
    far = {"right": [], "no audited false calls": [], "every false call": []}
    expected = []
    for seed in range(seeds):
        cases = line(np.random.default_rng(seed), parts, EXACT)
        sample = recalibration_sample(cases)
        n = len(sample)
        expected.append((n + 1 - conformal_rank(n, TARGET)) / (n + 1))
        far["right"].append(_far(conformal_threshold([c.score for c in sample], TARGET)))
        oks = [c.score for c in sample if c.disposition == "confirmed_ok"]
        far["no audited false calls"].append(_far(conformal_threshold(oks, TARGET)))
        far["every false call"].append(_far(conformal_threshold([c.score for c in naive_normal_sample(cases)], TARGET)))
    means = {name: float(np.mean(v)) for name, v in far.items()}
    error = 3 * float(np.std(far["right"])) / np.sqrt(seeds)  # three standard errors of the mean
    exact = float(np.mean(expected))
    assert exact <= TARGET
    assert means["right"] <= TARGET + error, means
    assert abs(means["right"] - exact) <= error, (means, exact)
    # the wrong samples are caught by the same check
    assert means["no audited false calls"] > TARGET + 5 * error, means
    assert means["every false call"] < exact - 5 * error, means


def test_drift_alarm_fires_after_a_shift_and_rarely_before():
    seeds, block, stable_blocks = 200, 200, 10
    stable_alarms, caught, floor_above = 0, 0, 0
    for seed in range(seeds):
        rng = np.random.default_rng(10_000 + seed)
        for b in range(stable_blocks):
            rates = observed_rates(line(rng, block, EXACT, start=b * block))
            stable_alarms += bool(drift_alarm(rates, TARGET))
        shifted = observed_rates(line(rng, block, EXACT, mean=0.6, start=stable_blocks * block))
        floor_above += shifted.false_alarm_floor > _far(EXACT - 0.1)  # the floor is a 97.5% lower bound of 39%
        caught += bool(drift_alarm(shifted, TARGET))
    checks = seeds * stable_blocks
    assert stable_alarms <= binom.ppf(0.999, checks, 0.05), stable_alarms
    assert caught >= 0.99 * seeds, caught
    assert floor_above <= binom.ppf(0.999, seeds, 0.025), floor_above


def test_no_audit_no_sample():
    """Without audit draws there is no random sample of normal parts: nothing to recalibrate on,
    and the audit interval says so ([0, 1]); false calls alone are no sample."""
    cases = [Case(f"p{i}", "2026-12-01T00:00:00Z", 0.9, "NG", False, "false_call") for i in range(50)]
    assert recalibration_sample(cases) == []
    rates = observed_rates(cases)
    assert (rates.false_alarm.n, rates.false_alarm.low, rates.false_alarm.high) == (0, 0.0, 1.0)
