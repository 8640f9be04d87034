"""Recalibrating a profile's threshold from a station's store, without running the models
(``iapas calibrate --profile P --from-store STORE``).

The store's category folder ``STORE/<category>`` (the profile's category) is a ``segment`` run
folder (:class:`iapas.serve.store.DiskStore`): ``run.json`` says which models and settings made
its scores, ``results.jsonl`` holds each part's ``decision_score`` and audit draw, and
``dispositions.jsonl`` (:mod:`iapas.engine.dispositions`) what people said about the parts.
The threshold is the conformal quantile (:func:`iapas.product.decision.conformal_threshold`,
the rule ``iapas calibrate`` uses) of the scores of :func:`iapas.product.feedback.recalibration_sample`:
the audited parts found normal, the only sample of normal parts that is random.

    outcome = calibrate_from_store(profile, Path("station/"), since="2026-12-01", rate=0.01)
    save_decision(profile, profile_path, outcome.decision)

Refused, one line each (:class:`~iapas.workflows.calibrate.CalibrationError`): a profile without a
calibrated decision (nothing to compare the store's models with), a store made with other models
or settings, a store without audit draws, a sample too small for the rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iapas.core.names import check_name, path_inside
from iapas.engine.dispositions import read_dispositions
from iapas.engine.log import ResultsLog
from iapas.engine.records import RESULTS_FILE, RUN_FILE
from iapas.engine.runfolder import RunConflictError, check_recorded
from iapas.product.calibration import calibrate
from iapas.product.decision import Decision, DecisionError, conformal_rank, images_needed
from iapas.product.feedback import Case, cases_from_records, observed_rates, parse_time, recalibration_sample, window
from iapas.product.profile import Profile
from iapas.workflows.calibrate import CalibrationError, load_profile, save_decision

METHOD = "conformal on the store's audit sample (audited parts confirmed OK + audited false calls)"
ADVICE = "recalibrate it on normal images with these models ('iapas calibrate --normal'), or serve it into a new store"


@dataclass
class StoreCalibration:
    """What :func:`calibrate_from_store` found and decided (the decision is not saved yet)."""

    decision: Decision
    folder: Path
    sample: list[Case]
    left_out: dict[str, int]  # parts that did not count, by reason

    def lines(self) -> list[str]:
        """The summary a person reads: what was used, what was left out, the threshold."""
        p, d = self.decision.provenance, self.decision
        lines = [f"store {self.folder}: {p['parts']} part(s) with an audit draw from {p['first']} to {p['last']}, "
                 f"audit rate {p['audit_rate']}",
                 f"used {len(self.sample)} normal part(s) of the audit sample: {p['confirmed_ok']} audited confirmed OK "
                 f"+ {p['false_calls']} audited false call(s)"]
        lines += [f"left out {n} {why}" for why, n in self.left_out.items() if n]
        rank = conformal_rank(d.n_calibration, d.target_rate or 0.01)
        lines.append(f"threshold {d.threshold:.6g}: the {rank}-th smallest of {d.n_calibration} score(s) (conformal, "
                     f"target false-alarm rate {d.target_rate:g}); NG in the sample "
                     f"{100 * (d.observed_false_alarm_rate or 0):.1f}%")
        return lines


def store_folder(store: Path, profile: Profile) -> Path:
    """``STORE/<category>``, refused unless it holds a station's run.json and results."""
    try:
        folder = path_inside(Path(store), check_name(profile.category, "category"))
    except ValueError as exc:
        raise CalibrationError(f"{store}: {exc}") from None
    for name in (RUN_FILE, RESULTS_FILE):
        if not (folder / name).is_file():
            raise CalibrationError(f"{folder}: no {name}: not a station store of category {profile.category!r} "
                                   "(give the folder 'iapas serve --store' wrote)")
    return folder


def check_store_models(folder: Path, profile: Profile) -> dict[str, Any]:
    """The store's signature, refused when its models (by fingerprint) or settings are not those
    the profile's decision was calibrated with: its scores would not be the profile's scores."""
    if profile.decision is None or not profile.decision.signature:
        raise CalibrationError(f"the profile {profile.category!r} has no calibrated decision recording its models: "
                               "calibrate it once with 'iapas calibrate --normal', then recalibrate from the store")
    try:
        run = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        recorded = run.get("signature") if isinstance(run, dict) else None
        check_recorded(folder, recorded, profile.decision.signature, unreadable=f"{folder / RUN_FILE}: no signature",
                       advice=ADVICE, detailed=True)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{folder / RUN_FILE}: unreadable ({exc})") from None
    except RunConflictError as exc:
        raise CalibrationError(str(exc).replace("holds results", "holds scores", 1)) from None
    return recorded


