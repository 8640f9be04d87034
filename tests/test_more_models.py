"""More detectors and segmenters behind the same adapters (issue 14): MM-Grounding-DINO through
the Grounding DINO adapter, SAM-HQ through the SAM adapter, and the model names a user can type."""

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
from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from iapas.product.profile import Profile
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


def segment_real_mtd(tmp_path: Path, profile_file: Path, detector: Path, segmenter: Path, picks: dict[str, int]) -> Path:
    """``iapas segment`` on one MTD image per class (``class -> index``, linked, never copied):
    every record ok, every mask at its image's own size. Returns the output folder."""
    root = shared_data("MTD")
    picked = [sorted((root / cls / "Imgs").glob("*.jpg"))[i] for cls, i in picks.items()]
    src = tmp_path / "mtd"
    src.mkdir()
    for p in picked:
        (src / p.name).symlink_to(p)
    out = tmp_path / "out"
    args = ["segment", str(src), "--profile", str(profile_file), "--out", str(out),
            "--detector", str(detector), "--segmenter", str(segmenter), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_results(out)
    assert len(records) == len(picked) and all(r["status"] == "ok" for r in records)
    for rec in records:
        assert Image.open(out / rec["outputs"]["mask"]).size == Image.open(rec["image"]).size
    return out


def test_segment_with_mm_grounding_dino_on_real_mtd(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    picks = {"MT_Crack": 0, "MT_Blowhole": 0, "MT_Free": 0}
    out = segment_real_mtd(tmp_path, profile_file, tiny_models["mm-grounding-dino"], tiny_models["sam"], picks)
    assert str(tiny_models["mm-grounding-dino"]) in (out / "run.json").read_text()


class Counter:
    def __init__(self, module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1


def counted_run(detector: Path, segmenter: Path, n: int, seed: int) -> tuple[Pipeline, dict[str, Counter]]:
    """Run the pipeline on ``n`` same-sized random images with forward hooks on the models;
    thresholds 0 keep every box (the random models' scores are low), so per-box work would show."""
    pipe = Pipeline.from_config(
        PipelineConfig(detector=str(detector), segmenter=str(segmenter), device="cpu", box_threshold=0.0, text_threshold=0.0)
    )
    counters = {
        "detector": Counter(pipe.detector.model),
        "swin": Counter(pipe.detector.model.model.backbone.conv_encoder),
        "encoder": Counter(pipe.segmenter.model.vision_encoder),
        "decoder": Counter(pipe.segmenter.model.mask_decoder),
        "prompt": Counter(pipe.segmenter.model.prompt_encoder),
    }
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "hole", "stain"], size_threshold=1000.0)
    rng = np.random.default_rng(seed)
    pipe.config.fuse_object_detection = False
    results = pipe.run([rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(n)], profile)
    assert sum(len(r.kept) for r in results) > n, "several boxes per image"
    return pipe, counters


def test_mm_grounding_dino_forward_counts(tiny_models: dict[str, Path]):
    pipe, c = counted_run(tiny_models["mm-grounding-dino"], tiny_models["sam"], n=4, seed=4)
    assert type(pipe.detector.model).__name__ == "MMGroundingDinoForObjectDetection"
    detector, backbone, encoder, decoder = c["detector"], c["swin"], c["encoder"], c["decoder"]
    assert detector.calls == 2  # object + caption, each once for the batch
    assert backbone.calls == 1  # Swin runs once, shared by both captions
    assert encoder.calls == 1  # one SAM image encoding for the batch
    assert decoder.calls == 4  # one batched decoder call per image


# --- model names -------------------------------------------------------------------------------

HUB_IDS = {
    "gdino-tiny": "IDEA-Research/grounding-dino-tiny",
    "gdino-base": "IDEA-Research/grounding-dino-base",
    "mm-gdino-tiny": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
    "llmdet-tiny": "iSEE-Laboratory/llmdet_tiny",
    "sam-vit-h": "facebook/sam-vit-huge",
    "sam-vit-b": "facebook/sam-vit-base",
    "sam-hq-vit-h": "syscv-community/sam-hq-vit-huge",
    "sam3": "facebook/sam3",
    "owlv2-base": "google/owlv2-base-patch16-ensemble",
    "owlv2-large": "google/owlv2-large-patch14-ensemble",
    "sam2.1-large": "facebook/sam2.1-hiera-large",
    "sam2.1-tiny": "facebook/sam2.1-hiera-tiny",
}


def test_every_name_and_old_alias_resolves_to_its_hub_id():
    from iapas.models import registry
    from iapas.models.detector import DETECTOR_CHOICES
    from iapas.models.segmenter import SEGMENTER_CHOICES

    assert {m.name: m.hub_id for m in registry.MODEL_NAMES} == HUB_IDS
    for name in ("gdino-tiny", "gdino-base", "mm-gdino-tiny", "llmdet-tiny"):
        assert registry.resolve("detector", name) == DETECTOR_CHOICES[name] == HUB_IDS[name]
    for name in ("sam-vit-h", "sam-vit-b", "sam-hq-vit-h"):
        assert registry.resolve("segmenter", name) == SEGMENTER_CHOICES[name] == HUB_IDS[name]
    assert DETECTOR_CHOICES["tiny"] == HUB_IDS["gdino-tiny"] and DETECTOR_CHOICES["base"] == HUB_IDS["gdino-base"]
    assert SEGMENTER_CHOICES["base"] == HUB_IDS["sam-vit-b"] and SEGMENTER_CHOICES["huge"] == HUB_IDS["sam-vit-h"]
    assert SEGMENTER_CHOICES["large"] == "facebook/sam-vit-large"
    assert "sam-vit-h" not in DETECTOR_CHOICES and "gdino-tiny" not in SEGMENTER_CHOICES  # one kind each
    assert registry.resolve("detector", "some/folder") == "some/folder"
    with pytest.raises(ValueError, match="unknown model kind"):
        registry.names("tagger")


def test_segment_records_the_resolved_id_not_the_name(
    tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path, monkeypatch: pytest.MonkeyPatch
):
    import dataclasses

    from iapas.models import registry

    # the names point at the tiny folders here (no hub): what is recorded must be what they resolve to
    local = {"mm-gdino-tiny": str(tiny_models["mm-grounding-dino"]), "sam-vit-b": str(tiny_models["sam"])}
    table = tuple(dataclasses.replace(m, hub_id=local.get(m.name, m.hub_id)) for m in registry.MODEL_NAMES)
    monkeypatch.setattr(registry, "MODEL_NAMES", table)
    Image.fromarray(np.full((64, 80, 3), 128, dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "a.png"), "--profile", str(profile_file), "--out", str(out),
            "--detector", "mm-gdino-tiny", "--segmenter", "sam-vit-b", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = (out / "run.json").read_text()
    assert str(tiny_models["mm-grounding-dino"]) in run and str(tiny_models["sam"]) in run
    assert '"mm-gdino-tiny"' not in run and '"sam-vit-b"' not in run


@pytest.mark.parametrize("command", [["segment"], ["calibrate"], ["evaluate"], ["bench"]])
def test_help_lists_the_model_table_at_80_columns(command: list[str]):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name, hub_id in HUB_IDS.items():
        gated = ["(gated)"] if name == "sam3" else []
        assert any(line.split() == [name, hub_id, *gated] for line in lines), name  # one whole row each
    assert "(gated): accept its licence on the hub" in result.output


def test_profile_help_lists_the_detector_names():
    result = runner.invoke(app, ["profile", "--help"], env={"COLUMNS": "80"})
    lines = result.output.splitlines()
    assert any(line.split() == ["llmdet-tiny", HUB_IDS["llmdet-tiny"]] for line in lines)
    assert not any(line.split()[:1] == ["sam-vit-h"] for line in lines)


# --- SAM-HQ ------------------------------------------------------------------------------------


def test_sam_hq_loads_through_the_sam_adapter_and_segments_at_image_size(tiny_models: dict[str, Path]):
    from iapas.models.segmenter import SamHQSegmenter, SamSegmenter

    assert json.loads((tiny_models["sam-hq"] / "config.json").read_text())["model_type"] == "sam_hq"
    seg = SamSegmenter.from_pretrained(str(tiny_models["sam-hq"]), device="cpu")
    assert type(seg) is SamHQSegmenter and type(seg.model).__name__ == "SamHQModel"
    assert type(SamSegmenter.from_pretrained(str(tiny_models["sam"]), device="cpu")) is SamSegmenter
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)]
    boxes = [np.array([[0, 0, 60, 40], [10, 20, 120, 90], [5, 5, 6, 6]], np.float32), np.zeros((0, 4), np.float32)]
    masks = seg.segment(images, boxes)
    assert masks[0].shape == (3, 96, 128) and masks[0].dtype == bool
    assert masks[1].shape == (0, 70, 50)
    assert (seg.encoder_count, seg.decoder_count) == (1, 1)  # the box-less image costs nothing


