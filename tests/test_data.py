"""Dataset loaders and masks on generated trees of every layout (tiny images written with PIL)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.data import (
    Category,
    Dataset,
    DatasetError,
    MaskError,
    Sample,
    binarize_mask,
    check_mask,
    draw_references,
    get_dataset,
    load_mask,
    sample_mask,
)
from iapas.data.base import references_from_test_count
from iapas.data.dagm import read_labels_file

SIZE = (12, 10)  # PIL (W, H)


def write(path: Path, values: np.ndarray | None = None, mode: str = "L", fmt: str | None = None) -> Path:
    """A tiny image; ``values`` is (H, W) (default all 100)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((SIZE[1], SIZE[0]), 100, np.uint8) if values is None else values
    image = Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "RGB":
        image = image.convert("RGB")
    image.save(path, format=fmt)
    return path


def box_mask(value: int = 255) -> np.ndarray:
    arr = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    arr[2:5, 3:7] = value
    return arr


def palette_bmp(path: Path, indices: np.ndarray, palette: list[int]) -> Path:
    """An 8-bit palette BMP whose raw pixel values are ``indices``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("P", (indices.shape[1], indices.shape[0]))
    image.putdata(indices.astype(np.uint8).ravel().tolist())
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(path, format="BMP")
    return path


def mvtec_tree(root: Path, category: str = "widget", train: int = 3, good: int = 4, normal: str = "good") -> Path:
    base = root / category
    for i in range(train):
        write(base / "train" / normal / f"{i:03d}.png")
    for i in range(good):
        write(base / "test" / normal / f"{i:03d}.png")
    for i in range(2):
        write(base / "test" / "scratch" / f"{i:03d}.png")
        write(base / "ground_truth" / "scratch" / f"{i:03d}_mask.png", box_mask())
    write(base / "test" / "crack" / "000.png")  # no mask on purpose
    (root / "license.txt").write_text("not a category")
    return root


# --- masks ------------------------------------------------------------------------------------


def test_palette_bmp_uses_raw_indices_not_colours(tmp_path: Path) -> None:
    indices = box_mask(1)
    # Index 1 is pure red: its grey level (76) would be lost by a 'convert to L, >= 128' reader.
    red = palette_bmp(tmp_path / "red.bmp", indices, [0, 0, 0, 255, 0, 0])
    assert Image.open(red).mode == "P"
    assert np.array_equal(load_mask(red), indices == 1)
    # Index 0 drawn white, index 1 black: still index 1 = defect.
    inverted = palette_bmp(tmp_path / "inv.bmp", indices, [255, 255, 255, 0, 0, 0])
    assert np.array_equal(load_mask(inverted), indices == 1)
    assert int(load_mask(inverted).sum()) == 12


def test_grey_ramp_bmp_with_values_0_1(tmp_path: Path) -> None:
    indices = box_mask(1)
    ramp = [v for i in range(256) for v in (i, i, i)]
    path = palette_bmp(tmp_path / "ramp.bmp", indices, ramp)
    assert Image.open(path).mode == "L"  # PIL opens a grey-ramp palette BMP as L with the raw 0/1 values
    assert np.array_equal(load_mask(path), indices == 1)


def test_anti_aliased_edges_binarised_above_128_as_the_reference(tmp_path: Path) -> None:
    values = np.array([[0, 1, 64, 127], [128, 129, 200, 255]], np.uint8)
    path = tmp_path / "aa.png"
    Image.fromarray(values, mode="L").save(path)
    expected = np.array([[False, False, False, False], [False, True, True, True]])  # 128 is not a defect
    assert np.array_equal(load_mask(path), expected)
    cv2 = pytest.importorskip("cv2")  # the reference's cv2.threshold(gt, 128, 255, THRESH_BINARY)
    assert np.array_equal(load_mask(path), cv2.threshold(values, 128, 255, cv2.THRESH_BINARY)[1] == 255)


def test_sixteen_bit_mask_binarised_at_half_range(tmp_path: Path) -> None:
    values = np.array([[0, 300, 32896], [32897, 40000, 65535]], np.uint16)  # > 128/255 of 65535 = 32896
    path = tmp_path / "m16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    assert np.array_equal(load_mask(path), np.array([[False, False, False], [True, True, True]]))


def test_small_label_map_and_rgb_and_one_bit(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 0, 0]], np.uint8)  # VisA-style defect ids
    Image.fromarray(labels, mode="L").save(tmp_path / "labels.png")
    assert np.array_equal(load_mask(tmp_path / "labels.png"), labels > 0)

    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)  # a red mask stroke
    rgb[1, 2] = (0, 0, 90)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    assert np.array_equal(load_mask(tmp_path / "rgb.png"), np.array([[False, True, False], [False, False, False]]))

    Image.fromarray(box_mask(255)).convert("1").save(tmp_path / "one.bmp")
    assert np.array_equal(load_mask(tmp_path / "one.bmp"), box_mask(255) > 0)


def test_label_map_with_many_instances_is_read_as_defect(tmp_path: Path) -> None:
    """VisA masks number their instances: 12 ids (13 distinct values) are all defect, in 8 and 16 bit."""
    labels = np.zeros((4, 6), np.uint8)
    labels.flat[:12] = np.arange(1, 13)
    Image.fromarray(labels, mode="L").save(tmp_path / "instances.png")
    mask = load_mask(tmp_path / "instances.png")
    assert int(mask.sum()) == 12 and np.array_equal(mask, labels > 0)
    wide = np.zeros((4, 100), np.uint16)
    wide.flat[:300] = np.arange(1, 301)
    Image.fromarray(wide).save(tmp_path / "instances16.png")
    assert int(load_mask(tmp_path / "instances16.png").sum()) == 300
    # an anti-aliased 0/255 mask (MTD) is still binarised above 128 (the reference's threshold)
    aa = np.zeros((4, 6), np.uint8)
    aa[1, 1:5] = 255
    aa[0, 1:5] = [30, 60, 90, 127]
    aa[2, 1:5] = [128, 150, 200, 250]
    Image.fromarray(aa, mode="L").save(tmp_path / "aa.png")
    assert int(load_mask(tmp_path / "aa.png").sum()) == 7  # 128 is not a defect


def test_binarize_rules() -> None:
    assert np.array_equal(binarize_mask(np.array([0, 1, 1, 0])), [False, True, True, False])
    assert np.array_equal(binarize_mask(np.array([0.0, 0.4, 0.5, 0.51, 1.0]), 1.0), [False, False, False, True, True])
    # low values: a label map however many ids (was all False with 9+ distinct values)
    assert np.array_equal(binarize_mask(np.array([0, 10, 20, 30, 40, 50, 60, 70, 80]), 255.0), [False] + [True] * 8)
    # 0/255 with anti-aliased edge values: max 255, binarised above 128
    assert np.array_equal(binarize_mask(np.array([0, 40, 128, 129, 200, 255]), 255.0), [False, False, False, True, True, True])
    assert binarize_mask(np.zeros((0, 3), np.uint8)).shape == (0, 3)


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = write(tmp_path / "img" / "007.png")
    mask_path = tmp_path / "gt" / "007_mask.png"
    mask_path.parent.mkdir()
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(mask_path)
    with pytest.raises(MaskError) as info:
        load_mask(mask_path, image_path=image)
    message = str(info.value)
    assert str(mask_path) in message and str(image) in message
    assert "6x5" in message and "12x10" in message
    with pytest.raises(MaskError, match="007_mask.png"):
        load_mask(mask_path, expected_size=(10, 12))
    sample = Sample(image, 1, mask_path, "scratch", "c")
    assert str(image) in (check_mask(sample) or "")
    with pytest.raises(MaskError, match="not found"):
        load_mask(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(MaskError, match="junk.png"):
        load_mask(tmp_path / "junk.png")


def test_sample_mask_zeros_for_normal(tmp_path: Path) -> None:
    image = write(tmp_path / "a.png")
    mask = sample_mask(Sample(image, 0, None, "good", "c"))
    assert mask.shape == (10, 12) and mask.dtype == bool and not mask.any()
    mask_path = write(tmp_path / "a_mask.png", box_mask())
    assert int(sample_mask(Sample(image, 1, mask_path, "x", "c")).sum()) == 12


# --- references ---------------------------------------------------------------------------------


def test_draw_references_deterministic_and_order_free(tmp_path: Path) -> None:
    pool = [tmp_path / f"{i:02d}.png" for i in range(20)]
    first = draw_references(pool, 10, seed=0, root=tmp_path)
    shuffled = pool[:]
    random.Random(5).shuffle(shuffled)
    assert draw_references(shuffled, 10, seed=0, root=tmp_path) == first
    assert len(first) == 10 and first == sorted(first)
    assert set(draw_references(pool, 1, seed=0, root=tmp_path)) <= set(first)  # N=1 is among N=10
    assert draw_references(pool, 10, seed=1, root=tmp_path) != first
    assert draw_references(pool, 50, seed=0) == sorted(pool)
    assert draw_references(pool, 0, seed=0) == []
    with pytest.raises(ValueError):
        draw_references(pool, -1, seed=0)


@pytest.mark.parametrize(("normal", "requested", "expected"), [(20, 10, 10), (21, 10, 10), (19, 10, 9), (8, 10, 4), (3, 10, 1), (1, 10, 1), (0, 10, 0), (8, 0, 0)])
def test_references_from_test_count(normal: int, requested: int, expected: int) -> None:
    assert references_from_test_count(normal, requested) == expected


# --- MVTec-style layouts -------------------------------------------------------------------------


def test_mvtec_with_train_split(tmp_path: Path) -> None:
    ds = get_dataset("mvtec_ad", mvtec_tree(tmp_path))
    assert isinstance(ds, Dataset)
    assert ds.categories() == ["widget"]
    cat = ds.load("widget", n_references=2, seed=0)
    assert isinstance(cat, Category)
    assert len(cat.references) == 2
    assert all(p.parent == tmp_path / "widget" / "train" / "good" for p in cat.references)
    assert (len(cat.test), cat.anomalous, cat.with_mask, cat.normal) == (7, 3, 2, 4)
    assert cat.defect_types == ["crack", "scratch"]
    masks = {s.path.name: s.mask_path for s in cat.test if s.defect_type == "scratch"}
    assert masks == {"000.png": tmp_path / "widget/ground_truth/scratch/000_mask.png", "001.png": tmp_path / "widget/ground_truth/scratch/001_mask.png"}
    assert any("1 defective test images have no mask" in n for n in cat.notes)
    assert all(s.mask_path is None for s in cat.test if s.label == 0)
    # MVTec AD's paper protocol is the whole test split.
    assert len(ds.load("widget", protocol="paper").test) == 7
    assert "cable" in ds.missing_categories()
    few = ds.load("widget", n_references=5)
    assert len(few.references) == 3 and "Only 3 normal training images" in few.notes[-1]


def test_mvtec_without_train_draws_from_test_good_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = mvtec_tree(tmp_path, train=0, good=20)
    with caplog.at_level(logging.WARNING, logger="iapas.data"):
        cat = get_dataset("mvtec", root).load("widget", n_references=10, seed=3)
    good = root / "widget" / "test" / "good"
    assert len(cat.references) == 10 and all(p.parent == good for p in cat.references)
    assert not set(cat.references) & {s.path for s in cat.test}
    assert (len(cat.test), cat.normal, cat.anomalous) == (13, 10, 3)
    assert "drawn (seed 3) from the 20 normal test images and excluded from the test set" in cat.notes[-1]
    assert "no train split" in caplog.text
    again = get_dataset("mvtec", root).load("widget", n_references=10, seed=3)
    assert again.references == cat.references and again.test == cat.test


def test_too_few_normals_keeps_half_for_testing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = mvtec_tree(tmp_path, train=0, good=8)  # like the capsule sample: 8 good, N=10
    with caplog.at_level(logging.WARNING, logger="iapas.data"):
        cat = get_dataset("mvtec", root).load("widget", n_references=10)
    assert (len(cat.references), cat.normal, len(cat.test)) == (4, 4, 7)
    assert "Only 4 of the 10 requested references were drawn, so that 4 normal images stay in the test set." in cat.notes
    assert "only 4 of the 10" in caplog.text


def test_listing_order_does_not_change_the_draw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = mvtec_tree(tmp_path, train=0, good=20)
    before = get_dataset("mvtec", root).load("widget").references
    original = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(list(original(self))[::-1]))
    assert get_dataset("mvtec", root).load("widget").references == before


def test_mpdd_and_dtd_paper_protocol_is_defective_only(tmp_path: Path) -> None:
    mpdd = get_dataset("mpdd", mvtec_tree(tmp_path / "mpdd", category="tubes"))
    assert mpdd.load("tubes").normal == 4
    paper = mpdd.load("tubes", protocol="paper")
    assert (len(paper.test), paper.normal) == (3, 0)
    assert paper.protocol == "paper" and "4 normal test images left out" in paper.notes[-1]

    root = tmp_path / "dtd"
    base = root / "Woven_001"
    write(base / "train" / "good" / "000.png")
    for i in range(3):
        write(base / "test" / "good" / f"{i:03d}.png")
        write(base / "test" / "bad" / f"{i:03d}.png")
        write(base / "ground_truth" / "bad" / f"{i:03d}_mask.png", box_mask())
    dtd = get_dataset("DTD-Synthetic", root)
    full = dtd.load("Woven_001")
    assert (len(full.references), len(full.test), full.anomalous, full.with_mask) == (1, 6, 3, 3)
    assert full.defect_types == ["bad"]
    assert len(dtd.load("Woven_001", protocol="paper").test) == 3


def test_btad_matches_masks_by_stem_across_extensions(tmp_path: Path) -> None:
    root = tmp_path / "BTAD"
    # 01: bmp images, png masks; 02: png images, bmp masks.
    for cat, img_ext, mask_ext in (("01", "bmp", "png"), ("02", "png", "bmp")):
        base = root / cat
        for i in range(4):
            write(base / "train" / "ok" / f"{i:04d}.{img_ext}")
        for i in range(2):
            write(base / "test" / "ok" / f"{i:04d}.{img_ext}")
        for i in range(3):
            write(base / "test" / "ko" / f"{i:04d}.{img_ext}")
            write(base / "ground_truth" / "ko" / f"{i:04d}.{mask_ext}", box_mask())
    ds = get_dataset("btad", root)
    assert ds.categories() == ["01", "02"]
    for cat, mask_ext in (("01", ".png"), ("02", ".bmp")):
        full = ds.load(cat, n_references=3)
        assert (len(full.references), len(full.test), full.anomalous, full.with_mask) == (3, 5, 3, 3)
        assert all(s.mask_path.suffix == mask_ext and s.mask_path.stem == s.path.stem for s in full.test if s.label)
        assert full.defect_types == ["ko"]
        paper = ds.load(cat, protocol="paper")
        assert [s.defect_type for s in paper.test] == ["ko"] * 3
        assert int(sample_mask(paper.test[0]).sum()) == 12


# --- KSDD1 --------------------------------------------------------------------------------------


def ksdd_tree(root: Path, folders: int = 3) -> Path:
    """kos01..: Part0 defective (palette 0/1 mask), Part1..Part3 defect-free (all-zero masks)."""
    black_white = [0, 0, 0, 255, 255, 255]
    for k in range(1, folders + 1):
        folder = root / f"kos{k:02d}"
        for part in range(4):
            write(folder / f"Part{part}.jpg", fmt="JPEG")
            indices = box_mask(1) if part == 0 else np.zeros((SIZE[1], SIZE[0]), np.uint8)
            palette_bmp(folder / f"Part{part}_label.bmp", indices, black_white)
    return root


def test_ksdd1_labels_come_from_mask_contents(tmp_path: Path) -> None:
    root = ksdd_tree(tmp_path / "KolektorSDD")
    ds = get_dataset("kolektor", root)
    assert ds.categories() == ["kolektor"]
    cat = ds.load("kolektor", n_references=2, seed=0)
    # 12 images: 3 defective, 9 normal; 2 references drawn from the normals and excluded.
    assert (len(cat.references), len(cat.test), cat.anomalous, cat.with_mask) == (2, 10, 3, 3)
    assert sorted(s.path.name for s in cat.test if s.label) == ["Part0.jpg"] * 3
    assert all(p.name != "Part0.jpg" for p in cat.references)
    assert not set(cat.references) & {s.path for s in cat.test}
    assert cat.defect_types == ["defect"]
    assert "KSDD1 has no train split" in cat.notes[0]
    assert ds.load("kolektor", protocol="paper", n_references=2).test == cat.test
    defective = next(s for s in cat.test if s.label)
    assert int(sample_mask(defective).sum()) == 12


def test_ksdd1_image_without_label_is_left_out(tmp_path: Path) -> None:
    root = ksdd_tree(tmp_path, folders=1)
    write(root / "kos01" / "Part9.jpg", fmt="JPEG")
    cat = get_dataset("ksdd1", root).load("kolektor", n_references=1)
    assert len(cat.test) + len(cat.references) == 4
    assert any("no <stem>_label.bmp" in n and "Part9.jpg" in n for n in cat.notes)


# --- MTD ------------------------------------------------------------------------------------------


def test_mtd_layout(tmp_path: Path) -> None:
    root = tmp_path / "MTD"
    for cls, n in (("Free", 6), ("Blowhole", 2), ("Uneven", 2)):
        for i in range(n):
            write(root / f"MT_{cls}" / "Imgs" / f"exp{i}.jpg", fmt="JPEG")
            mask = np.zeros((SIZE[1], SIZE[0]), np.uint8) if cls == "Free" or i == 1 else box_mask()
            write(root / f"MT_{cls}" / "Imgs" / f"exp{i}.png", mask)
    ds = get_dataset("mtd", root)
    cat = ds.load("magnetic_tile", n_references=2)
    # The empty Uneven mask still counts: anomalous by folder, and it has a mask file.
    assert (len(cat.references), len(cat.test), cat.anomalous, cat.with_mask) == (2, 8, 4, 4)
    assert cat.defect_types == ["Blowhole", "Uneven"]
    assert all(p.parent.parent.name == "MT_Free" and p.suffix == ".jpg" for p in cat.references)
    assert all(s.path.suffix == ".jpg" for s in cat.test)
    assert ds.load("magnetic_tile", protocol="paper", n_references=2).test == cat.test


# --- DAGM -----------------------------------------------------------------------------------------


def dagm_tree(root: Path) -> Path:
    for split, n, defective in (("Train", 5, {1}), ("Test", 6, {2, 4})):
        folder = root / "Class1" / split
        rows = ["1"]
        for i in range(1, n + 1):
            write(folder / f"{i:04d}.PNG", fmt="PNG")
            if i in defective:
                write(folder / "Label" / f"{i:04d}_label.PNG", box_mask(), fmt="PNG")
                rows.append(f"{i}\t1\t{i:04d}.PNG\t0\t{i:04d}_label.PNG")
            else:
                rows.append(f"{i}\t0\t{i:04d}.PNG\t0\t")
        (folder / "Label" / "Labels.txt").write_text("\n".join(rows) + "\n")
    return root


def test_dagm_labels_file(tmp_path: Path) -> None:
    root = dagm_tree(tmp_path / "DAGM")
    rows = read_labels_file(root / "Class1" / "Test" / "Label" / "Labels.txt")
    assert rows["0002.PNG"] == (1, "0002_label.PNG") and rows["0001.PNG"] == (0, None) and len(rows) == 6
    ds = get_dataset("dagm2007", root)
    assert ds.categories() == ["Class1"]
    cat = ds.load("Class1", n_references=3)
    assert all(p.parent.name == "Train" and p.name != "0001.PNG" for p in cat.references)
    assert (len(cat.references), len(cat.test), cat.anomalous, cat.with_mask) == (3, 6, 2, 2)
    paper = ds.load("Class1", protocol="paper")
    # the labelled images of Test and (paper protocol, as the reference code) Train
    assert [s.path.relative_to(root / "Class1").as_posix() for s in paper.test] == ["Test/0002.PNG", "Test/0004.PNG", "Train/0001.PNG"]
    assert paper.test[0].mask_path == root / "Class1/Test/Label/0002_label.PNG"


def test_dagm_bad_labels_row(tmp_path: Path) -> None:
    path = tmp_path / "Labels.txt"
    path.write_text("1\n1\tyes\t0001.PNG\t0\n")
    with pytest.raises(DatasetError, match=r"Labels.txt:2"):
        read_labels_file(path)


def test_dagm_without_labels_txt_uses_label_files(tmp_path: Path) -> None:
    root = dagm_tree(tmp_path)
    (root / "Class1" / "Test" / "Label" / "Labels.txt").unlink()
    cat = get_dataset("dagm", root).load("Class1")
    assert cat.anomalous == 2 and any("Labels.txt is missing" in n for n in cat.notes)


# --- VisA -----------------------------------------------------------------------------------------


def visa_candle(root: Path, n_normal: int, extra_rows: tuple[str, ...] = ()) -> list[str]:
    """A VisA folder of candle: ``n_normal`` Normal JPEGs (the first 3 in train, the rest in test)
    and 2 anomalous ones with 0/1 masks, listed in split_csv/1cls.csv with ``extra_rows``; its rows."""
    rows = ["object,split,label,image,mask"]
    for i in range(n_normal):
        image = f"candle/Data/Images/Normal/{i:04d}.JPG"
        write(root / image, fmt="JPEG")
        rows.append(f"candle,{'train' if i < 3 else 'test'},normal,{image},")
    for i in range(2):
        image, mask = f"candle/Data/Images/Anomaly/{i:03d}.JPG", f"candle/Data/Masks/Anomaly/{i:03d}.png"
        write(root / image, fmt="JPEG")
        write(root / mask, box_mask(1))
        rows.append(f"candle,test,anomaly,{image},{mask}")
    rows += extra_rows
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return rows


def test_visa_split_csv(tmp_path: Path) -> None:
    root = tmp_path / "VisA"
    rows = visa_candle(root, 4, ("candle,test,anomaly,candle/Data/Images/Anomaly/999.JPG,candle/Data/Masks/Anomaly/999.png",))
    ds = get_dataset("visa", root)
    assert ds.categories() == ["candle"]
    cat = ds.load("candle", n_references=2)
    assert all("Normal" in str(p) for p in cat.references)
    assert (len(cat.references), len(cat.test), cat.anomalous, cat.with_mask) == (2, 3, 2, 2)
    assert any("1 images listed in" in n and "999.JPG" in n for n in cat.notes)
    assert int(sample_mask(next(s for s in cat.test if s.label)).sum()) == 12  # 0/1 mask
    paper = ds.load("candle", protocol="paper").test  # the reference tests the Normal images too
    assert (len(paper), sum(s.label for s in paper)) == (3, 2)
    # the same file saved with a byte-order mark (Excel's 'CSV UTF-8'): the first column is still 'object'
    (root / "split_csv" / "1cls.csv").write_bytes(b"\xef\xbb\xbf" + ("\n".join(rows) + "\n").encode())
    bom = get_dataset("visa", root)
    assert bom.categories() == ["candle"] and len(bom.load("candle", n_references=2).test) == 3


# --- folder dataset -----------------------------------------------------------------------------


def test_folder_dataset(tmp_path: Path) -> None:
    root = tmp_path / "my_part"
    for i in range(6):
        write(root / "ok" / f"n{i}.png")
    write(root / "ng" / "a0.png")
    write(root / "ng" / "dent" / "a1.png")
    write(root / "ng" / "dent" / "a2.png")
    write(root / "gt" / "a0.png", box_mask())
    write(root / "gt" / "dent" / "a1.png", box_mask())
    ds = get_dataset("folder", root, normal="ok", anomalous="ng", masks="gt", mask_pattern="{stem}.png")
    assert ds.categories() == ["my_part"]
    cat = ds.load("my_part", n_references=2)
    assert (len(cat.references), len(cat.test), cat.anomalous, cat.with_mask) == (2, 7, 3, 2)
    assert cat.defect_types == ["dent", "ng"]
    assert any("1 anomalous images have no mask gt/{stem}.png" in n for n in cat.notes)
    with pytest.raises(ValueError, match="stem"):
        get_dataset("folder", root, mask_pattern="mask.png")
    with pytest.raises(TypeError):
        get_dataset("mvtec", root, normal="ok")


# --- registry and errors --------------------------------------------------------------------------


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        get_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        get_dataset("mvtec", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"no MVTec AD categories found; expected ROOT/<category>/test"):
        get_dataset("mvtec", tmp_path).categories()
    ds = get_dataset("mvtec", mvtec_tree(tmp_path))
    with pytest.raises(DatasetError, match="no MVTec AD category 'bottle'; found: widget"):
        ds.load("bottle")
    with pytest.raises(ValueError, match="protocol"):
        ds.load("widget", protocol="fast")


# --- CLI ------------------------------------------------------------------------------------------


def run_cli(*args: str):
    from iapas.cli import app

    return CliRunner().invoke(app, ["data", "summary", *args])


def test_cli_json(tmp_path: Path) -> None:
    root = mvtec_tree(tmp_path, train=0, good=20)
    result = run_cli("--dataset", "mvtec", "--root", str(root), "--json", "--protocol", "paper")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == {
        "dataset": "mvtec",
        "protocol": "paper",
        "categories": {"widget": {"references": 10, "test": 13, "anomalous": 3, "with_mask": 2, "calibration": 0, "defect_types": ["crack", "scratch"]}},
    }
    assert "excluded from the test set" in result.stderr


def test_cli_table_and_errors(tmp_path: Path) -> None:
    root = dagm_tree(tmp_path / "DAGM")
    result = run_cli("-d", "dagm", "-r", str(root), "-n", "2")
    assert result.exit_code == 0, result.output
    assert "Class1" in result.stdout and "defect" in result.stdout

    missing = run_cli("-d", "mtd", "-r", str(tmp_path / "nowhere"), "--json")
    assert missing.exit_code == 2 and missing.stdout == ""
    assert "nowhere" in missing.stderr and "does not exist" in missing.stderr

    wrong = run_cli("-d", "visa", "-r", str(root), "--json")
    assert wrong.exit_code == 2 and wrong.stdout == ""
    assert "split_csv/1cls.csv" in wrong.stderr and "it looks like --dataset dagm" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1

    unknown = run_cli("-d", "dagm", "-r", str(root), "--categories", "Class1,Class7")
    assert unknown.exit_code == 2 and "Class7" in unknown.stderr
    assert run_cli("-d", "nosuch", "-r", str(root)).exit_code == 2


def test_cli_check_reports_mask_size_problem(tmp_path: Path) -> None:
    root = mvtec_tree(tmp_path)
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / "widget" / "ground_truth" / "scratch" / "001_mask.png")
    result = run_cli("-d", "mvtec", "-r", str(root), "--json", "--check")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["categories"]["widget"]["with_mask"] == 2
    assert "001_mask.png" in result.stderr
