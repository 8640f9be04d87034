"""bench's model columns (issue 14): ``--ablation detector=NAME`` / ``segmenter=NAME`` run stage 2
with another model on the default column's images and profiles, and every column gives its time
per image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iapas.cli import app
from iapas.evaluation import EvalSettings
from iapas.evaluation.bench import ablation_variants, is_ablation, seconds_per_image
from iapas.evaluation.core import CategoryResult, DatasetResult
from tests.test_evaluation import make_mvtec


def test_model_ablations_are_columns_by_resolved_id():
    variants = ablation_variants(
        ["detector=mm-gdino-tiny", "segmenter=/models/tiny/sam-hq/", "segmenter=other/sam-hq"], EvalSettings()
    )
    assert [(v.name, v.label) for v in variants] == [
        ("default", "IAP-AS"),
        ("detector-mm-gdino-tiny", "detector mm-gdino-tiny"),
        ("segmenter-sam-hq", "segmenter sam-hq"),
        ("segmenter-sam-hq-2", "segmenter sam-hq (2)"),  # the same last part: its own folder
    ]
    det, seg = variants[1], variants[2]
    assert det.detector == "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det" and det.segmenter is None
    assert seg.segmenter == "/models/tiny/sam-hq/" and seg.detector is None
    # the default column's profiles and settings
    assert det.profiles_dir_name() == seg.profiles_dir_name() == "profiles"
    assert det.settings(EvalSettings()) == EvalSettings()
    assert is_ablation("detector=x") and is_ablation("segmenter=sam-vit-b") and is_ablation("prompt")
    assert not is_ablation("detector=") and not is_ablation("tagger=x") and not is_ablation("detector")
    with pytest.raises(ValueError, match="unknown ablation detector=; choose from .*detector=NAME or segmenter=NAME"):
        ablation_variants(["detector="], EvalSettings())


def test_bench_reexports_the_columns_and_the_result_from_their_modules():
    """bench is the entry point: what callers import from it is the one definition in
    iapas.evaluation.variants or iapas.evaluation.bench_results, not a copy."""
    import iapas.evaluation.bench as bench
    import iapas.evaluation.bench_results as bench_results
    import iapas.evaluation.variants as variants

    moved = {
        variants: ("ABLATIONS", "MODEL_ABLATIONS", "SIZE_SWEEP", "DEFAULT_SIZE_THRESHOLD", "Variant", "DEFAULT_VARIANT",
                   "is_ablation", "ablation_variants"),
        bench_results: ("BENCH_METRICS", "BENCH_MD", "BENCH_CSV", "BENCH_JSON", "BENCH_HTML", "TRANSFER_DIR", "BenchResult",
                        "seconds_per_image", "write_bench"),
    }
    for module, names in moved.items():
        for name in names:
            assert getattr(bench, name) is getattr(module, name), f"{module.__name__}.{name}"


def test_seconds_per_image_is_the_mean_of_the_recorded_stage2_timings(tmp_path: Path):
    (tmp_path / "predictions").mkdir()
    records = {
        "a": [
            {"key": "1", "status": "ok", "timings": {"detection": 0.5, "segmentation": 0.25, "fusion": 0.25}},
            {"key": "2", "status": "failed", "error": "x"},  # no time: not an image segmented
        ],
        "b": [{"key": "1", "status": "ok", "timings": {"detection": 1.0, "segmentation": 1.0}}],
    }
    for name, lines in records.items():
        (tmp_path / "predictions" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"torn')
    cats = [CategoryResult(n, predictions=f"predictions/{n}.jsonl") for n in records] + [CategoryResult("c")]
    result = DatasetResult("mvtec", "MVTec AD", "", tmp_path, EvalSettings(), cats)
    assert seconds_per_image(result) == pytest.approx((1.0 + 2.0) / 2)
    assert seconds_per_image(DatasetResult("mvtec", "MVTec AD", "", tmp_path, EvalSettings(), [CategoryResult("c")])) != \
        seconds_per_image(result)  # NaN without timings


def test_cli_bench_with_a_detector_and_a_segmenter_column_side_by_side(tmp_path: Path, tiny_models: dict[str, Path]):
    make_mvtec(tmp_path / "data" / "MVTecAD", ("alpha",), n_good=1, n_bad=2)
    out = tmp_path / "bench"
    mm, hq = tiny_models["mm-grounding-dino"], tiny_models["sam-hq"]
    args = [
        "bench", "--root-dir", str(tmp_path / "data"), "--out", str(out), "--protocol", "full",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
        "--tagger", "manual", "--tags", "widget", "--llm", "knowledge", "--quiet",
        "--ablation", f"detector={mm}", "--ablation", f"segmenter={hq}",
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    names = ["default", "detector-mm-grounding-dino", "segmenter-sam-hq"]
    assert [v["name"] for v in data["variants"]] == names
    assert data["variants"][1]["detector"] == str(mm) and data["variants"][2]["segmenter"] == str(hq)
    assert "segmenter" not in data["variants"][1] and set(data["variants"][0]) == {"name", "label"}
    (row,) = data["rows"]
    for name in names:
        assert row[name]["categories"] == 1 and row[name]["seconds_per_image"] > 0
    # each column's models, recorded by id; the rest as the default's
    models = {n: json.loads((out / "mvtec" / n / "metrics.json").read_text())["models"] for n in names}
    assert (models["default"]["detector"], models["default"]["segmenter"]) == (str(tiny_models["grounding-dino"]), str(tiny_models["sam"]))
    assert (models[names[1]]["detector"], models[names[1]]["segmenter"]) == (str(mm), str(tiny_models["sam"]))
    assert (models[names[2]]["detector"], models[names[2]]["segmenter"]) == (str(tiny_models["grounding-dino"]), str(hq))
    # the same test images, from the same profile (the default column's, made once)
    keys = {n: [json.loads(l)["key"] for l in (out / "mvtec" / n / "predictions" / "alpha.jsonl").read_text().splitlines()] for n in names}
    assert keys["default"] == keys[names[1]] == keys[names[2]] and len(keys["default"]) == 3
    assert sorted(p.name for p in (out / "mvtec").iterdir()) == sorted([*names, "profiles"])
    md = (out / "bench.md").read_text()
    assert "| IAP-AS s/image | detector mm-grounding-dino AP |" in md and "segmenter sam-hq s/image |" in md
    csv_rows = (out / "bench.csv").read_text().splitlines()
    assert csv_rows[0] == "dataset,variant,pixel_ap,pixel_f1_max,pixel_f1_max_100,seconds_per_image,categories,failed"
    assert [r.split(",")[1] for r in csv_rows[1:]] == names and all(r.split(",")[5] for r in csv_rows[1:])
    # a wrong name fails at once, before any run
    bad = CliRunner().invoke(app, [*args[:-4], "--out", str(tmp_path / "b2"), "--ablation", f"segmenter={mm}"])
    assert bad.exit_code != 0 and not (tmp_path / "b2" / "mvtec").exists()
    assert "expected sam" in bad.output.replace("\n", " ")
    unknown = CliRunner().invoke(app, [*args[:-4], "--ablation", "tagger=x"])
    assert unknown.exit_code == 2 and "detector=NAME or segmenter=NAME" in unknown.output


def test_bench_help_names_the_model_ablations_at_80_columns():
    result = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and all(len(line) <= 80 for line in result.output.splitlines())
    text = " ".join(result.output.split())
    assert "detector=NAME or segmenter=NAME (repeatable;" in text and "seconds per image" in text
    assert "mm-gdino-tiny" in text  # the model names it refers to


def test_model_table_parameter_counts_are_the_presets_meta_device_counts():
    from iapas.models.registry import MODEL_NAMES
    from iapas.testing.presets import PRESETS, count_parameters

    readme = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "models.md").read_text(encoding="utf-8")
    rows, header = {}, None
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == ["name", "hub id"]:
            header = cells  # the model table's columns, by name
        elif header and len(cells) == len(header) and cells[1].startswith("`") and "/" in cells[1]:
            rows[cells[1].strip("`")] = cells[header.index("parameters")]
        elif not line.strip():
            header = None
    by_hub = {p.hub_id: p.name for p in PRESETS.values()}
    assert set(rows) == {m.hub_id for m in MODEL_NAMES}  # every name of the table, one row each
    for hub_id, shown in rows.items():
        expected = f"{count_parameters(by_hub[hub_id]) / 1e6:.1f} M" if hub_id in by_hub else "-"
        assert shown == expected, hub_id
