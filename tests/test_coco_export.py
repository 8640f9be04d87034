"""``iapas export coco``: the COCO RLE encoder against pycocotools, and the export of a segment
folder, an evaluate folder and a station store read back with pycocotools' own ``COCO`` and
``annToMask``: the masks must equal, bit for bit, the masks the pipeline gives on the same
images (run again here, not decoded by our code)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.core.rle import decode_mask, encode_mask, mask_runs, rle_area, runs_to_string, string_to_runs
from iapas.product.profile import Profile

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

# pycocotools (the oracle) decodes through a numpy-1 style __array__: its DeprecationWarning is not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

runner = CliRunner()


def model_args(tiny_models: dict[str, Path]) -> list[str]:
    return ["--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def pipeline(tiny_models: dict[str, Path]):
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    return Pipeline.from_config(PipelineConfig(detector=str(tiny_models["grounding-dino"]), segmenter=str(tiny_models["sam"]),
                                               device="cpu"))


def loose_profile(category: str, decision=None) -> Profile:
    """A profile whose size filter keeps boxes up to 1.2 x the object: the tiny random detector's
    boxes are large, and the paper's 0.8 would leave nothing to export."""
    profile = Profile.from_prompts(category, "widget", ["scratch", "crack", "dent"], size_threshold=1.2)
    profile.decision = decision
    return profile


def export(run_dir: Path, out: Path, *more: str):
    return runner.invoke(app, ["export", "coco", str(run_dir), "--out", str(out), *more])


def check_round_trip(coco_file: Path, pipeline, profiles: dict[str | None, Profile]) -> COCO:
    """Every image of the export against the pipeline run again on its file: one annotation per
    kept box, in order, whose mask (pycocotools' annToMask) is the pipeline's mask."""
    coco = COCO(str(coco_file))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    total = 0
    for image in coco.loadImgs(coco.getImgIds()):
        result = pipeline(image["path"], profiles[image["category"]])
        assert (image["height"], image["width"]) == result.anomaly_map.shape
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]])), key=lambda a: a["id"])
        assert len(anns) == len(result.masks) == len(result.kept.boxes)
        for ann, mask, box, score, phrase in zip(anns, result.masks, result.kept.boxes, result.kept.scores, result.kept.phrases):
            decoded = coco.annToMask(ann)
            assert decoded.dtype == np.uint8 and np.array_equal(decoded.astype(bool), mask), (image["file_name"], ann["id"])
            assert ann["area"] == int(mask.sum())
            assert names[ann["category_id"]] == phrase
            assert ann["score"] == round(float(score), 5)
            x0, y0, x1, y1 = (round(float(v), 2) for v in box)
            assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
        # and the anomaly map is those masks weighted by their scores
        fused = np.zeros(result.anomaly_map.shape, np.float32)
        for ann, score in zip(anns, result.kept.scores):
            fused[mask_utils.decode(ann["segmentation"]).astype(bool)] += np.float32(score)
        assert np.array_equal(fused, result.anomaly_map)
        total += len(anns)
    assert total > 0, "the tiny models kept no box: the round trip checked nothing"
    return coco


