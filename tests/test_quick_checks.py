"""Issue 19, parts 2 and 6: the reference's test sets under --protocol paper, and quick checks
that are quick (--limit bounds calibration too; data summary counts what evaluate runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iapas.cli import app
from iapas.data import get_dataset
from iapas.evaluation import EvalSettings, evaluate_dataset
from iapas.evaluation.decisions import calibration_category
from tests.conftest import shared_data
from tests.test_evaluation import fake_pipeline


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_paper_calibration_never_takes_mtd_test_images() -> None:
    loader = get_dataset("mtd", shared_data("MTD"))
    category = loader.load("magnetic_tile", protocol="paper", n_references=10, seed=0)
    kept, calibration = calibration_category(loader, category, 99, 0, from_test=False)
    assert calibration is None and [s.path for s in kept.test] == [s.path for s in category.test]
    assert "never takes test images" in kept.notes[-1]
    taken, calibration = calibration_category(loader, category, 99, 0, from_test=True)  # --protocol full's hold-out
    assert calibration is not None and len(calibration.test) == 99 and len(taken.test) == len(category.test) - 99


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_data_summary_counts_what_evaluate_runs_on_mtd(tmp_path: Path, protocol: str) -> None:
    root = shared_data("MTD")
    args = ["--limit", "6", "--calibration-images", "3", "--references", "2"]
    shown = CliRunner().invoke(app, ["data", "summary", "-d", "mtd", "-r", str(root), "--protocol", protocol, "--json", *args])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.stdout)["categories"]["magnetic_tile"]
    out = tmp_path / "run"
    settings = EvalSettings(protocol=protocol, mode="base", n_references=2, limit=6, calibration_images=3)
    result = evaluate_dataset("mtd", root, out, fake_pipeline(), settings, report=False)
    tested = _lines(out / "predictions" / "magnetic_tile.jsonl")
    calibrated = _lines(out / "predictions" / "magnetic_tile.calibration.jsonl")
    assert row["test"] == len(tested) == 6
    assert row["anomalous"] == sum(r["label"] for r in tested)
    assert row["calibration"] == len(calibrated) == (0 if protocol == "paper" else 3)  # --limit bounds it: 3 <= 6
    notes = " ".join(result.notes + result.categories[0].notes)
    if protocol == "paper":
        assert "never takes test images" in notes


def test_limit_bounds_the_calibration_images_and_says_so(tmp_path: Path) -> None:
    from tests.test_evaluation import make_mvtec, write_profiles

    root = make_mvtec(tmp_path / "data", ("alpha",), n_good=3, n_bad=3)
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    settings = EvalSettings(protocol="full", n_references=0, limit=2, calibration_images=99)
    result = evaluate_dataset("mvtec", root, out, fake_pipeline(), settings, report=False)
    assert len(_lines(out / "predictions" / "alpha.jsonl")) == 2
    assert len(_lines(out / "predictions" / "alpha.calibration.jsonl")) == 2  # not 99 (nor every train image)
    assert any("at most 2 calibration images" in n and "asked for 99" in n for n in result.notes)