def store_cases(folder: Path, min_area: int) -> tuple[list[Case], dict[str, int], list[float]]:
    """The parts of the store that had an audit draw, scored like the profile (same minimum defect
    area); what was left out, by reason; the audit rates recorded."""
    records = [r for r in ResultsLog(folder / RESULTS_FILE).read().values() if r.get("status") == "ok"]
    drawn = [r for r in records if isinstance(r.get("audit"), bool)]
    same = [r for r in drawn if r.get("min_defect_area", 0) == min_area]
    cases = cases_from_records(same, read_dispositions(folder))
    left_out = {"part(s) served without an audit draw (before --audit-rate)": len(records) - len(drawn),
                f"part(s) scored with another --min-defect-area than the profile's {min_area}": len(drawn) - len(same),
                "part(s) without a verdict or score": len(same) - len(cases)}
    rates = sorted({float(r["audit_rate"]) for r in same if isinstance(r.get("audit_rate"), (int, float))})
    return cases, left_out, rates


def calibrate_from_store(profile: Profile, store: Path, *, since: str | None = None, rate: float | None = None) -> StoreCalibration:
    """The conformal decision on the store's audit sample of normal parts (see the module docstring)."""
    folder = store_folder(store, profile)
    signature = check_store_models(folder, profile)
    assert profile.decision is not None  # checked above
    rate = rate if rate is not None else (profile.decision.target_rate or 0.01)
    if since is not None:
        try:
            parse_time(since, "--since")
        except ValueError as exc:
            raise CalibrationError(str(exc)) from None
    cases, left_out, audit_rates = store_cases(folder, profile.decision.min_defect_area)
    if not cases:
        raise CalibrationError(f"{folder}: no part has an audit draw: serve with 'iapas serve --audit-rate R' "
                               "and give the audited parts dispositions first")
    sample = recalibration_sample(cases, since=since)
    needed = images_needed(rate)
    if len(sample) < needed:
        share = audit_rates[-1] if audit_rates else 0.0
        more = needed - len(sample)
        parts = f", about {more / share:.0f} more parts at audit rate {share:g}" if share > 0 else ""
        raise CalibrationError(
            f"{len(sample)} normal part(s) in the audit sample of {folder}{' since ' + since if since else ''} "
            f"({observed_rates(cases, since=since).audits_open} audit(s) still open); a false-alarm rate of {rate:g} needs at least {needed}: "
            f"{more} more audited normal part(s){parts}")
    return _decision(profile, folder, signature, sample, rate, since, left_out, audit_rates, cases)


def _decision(profile: Profile, folder: Path, signature: dict[str, Any], sample: list[Case], rate: float, since: str | None,
              left_out: dict[str, int], audit_rates: list[float], cases: list[Case]) -> StoreCalibration:
    assert profile.decision is not None
    in_window = window(cases, since)
    rates = observed_rates(in_window)
    try:
        decision, _ = calibrate([c.score for c in sample], rate=rate, min_area=profile.decision.min_defect_area,
                                rule="conformal", signature=signature)
    except DecisionError as exc:
        raise CalibrationError(str(exc)) from None
    false_calls = sum(c.disposition == "false_call" for c in sample)
    decision.provenance = {
        "method": METHOD, "store": str(folder.resolve()), "since": since,
        "first": in_window[0].at, "last": in_window[-1].at, "parts": len(in_window), "audited": rates.audited,
        "confirmed_ok": len(sample) - false_calls, "false_calls": false_calls,
        "false_calls_not_audited": rates.false_calls - false_calls, "audits_open": rates.audits_open,
        "audit_rate": audit_rates[0] if len(audit_rates) == 1 else audit_rates,
    }
    left = {**left_out, "false call(s) the audit did not draw (taking them would bias the threshold up)":
            rates.false_calls - false_calls, "audited OK part(s) not yet dispositioned": rates.audits_open}
    return StoreCalibration(decision, folder, sample, left)


def recalibrate_profile(profile_path: Path, store: Path, *, since: str | None = None, rate: float | None = None,
                        others: list[Any] | None = None) -> list[str]:
    """``iapas calibrate --from-store``: load the profile, recalibrate it from ``store``, save its
    decision section (atomically) and return the summary lines. ``others``: the image options
    given with it (--normal, --out, --anomalous, --masks), refused: the store's scores are the inputs."""
    if any(others or ()):
        raise CalibrationError("--from-store takes the station's stored scores: leave out --normal, --out, --anomalous and --masks")
    if rate is not None and not 0 < rate < 1:
        raise CalibrationError(f"--false-alarm-rate must be in (0, 1), got {rate}")
    profile = load_profile(profile_path)
    outcome = calibrate_from_store(profile, store, since=since, rate=rate)
    save_decision(profile, profile_path, outcome.decision)
    return [*outcome.lines(), f"wrote the decision section of {profile_path}"]