def write_images(folder: Path) -> list[Path]:
    """Random RGB images of odd, non-square sizes (a row/column mix-up cannot pass)."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    paths = []
    for i, (h, w) in enumerate(((77, 131), (120, 65))):
        path = folder / f"part{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


# --- the encoder -----------------------------------------------------------------------------------


def test_rle_strings_equal_pycocotools_and_decode_back():
    rng = np.random.default_rng(0)
    masks = [np.zeros((3, 5), bool), np.ones((4, 2), bool), np.eye(7, dtype=bool), np.ones((1, 1), bool),
             np.zeros((1, 1), bool), np.zeros((1000, 1400), bool)]
    masks[-1][100:900, 3:1300] = True  # long runs: multi-group counts
    for columns in (slice(0, 1), slice(4, 5), slice(2, 4), slice(0, 5)):  # the scan skips empty columns on both sides
        edge = np.zeros((3, 5), bool)
        edge[1:, columns] = True
        masks += [edge, ~edge]
    for _ in range(200):
        h, w = rng.integers(1, 60, 2)
        masks.append(rng.random((h, w)) < rng.random())
    for mask in masks:
        ours = encode_mask(mask)
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["counts"] == theirs["counts"].decode("ascii") and ours["size"] == list(theirs["size"])
        assert np.array_equal(decode_mask(ours), mask)
        assert np.array_equal(mask_utils.decode({"size": ours["size"], "counts": ours["counts"]}).astype(bool), mask)
        assert rle_area(ours) == int(mask_utils.area(theirs)) == int(mask.sum())
        assert string_to_runs(ours["counts"]) == mask_runs(mask)
    # the uncompressed form: COCO's column-major runs, starting with the 0s (hand-made)
    mask = np.array([[1, 0, 1], [1, 0, 0]], bool)  # columns: 1 1 | 0 0 | 1 0
    assert mask_runs(mask) == [0, 2, 2, 1, 1]
    assert runs_to_string([0, 2, 2, 1, 1]) == mask_utils.frPyObjects({"size": [2, 3], "counts": [0, 2, 2, 1, 1]}, 2, 3)["counts"].decode()
    with pytest.raises(ValueError, match="do not cover"):
        decode_mask({"size": [2, 3], "counts": [0, 2, 2]})


# --- the three folder kinds ------------------------------------------------------------------------


def test_a_segment_folder_exports_the_pipelines_masks_bit_for_bit(tiny_models, pipeline, tmp_path: Path):
    images = write_images(tmp_path / "images")
    profile = loose_profile("widget")
    profile.save(tmp_path / "widget.yaml")
    run = runner.invoke(app, ["segment", *map(str, images), "--profile", str(tmp_path / "widget.yaml"), "--out", str(tmp_path / "run"),
                              "--threshold", "0.3", *model_args(tiny_models)])
    assert run.exit_code == 0, run.output
    got = export(tmp_path / "run", tmp_path / "out" / "coco.json")
    assert got.exit_code == 0, got.output
    assert "2 image(s)" in got.output and "a segment folder" in got.output
    coco = check_round_trip(tmp_path / "out" / "coco.json", pipeline, {None: profile})
    records = {r["key"]: r for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())}
    for image in coco.loadImgs(coco.getImgIds()):
        assert image["file_name"] == Path(image["path"]).name  # relative to the images' folder
        record = records[Path(image["path"]).stem]
        assert image["attributes"]["verdict"] == record["decision"] == ("NG" if record["decision_score"] > 0.3 else "OK")
        assert image["attributes"]["image_score"] == record["image_score"]
    document = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert document["info"]["image_root"] == str((tmp_path / "images").resolve())
    assert [c["id"] for c in document["categories"]] == list(range(1, len(document["categories"]) + 1))
    # one slip of the tab key wrote the COCO file over the run's own files: refused, nothing touched
    own = {name: (tmp_path / "run" / name).read_bytes() for name in ("run.json", "results.jsonl")}
    for name in own:
        one_error_line(export(tmp_path / "run", tmp_path / "run" / name), str(tmp_path / "run" / name), "one of the run's own files")
    assert {name: (tmp_path / "run" / name).read_bytes() for name in own} == own
    for _ in range(2):  # a new file in the run folder, then the same export again
        assert export(tmp_path / "run", tmp_path / "run" / "coco.json").exit_code == 0
    assert json.loads((tmp_path / "run" / "coco.json").read_text())["images"] == document["images"]


def test_an_evaluate_folder_exports_its_test_images(tiny_models, pipeline, tmp_path: Path):
    from tests.test_evaluation import make_mvtec

    root = make_mvtec(tmp_path / "data", categories=("alpha",), n_good=1, n_bad=1, size=(72, 88))
    loose_profile("alpha").save(tmp_path / "profiles" / "alpha.yaml")
    run = runner.invoke(app, ["evaluate", "--dataset", "mvtec", "--root", str(root), "--out", str(tmp_path / "eval"),
                              "--profiles", str(tmp_path / "profiles"), "--no-report",
                              *model_args(tiny_models)])
    assert run.exit_code == 0, run.output
    got = export(tmp_path / "eval", tmp_path / "coco.json")
    assert got.exit_code == 0, got.output
    assert "2 image(s)" in got.output and "an evaluate folder" in got.output
    coco = check_round_trip(tmp_path / "coco.json", pipeline, {"alpha": loose_profile("alpha")})
    files = sorted(image["file_name"] for image in coco.loadImgs(coco.getImgIds()))
    assert files == ["crack/000.png", "good/000.png"]
    assert {image["attributes"]["label"] for image in coco.loadImgs(coco.getImgIds())} == {0, 1}


def test_a_station_store_exports_every_product(pipeline, tmp_path: Path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from iapas.product.decision import Decision
    from iapas.serve import build_station
    from iapas.serve.server import BackgroundServer
    from tests.test_serve_api import inspect, png

    store = tmp_path / "station"
    profiles = {"bottle": loose_profile("bottle", Decision(threshold=0.05, score_min=0.0, score_max=0.1, n_calibration=20, target_rate=0.1)),
                "screw": loose_profile("screw")}
    answers = []
    station, worker = build_station(pipeline, profiles, store_dir=store)
    with worker_stopped(worker), BackgroundServer(station) as url, httpx.Client(base_url=url, timeout=60) as client:
        for seed, category in ((1, "bottle"), (3, "screw")):
            response = inspect(client, png(seed, size=(90, 117)), category=category)
            assert response.status_code == 200, response.text
            answers.append(response.json())
        assert all("kept_masks" not in answer for answer in answers)  # the API answer is unchanged
    got = export(store, tmp_path / "coco.json")
    assert got.exit_code == 0, got.output
    assert "2 image(s)" in got.output and "a station store" in got.output
    coco = check_round_trip(tmp_path / "coco.json", pipeline, profiles)
    by_key = {image["key"]: image for image in coco.loadImgs(coco.getImgIds())}
    for answer in answers:
        image = by_key[answer["id"]]
        assert image["category"] == answer["category"] and image["attributes"]["verdict"] == answer["decision"]
        assert image["file_name"] == f"{answer['category']}/uploads/{answer['id']}.png"
    assert by_key[answers[0]["id"]]["attributes"]["verdict"] in ("OK", "NG")
    assert by_key[answers[1]["id"]]["attributes"]["verdict"] is None  # screw is not calibrated


@contextmanager
def worker_stopped(worker):
    try:
        yield
    finally:
        worker.stop()


def record(key: str, path: Path, kept: list[dict], masks: list[dict] | None, **more) -> dict:
    out = {"key": key, "image": str(path), "status": "ok", "width": 4, "height": 3, "kept": kept, "image_score": 0.5, **more}
    if masks is not None:
        out["kept_masks"] = masks
    return out


def write_lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_an_evaluations_calibrated_threshold_gives_the_verdicts(tmp_path: Path):
    """Hand-made records: the verdict is NG exactly when the raw score is above the category's
    calibrated threshold; calibration images and failed images are left out."""
    mask = np.zeros((3, 4), bool)
    mask[1:, 2] = True  # column-major runs: 8 zeros, 2 ones, 2 zeros
    kept = [{"box": [2.0, 1.0, 3.0, 3.0], "score": 0.7, "phrase": "crack"}]
    rle = {"size": [3, 4], "counts": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()}
    write_lines(tmp_path / "eval" / "predictions" / "a.jsonl", [
        record("x", tmp_path / "img" / "x.png", kept, [rle], map_max=0.25, label=1),
        record("y", tmp_path / "img" / "y.png", [], [], map_max=0.2, label=0),
        {"key": "z", "status": "failed", "error": "unreadable"},
    ])
    write_lines(tmp_path / "eval" / "predictions" / "a.calibration.jsonl", [record("c", tmp_path / "img" / "c.png", [], [])])
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"categories": {"a": {"decision": {"threshold": 0.2}}}}))
    got = export(tmp_path / "eval", tmp_path / "coco.json")
    assert got.exit_code == 0, got.output
    assert "2 image(s), 1 annotation(s), 1 categories" in got.output and "1 failed image(s) left out" in got.output
    document = json.loads((tmp_path / "coco.json").read_text())
    assert [(i["key"], i["attributes"]["verdict"]) for i in document["images"]] == [("x", "NG"), ("y", "OK")]  # 0.2 is not above 0.2
    (ann,) = document["annotations"]
    assert ann["segmentation"] == {"size": [3, 4], "counts": rle["counts"]} and ann["area"] == 2.0
    assert ann["bbox"] == [2.0, 1.0, 1.0, 2.0] and ann["category_id"] == 1 and ann["image_id"] == 1
    assert document["categories"] == [{"id": 1, "name": "crack", "supercategory": "anomaly"}]


# --- bad input --------------------------------------------------------------------------------------


def one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_run_folders_get_one_line_naming_the_file(tmp_path: Path):
    out = tmp_path / "coco.json"
    one_error_line(export(tmp_path / "missing", out), str(tmp_path / "missing"), "no such folder")
    (tmp_path / "empty").mkdir()
    one_error_line(export(tmp_path / "empty", out), str(tmp_path / "empty"), "not a segment folder")
    bad = tmp_path / "bad" / "results.jsonl"
    write_lines(bad, [record("a", tmp_path / "a.png", [], [])])
    bad.write_text(bad.read_text() + "{not json\n")
    one_error_line(export(tmp_path / "bad", out), f"{bad}:2", "not a JSON line")
    kept = [{"box": [0, 0, 2, 2], "score": 0.5, "phrase": "dent"}]
    wrong = tmp_path / "wrong" / "results.jsonl"
    write_lines(wrong, [record("a", tmp_path / "a.png", kept, [encode_mask(np.zeros((4, 4), bool))])])
    one_error_line(export(tmp_path / "wrong", out), f"{wrong}:1", "a mask of size [4, 4] on a [3, 4] image")
    assert not out.exists()


def test_records_without_masks_are_refused_or_exported_as_boxes(tmp_path: Path):
    kept = [{"box": [0.5, 1.0, 2.5, 3.0], "score": 0.5, "phrase": "dent"}]
    old = tmp_path / "old" / "results.jsonl"
    write_lines(old, [record("empty", tmp_path / "e.png", [], None), record("a", tmp_path / "a.png", kept, None)])
    out = tmp_path / "coco.json"
    one_error_line(export(tmp_path / "old", out), f"{old}:2", "'a' has no instance masks", "--boxes-only")
    assert not out.exists()
    got = export(tmp_path / "old", out, "--boxes-only")
    assert got.exit_code == 0, got.output
    (ann,) = json.loads(out.read_text())["annotations"]
    assert ann["segmentation"] == [] and ann["bbox"] == [0.5, 1.0, 2.0, 2.0] and ann["area"] == 4.0
    one_error_line(export(tmp_path / "old", tmp_path, "--boxes-only"), str(tmp_path), "is a folder")
