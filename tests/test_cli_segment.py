"""`iapas segment` end to end with tiny models: real MVTec images and every image kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.core.maps import decode_map
from tests.conftest import shared_data

runner = CliRunner()


def segment_args(tiny_models: dict[str, Path], *extra: str) -> list[str]:
    return [
        "segment", *extra,
        "--detector", str(tiny_models["grounding-dino"]),
        "--segmenter", str(tiny_models["sam"]),
        "--device", "cpu",
    ]


def read_results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture()
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "bottle.yaml"
    result = runner.invoke(app, ["profile", "--category", "bottle", "--object", "bottle", "--prompts", "scratch, crack, contamination", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_segment_real_mvtec_bottle(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    root = shared_data("MVTecAD") / "bottle" / "test"
    images = sorted(root.rglob("*.png"))
    out = tmp_path / "out"
    result = runner.invoke(app, segment_args(tiny_models, str(root), "--profile", str(profile_file), "--out", str(out)))
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == len(images) == 28
    assert len({r["key"] for r in records}) == 28
    for rec in records:
        assert rec["status"] == "ok"
        assert set(rec["outputs"]) == {"map", "mask", "overlay"}
        stored = np.asarray(Image.open(out / rec["outputs"]["map"]))
        assert stored.dtype == np.uint16 and stored.shape == (900, 900)
        assert decode_map(stored).max() == pytest.approx(min(rec["image_score"], 6.5535), abs=1e-4)
        mask = np.asarray(Image.open(out / rec["outputs"]["mask"]))
        assert mask.shape == (900, 900) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(out / rec["outputs"]["overlay"]).size == (900, 900)
        for box in rec["kept"] + rec["dropped"]:
            assert 0.1 < box["score"] <= 1 and isinstance(box["phrase"], str)
        assert rec["object"]["source"] in ("detected", "profile", "default")
    keys = {r["key"] for r in records}
    assert {"good/000", "broken_small/000"} <= keys  # same file name in two folders, two outputs
    run = json.loads((out / "run.json").read_text())
    assert run["signature"]["caption"] == "scratch . crack . contamination . abnormal . defect . bottle ."


def write_kinds(folder: Path) -> dict[str, tuple[int, int]]:
    """One image of each kind a camera may give; returns name -> (height, width)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    sizes: dict[str, tuple[int, int]] = {}

    def save(name: str, image: Image.Image) -> None:
        image.save(folder / name)
        sizes[name] = (image.height, image.width)

    save("gray8.png", Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8)))
    save("gray16.png", Image.fromarray(rng.integers(0, 65535, (64, 48), dtype=np.uint16)))
    save("rgba.png", Image.fromarray(rng.integers(0, 255, (50, 60, 4), dtype=np.uint8), "RGBA"))
    save("palette.bmp", Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).convert("P"))
    save("rgb.tif", Image.fromarray(rng.integers(0, 255, (33, 45, 3), dtype=np.uint8)))
    save("rgb.jpg", Image.fromarray(rng.integers(0, 255, (80, 30, 3), dtype=np.uint8)))
    return sizes


