"""What `iapas segment` takes as input: masks left out, stable keys, resume by source, links, --out.

Generated KolektorSDD-like (``kosNN/PartK.jpg`` + ``PartK_label.bmp``) and MVTec-like folders,
the mistyped-path sequence of issue 8, broken symbolic links and an --out that holds the inputs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from iapas.cli import app
from iapas.core.images import ImageReadError, read_image
from iapas.core.files import clean_stale_temp_files
from iapas.data.search import find_images, mask_rule, search_images
from iapas.pipeline.stage2 import Pipeline
from iapas.engine.runner import RESULTS_FILE, ResultsLog, assign_keys, match_finished, source_stamp

runner = CliRunner()


def photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def label(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((40, 48), np.uint8)
    values[10:20, 10:20] = 1
    Image.fromarray(values).save(path)
    return path


def kolektor(root: Path, folders: tuple[str, ...] = ("kos01", "kos02"), parts: int = 2) -> Path:
    """``root/kosNN/PartK.jpg`` with ``PartK_label.bmp`` beside each, as KolektorSDD has them."""
    for i, folder in enumerate(folders):
        for k in range(parts):
            photo(root / folder / f"Part{k}.jpg", seed=10 * i + k)
            label(root / folder / f"Part{k}_label.bmp")
    return root


def mvtec(root: Path) -> Path:
    """``bottle/test/{good,broken}/`` and ``bottle/ground_truth/broken/`` (one mask named like its image, as BTAD)."""
    photo(root / "bottle" / "test" / "good" / "000.png", 1)
    photo(root / "bottle" / "test" / "broken" / "000.png", 2)
    photo(root / "bottle" / "test" / "broken" / "001.png", 3)
    label(root / "bottle" / "ground_truth" / "broken" / "000_mask.png")
    label(root / "bottle" / "ground_truth" / "broken" / "001.png")
    return root / "bottle"


def rel(paths, base: Path) -> list[str]:
    return [Path(p).relative_to(base).as_posix() for p in paths]


def segment(tiny: dict[str, Path], out: Path, *inputs: Path | str, extra: tuple[str, ...] = ()):
    args = ["segment", *map(str, inputs), "--mode", "base", "--out", str(out), "--detector", str(tiny["grounding-dino"]),
            "--segmenter", str(tiny["sam"]), "--device", "cpu", *extra]
    return runner.invoke(app, args)


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RESULTS_FILE).read_text().splitlines()]


@pytest.fixture()
def segmented(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images the models are run on (one entry per Pipeline.run call)."""
    calls: list[int] = []
    original = Pipeline.run

    def counting(self, images, profile=None):
        calls.append(len(images))
        return original(self, images, profile)

    monkeypatch.setattr(Pipeline, "run", counting)
    return calls


# 1. ground-truth masks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("kos01/Part3_label.bmp", "*_label.*"),  # KSDD1
        ("Class1/Train/Label/0002_label.PNG", "*_label.*"),  # DAGM
        ("Class1/Train/Label/Labels.png", "Label/"),  # DAGM's folder, whatever the name
        ("bottle/ground_truth/broken/000_mask.png", "*_mask.*"),  # MVTec AD
        ("btad/01/ground_truth/ko/0000.bmp", "ground_truth/"),  # BTAD: named like the image
        ("ksdd2/train/10000_GT.png", "*_gt.*"),  # KSDD2
        ("candle/Data/Masks/Anomaly/000.png", "Masks/"),  # VisA
        ("mine/masks/a_mask.png", "*_mask.*"),  # a folder dataset's default
        ("mine/normal/a.png", None),
        ("line/_mask.png", None),  # just the suffix is a name, not a mask of something
        ("parts/mask_01.png", None),
    ],
)
def test_mask_rules_of_every_loader(tmp_path: Path, name: str, rule: str | None):
    path = photo(tmp_path / name)
    assert mask_rule(path, tmp_path) == rule


def test_mtd_masks_are_the_pngs_beside_the_jpgs(tmp_path: Path):
    imgs = tmp_path / "MT_Crack" / "Imgs"
    photo(imgs / "exp1.jpg")
    label(imgs / "exp1.png")
    photo(imgs / "lone.png")  # a PNG without a JPEG beside it is an image
    assert mask_rule(imgs / "exp1.png") == "Imgs/<name>.png beside <name>.jpg"
    assert mask_rule(imgs / "exp1.jpg") is None and mask_rule(imgs / "lone.png") is None
    assert rel(find_images([str(tmp_path / "MT_Crack")])[0], imgs) == ["exp1.jpg", "lone.png"]