def test_wrong_kind_of_folder_as_segmenter_is_refused(tiny_models: dict[str, Path]):
    from iapas.models.segmenter import SamSegmenter

    with pytest.raises(ModelLoadError, match="holds a 'grounding-dino' model; expected sam or sam_hq"):
        SamSegmenter.from_pretrained(str(tiny_models["grounding-dino"]), device="cpu")


def test_sam_hq_forward_counts(tiny_models: dict[str, Path]):
    pipe, c = counted_run(tiny_models["grounding-dino"], tiny_models["sam-hq"], n=3, seed=6)
    assert type(pipe.segmenter.model).__name__ == "SamHQModel"
    assert c["encoder"].calls == 1  # one image encoding for the batch
    assert c["decoder"].calls == c["prompt"].calls == 3  # one decoder call per image, all boxes at once


def test_segment_with_sam_hq_on_real_mtd(tmp_path: Path, tiny_models: dict[str, Path], profile_file: Path):
    picks = {"MT_Fray": 1, "MT_Uneven": 1}
    out = segment_real_mtd(tmp_path, profile_file, tiny_models["grounding-dino"], tiny_models["sam-hq"], picks)
    assert str(tiny_models["sam-hq"]) in (out / "run.json").read_text()


# --- the one model table and the detector contract (issue 21) ------------------------------------