def test_segment_every_image_kind_and_resume(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    sizes = write_kinds(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = segment_args(tiny_models, str(tmp_path / "in"), "--profile", str(profile_file), "--out", str(out), "--batch-size", "2")
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # one bad file -> non-zero, the rest done
    assert "broken.png" in result.output and "not an image file" in result.output
    records = {Path(r["image"]).name: r for r in read_results(out)}
    assert records["broken.png"]["status"] == "failed" and "broken.png" in records["broken.png"]["error"]
    assert records["rgb.jpg"]["key"] == "rgb.jpg" and records["gray8.png"]["key"] == "gray8"  # stems collide
    for name, (h, w) in sizes.items():
        rec = records[name]
        assert rec["status"] == "ok", rec
        assert (rec["height"], rec["width"]) == (h, w)
        assert np.asarray(Image.open(out / rec["outputs"]["map"])).shape == (h, w)
    before = {r["key"]: (out / r["outputs"]["map"]).stat().st_mtime_ns for r in records.values() if r["status"] == "ok"}

    # second run with the bad file repaired: finished images are skipped, the failed one is redone
    Image.new("L", (20, 20)).save(tmp_path / "in" / "broken.png", format="PNG")
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "already done (resumed) │ 6" in again.output
    lines = read_results(out)
    assert sorted(r["key"] for r in lines) == sorted(r["key"] for r in records.values())
    assert all(r["status"] == "ok" for r in lines), "one line per image, the latest, after a finished run"
    after = {r["key"]: (out / r["outputs"]["map"]).stat().st_mtime_ns for r in lines if r["key"] != "broken"}
    assert after == before, "finished images were not redone"


def test_segment_refuses_mixing_runs_and_bad_profiles(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    write_kinds(tmp_path / "in")
    out = tmp_path / "out"
    ok = runner.invoke(app, segment_args(tiny_models, str(tmp_path / "in" / "gray8.png"), "--profile", str(profile_file), "--out", str(out)))
    assert ok.exit_code == 0, ok.output
    other = runner.invoke(app, segment_args(tiny_models, str(tmp_path / "in" / "gray8.png"), "--mode", "base", "--out", str(out)))
    assert other.exit_code == 2 and "other settings" in other.output and "caption" in other.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("category: x\nobject_tag: y\ncaption: ''\n")
    res = runner.invoke(app, segment_args(tiny_models, str(tmp_path / "in"), "--profile", str(bad), "--out", str(tmp_path / "o2")))
    assert res.exit_code == 2 and "bad.yaml" in res.output and "caption" in res.output

    res = runner.invoke(app, ["segment", str(tmp_path / "in"), "--profile", str(profile_file), "--out", str(tmp_path / "o3"),
                              "--detector", str(tmp_path / "no-such-model"), "--device", "cpu"])
    assert res.exit_code == 2 and "does not exist" in res.output

    base = runner.invoke(app, segment_args(tiny_models, str(tmp_path / "in" / "gray8.png"), "--mode", "base", "--out", str(tmp_path / "o4")))
    assert base.exit_code == 0, base.output
    assert "no OK/NG decision: --mode base has no profile to calibrate; give --threshold" in " ".join(base.output.split())
    assert "iapas calibrate" not in base.output  # there is no profile to calibrate


@pytest.mark.parametrize("option,message", [
    (["--box-threshold", "1.5"], "box_threshold must be in [0, 1], got 1.5"),
    (["--text-threshold", "nan"], "text_threshold must be in [0, 1], got nan"),
    (["--size-threshold", "0"], "size_threshold must be > 0, got 0.0"),
    (["--mode", "BASE"], "mode must be 'iapas' or 'base', got 'BASE'"),
])
def test_a_bad_pipeline_value_is_one_line_and_takes_no_output_folder(tmp_path: Path, tiny_models: dict[str, Path],
                                                                     profile_file: Path, option: list[str], message: str):
    """These were tracebacks (exit 1) after the output folder had been taken."""
    write_kinds(tmp_path / "in")
    out = tmp_path / "out"
    res = runner.invoke(app, segment_args(tiny_models, str(tmp_path / "in" / "gray8.png"), "--profile", str(profile_file),
                                          "--out", str(out), *option))
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()) == f"error: {message}"
    assert not out.exists()


def test_resume_only_reuses_the_same_file_and_settings(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    rng = np.random.default_rng(7)
    for run in ("A", "B"):
        (tmp_path / run).mkdir()
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / run / "000.png")
    out = tmp_path / "out"

    def run(folder: str, *extra: str) -> list[dict]:
        res = runner.invoke(app, segment_args(tiny_models, str(tmp_path / folder), "--profile", str(profile_file), "--out", str(out), *extra))
        assert res.exit_code == 0, res.output
        return read_results(out)

    first = run("A")
    assert first[0]["image"] == str(tmp_path / "A" / "000.png")
    second = run("B")  # same key '000', another file: segmented, not taken from A
    assert [r["image"] for r in second] == [str(tmp_path / "B" / "000.png")]
    third = run("B", "--threshold", "0.9", "--no-overlay")  # new mask threshold: redone
    assert third[0]["threshold"] == 0.9
    fourth = run("B", "--threshold", "0.9")  # overlays asked for again: redone, overlay written
    assert "overlay" in fourth[0]["outputs"] and (out / fourth[0]["outputs"]["overlay"]).exists()


def test_output_folder_inside_the_input_folder_is_not_segmented(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS companion file: hidden, skipped
    args = segment_args(tiny_models, str(tmp_path), "--profile", str(profile_file), "--out", str(tmp_path / "results"))
    for _ in range(2):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    assert [r["key"] for r in read_results(tmp_path / "results")] == ["a"]


def test_caption_too_long_for_the_detector_fails_once_clearly(tmp_path: Path, tiny_models: dict[str, Path]):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    long = tmp_path / "long.yaml"
    nouns = ", ".join(f"defect{i}" for i in range(20))
    assert runner.invoke(app, ["profile", "-c", "x", "--object", "part", "--prompts", nouns, "--out", str(long)]).exit_code == 0
    res = runner.invoke(app, segment_args(tiny_models, str(tmp_path / "a.png"), "--profile", str(long), "--out", str(tmp_path / "o")))
    assert res.exit_code == 2, res.output
    assert "tokens long" in res.output and "reads at most 32" in res.output


def test_output_names_stay_the_same_as_the_input_folder_grows(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    daily, out = tmp_path / "daily", tmp_path / "out"
    (daily / "day1").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (40, 40), (90, 90, 90)).save(daily / "day1" / f"{name}.png")
    args = segment_args(tiny_models, str(daily), "--profile", str(profile_file), "--out", str(out))
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert sorted(r["key"] for r in read_results(out)) == ["day1/a", "day1/b"]  # mirrors the input folder

    (daily / "day2").mkdir()
    Image.new("RGB", (40, 40), (90, 90, 90)).save(daily / "day2" / "a.png")
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "already done (resumed) │ 2" in second.output and "segmented now          │ 1" in second.output
    assert sorted(r["key"] for r in read_results(out)) == ["day1/a", "day1/b", "day2/a"]  # no duplicates
    assert sorted(p.relative_to(out / "maps").as_posix() for p in (out / "maps").rglob("*.png")) == [
        "day1/a.png", "day1/b.png", "day2/a.png"]


def test_two_folders_with_the_same_names_get_distinct_stable_names(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    for line in ("line1", "line2"):
        (tmp_path / line).mkdir()
        Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / line / "000.png")
    out = tmp_path / "out"
    res = runner.invoke(app, segment_args(tiny_models, str(tmp_path / "line1"), str(tmp_path / "line2"),
                                          "--profile", str(profile_file), "--out", str(out)))
    assert res.exit_code == 0, res.output
    assert sorted(r["key"] for r in read_results(out)) == ["line1/000", "line2/000"]


def test_resume_with_another_dtype_is_refused(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    Image.new("RGB", (40, 40), (90, 90, 90)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = segment_args(tiny_models, str(tmp_path / "a.png"), "--profile", str(profile_file), "--out", str(out))
    assert runner.invoke(app, [*args, "--dtype", "float32"]).exit_code == 0
    signature = json.loads((out / "run.json").read_text())["signature"]
    assert signature["dtype"] == "torch.float32" and signature["device"] == "cpu"
    again = runner.invoke(app, [*args, "--dtype", "bfloat16"])
    assert again.exit_code == 2 and "other settings" in again.output and "dtype" in again.output, again.output


def test_queued_results_do_not_keep_the_per_box_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.engine.runner import run_segmentation
    from iapas.core.types import Detections, SegmentationResult

    class StubPipeline(Pipeline):
        def check(self, profile):
            pass

        def run(self, images, profile=None):
            out = []
            for rgb in images:
                h, w = rgb.shape[:2]
                masks = np.ones((3, h, w), dtype=bool)
                kept = Detections(np.array([[0, 0, 4, 4]] * 3, np.float32), np.array([0.5] * 3, np.float32), ["x"] * 3)
                out.append(SegmentationResult(masks.sum(0).astype(np.float32), kept, Detections.empty(), masks, None, None, 1.0, "default"))
            return out

    for i in range(3):
        Image.new("RGB", (40, 40)).save(tmp_path / f"{i}.png")
    seen: list[int] = []
    import iapas.engine.runner as runner_module

    real = runner_module.write_image_outputs

    def spy(out_dir, key, rgb, result, threshold, overlay=True, **kwargs):
        seen.append(result.masks.size)
        return real(out_dir, key, rgb, result, threshold, overlay=overlay, **kwargs)

    monkeypatch.setattr(runner_module, "write_image_outputs", spy)
    from iapas.models.base import Detector, Segmenter

    class Unused(Detector, Segmenter):  # the stub's run never calls its models
        name = "unused"

    summary = run_segmentation(sorted(tmp_path.glob("*.png")), StubPipeline(Unused(), Unused(), PipelineConfig(mode="base")),
                               None, tmp_path / "out", batch_size=2)
    assert summary.done == 3 and seen == [0, 0, 0]
    assert read_results(tmp_path / "out")[0]["image_score"] == 3.0
