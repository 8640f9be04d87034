"""iapas opens the PNGs it wrote (maps, masks, overlays) at their own size, whatever PIL's
decompression-bomb limit: images read under a raised --max-pixels make maps that large."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("fastapi")
from PIL import Image  # noqa: E402

from iapas.core.maps import encode_map  # noqa: E402
from iapas.product.calibration import stored_scores  # noqa: E402
from iapas.serve.pictures import heat, outline  # noqa: E402
from iapas.serve.store import upload_suffix  # noqa: E402
from iapas.serve.thumbs import thumbnail  # noqa: E402


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pictures_larger_than_pils_limit_are_drawn_and_the_limit_comes_back(monkeypatch, tmp_path) -> None:
    """A station with --max-pixels above PIL's limit stores pictures that large: heat.png and
    outline.png answered 500 for them (PIL refused to open its own PNGs, over twice its limit).
    Here PIL's limit is lowered to 500 pixels (its text glyphs stay below it), so that a 40x30
    picture stands for one of 180+ Mpx."""
    rng = np.random.default_rng(3)
    scores = rng.random((30, 40)).astype(np.float32)
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[10:20, 12:30] = 255
    overlay = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    map_png, mask_png, overlay_png = _png(encode_map(scores)), _png(mask), _png(overlay)
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "a.png").write_bytes(map_png)
    records = {"a": {"status": "ok", "outputs": {"map": "maps/a.png"}}}

    def made():
        return heat(map_png, 0.5), outline(overlay_png, mask_png), thumbnail(overlay_png, 16), stored_scores(tmp_path, records, ["a"], 4)

    want = made()
    assert want[3]["a"] > 0
    outlined = np.asarray(Image.open(io.BytesIO(want[1])))
    assert (outlined[10, 12:30] == (0, 255, 255)).all() and (outlined[15, 20] == overlay[15, 20]).all()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(Image.DecompressionBombError):  # what the routes met
        Image.open(io.BytesIO(map_png))
    assert made() == want  # the station's pictures and thumbnails, calibrate's stored map
    assert Image.MAX_IMAGE_PIXELS == 500  # PIL's own limit is back: nothing else may open larger


def test_an_upload_larger_than_pils_limit_is_stored_under_its_own_suffix(monkeypatch) -> None:
    """A station's upload over PIL's limit (allowed by a raised --max-pixels) was stored as
    uploads/ID.img, which no folder run, calibration or evaluation finds (they take image
    suffixes); PIL's limit lowered to 500 pixels, a 40x30 picture stands for one of 180+ Mpx."""
    picture = np.zeros((30, 40, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(picture).save(jpeg, format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert upload_suffix(_png(picture), 40 * 30) == ".png"
    assert upload_suffix(jpeg.getvalue(), 40 * 30) == ".jpg"
    assert Image.MAX_IMAGE_PIXELS == 500
