"""Dataset loaders on the real files of ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import shared_data
from iapas.data import get_dataset, load_mask, sample_mask

MTD_DEFECTS = {"Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103}


@pytest.fixture(scope="module")
def mtd():
    return get_dataset("mtd", shared_data("MTD")).load("magnetic_tile", n_references=10, seed=0)


def test_mtd_counts(mtd) -> None:
    assert len(mtd.references) == 10
    assert all(p.parent.parent.name == "MT_Free" for p in mtd.references)
    assert not set(mtd.references) & {s.path for s in mtd.test}
    counts = Counter(s.defect_type for s in mtd.test)
    assert counts == {**MTD_DEFECTS, "Free": 942}
    assert (len(mtd.test), mtd.anomalous, mtd.with_mask) == (1334, 392, 392)
    assert mtd.defect_types == sorted(MTD_DEFECTS)
    assert any("MTD has no train split" in n and "952 normal" in n for n in mtd.notes)


def test_mtd_paper_protocol_keeps_free() -> None:
    ds = get_dataset("MTD", shared_data("MTD"))
    paper = ds.load("magnetic_tile", protocol="paper")
    assert (len(paper.test), paper.anomalous) == (1334, 392)


def test_mtd_empty_uneven_masks_stay_anomalous(mtd) -> None:
    uneven = [s for s in mtd.test if s.defect_type == "Uneven"]
    empty = [s for s in uneven if not load_mask(s.mask_path, image_path=s.path).any()]
    assert len(uneven) == 103 and len(empty) == 4
    assert all(s.label == 1 for s in empty)


def test_mtd_anti_aliased_mask_binarised_at_128(mtd) -> None:
    from PIL import Image

    sample = next(s for s in mtd.test if s.defect_type == "Blowhole")
    raw = np.asarray(Image.open(sample.mask_path))
    assert len(np.unique(raw)) > 2  # really anti-aliased
    assert np.array_equal(sample_mask(sample), raw >= 128)


def test_mvtec_sample_without_train(caplog: pytest.LogCaptureFixture) -> None:
    ds = get_dataset("mvtec_ad", shared_data("MVTecAD"))
    assert ds.categories() == ["bottle", "capsule", "metal_nut"]
    with caplog.at_level(logging.WARNING, logger="iapas.data"):
        cats = {c: ds.load(c, n_references=10, seed=0) for c in ds.categories()}
    assert "bottle/train does not exist" in caplog.text
    expected = {"bottle": (10, 18, 8), "capsule": (4, 12, 8), "metal_nut": (4, 12, 8)}
    for name, cat in cats.items():
        assert (len(cat.references), len(cat.test), cat.anomalous) == expected[name]
        assert cat.with_mask == 8
        assert all(p.parent.name == "good" for p in cat.references)
        assert not set(cat.references) & {s.path for s in cat.test}
    bottle_defect = next(s for s in cats["bottle"].test if s.label == 1)
    mask = sample_mask(bottle_defect)
    assert mask.shape == (900, 900) and mask.any()


def test_cli_json_on_mtd() -> None:
    from iapas.cli import app

    root = shared_data("MTD")
    result = CliRunner().invoke(app, ["data", "summary", "--dataset", "mtd", "--root", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "dataset": "mtd",
        "protocol": "paper",  # evaluate's default: MTD has no train split, so no calibration images under paper
        "categories": {
            "magnetic_tile": {
                "references": 10,
                "test": 1334,
                "anomalous": 392,
                "with_mask": 392,
                "calibration": 0,
                "defect_types": ["Blowhole", "Break", "Crack", "Fray", "Uneven"],
            }
        },
    }
