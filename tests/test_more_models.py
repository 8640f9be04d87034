"""More detectors and segmenters behind the same adapters (issue 14): MM-Grounding-DINO through
the Grounding DINO adapter, and the model names a user can type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.models.detector import GroundingDinoDetector
from iapas.models.loading import ModelLoadError
from iapas.pipeline import Pipeline, PipelineConfig
from iapas.profile import Profile
from tests.conftest import shared_data

runner = CliRunner()


def read_results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture()
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "tile.yaml"
    args = ["profile", "--category", "tile", "--object", "magnetic tile", "--prompts", "crack, hole, fray", "--out", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return path


def mm_segment(tiny_models: dict[str, Path], *extra: str) -> list[str]:
    return [
        "segment", *extra,
        "--detector", str(tiny_models["mm-grounding-dino"]),
        "--segmenter", str(tiny_models["sam"]),
        "--device", "cpu",
    ]


def test_mm_grounding_dino_loads_through_the_grounding_dino_adapter(tiny_models: dict[str, Path]):
    config = json.loads((tiny_models["mm-grounding-dino"] / "config.json").read_text())
    assert config["model_type"] == "mm-grounding-dino"
    det = GroundingDinoDetector.from_pretrained(str(tiny_models["mm-grounding-dino"]), device="cpu")
    assert type(det.model).__name__ == "MMGroundingDinoForObjectDetection"
    plain = GroundingDinoDetector.from_pretrained(str(tiny_models["grounding-dino"]), device="cpu")
    assert type(plain.model).__name__ == "GroundingDinoForObjectDetection"
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    (found,) = det.detect([image], "crack. hole.", box_threshold=0.0)
    assert found.boxes.shape == (20, 4)  # every one of the tiny model's 20 queries passes 0.0
    assert np.all((found.scores > 0) & (found.scores <= 1))


def test_wrong_kind_of_folder_is_refused(tiny_models: dict[str, Path]):
    with pytest.raises(ModelLoadError, match="holds a 'sam' model; expected grounding-dino or mm-grounding-dino"):
        GroundingDinoDetector.from_pretrained(str(tiny_models["sam"]), device="cpu")


def test_segment_with_mm_grounding_dino_on_generated_images(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i, shape in enumerate([(120, 160, 3), (200, 100, 3), (90, 90)]):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(src / f"img{i}.png")
    out = tmp_path / "out"
    result = runner.invoke(app, mm_segment(tiny_models, str(src), "--profile", str(profile_file), "--out", str(out)))
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    for rec in records:
        mask = np.asarray(Image.open(out / rec["outputs"]["mask"]))
        assert mask.shape == np.asarray(Image.open(rec["image"])).shape[:2]  # at the image's size


def test_segment_with_mm_grounding_dino_on_real_mtd(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    root = shared_data("MTD")
    picked = [sorted((root / cls / "Imgs").glob("*.jpg"))[0] for cls in ("MT_Crack", "MT_Blowhole", "MT_Free")]
    src = tmp_path / "mtd"
    src.mkdir()
    for p in picked:  # a link, not a copy of the data
        (src / p.name).symlink_to(p)
    out = tmp_path / "out"
    result = runner.invoke(app, mm_segment(tiny_models, str(src), "--profile", str(profile_file), "--out", str(out)))
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    for rec in records:
        mask = Image.open(out / rec["outputs"]["mask"])
        assert mask.size == Image.open(rec["image"]).size  # each MTD image has its own size


class Counter:
    def __init__(self, module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1


def test_mm_grounding_dino_forward_counts(tiny_models: dict[str, Path]):
    pipe = Pipeline.from_config(
        PipelineConfig(
            detector=str(tiny_models["mm-grounding-dino"]), segmenter=str(tiny_models["sam"]), device="cpu",
            box_threshold=0.0, text_threshold=0.0,  # the random model's scores are low: keep every box
        )
    )
    detector = Counter(pipe.detector.model)
    backbone = Counter(pipe.detector.model.model.backbone.conv_encoder)  # the Swin
    encoder = Counter(pipe.segmenter.model.vision_encoder)
    decoder = Counter(pipe.segmenter.model.mask_decoder)
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "hole", "stain"], size_threshold=1000.0)
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(4)]
    pipe.config.fuse_object_detection = False
    results = pipe.run(images, profile)
    assert sum(len(r.kept) for r in results) > 4, "several boxes per image, so per-box work would show"
    assert detector.calls == 2  # object + caption, each once for the batch
    assert backbone.calls == 1  # Swin runs once, shared by both captions
    assert encoder.calls == 1  # one SAM image encoding for the batch
    assert decoder.calls == 4  # one batched decoder call per image
