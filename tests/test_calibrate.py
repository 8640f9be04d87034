"""`iapas calibrate`, decisions in `iapas segment` and the Python API (tiny models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.product.calibration import calibrate, check_reference_overlap
from iapas.cli import app
from iapas.product.decision import Decision
from iapas.product.profile import Profile
from tests.conftest import shared_data

runner = CliRunner()


def models(tiny_models: dict[str, Path]) -> list[str]:
    return ["--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu"]


def read_results(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in (json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())}


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_overlap_with_references_refused_by_content_naming_the_files(tmp_path: Path):
    refs = write_images(tmp_path / "refs", 3, seed=1)
    normal = write_images(tmp_path / "normal", 12, seed=2)
    shutil.copy(refs[1], tmp_path / "normal" / "renamed.png")  # same content, another name
    profile = Profile.from_prompts("tile", "tile", ["crack"], stage1={"references": [str(p) for p in refs]})
    path = profile.save(tmp_path / "tile.yaml")

    check = check_reference_overlap(profile, path, [*normal, tmp_path / "normal" / "renamed.png"])
    assert check.overlaps == [(tmp_path / "normal" / "renamed.png", str(refs[1]))]
    assert check.compared == 3 and not check.missing

    # refused before any model is loaded (the model paths do not exist)
    result = runner.invoke(app, ["calibrate", "--profile", str(path), "--normal", str(tmp_path / "normal"),
                                 "--false-alarm-rate", "0.1", "--out", str(tmp_path / "cal"), "--detector", "nope"])
    assert result.exit_code == 2
    assert f"{tmp_path / 'normal' / 'renamed.png'}: the same file as the stage-1 reference {refs[1]}" in result.output
    assert "1 calibration image(s) are stage-1 references" in result.output
    assert Profile.load(path).decision is None

    # a reference that is gone: compared by name only, a warning
    refs[0].unlink()
    check = check_reference_overlap(profile, path, [tmp_path / "normal" / "000.png"])
    assert check.missing == [str(refs[0])] and check.same_name == [(tmp_path / "normal" / "000.png", str(refs[0]))]
    assert "compared by file name only" in check.describe()


def test_too_few_normal_images_refused_with_the_number_needed(tmp_path: Path):
    write_images(tmp_path / "normal", 20)
    path = Profile.from_prompts("tile", "tile", ["crack"]).save(tmp_path / "tile.yaml")
    result = runner.invoke(app, ["calibrate", "--profile", str(path), "--normal", str(tmp_path / "normal"),
                                 "--out", str(tmp_path / "cal")])
    assert result.exit_code == 2
    assert "20 normal image(s) found; a false-alarm rate of 0.01 needs at least 99" in " ".join(result.output.split())


def test_calibrate_rules_side_by_side_by_hand():
    normal = [0.0] * 6 + [0.1, 0.2, 0.3, 0.4]  # n = 10, rate 0.1: k = ceil(11 * 0.9) = 10 -> 0.4
    anomalous = [0.35, 0.5, 0.6]
    decision, results = calibrate(normal, anomalous, rate=0.1, min_area=5, signature={"caption": "x ."})
    assert (decision.rule, decision.threshold, decision.min_defect_area, decision.n_calibration) == ("conformal", 0.4, 5, 10)
    assert decision.observed_false_alarm_rate == 0.0 and decision.detection_rate == pytest.approx(2 / 3)
    assert (decision.score_min, decision.score_max) == (0.0, 0.6)
    by_rule = {r.rule: r for r in results}
    # f1: anomalib's t = 0.35 (TP 3, FP 1: F1 6/7) -> NG above the next lower score, 0.3
    assert by_rule["f1"].threshold == 0.3 and by_rule["f1"].f1 == pytest.approx(6 / 7)
    assert by_rule["f1"].detection_rate == 1.0 and by_rule["f1"].false_alarm_rate == pytest.approx(0.1)
    decision, _ = calibrate(normal, anomalous, rate=0.01, rule="f1")  # too few for 1%: f1 still works
    assert decision.rule == "f1" and decision.threshold == 0.3


def mtd_free(count: int, start: int = 0) -> list[Path]:
    images = sorted((shared_data("MTD") / "MT_Free" / "Imgs").glob("*.jpg"))
    return images[start:start + count]


def test_calibrate_then_segment_on_real_mtd_normals(tmp_path: Path, tiny_models: dict[str, Path]):
    free = mtd_free(14)  # a modest number: rate 0.2 needs ceil(0.8 / 0.2) = 4 images
    calibration, more, test = free[:9], free[9:11], free[11:]
    defects = sorted((shared_data("MTD") / "MT_Crack" / "Imgs").glob("*.jpg"))[:2]
    profile_path = Profile.from_prompts("mtd", "tile", ["crack", "hole"]).save(tmp_path / "mtd.yaml")
    cal = tmp_path / "cal"
    args = ["calibrate", "--profile", str(profile_path), "--false-alarm-rate", "0.2", "--out", str(cal), *models(tiny_models)]
    result = runner.invoke(app, [*args, *(a for p in calibration for a in ("--normal", str(p)))])
    assert result.exit_code == 0, result.output
    decision = Profile.load(profile_path).decision
    assert decision is not None and decision.rule == "conformal" and decision.n_calibration == 9
    assert decision.target_rate == 0.2 and decision.signature["caption"] == "crack . hole . abnormal . defect . tile ."
    stored = read_results(cal)
    scores = sorted(r["max_score"] for r in stored.values())
    assert decision.threshold == scores[8 - 1]  # k = ceil(10 * 0.8) = 8
    assert decision.observed_false_alarm_rate == sum(s > decision.threshold for s in scores) / 9
    assert all(r["decision"] is None for r in stored.values())  # calibration records keep the raw run
    first_map = cal / stored[calibration[0].stem]["outputs"]["map"]
    stamp = first_map.stat().st_mtime_ns

    # more images: only the new ones are segmented
    result = runner.invoke(app, [*args, *(a for p in calibration + more for a in ("--normal", str(p)))])
    assert result.exit_code == 0, result.output
    assert Profile.load(profile_path).decision.n_calibration == 11
    assert first_map.stat().st_mtime_ns == stamp and len(read_results(cal)) == 11

    out = tmp_path / "seg"
    result = runner.invoke(app, ["segment", *map(str, test + defects), "--profile", str(profile_path), "--out", str(out),
                                 *models(tiny_models)])
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == 5
    decision = Profile.load(profile_path).decision
    counts = {"OK": 0, "NG": 0}
    for rec in records.values():
        assert rec["decision"] in ("OK", "NG") and rec["threshold"] == decision.threshold
        assert rec["decision_rule"] == "conformal"
        assert (rec["decision"] == "NG") == (rec["decision_score"] > decision.threshold)
        mask = np.asarray(Image.open(out / rec["outputs"]["mask"]))
        assert mask.any() == (rec["decision"] == "NG")  # the decision mask: empty exactly when OK
        assert 0 <= rec["normalized_score"] <= 1
        assert (rec["normalized_score"] > 0.5) == (rec["decision"] == "NG") or rec["normalized_score"] in (0.0, 1.0)
        counts[rec["decision"]] += 1
    assert f"{counts['OK']} / {counts['NG']}" in result.output
    assert json.loads((out / "run.json").read_text())["decision"]["threshold"] == decision.threshold


def test_images_given_both_as_normal_and_as_defective_are_refused(tmp_path: Path, tiny_models: dict[str, Path]):
    """--normal test --anomalous test/broken put the defective parts among the normal scores,
    which raised the threshold so that real defects passed as OK, without a word."""
    write_images(tmp_path / "test" / "good", 6)
    write_images(tmp_path / "test" / "broken", 2, seed=1)
    profile_path = Profile.from_prompts("tile", "tile", ["crack"]).save(tmp_path / "tile.yaml")
    before = profile_path.read_bytes()
    args = ["calibrate", "--profile", str(profile_path), "--false-alarm-rate", "0.2", "--out", str(tmp_path / "cal"),
            *models(tiny_models)]
    result = runner.invoke(app, [*args, "--normal", str(tmp_path / "test"), "--anomalous", str(tmp_path / "test" / "broken")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "error: 2 image(s) given both as normal and as defective, e.g. " in said
    assert str((tmp_path / "test" / "broken").resolve()) in said
    assert profile_path.read_bytes() == before and not (tmp_path / "cal").exists()
    apart = runner.invoke(app, [*args, "--normal", str(tmp_path / "test" / "good"), "--anomalous", str(tmp_path / "test" / "broken")])
    assert apart.exit_code == 0, apart.output


def test_segment_without_calibration_and_manual_threshold(tmp_path: Path, tiny_models: dict[str, Path]):
    images = write_images(tmp_path / "img", 2)
    profile_path = Profile.from_prompts("tile", "tile", ["crack"]).save(tmp_path / "tile.yaml")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(tmp_path / "img"), "--profile", str(profile_path), "--out", str(out), *models(tiny_models)])
    assert result.exit_code == 0, result.output
    assert "no OK/NG decision" in result.output and "iapas calibrate" in " ".join(result.output.split())
    assert all(r["decision"] is None and r["threshold"] == 0.3 for r in read_results(out).values())

    result = runner.invoke(app, ["segment", str(tmp_path / "img"), "--profile", str(profile_path), "--out", str(out),
                                 "--threshold", "0.0", *models(tiny_models)])
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == len(images)
    for rec in records.values():
        assert rec["decision_rule"] == "manual" and rec["threshold"] == 0.0
        assert (rec["decision"] == "NG") == (rec["image_score"] > 0)


def test_python_api_result_decision(tiny_models: dict[str, Path]):
    from iapas import Pipeline, PipelineConfig

    pipe = Pipeline.from_config(PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]), device="cpu"))
    profile = Profile.from_prompts("tile", "tile", ["crack"])
    image = np.random.default_rng(3).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    assert profile.judge(pipe(image, profile)) is None
    profile.decision = Decision(threshold=0.0, score_max=1.0)
    result = pipe(image, profile)
    verdict = profile.judge(result)
    assert verdict.verdict == ("NG" if result.image_score >= 1e-4 else "OK")
    assert verdict.mask.shape == result.anomaly_map.shape
    assert verdict.mask.any() == (verdict.verdict == "NG")
    with pytest.raises(AttributeError, match="profile.judge"):  # stage 2 gives no verdict: it says where it is
        result.decision  # noqa: B018


def test_anomalous_labels_from_masks(tmp_path: Path):
    from iapas.workflows.calibrate import mask_labels as _mask_labels

    images = write_images(tmp_path / "bad", 3)
    (tmp_path / "masks").mkdir()
    defect = np.zeros((40, 48), np.uint8)
    defect[5:9, 5:9] = 255
    Image.fromarray(defect).save(tmp_path / "masks" / "000_mask.png")  # {stem}_mask
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "masks" / "001.png")  # {stem}, empty: normal
    labels, problems = _mask_labels(images, tmp_path / "masks")
    assert labels == {images[0]: True, images[1]: False}
    assert problems == [f"{images[2]}: no mask in {tmp_path / 'masks'} (002_mask.*, 002.* or 002_label.*)"]
