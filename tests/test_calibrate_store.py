"""`iapas calibrate --from-store`: a threshold from a station's stored scores and dispositions,
end to end on a store folder written by a real DiskStore (tiny models for its run.json), with
values computed by hand, and its refusals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app as cli_app
from iapas.core.images import read_image_bytes
from iapas.core.types import Detections, SegmentationResult
from iapas.engine.dispositions import append_disposition
from iapas.engine.log import ResultsLog
from iapas.engine.signature import run_signature
from iapas.product.decision import Decision
from iapas.product.profile import Profile

runner = CliRunner()
T0 = 1_795_995_200_000  # ms since the epoch: 2026-11-29T23:33:20Z
MINUTE = 60_000


@pytest.fixture(scope="module")
def pipeline(tiny_models: dict[str, Path]):
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    return Pipeline.from_config(PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]),
                                               device="cpu"))


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _result(score: float) -> SegmentationResult:
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[3, 4] = score
    empty = Detections(np.zeros((0, 4)), np.zeros(0))
    return SegmentationResult(anomaly_map, empty, empty, np.zeros((0, 8, 8), bool), None, None, 1.0, "default")


def _profile(pipeline) -> Profile:
    """bottle, calibrated before at 0.5 for a 20% false-alarm rate with the tiny models."""
    profile = Profile.from_prompts("bottle", "bottle", ["scratch"])
    profile.decision = Decision(threshold=0.5, target_rate=0.2, n_calibration=9, score_max=0.6, signature={})
    profile.decision.signature = run_signature(pipeline, profile)
    return profile


# (score, audit draw, dispositions oldest first); the station's verdict is NG above 0.5
PARTS = [
    *[(s, True, ["confirmed_ok"]) for s in (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45)],  # parts 0-8
    (0.48, True, ["missed_defect", "confirmed_ok"]),  # 9: corrected: normal after all
    (0.55, True, ["false_call"]),  # 10: audited false call
    (0.70, True, ["confirmed_ng", "false_call"]),  # 11: audited, corrected to a false call
    (0.65, False, ["false_call"]),  # 12-14: false calls the audit did not draw
    (0.80, False, ["false_call"]),
    (0.90, False, ["false_call"]),
    (0.20, False, []),  # 15-16: unaudited OKs: no evidence
    (0.30, False, ["confirmed_ok"]),  # an operator happened to look: not in the sample
    (0.33, True, []),  # 17: an audit not done yet
    (0.45, True, ["confirmed_ok", "missed_defect"]),  # 18: an escape found by the audit
    (0.85, True, ["confirmed_ng"]),  # 19
    (0.95, False, ["confirmed_ng"]),  # 20
]


def make_store(root: Path, pipeline, profile: Profile, parts=PARTS, audit_rate: float | None = 0.2,
               monkeypatch: pytest.MonkeyPatch | None = None) -> Path:
    """The station's store of ``parts``, one minute apart from T0, each with its audit draw as
    the station records it (``audit``, ``audit_rate``) and its dispositions."""
    import iapas.serve.store as store_module

    ids = iter(f"{T0 + i * MINUTE:012x}{i:020x}" for i in range(len(parts)))
    monkeypatch.setattr(store_module, "new_id", lambda: next(ids))
    store = store_module.DiskStore(root, pipeline, {"bottle": profile})
    folder = root / "bottle"
    image = read_image_bytes(_png(), "part.png")
    log = ResultsLog(folder / "results.jsonl")
    for score, audit, dispositions in parts:
        result = _result(score)
        record = store.add("bottle", image, _png(), result, profile.judge(result), {})
        if audit_rate is not None:  # the draw is recorded with the record (the last line of a key counts)
            log.append({k: v for k, v in record.items() if k != "category"} | {"audit": audit, "audit_rate": audit_rate})
        for disposition in dispositions:
            append_disposition(folder, {"id": record["key"], "disposition": disposition, "who": "test"})
    return root


def calibrate(*args: str):
    return runner.invoke(cli_app, ["calibrate", *args])


def test_threshold_from_the_audit_sample(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    profile = _profile(pipeline)
    store = make_store(tmp_path / "station", pipeline, profile, monkeypatch=monkeypatch)
    path = profile.save(tmp_path / "bottle.yaml")
    result = calibrate("--profile", str(path), "--from-store", str(store))
    assert result.exit_code == 0, result.output
    decision = Profile.load(path).decision
    # the sample: parts 0-11 (10 confirmed OK + 2 audited false calls), n = 12; rate 0.2 (the
    # profile's): k = ceil(13 * 0.8) = 11 -> the 11th smallest of 0.05 .. 0.45, 0.48, 0.55, 0.70 = 0.55.
    # Taking every false call (+0.65, 0.80, 0.90: n = 15, k = 13) would give 0.70.
    assert decision.threshold == pytest.approx(0.55, abs=1e-6)
    assert (decision.rule, decision.target_rate, decision.n_calibration) == ("conformal", 0.2, 12)
    assert decision.observed_false_alarm_rate == pytest.approx(1 / 12)  # 0.70 above 0.55
    assert (decision.score_min, decision.score_max) == pytest.approx((0.05, 0.70))
    assert decision.signature == profile.decision.signature
    p = decision.provenance
    assert p["store"] == str((store / "bottle").resolve()) and p["since"] is None
    assert (p["first"], p["last"]) == ("2026-11-29T23:33:20.000+00:00", "2026-11-29T23:53:20.000+00:00")
    assert (p["parts"], p["audited"], p["confirmed_ok"], p["false_calls"]) == (21, 15, 10, 2)
    assert (p["false_calls_not_audited"], p["audits_open"], p["audit_rate"]) == (3, 1, 0.2)
    assert "used 12 normal part(s) of the audit sample: 10 audited confirmed OK + 2 audited false call(s)" in result.output
    assert "left out 3 false call(s) the audit did not draw" in result.output
    assert "threshold 0.55: the 11-th smallest of 12" in result.output
    # the profile still judges with it, and its file keeps every other field
    assert Profile.load(path).caption == profile.caption
    # --since keeps parts 9 .. 20: sample = 9, 10, 11 (n = 3) < 4 needed for 0.2: refused, profile unchanged
    before = path.read_bytes()
    late = calibrate("--profile", str(path), "--from-store", str(store), "--since", "2026-11-29T23:42:00Z")
    assert late.exit_code != 0
    assert ("3 normal part(s) in the audit sample of" in late.output and "since 2026-11-29T23:42:00Z (1 audit(s) still "
            "open); a false-alarm rate of 0.2 needs at least 4: 1 more audited normal part(s), about 5 more parts at "
            "audit rate 0.2" in " ".join(late.output.split()))
    assert path.read_bytes() == before
    # with --rate 0.25 (3 needed: k = ceil(4 * 0.75) = 3) the same window gives 0.70, the largest of 0.48, 0.55, 0.70
    ok = calibrate("--profile", str(path), "--from-store", str(store), "--since", "2026-11-29T23:42:00Z", "--rate", "0.25")
    assert ok.exit_code == 0, ok.output
    later = Profile.load(path).decision
    assert (later.threshold, later.n_calibration, later.provenance["parts"]) == (pytest.approx(0.70), 3, 12)
    assert later.provenance["first"] == "2026-11-29T23:42:20.000+00:00"


def test_refusals(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    profile = _profile(pipeline)
    store = make_store(tmp_path / "station", pipeline, profile, parts=PARTS[:12], monkeypatch=monkeypatch)

    def refused(p: Profile, *args: str, name: str = "p.yaml") -> str:
        path = p.save(tmp_path / name)
        before = path.read_bytes()
        result = calibrate("--profile", str(path), *args)
        assert result.exit_code != 0 and path.read_bytes() == before, result.output
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    # other settings: the station ran box threshold 0.1, the profile's calibration 0.2
    other = _profile(pipeline)
    other.decision.signature = {**other.decision.signature, "box_threshold": 0.2}
    assert "holds scores made with other settings (box_threshold: 0.1 -> 0.2)" in refused(other, "--from-store", str(store))
    # another detector, by fingerprint
    swapped = _profile(pipeline)
    swapped.decision.signature = {**swapped.decision.signature, "detector_fingerprint": "sha256:" + "0" * 64}
    assert "holds scores made with another detector" in refused(swapped, "--from-store", str(store))
    # a profile never calibrated: nothing to compare the store's models with
    bare = Profile.from_prompts("bottle", "bottle", ["scratch"])
    assert "has no calibrated decision recording its models" in refused(bare, "--from-store", str(store))
    # a folder that is not a store of this category
    assert "no run.json: not a station store of category 'bottle'" in refused(profile, "--from-store", str(tmp_path / "nothing"))
    # image options with --from-store; a bad date
    assert "leave out --normal" in refused(profile, "--from-store", str(store), "--normal", str(tmp_path))
    assert "--since: 'last week' is not an ISO-8601 date" in refused(profile, "--from-store", str(store), "--since", "last week")
    # a store served without --audit-rate
    no_audit = make_store(tmp_path / "plain", pipeline, profile, parts=PARTS[:12], audit_rate=None, monkeypatch=monkeypatch)
    assert "no part has an audit draw" in refused(profile, "--from-store", str(no_audit))
    # without --from-store, --normal and --out are still needed
    assert "give the normal images and a results folder" in refused(profile)


def test_provenance_is_written_only_when_there_is_one(tmp_path: Path):
    """Profiles and run.json files written before provenance existed stay byte for byte the same."""
    plain = Profile.from_prompts("bottle", "bottle", ["scratch"])
    plain.decision = Decision(threshold=0.5)
    assert "provenance" not in plain.to_dict()["decision"] and "provenance" not in plain.decision.to_dict()
    plain.decision.provenance = {"store": "/s", "parts": 3}
    loaded = Profile.load(plain.save(tmp_path / "p.yaml"))
    assert loaded.decision.provenance == {"store": "/s", "parts": 3}
    with pytest.raises(Exception, match="'provenance' must be a mapping"):
        Decision(threshold=0.5, provenance=[1])
