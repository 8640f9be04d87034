"""The paper protocol's dataset choices (KSDD1 per folder, DAGM Train+Test), the KSDD2 and WFDD
loaders, and ``iapas data summary`` (same default protocol as evaluate, --check) on generated trees.

The KSDD1 metrics test uses the fake pipeline of test_evaluation (a box around the bright pixels,
its mask the box itself) on square images evaluated at their own size, so every map is known:
1 inside the bright box (after the per-image normalisation), 0 elsewhere.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.data import DEFAULT_PROTOCOL, get_dataset
from iapas.data.check import check_masks, empty_folders
from iapas.data.registry import canonical_name, guess_dataset, guess_datasets
from iapas.evaluation import EvalSettings, Stage1Options, evaluate_dataset
from tests.conftest import shared_data
from tests.test_data import dagm_tree
from tests.test_evaluation import OBJECT, fake_pipeline

SIDE = 40  # the KSDD1 metrics test's square images, evaluated at this size (no resampling)


def save(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def palette_bmp(path: Path, indices: np.ndarray) -> Path:
    """An 8-bit palette BMP whose raw values are ``indices`` (0/1), index 1 white, as KolektorSDD's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("P", (indices.shape[1], indices.shape[0]))
    image.frombytes(np.ascontiguousarray(indices, dtype=np.uint8).tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    image.save(path, format="BMP")
    return path


def run_summary(*args: str):
    from iapas.cli import app

    return CliRunner().invoke(app, ["data", "summary", *args])


# --- KSDD1: one category per kosNN folder under the paper protocol ------------------------------

# folder -> (bright box rows, cols, mask rows): the mask is the box's top rows, so with every pixel of
# the box scored 1 the folder's pixel AP is mask/box and its F1-max 2p/(1+p).
BOXES = {
    "kos01": (slice(10, 20), slice(10, 20), 5),  # box 100 px, mask 50: AP 1/2
    "kos02": (slice(10, 15), slice(10, 20), 1),  # box 50 px, mask 10: AP 1/5
    "kos03": (slice(10, 20), slice(10, 20), 8),  # box 100 px, mask 80: AP 4/5
}


def ksdd1_metric_tree(root: Path) -> Path:
    """3 folders of 4 PNGs: Part0 defective (bright box, mask = its top rows), Part1-3 flat and normal."""
    for folder, (rows, cols, mask_rows) in BOXES.items():
        for part in range(4):
            image = np.full((SIDE, SIDE), 60, np.uint8)
            mask = np.zeros((SIDE, SIDE), np.uint8)
            if part == 0:
                image[rows, cols] = 200
                mask[rows.start : rows.start + mask_rows, cols] = 1
            save(root / folder / f"Part{part}.png", image)
            palette_bmp(root / folder / f"Part{part}_label.bmp", mask)
    return root


def test_ksdd1_paper_protocol_splits_the_folders_with_shared_references(tmp_path: Path) -> None:
    root = ksdd1_metric_tree(tmp_path / "KolektorSDD")
    ds = get_dataset("ksdd1", root)
    paper = ds.load("kolektor", protocol="paper", n_references=3, seed=0)
    full = ds.load("kolektor", protocol="full", n_references=3, seed=0)
    assert paper.references == full.references and len(paper.references) == 3  # drawn once, over all folders
    assert full.parts() == [full] and not full.split_parts
    parts = paper.parts()
    assert [p.name for p in parts] == ["kos01", "kos02", "kos03"]
    assert sum(len(p.test) for p in parts) == len(full.test) == 12 - 3
    for part in parts:
        assert part.product == "kolektor" and part.references == paper.references
        assert {s.path.parent.name for s in part.test} == {part.name}
        assert not set(part.references) & {s.path for s in part.test}
        assert part.anomalous == 1 and part.notes == []
    assert any("scored as its own category" in n and "tested them too" in n for n in paper.notes)


def test_ksdd1_paper_metrics_are_the_mean_of_per_folder_metrics(tmp_path: Path) -> None:
    root = ksdd1_metric_tree(tmp_path / "KolektorSDD")
    out = tmp_path / "out"
    stage1 = Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge")
    settings = EvalSettings(protocol="paper", n_references=3, eval_size=SIDE)
    result = evaluate_dataset("ksdd1", root, out, fake_pipeline(), settings, stage1=stage1, report=False)
    by_name = {c.name: c for c in result.categories}
    assert list(by_name) == ["kos01", "kos02", "kos03"]
    expected_ap = {"kos01": 1 / 2, "kos02": 1 / 5, "kos03": 4 / 5}
    for name, c in by_name.items():
        assert c.metrics is not None and c.error is None
        p = expected_ap[name]
        assert c.metrics.pixel_ap == pytest.approx(p, abs=1e-9)
        assert c.metrics.pixel_f1_max == pytest.approx(2 * p / (1 + p), abs=1e-9)
        assert c.n_references == 3 and c.n_done == c.n_test == len(c.keys)
    assert sum(c.n_test for c in result.categories) == 9  # the 3 references are tested nowhere
    mean = result.mean()
    assert mean["pixel_ap"] == pytest.approx((1 / 2 + 1 / 5 + 4 / 5) / 3, abs=1e-9)  # 1/2; pooled it is 140/250
    assert mean["pixel_f1_max"] == pytest.approx((2 / 3 + 1 / 3 + 8 / 9) / 3, abs=1e-9)
    # stage 1 ran once, for the product: one profile file, used by every folder
    assert sorted(p.name for p in (out / "profiles").iterdir()) == ["kolektor.yaml"]
    assert {c.profile.path for c in result.categories} == {str(out / "profiles" / "kolektor.yaml")}
    notes = [n for n in result.notes if "scored as its own category" in n]
    assert len(notes) == 1 and notes[0].startswith("kolektor: ")
    md = (out / "metrics.md").read_text()
    assert md.count("scored as its own category") == 1 and "| kos02 |" in md

    # the full protocol pools the folders into one category: AP = 140/250
    pooled = evaluate_dataset(
        "ksdd1", root, tmp_path / "full", fake_pipeline(), EvalSettings(protocol="full", n_references=3, eval_size=SIDE),
        stage1=stage1, report=False,
    )
    (only,) = pooled.categories
    assert only.name == "kolektor" and only.metrics.pixel_ap == pytest.approx(140 / 250, abs=1e-9)


def kolektor_tree(root: Path, folders: int = 50, per_folder: int = 8) -> Path:
    """A KolektorSDD-like tree: kos01..kos50, each with Part0..Part7.jpg (grayscale 500x1250) and
    PartK_label.bmp (8-bit palette, raw values 0/1); one defective part per folder. The identical
    all-zero labels are hard links of one file (250 MB of BMPs otherwise)."""
    empty = palette_bmp(root / "empty_label.bmp.tmp", np.zeros((1250, 500), np.uint8))
    for k in range(1, folders + 1):
        folder = root / f"kos{k:02d}"
        folder.mkdir(parents=True)
        defective = k % per_folder
        for part in range(per_folder):
            image = np.full((1250, 500), 50 + part, np.uint8)
            if part == defective:
                image[600:700, 200:230] = 220
                mask = np.zeros((1250, 500), np.uint8)
                mask[610:690, 205:225] = 1
                palette_bmp(folder / f"Part{part}_label.bmp", mask)
            else:
                os.link(empty, folder / f"Part{part}_label.bmp")
            Image.fromarray(image, mode="L").save(folder / f"Part{part}.jpg", quality=90)
    empty.unlink()
    return root


@pytest.fixture(scope="module")
def small_tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models with a detector that resizes to a 64 px short side: 50 folders of 500x1250
    images stay quick (the shared fixture's 320 px makes this test ~10x slower)."""
    from iapas.testing import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models-64"), detector_shortest_edge=64)


@pytest.fixture()
def one_torch_thread():
    """torch on one thread for the test: the tiny models' ops are so small that on a shared, busy
    machine thread synchronisation costs several times the work (3x faster here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_evaluate_ksdd1_paper_reports_50_folders_and_their_mean(
    tmp_path: Path, small_tiny_models: dict[str, Path], one_torch_thread: None
) -> None:
    """The 50 folders of 8 images (the real layout). Quick: 2 references, 1 test image per folder
    (its defective one), the object box from the caption's forward: one detector forward each."""
    from iapas.cli import app

    tiny_models = small_tiny_models

    root = kolektor_tree(tmp_path / "KolektorSDD")
    summary = run_summary("--dataset", "ksdd1", "--root", str(root), "--json")  # the default: paper, as evaluate
    assert summary.exit_code == 0, summary.output
    rows = json.loads(summary.stdout)["categories"]
    assert len(rows) == 50 and sum(r["test"] for r in rows.values()) == 400 - 10  # 10 references, drawn once
    assert sum(r["anomalous"] for r in rows.values()) == 50 and all(r["product"] == "kolektor" for r in rows.values())

    out = tmp_path / "run"
    started = time.perf_counter()
    result = CliRunner().invoke(app, [
        "evaluate", "--dataset", "ksdd1", "--root", str(root), "--out", str(out), "--protocol", "paper", "--limit", "1", "--references", "2", "--calibration-images", "0", "--fuse-object-detection",
        "--detector", str(tiny_models["grounding-dino"]), "--segmenter", str(tiny_models["sam"]), "--device", "cpu",
        "--tagger", "manual", "--tags", "commutator", "--llm", "knowledge", "--quiet",
    ])
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    names = list(data["categories"])
    assert names == [f"kos{k:02d}" for k in range(1, 51)]
    assert all(c["n_done"] == 1 for c in data["categories"].values())  # --limit 1: each folder's defective image
    values = [c["metrics"]["pixel_ap"] for c in data["categories"].values()]
    finite = [v for v in values if v is not None]
    assert finite and data["mean"]["pixel_ap"] == pytest.approx(float(np.mean(finite)), abs=1e-9)
    lines = (out / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [*names, "mean"]
    assert sorted(p.name for p in (out / "profiles").iterdir()) == ["kolektor.yaml"]
    print(f"evaluate ksdd1 --protocol paper --limit 1 on 50 folders: {seconds:.1f} s")


# --- DAGM: the labelled images of Train and Test under the paper protocol -------------------------


def test_dagm_paper_protocol_scores_defective_train_and_test_images(tmp_path: Path) -> None:
    root = dagm_tree(tmp_path / "DAGM")  # Train 0001-0005 (0001 defective), Test 0001-0006 (0002, 0004)
    ds = get_dataset("dagm", root)
    full = ds.load("Class1", protocol="full", n_references=3)
    paper = ds.load("Class1", protocol="paper", n_references=3)
    rel = lambda samples: [s.path.relative_to(root / "Class1").as_posix() for s in samples]  # noqa: E731
    assert (len(full.test), full.anomalous) == (6, 2)
    assert rel(paper.test) == ["Test/0002.PNG", "Test/0004.PNG", "Train/0001.PNG"]
    assert paper.anomalous == paper.with_mask == 3
    # the references: normal Train images, the same for both protocols, never tested
    assert paper.references == full.references and len(paper.references) == 3
    assert all(p.parent.name == "Train" and p.name != "0001.PNG" for p in paper.references)
    assert not set(paper.references) & {s.path for s in paper.test}
    assert any("1 defective images of the train split are tested too" in n for n in paper.notes)
    assert any("the reference code took defective ones" in n for n in paper.notes)
    counts = json.loads(run_summary("-d", "dagm", "-r", str(root), "-n", "3", "--json").stdout)["categories"]["Class1"]
    assert (counts["test"], counts["anomalous"]) == (3, 3)  # the default protocol is the paper's


# --- KSDD2 ----------------------------------------------------------------------------------------


def ksdd2_tree(root: Path) -> Path:
    """train/: 10000-10005, 10001 and 10004 defective; test/: 20000-20004, 20002 and 20003 defective,
    plus 20009.png without a GT file. GT files are 0/255 PNGs, empty for defect-free images."""
    for split, names, defective in (("train", range(10000, 10006), {10001, 10004}), ("test", range(20000, 20005), {20002, 20003})):
        for n in names:
            save(root / split / f"{n}.png", np.full((20, 8, 3), 90, np.uint8))
            gt = np.zeros((20, 8), np.uint8)
            if n in defective:
                gt[5:9, 2:5] = 255
            save(root / split / f"{n}_GT.png", gt)
    save(root / "test" / "20009.png", np.full((20, 8, 3), 90, np.uint8))
    return root


def test_ksdd2_loader_counts_and_draws_references_from_train_normals(tmp_path: Path) -> None:
    root = ksdd2_tree(tmp_path / "KolektorSDD2")
    assert canonical_name("KolektorSDD2") == "ksdd2" and guess_datasets(root) == ["ksdd2"]
    ds = get_dataset("ksdd2", root)
    assert ds.categories() == ["ksdd2"] and ds.missing_categories() == []
    cat = ds.load("ksdd2", n_references=3, seed=0)
    assert (len(cat.references), len(cat.test), cat.anomalous, cat.with_mask) == (3, 5, 2, 2)
    assert [s.path.name for s in cat.test if s.label] == ["20002.png", "20003.png"]
    assert all(s.mask_path is None for s in cat.test if not s.label)
    assert all(p.parent.name == "train" and p.stem not in ("10001", "10004") for p in cat.references)
    assert any("no <N>_GT.png" in n and "20009.png" in n for n in cat.notes)
    assert ds.load("ksdd2", protocol="paper", n_references=3).test == cat.test  # the reference scored all of test/
    every = ds.load("ksdd2", n_references=10)
    assert len(every.references) == 4 and any("Only 4 normal training images" in n for n in every.notes)
    defective = next(s for s in cat.test if s.label)
    assert int(np.asarray(Image.open(defective.mask_path)).astype(bool).sum()) == 12


# --- WFDD -----------------------------------------------------------------------------------------


def wfdd_tree(root: Path, fabrics: tuple[str, ...] = ("grey_cloth", "pink_flower")) -> Path:
    """Per fabric: train/good 3, test/good 2, test/block_shape 2 with masks, test/line_type 1 without."""
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 255
    image = np.full((10, 12, 3), 100, np.uint8)
    for fabric in fabrics:
        base = root / fabric
        for i in range(3):
            save(base / "train" / "good" / f"{i:03d}.png", image)
        for i in range(2):
            save(base / "test" / "good" / f"{i:03d}.png", image)
            save(base / "test" / "block_shape" / f"{i:03d}.png", image)
            save(base / "ground_truth" / "block_shape" / f"{i:03d}_mask.png", mask)
        save(base / "test" / "line_type" / "000.png", image)
    return root


def test_wfdd_loader_counts_and_the_paper_protocol_skips_test_good(tmp_path: Path) -> None:
    root = wfdd_tree(tmp_path / "WFDD")
    assert canonical_name("woven-fabric") == "wfdd"
    assert guess_dataset(root) == ("wfdd", ["mvtec", "mpdd", "btad", "dtd", "wfdd"])  # its fabrics settle the shared layout
    ds = get_dataset("wfdd", root)
    assert ds.categories() == ["grey_cloth", "pink_flower"]
    assert ds.missing_categories() == ["grid_cloth", "yellow_cloth"]
    full = ds.load("grey_cloth", protocol="full", n_references=2)
    assert (len(full.references), len(full.test), full.anomalous, full.with_mask) == (2, 5, 3, 2)
    assert full.defect_types == ["block_shape", "line_type"]
    assert all(p.parent.name == "good" and p.parent.parent.name == "train" for p in full.references)
    paper = ds.load("grey_cloth", protocol="paper", n_references=2)
    assert (len(paper.test), paper.anomalous) == (3, 3)
    assert any("1 defective test images have no mask" in n for n in paper.notes)


# --- iapas data summary ---------------------------------------------------------------------------


def test_summary_knows_the_new_loaders_and_uses_evaluates_default_protocol(tmp_path: Path) -> None:
    from iapas.workflows.options import OPTIONS  # evaluate's --protocol is the option table's row

    assert DEFAULT_PROTOCOL == "paper" and OPTIONS["protocol"].default == DEFAULT_PROTOCOL == EvalSettings().protocol
    wfdd = json.loads(run_summary("-d", "wfdd", "-r", str(wfdd_tree(tmp_path / "WFDD")), "-n", "2", "--json").stdout)
    assert wfdd["protocol"] == "paper"
    assert wfdd["categories"]["pink_flower"] == {
        "references": 2, "test": 3, "anomalous": 3, "with_mask": 2, "calibration": 1, "defect_types": ["block_shape", "line_type"],
    }
    ksdd2 = run_summary("-d", "kolektorsdd2", "-r", str(ksdd2_tree(tmp_path / "KSDD2")), "-n", "3", "--protocol", "full", "--json")
    assert ksdd2.exit_code == 0, ksdd2.output
    assert json.loads(ksdd2.stdout)["categories"] == {
        "ksdd2": {"references": 3, "test": 5, "anomalous": 2, "with_mask": 2, "calibration": 1, "defect_types": ["defect"]}
    }
    # KSDD1: one row per folder under the paper protocol, one pooled row under full. 'with mask'
    # counts the anomalous images' masks only, although the normal images have (empty) label files.
    root = ksdd1_metric_tree(tmp_path / "KSDD1")
    paper = json.loads(run_summary("-d", "ksdd1", "-r", str(root), "-n", "3", "--json").stdout)["categories"]
    assert list(paper) == ["kos01", "kos02", "kos03"] and all(r["with_mask"] == r["anomalous"] == 1 for r in paper.values())
    full = json.loads(run_summary("-d", "ksdd1", "-r", str(root), "-n", "3", "--protocol", "full", "--json").stdout)["categories"]
    assert list(full) == ["kolektor"] and full["kolektor"]["with_mask"] == 3
    # no training split: under full evaluate's calibration hold-out leaves the test set, and the summary says so
    assert full["kolektor"]["calibration"] > 0 and full["kolektor"]["test"] + full["kolektor"]["calibration"] == 9
    assert all(r["calibration"] == 0 for r in paper.values())  # under paper calibration never takes test images
    help_text = " ".join(run_summary("--help").stdout.split())
    assert "'with mask' counts the anomalous test images that have a mask file" in help_text
    assert "ksdd2" in help_text and "wfdd" in help_text


def mtd_tree(root: Path) -> Path:
    """MT_Free 4 images; MT_Uneven 2 (exp1's mask is empty); MT_Crack 1."""
    image = np.full((10, 12), 100, np.uint8)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 255
    for cls, n in (("Free", 4), ("Uneven", 2), ("Crack", 1)):
        for i in range(n):
            save(root / f"MT_{cls}" / "Imgs" / f"exp{i}.jpg", image, fmt="JPEG")
            empty = cls == "Free" or (cls == "Uneven" and i == 1)
            save(root / f"MT_{cls}" / "Imgs" / f"exp{i}.png", np.zeros_like(mask) if empty else mask)
    return root


def test_check_names_empty_masks_without_failing_and_empty_folders_failing(tmp_path: Path) -> None:
    root = mtd_tree(tmp_path / "MTD")
    result = run_summary("-d", "mtd", "-r", str(root), "-n", "2", "--check", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    empty = str(root / "MT_Uneven" / "Imgs" / "exp1.jpg")
    assert data["empty_masks"] == [empty] and data["problems"] == []
    assert "1 anomalous images have a mask file without any defect pixel" in result.stderr and empty in result.stderr
    assert data["categories"]["magnetic_tile"]["with_mask"] == 3  # the empty mask still counts

    (root / "MT_Break" / "Imgs").mkdir(parents=True)  # an empty defect folder (an incomplete download)
    (root / "MT_Fray").mkdir()
    (root / "MT_Fray" / "notes.txt").write_text("no images here")
    failed = run_summary("-d", "mtd", "-r", str(root), "-n", "2", "--check", "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["problems"] == [
        f"{root / 'MT_Break'}: empty folder (no image in it)",
        f"{root / 'MT_Fray'}: empty folder (no image in it)",
    ]
    assert run_summary("-d", "mtd", "-r", str(root), "-n", "2").exit_code == 0  # without --check: counts only


def test_check_fails_a_category_without_test_images_and_names_the_topmost_empty_folder(tmp_path: Path) -> None:
    root = wfdd_tree(tmp_path / "WFDD")
    for sub in ("good", "block_shape", "line_type"):
        for p in (root / "pink_flower" / "test" / sub).iterdir():
            p.unlink()
    assert empty_folders(root) == [root / "pink_flower" / "test"]
    result = run_summary("-d", "wfdd", "-r", str(root), "--protocol", "full", "--check", "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert "pink_flower: no test images" in problems and f"{root / 'pink_flower' / 'test'}: empty folder (no image in it)" in problems
    cat = get_dataset("wfdd", root).load("grey_cloth", protocol="full")
    found = check_masks(cat.test)
    assert found.problems == [] and found.empty == []


def test_check_on_real_mtd_names_the_four_empty_uneven_masks() -> None:
    root = shared_data("MTD")
    result = run_summary("-d", "mtd", "-r", str(root), "--check", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["problems"] == []
    assert [Path(p).name for p in data["empty_masks"]] == [
        "exp3_num_45042.jpg", "exp4_num_124690.jpg", "exp4_num_352527.jpg", "exp4_num_45057.jpg",
    ]
    assert all(Path(p).parent.parent.name == "MT_Uneven" for p in data["empty_masks"])
