"""Overlays a person can read (issue 20): labels inside the image on a background, a font that
scales with the image, dropped boxes only when asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from iapas.cli import app
from iapas.product.decision import ImageDecision
from iapas.engine.outputs import render_overlay
from iapas.core.types import Detections, SegmentationResult
from tests.test_cli_segment import read_results, segment_args

GREY = 90


def result_with(kept: list[list[float]], dropped: list[list[float]], shape: tuple[int, int]) -> SegmentationResult:
    def dets(boxes: list[list[float]], phrase: str) -> Detections:
        return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.87, np.float32),
                          tuple(phrase for _ in boxes))

    return SegmentationResult(
        anomaly_map=np.zeros(shape, np.float32), kept=dets(kept, "long scratch"), dropped=dets(dropped, "bottle"),
        masks=np.zeros((0, *shape), bool), object_box=None, object_score=None, object_size=1.0, object_size_source="default",
    )


def ng(score: float = 0.1234) -> ImageDecision:
    return ImageDecision(verdict="NG", score=score, threshold=0.05, normalized_score=1.0, rule="conformal", min_defect_area=0)


@pytest.fixture()
def texts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Every text drawn, with the bounding box of its ink (Pillow's own textbbox)."""
    drawn: list[tuple[str, tuple[int, int, int, int]]] = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, text, fill=None, font=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append((text, self.textbbox(xy, text, font=font)))
        return original(self, xy, text, fill, font, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    return drawn


def grey(shape: tuple[int, int]) -> np.ndarray:
    return np.full((*shape, 3), GREY, np.uint8)


@pytest.mark.parametrize("where", ["top-left", "top", "top-right", "right", "bottom-right", "bottom", "bottom-left", "left"])
def test_labels_stay_inside_the_image_for_boxes_at_every_edge_and_corner(where: str, texts: list) -> None:
    h, w = 300, 400
    box = {"top-left": [0, 0, 30, 20], "top": [180, 0, 220, 20], "top-right": [385, 0, 399, 12],
           "right": [390, 140, 399, 160], "bottom-right": [380, 290, 399, 299], "bottom": [180, 292, 220, 299],
           "bottom-left": [0, 295, 10, 299], "left": [0, 140, 8, 160]}[where]
    overlay = render_overlay(grey((h, w)), result_with([box], [], (h, w)), verdict=ng())
    assert [t for t, _ in texts] == ["long scratch 0.87", "NG 0.1234 (threshold 0.0500)"]
    for text, (left, top, right, bottom) in texts:
        assert 0 <= left and right <= w and 0 <= top and bottom <= h, (where, text, (left, top, right, bottom))
        # on a filled background: the label's colour fills most of its box, none of the grey shows
        patch = overlay[int(top):int(np.ceil(bottom)), int(left):int(np.ceil(right))].reshape(-1, 3)
        assert not (patch == GREY).all(axis=1).any(), (where, text)
    (_, kept), (_, verdict) = texts
    assert kept[1] >= verdict[3] or kept[0] >= verdict[2], "the kept label is not covered by the verdict"


def test_a_box_at_the_top_has_its_label_inside_and_one_lower_down_above(texts: list) -> None:
    render_overlay(grey((300, 400)), result_with([[100, 0, 200, 100], [100, 200, 200, 260]], [], (300, 400)))
    (_, at_top), (_, lower) = texts
    assert 0 <= at_top[1] and at_top[3] <= 100  # inside the box
    assert lower[3] <= 200  # above the box, on its edge


def label_height(size: int, texts: list) -> int:
    texts.clear()
    render_overlay(grey((size, size)), result_with([], [], (size, size)), verdict=ng())
    (_, (_, top, _, bottom)), = texts
    return bottom - top


def test_the_font_grows_with_the_image(texts: list) -> None:
    small, large = label_height(512, texts), label_height(2048, texts)
    assert 3.5 <= large / small <= 4.5, (small, large)  # 4 times the pixels across, ~4 times the letters
    assert large >= 2048 / 60  # readable: about 1/40 of the image


def dropped_outline(shape: tuple[int, int], box: list[int]) -> np.ndarray:
    inside = np.zeros(shape, bool)
    inside[box[1]:box[3] + 1, box[0]:box[2] + 1] = True
    inside[box[1] + 1:box[3], box[0] + 1:box[2]] = False
    return inside


def test_dropped_boxes_are_drawn_only_when_asked() -> None:
    shape, box = (200, 300), [150, 60, 260, 160]
    result = result_with([], [box], shape)
    edge = dropped_outline(shape, box)
    hidden = render_overlay(grey(shape), result)
    assert (hidden == GREY).all()  # no box, no label: the image as it was
    shown = render_overlay(grey(shape), result, show_dropped=True)
    assert (shown[edge] == 160).all() and (shown[~edge] == GREY).all()


def test_segment_show_dropped_end_to_end(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    image = tmp_path / "in" / "part.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
    runner = CliRunner()
    # a tiny size threshold drops every box the tiny detector finds
    profile = tmp_path / "p.yaml"
    made = runner.invoke(app, ["profile", "--category", "part", "--object", "part", "--prompts", "scratch", "--out", str(profile)])
    assert made.exit_code == 0, made.output
    overlays = {}
    for name, extra in (("default", ()), ("shown", ("--show-dropped",))):
        out = tmp_path / name
        ran = runner.invoke(app, segment_args(tiny_models, str(image), "--profile", str(profile), "--size-threshold", "1e-6",
                                              "--out", str(out), *extra))
        assert ran.exit_code == 0, ran.output
        (record,) = read_results(out)
        overlays[name] = np.asarray(Image.open(out / record["outputs"]["overlay"]).convert("RGB"))
    assert record["dropped"] and not record["kept"], record
    plain = np.asarray(Image.open(image).convert("RGB"))
    edge = np.zeros(plain.shape[:2], bool)
    for d in record["dropped"]:
        x0, y0, x1, y1 = (int(round(v)) for v in d["box"])
        edge |= dropped_outline(plain.shape[:2], [max(x0, 0), max(y0, 0), min(x1, 127), min(y1, 95)])
    changed = (overlays["shown"] != overlays["default"]).any(axis=2)
    assert changed.any() and (overlays["shown"][changed] == 160).all()
    outline_default = overlays["default"][edge]
    assert (outline_default != 160).any()  # the random image's pixels, not the grey outline


@pytest.mark.parametrize("show", [False, True])
def test_the_station_draws_dropped_boxes_only_with_show_dropped(show: bool) -> None:
    import io

    from iapas.core.images import LoadedImage
    from iapas.product.profile import Profile
    from iapas.serve.store import MemoryStore

    shape, box = (200, 300), [150, 60, 260, 160]
    buffer = io.BytesIO()
    Image.fromarray(grey(shape)).save(buffer, format="PNG")
    store = MemoryStore({"part": Profile.from_prompts("part", "part", ["scratch"])}, show_dropped=show)
    image = LoadedImage(path=Path("part.png"), rgb=grey(shape), mode="RGB")
    record = store.add("part", image, buffer.getvalue(), result_with([], [box], shape), None, {})
    overlay = np.asarray(Image.open(io.BytesIO(store.png(record["key"], "overlay"))).convert("RGB"))
    assert (overlay[dropped_outline(shape, box)] == (160 if show else GREY)).all()


def test_segment_and_serve_share_one_show_dropped_option() -> None:
    import typer.main

    from iapas.workflows.options import OPTIONS  # the one --show-dropped, the option table's row

    for name in ("segment", "serve"):
        command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
        (param,) = [p for p in command.params if p.name == "show_dropped"]
        assert param.opts == ["--show-dropped"] and param.default is False and param.help == OPTIONS["show_dropped"].help


def test_output_kinds_are_one_table_that_the_writer_follows(tmp_path, monkeypatch):
    """A new kind is a row of OUTPUT_KINDS: the writer writes it, the names list it, --no-overlay
    leaves out only the optional kinds."""
    import numpy as np

    from iapas.core.types import Detections, SegmentationResult
    from iapas.engine import outputs

    edges = outputs.OutputKind("edges", "edges", lambda o: (o.result.anomaly_map > 0.5).astype(np.uint8) * 255)
    monkeypatch.setattr(outputs, "OUTPUT_KINDS", (*outputs.OUTPUT_KINDS, edges))
    amap = np.zeros((8, 8), np.float32)
    amap[2:4, 2:4] = 0.9
    none = Detections.empty()
    result = SegmentationResult(anomaly_map=amap, kept=none, dropped=none, masks=np.zeros((0, 8, 8), bool), object_box=None,
                                object_score=None, object_size=1.0, object_size_source="default")
    rgb = np.zeros((8, 8, 3), np.uint8)
    written = outputs.write_image_outputs(tmp_path, "a", rgb, result, 0.3)
    assert written == {"map": "maps/a.png", "mask": "masks/a.png", "overlay": "overlays/a.png", "edges": "edges/a.png"}
    assert all((tmp_path / name).is_file() for name in written.values())
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "edges/a.png")), np.where(amap > 0.5, 255, 0).astype(np.uint8))
    assert outputs.output_names("b", overlay=False) == {"map": "maps/b.png", "mask": "masks/b.png", "edges": "edges/b.png"}
