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


# --- KSDD1's folders by the names the tables show; a wrong category refused at once -------------------


def test_ksdd1_folders_are_selectable_by_their_table_names(tmp_path: Path) -> None:
    from tests.test_data_paper import ksdd1_metric_tree

    root = ksdd1_metric_tree(tmp_path / "KolektorSDD")
    shown = CliRunner().invoke(app, ["data", "summary", "-d", "ksdd1", "-r", str(root), "-c", "kos02", "-n", "3", "--json"])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)["categories"]
    assert list(rows) == ["kos02"]
    out = tmp_path / "run"
    settings = EvalSettings(protocol="paper", mode="base", n_references=3, calibration_images=0)
    result = evaluate_dataset("ksdd1", root, out, fake_pipeline(), settings, categories=["kos02"], report=False)
    assert [c.name for c in result.categories] == ["kos02"] and result.categories[0].n_done == rows["kos02"]["test"]
    assert all("/kos02/" in r["image"] for r in _lines(out / "predictions" / "kos02.jsonl"))


@pytest.mark.parametrize("command", ["evaluate", "bench", "summary"])
def test_a_wrong_category_is_refused_in_one_line_before_any_model_loads(tmp_path: Path, command: str) -> None:
    from tests.test_data_paper import ksdd1_metric_tree

    root = ksdd1_metric_tree(tmp_path / "data" / "KolektorSDD")
    missing_model = str(tmp_path / "no-such-model")  # loading it would fail with another message
    if command == "evaluate":
        args = ["evaluate", "-d", "ksdd1", "-r", str(root), "-o", str(tmp_path / "out"), "-c", "kos09", "--mode", "base",
                "--detector", missing_model, "--segmenter", missing_model, "--device", "cpu", "--quiet"]
    elif command == "bench":
        args = ["bench", "--root-dir", str(root.parent), "--out", str(tmp_path / "out"), "--categories", "ksdd1:kos09",
                "--mode", "base", "--detector", missing_model, "--segmenter", missing_model, "--device", "cpu", "--quiet"]
    else:
        args = ["data", "summary", "-d", "ksdd1", "-r", str(root), "-c", "kos09"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "kos09" in message and "valid: kolektor, kos01, kos02, kos03" in message and "no-such-model" not in message
    assert "Traceback" not in result.output


def test_ok_ng_totals_count_a_products_calibration_images_once(tmp_path: Path) -> None:
    """KSDD1's folders share one calibration set: the 'all' row says how many ran (not folders x that)."""
    from iapas.evaluation.tables import decision_rows
    from tests.test_data_paper import ksdd1_metric_tree

    root = ksdd1_metric_tree(tmp_path / "KolektorSDD")
    out = tmp_path / "run"
    settings = EvalSettings(protocol="paper", mode="base", n_references=2, calibration_images=3, calibration_from_test=True,
                            false_alarm_rate=0.5)
    result = evaluate_dataset("ksdd1", root, out, fake_pipeline(), settings, report=False)
    ran = len(_lines(out / "predictions" / "kolektor.calibration.jsonl"))
    rows = decision_rows(result)
    assert ran == 3 and [r["calibration_images"] for r in rows[:-1]] == [3, 3, 3]
    assert rows[-1]["calibration_images"] == ran  # was 9


def test_a_test_step_starts_after_its_calibration_so_its_rate_counts_from_there(tmp_path: Path) -> None:
    """The progress step of a category is opened when its images start, not before the calibration
    images run (its logged rate and ETA counted the calibration's time)."""
    from iapas.evaluation import ProgressHooks
    from tests.test_evaluation import make_mvtec, write_profiles

    root = make_mvtec(tmp_path / "data", ("alpha",), n_good=2, n_bad=2)
    out = tmp_path / "out"
    write_profiles(out / "profiles", ["alpha"])
    events: list[tuple[str, str]] = []
    hooks = ProgressHooks(on_category=lambda name, n: events.append(("step", name)),
                          on_image=lambda name, key, status: events.append(("image", name)))
    settings = EvalSettings(protocol="full", n_references=0, calibration_images=2)
    evaluate_dataset("mvtec", root, out, fake_pipeline(), settings, report=False, progress=hooks)
    assert events == [("step", "alpha.calibration"), *[("image", "alpha.calibration")] * 2, ("step", "alpha"), *[("image", "alpha")] * 4]


# --- report.html: no path of this machine; light with many categories (KSDD1's 50 folders) -----------


def test_report_has_no_machine_path_and_folds_many_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 KSDD1 folders stand in for 50 (the limit is lowered): galleries folded, one picture per
    row, figures for the lowest-AP categories only; the dataset, output and profile folders
    (all under tmp_path) appear by name only."""
    import iapas.evaluation.report as report
    from tests.test_data_paper import ksdd1_metric_tree

    monkeypatch.setattr(report, "MANY_CATEGORIES", 2)
    monkeypatch.setattr(report, "FIGURE_CATEGORIES", 1)
    root = ksdd1_metric_tree(tmp_path / "KolektorSDD")
    out = tmp_path / "run"
    settings = EvalSettings(protocol="paper", mode="base", n_references=2, calibration_images=0)
    evaluate_dataset("ksdd1", root, out, fake_pipeline(), settings, report=True)
    html = (out / "report.html").read_text()
    assert str(tmp_path) not in html and str(tmp_path.resolve()) not in html
    assert "KolektorSDD" in html
    assert [html.count(f"<details><summary>{name}</summary>") for name in ("kos01", "kos02", "kos03")] == [1, 1, 1]
    assert html.count('alt="PR curve of') == 1 and html.count('alt="score histogram of') == 1
    assert "3 categories: the figures are drawn for the 1 with the lowest pixel AP" in html