def test_kolektor_folder_search_leaves_out_the_labels_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = kolektor(tmp_path / "KolektorSDD")
    with caplog.at_level(logging.WARNING, logger="iapas.data.search"):
        search = search_images([str(root / "kos01")])
    assert rel(search.paths, root) == ["kos01/Part0.jpg", "kos01/Part1.jpg"]
    assert rel([m for m, _ in search.masks], root) == ["kos01/Part0_label.bmp", "kos01/Part1_label.bmp"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "left out 2 mask image(s)" in lines[0] and "*_label.* 2" in lines[0] and "Part0_label.bmp" in lines[0]
    # a quoted pattern is a search too; a file named by itself is taken
    assert rel(find_images([str(root / "*" / "*")])[0], root) == ["kos01/Part0.jpg", "kos01/Part1.jpg", "kos02/Part0.jpg", "kos02/Part1.jpg"]
    assert rel(find_images([str(root / "kos01" / "Part0_label.bmp")])[0], root) == ["kos01/Part0_label.bmp"]


def test_mvtec_category_search_leaves_out_ground_truth(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    category = mvtec(tmp_path)
    with caplog.at_level(logging.WARNING, logger="iapas.data.search"):
        paths, problems = find_images([str(category)])
    assert rel(paths, category) == ["test/broken/000.png", "test/broken/001.png", "test/good/000.png"] and problems == []
    assert "left out 2 mask image(s)" in caplog.text and "*_mask.* 1, ground_truth/ 1" in caplog.text
    only_masks, problems = find_images([str(category / "ground_truth")])
    assert only_masks == [] and "only 2 ground-truth mask(s), left out" in problems[0]


def test_segment_on_a_kolektor_folder_skips_the_labels(tmp_path: Path, tiny_models: dict[str, Path]):
    root = kolektor(tmp_path / "KolektorSDD", folders=("kos01",))
    out = tmp_path / "out"
    res = segment(tiny_models, out, root / "kos01")
    assert res.exit_code == 0, res.output
    assert sorted(r["key"] for r in results(out)) == ["Part0", "Part1"]
    assert "left out 2 mask image(s)" in " ".join(res.output.split())
    named = segment(tiny_models, tmp_path / "out2", root / "kos01" / "Part0.jpg", root / "kos01" / "Part0_label.bmp")
    assert named.exit_code == 0, named.output  # as a shell expands kos01/*: taken, with a warning
    assert sorted(r["key"] for r in results(tmp_path / "out2")) == ["Part0", "Part0_label"]
    assert "taking 1 file(s) named like ground-truth masks" in " ".join(named.output.split())


def test_an_earlier_run_folder_inside_the_input_folder_is_no_parts(tmp_path: Path, tiny_models: dict[str, Path]):
    """segment line3 --out line3/monday, then segment line3 --out elsewhere: the second run took
    monday's maps and overlays (boxes drawn on them) as parts, and gave them verdicts; calibrate
    --normal line3 would have put them in the normal scores."""
    line = tmp_path / "line3"
    line.mkdir()
    for name, value in (("a", 40), ("b", 200)):
        Image.fromarray(np.full((24, 32, 3), value, np.uint8)).save(line / f"{name}.png")
    first = segment(tiny_models, line / "monday", line)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in (line / "monday" / "maps").iterdir()) == ["a.png", "b.png"]
    second = segment(tiny_models, tmp_path / "tuesday", line)
    assert second.exit_code == 0, second.output
    assert sorted(r["key"] for r in results(tmp_path / "tuesday")) == ["a", "b"]
    said = " ".join(second.output.split())
    assert "left out 6 image(s) under" in said and "monday: it holds an iapas run (run.json, results.jsonl)" in said
    # a pattern that matches the run folder leaves it out too; the run folder named itself is searched
    assert sorted(p.name for p in find_images([str(line / "*")])[0]) == ["a.png", "b.png"]
    maps = find_images([str(line / "monday" / "maps")])[0]
    assert sorted(p.name for p in maps) == ["a.png", "b.png"]


def test_a_resumed_run_redoes_overlays_drawn_otherwise_and_says_what_it_redoes(tmp_path: Path, tiny_models: dict[str, Path]):
    """--show-dropped on a resumed run was ignored for the finished images (their overlays did not
    draw the dropped boxes; after an interruption the overlays were mixed), and a changed
    --threshold redid every image without a word."""
    folder = tmp_path / "parts"
    folder.mkdir()
    for name, value in (("a", 40), ("b", 200)):
        Image.fromarray(np.full((24, 32, 3), value, np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "out"

    def run(*extra: str) -> tuple[str, list[dict]]:
        res = segment(tiny_models, out, folder, extra=extra)
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split()), results(out)

    said, _ = run()
    assert "segmenting" not in said.replace("info: segmenting:", "")
    said, records = run("--show-dropped")
    assert "segmenting 2 finished image(s) again: their masks, verdicts or overlays were made with other settings" in said
    assert [r.get("overlay_shows_dropped") for r in records] == [True, True]
    said, records = run("--show-dropped")
    assert "already done (resumed) │ 2" in said and "finished image(s) again" not in said
    said, records = run("--show-dropped", "--threshold", "0.5")
    assert "segmenting 2 finished image(s) again" in said and "(made at threshold 0.3; this run's is 0.5)" in said
    assert [r["threshold"] for r in records] == [0.5, 0.5]


# 2. keys and resume -------------------------------------------------------------------------------


def test_keys_come_from_each_inputs_own_root(tmp_path: Path):
    root = kolektor(tmp_path / "data")
    photo(tmp_path / "extra.png")

    def keys(*inputs: str | Path) -> list[str]:
        search = search_images([str(i) for i in inputs], keep_missing=True)
        return assign_keys(search.paths, [r for _, r in search.found])

    assert keys(root / "kos01") == ["Part0", "Part1"]
    assert keys(root / "kos01", root / "kos02") == ["kos01/Part0", "kos01/Part1", "kos02/Part0", "kos02/Part1"]
    assert keys(root / "kos01", root / "kos02", tmp_path / "typo") == [*keys(root / "kos01", root / "kos02"), "typo"]
    assert keys(root / "kos01", tmp_path / "kos0l") == ["Part0", "Part1", "kos0l"]  # a missing input changes nothing
    assert keys(root / "kos01", tmp_path / "extra.png") == ["kos01/Part0", "kos01/Part1", "extra"]
    assert keys(str(root / "kos0*")) == ["kos01/Part0", "kos01/Part1", "kos02/Part0", "kos02/Part1"]
    assert keys(str(root / "kos01" / "*.jpg"), tmp_path / "extra.png") == ["kos01/Part0", "kos01/Part1", "extra"]


def test_colliding_keys_are_told_apart_deterministically(tmp_path: Path):
    x, y = tmp_path / "x" / "line", tmp_path / "y" / "line"
    paths = [x / "000.png", x / "000.jpg", y / "000.png"]
    roots = [x.parent, x.parent, y.parent]  # two inputs, both folders named 'line'
    assert assign_keys(paths, roots) == ["x/line/000", "line/000.jpg", "y/line/000"]
    assert assign_keys(list(reversed(paths)), list(reversed(roots))) == ["y/line/000", "line/000.jpg", "x/line/000"]
    assert assign_keys([x / "a.png", y / "a.png"]) == ["x/line/a", "y/line/a"]  # files: their names, then folders
    with pytest.raises(ValueError, match="given twice"):
        assign_keys([x / "a.png", x / "a.png"])


def test_mistyped_path_then_fixed_keeps_keys_and_segments_nothing_again(
    tmp_path: Path, tiny_models: dict[str, Path], segmented: list[int]
):
    data = kolektor(tmp_path / "DATASET")
    out = tmp_path / "out"
    first = segment(tiny_models, out, data / "kos01", data / "kos02", tmp_path / "DATASTE" / "kos03")
    assert first.exit_code == 1, first.output  # the mistyped path is a failed input; the rest is done
    keys = ["kos01/Part0", "kos01/Part1", "kos02/Part0", "kos02/Part1"]
    assert sorted(r["key"] for r in results(out) if r["status"] == "ok") == keys
    maps = {k: (out / "maps" / f"{k}.png").stat().st_mtime_ns for k in keys}
    assert sum(segmented) == 4

    photo(data / "kos03" / "Part0.jpg", 99)
    fixed = segment(tiny_models, out, data / "kos01", data / "kos02", data / "kos03")
    assert fixed.exit_code == 0, fixed.output
    assert sum(segmented) == 5, "only the new image is segmented"
    lines = results(out)
    assert [r["key"] for r in lines] == [*keys, "kos03/Part0"]  # no duplicates, the mistyped path's record gone
    assert len({r["image"] for r in lines}) == len(lines)
    assert {k: (out / "maps" / f"{k}.png").stat().st_mtime_ns for k in keys} == maps


def test_resume_renames_a_finished_image_whose_key_changed(tmp_path: Path, tiny_models: dict[str, Path], segmented: list[int]):
    data = kolektor(tmp_path / "DATASET")
    out = tmp_path / "out"
    assert segment(tiny_models, out, data / "kos01").exit_code == 0  # one input: keys Part0, Part1
    before = {r["key"]: r for r in results(out)}
    content = (out / "maps" / "Part0.png").read_bytes()
    again = segment(tiny_models, out, data / "kos01", data / "kos02")  # two inputs: kos01/Part0, ...
    assert again.exit_code == 0, again.output
    assert sum(segmented) == 4, "kos01's images are not segmented again"
    assert "already done (resumed) │ 2" in again.output
    lines = results(out)
    assert [r["key"] for r in lines] == ["kos01/Part0", "kos01/Part1", "kos02/Part0", "kos02/Part1"]
    moved = lines[0]
    assert moved["outputs"] == {"map": "maps/kos01/Part0.png", "mask": "masks/kos01/Part0.png", "overlay": "overlays/kos01/Part0.png"}
    assert moved["image_score"] == before["Part0"]["image_score"]
    assert (out / "maps" / "kos01" / "Part0.png").read_bytes() == content
    assert sorted(rel(out.rglob("*.png"), out)) == sorted(f"{kind}/{k}.png" for kind in ("maps", "masks", "overlays") for k in
                                                          ("kos01/Part0", "kos01/Part1", "kos02/Part0", "kos02/Part1"))


def fake_run(out: Path, images: dict[str, Path]) -> ResultsLog:
    """A finished run's results.jsonl and files, each file holding its image's name."""
    log = ResultsLog(out / RESULTS_FILE)
    for key, image in images.items():
        outputs = {kind: f"{kind}s/{key}.png" for kind in ("map", "mask")}
        for f in outputs.values():
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            (out / f).write_text(image.name)
        log.append({"key": key, **source_stamp(image), "status": "ok", "threshold": 0.3, "image_score": 0.5, "outputs": outputs})
    return log


def test_swapped_keys_move_each_images_files_to_its_new_name(tmp_path: Path):
    a, b = photo(tmp_path / "in" / "a.png"), photo(tmp_path / "in" / "b.png", 1)
    out = tmp_path / "out"
    log = fake_run(out, {"x": a, "y": b})
    finished = match_finished([a, b], ["y", "x"], log, out, 0.3, overlay=False)
    assert {k: Path(r["image"]).name for k, r in finished.items()} == {"y": "a.png", "x": "b.png"}
    assert (out / "maps" / "y.png").read_text() == "a.png" and (out / "masks" / "x.png").read_text() == "b.png"
    assert {r["key"]: Path(r["image"]).name for r in results(out)} == {"y": "a.png", "x": "b.png"}
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["results.jsonl", "x.png", "x.png", "y.png", "y.png"]


def test_a_rename_cut_short_never_gives_an_image_another_ones_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import iapas.engine.runfolder

    a, b = photo(tmp_path / "in" / "a.png"), photo(tmp_path / "in" / "b.png", 1)
    out = tmp_path / "out"
    log = fake_run(out, {"x": a, "y": b})

    def killed(path, text):
        raise KeyboardInterrupt

    monkeypatch.setattr(iapas.engine.runfolder, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        match_finished([a, b], ["y", "x"], log, out, 0.3, overlay=False)
    monkeypatch.undo()
    # the old records still name x and y, whose files were moved aside: nothing is taken as done
    assert match_finished([a, b], ["x", "y"], log, out, 0.3, overlay=False) == {}
    assert clean_stale_temp_files(out) == 4  # the files moved aside go at the start of the next run


def test_older_duplicates_of_an_image_are_folded_into_one(tmp_path: Path):
    a = photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    log = fake_run(out, {"DATASET/in/a": a, "in/a": a})  # what the old key rule left behind
    finished = match_finished([a], ["a"], log, out, 0.3, overlay=False)
    assert list(finished) == ["a"] and [r["key"] for r in results(out)] == ["a"]
    assert sorted(rel((p for p in out.rglob("*") if p.is_file()), out)) == ["maps/a.png", "masks/a.png", "results.jsonl"]


# 6. symbolic links -------------------------------------------------------------------------------


def test_a_self_referencing_link_on_the_command_line_is_one_failed_input(tmp_path: Path, tiny_models: dict[str, Path]):
    good = photo(tmp_path / "in" / "good.png")
    loop = tmp_path / "in" / "loop.png"
    loop.symlink_to(loop)
    out = tmp_path / "out"
    res = segment(tiny_models, out, loop, good)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    assert "loop.png: symbolic link loop" in " ".join(res.output.split())
    records = {r["key"]: r for r in results(out)}
    assert records["good"]["status"] == "ok"
    assert records["loop"]["status"] == "failed" and "symbolic link loop" in records["loop"]["error"]


def test_broken_links_inside_a_folder_are_failed_images_not_silence(tmp_path: Path, tiny_models: dict[str, Path]):
    folder = tmp_path / "in"
    photo(folder / "good.png")
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "notes").symlink_to(folder / "nowhere.txt")  # not named as an image: a warning line
    paths, problems = find_images([str(folder)])
    assert rel(paths, folder) == ["good.png"]
    assert sorted(p.split(": ", 1)[1].split(" (")[0] for p in problems) == ["dangling symbolic link", "symbolic link loop"]
    with pytest.raises(ImageReadError, match="gone.png: dangling symbolic link"):
        read_image(folder / "gone.png")

    out = tmp_path / "out"
    res = segment(tiny_models, out, folder)
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "gone.png: dangling symbolic link" in text and "loop.jpg: symbolic link loop" in text
    assert "notes: dangling symbolic link" in text and "not searched" in text
    records = {r["key"]: r for r in results(out)}
    assert {k: r["status"] for k, r in records.items()} == {"gone": "failed", "good": "ok", "loop": "failed"}


# 7. --out holding the inputs ------------------------------------------------------------------


def test_out_equal_to_or_holding_the_input_folder_says_why_nothing_is_segmented(tmp_path: Path, tiny_models: dict[str, Path]):
    photo(tmp_path / "shots" / "a.png")
    for out in (tmp_path / "shots", tmp_path):
        res = segment(tiny_models, out, tmp_path / "shots")
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        assert "left out because they are inside --out" in text and str(out) in text
        assert not (out / RESULTS_FILE).exists()


def test_an_input_inside_out_beside_others_is_named(tmp_path: Path):
    photo(tmp_path / "out" / "old" / "a.png")
    photo(tmp_path / "new" / "b.png")
    search = search_images([str(tmp_path / "out" / "old"), str(tmp_path / "new")], exclude=tmp_path / "out")
    assert rel(search.paths, tmp_path) == ["new/b.png"]
    assert search.excluded_inputs == [str(tmp_path / "out" / "old")]
    # the run's outputs inside the input folder are left out silently, as before
    inside = search_images([str(tmp_path)], exclude=tmp_path / "out")
    assert rel(inside.paths, tmp_path) == ["new/b.png"] and inside.excluded_inputs == []


def test_links_are_deduplicated_without_resolving_loops(tmp_path: Path):
    a = photo(tmp_path / "a.png")
    (tmp_path / "link.png").symlink_to(a)
    loop = tmp_path / "self.png"
    loop.symlink_to(loop)
    found = search_images([str(a), str(tmp_path / "link.png"), str(loop)], keep_missing=True)
    assert [p.name for p in found.paths] == ["a.png", "self.png"]  # the same file once
    assert os.path.islink(found.paths[1])