def test_the_model_table_gives_the_adapters_the_presets_and_the_help_lists():
    from iapas.models import registry
    from iapas.models.factory import _adapters
    from iapas.testing.presets import PRESETS, preset_names

    assert _adapters("detector")["mm-grounding-dino"] == "iapas.models.detector:GroundingDinoDetector"
    assert _adapters("segmenter")["sam2_video"] == _adapters("segmenter")["sam2"] == "iapas.models.sam2:Sam2Segmenter"
    assert registry.family_list("detector") == "Grounding DINO, MM-Grounding-DINO, OWLv2 or SAM 3"
    assert registry.family_list("segmenter") == "SAM, SAM-HQ or SAM 2.1"
    assert registry.detector_names()[0] == "gdino-tiny" and "sam3" in registry.detector_names()
    assert "sam-vit-h" in registry.segmenter_names() and "sam3" not in registry.segmenter_names()
    assert set(preset_names()) == {m.preset for m in registry.MODELS if m.preset}
    for model in registry.MODELS:  # each preset copies its row's hub id and model type
        if model.preset:
            assert (PRESETS[model.preset].hub_id, PRESETS[model.preset].kind) == (model.hub_id, model.model_type)


def test_the_detector_base_states_the_contract_with_defaults():
    from iapas.core.caption import GROUNDING_DINO_MAX_TEXT_LEN, estimate_token_count
    from iapas.models.base import Detector
    from tests.test_pipeline import CannedDetector

    det = CannedDetector({})
    image = np.zeros((4, 4, 3), np.uint8)
    assert len(det.detect_many([image], ["a", "b"], box_threshold=0.1, text_threshold=0.1)) == 2
    assert det.calls == [(1, "a"), (1, "b")]  # the default detect_many: one detect per caption, in order
    assert not det.returns_masks and not det.fuses_object and det.device is None
    assert det.caption_budget() == (estimate_token_count, GROUNDING_DINO_MAX_TEXT_LEN, "estimate")
    det.check_caption("anything")  # the default checks nothing
    with pytest.raises(ValueError, match="cannot fuse object detection"):
        Pipeline(det, object(), PipelineConfig(fuse_object_detection=True)).check(  # type: ignore[arg-type]
            Profile.from_prompts("tile", "tile", ["crack"])
        )
    with pytest.raises(NotImplementedError, match="overrides neither"):
        Detector().detect([image], "a")
    with pytest.raises(TypeError, match="must be an iapas.models.Detector"):
        Pipeline(object(), object())  # type: ignore[arg-type]
