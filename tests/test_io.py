"""Reading images of every kind a factory camera writes, and refusing bad files clearly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import iapas.core.files as iapas_io
from iapas.core.images import ImageReadError, read_image
from iapas.core.files import atomic_write_text, clean_stale_temp_files, save_png
from iapas.data.search import find_images, find_images_with_roots, glob_root


def gradient(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def test_grayscale_8bit_becomes_three_equal_channels(tmp_path: Path):
    g = gradient()
    Image.fromarray(g).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.rgb.shape == (24, 32, 3) and img.mode == "L"
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[..., c], g)


def test_16bit_maps_full_range_linearly(tmp_path: Path):
    values = np.array([[0, 257, 65535, 1000] * 2] * 8, np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    img = read_image(tmp_path / "d.png")
    assert img.mode == "I;16"
    np.testing.assert_array_equal(img.rgb[0, :, 0], [0, 1, 255, 4] * 2)  # 1000/257 = 3.89 -> 4


def test_12bit_data_in_16bit_files_uses_the_12bit_range(tmp_path: Path):
    values = np.array([[0, 4095, 2048, 16] * 2] * 8, np.uint16)
    Image.fromarray(values).save(tmp_path / "d12.png")
    # 4095 -> 255, 2048 -> 127.5 -> 128, 16 -> 1.0
    np.testing.assert_array_equal(read_image(tmp_path / "d12.png").rgb[0, :4, 0], [0, 255, 128, 1])


def test_rgba_composites_on_black_and_palette_expands(tmp_path: Path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128  # half transparent red over black -> ~100
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert abs(int(read_image(tmp_path / "a.png").rgb[0, 0, 0]) - 100) <= 1

    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.bmp")
    img = read_image(tmp_path / "p.bmp")
    assert img.rgb[1, 1].tolist() == [10, 20, 30] and img.rgb[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".tif"])
def test_formats(tmp_path: Path, suffix: str):
    rgb = np.stack([gradient()] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / f"x{suffix}")
    img = read_image(tmp_path / f"x{suffix}")
    assert img.rgb.shape == (24, 32, 3)
    error = np.abs(img.rgb.astype(int) - rgb)
    if suffix == ".jpg":  # lossy: close on average
        assert error.mean() < 6
    else:
        assert error.max() == 0


def test_cmyk_jpeg_and_exif_rotation(tmp_path: Path):
    Image.new("CMYK", (16, 10), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red in CMYK
    img = read_image(tmp_path / "c.jpg")
    assert img.mode == "CMYK" and img.rgb[5, 5, 0] > 200 and img.rgb[5, 5, 1] < 60

    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :5] = 255  # white band on the left of a 20-wide, 10-high image
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "r.jpg")
    assert img.rgb.shape == (20, 10, 3)  # displayed upright: 10 wide, 20 high
    assert img.rgb[:5, :, 0].mean() > 200 and img.rgb[-5:, :, 0].mean() < 50  # band now on top


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.png", b"", "empty file (0 bytes)"),
        ("text.png", b"this is not an image\n", "not an image file"),
        ("trunc.png", None, "corrupt or truncated"),
    ],
)
def test_bad_files_name_the_file_and_problem(tmp_path: Path, name: str, content: bytes | None, message: str):
    path = tmp_path / name
    if content is None:
        Image.fromarray(np.stack([gradient(64, 64)] * 3, -1)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_size_limits(tmp_path: Path):
    Image.new("L", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ImageReadError, match="too small"):
        read_image(tmp_path / "dot.png")
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="over the limit of 5,000"):
        read_image(tmp_path / "big.png", max_pixels=5000)


def test_missing_and_directory(tmp_path: Path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root reads any file")
def test_unreadable_file(tmp_path: Path):
    path = tmp_path / "locked.png"
    Image.new("L", (16, 16)).save(path)
    path.chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_image(path)


def test_find_images_expands_folders_globs_and_reports_misses(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ["a/1.png", "a/b/2.JPG", "a/notes.txt", "c.bmp"]:
        (tmp_path / p).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    paths, problems = find_images([str(tmp_path / "a"), str(tmp_path / "*.bmp"), str(tmp_path / "empty"), str(tmp_path / "zz.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a/1.png", "a/b/2.JPG", "c.bmp"]
    assert len(problems) == 2 and "no images" in problems[0] and "file not found" in problems[1]


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    path = tmp_path / "out" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_a_write_that_fails_names_the_file_asked_for_not_the_temporary_one(tmp_path: Path):
    if Path("/proc/self").is_dir():  # a folder no file can be made in, even by root
        with pytest.raises(FileNotFoundError) as raised:
            atomic_write_text("/proc/iapas-profile.yaml", "x")
        assert str(raised.value) == "[Errno 2] No such file or directory: '/proc/iapas-profile.yaml'"
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError) as raised:  # the rename over a folder fails
        atomic_write_text(tmp_path / "folder", "x")
    assert raised.value.filename == str(tmp_path / "folder") and ".tmp" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no temporary file left


def test_pil_own_limit_does_not_refuse_what_max_pixels_allows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses > 2000 pixels on its own
    assert read_image(tmp_path / "big.png", max_pixels=20_000).width == 100
    assert Image.MAX_IMAGE_PIXELS == 1000, "PIL's global limit is left as it was"
    with pytest.raises(ImageReadError, match="over the limit of 5,000"):
        read_image(tmp_path / "big.png", max_pixels=5000)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_pil_bomb_error_quotes_our_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    Image.new("L", (100, 100)).save(tmp_path / "a.png")

    def bomb(*args, **kwargs):  # e.g. a GIF frame larger than the header says
        raise Image.DecompressionBombError("Image size (999999999 pixels) exceeds limit of 357913940 pixels")

    monkeypatch.setattr(ImageOps, "exif_transpose", bomb)
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "a.png", max_pixels=123_456)
    assert "123,456" in str(info.value) and "357913940" not in str(info.value)


def test_find_images_with_roots(tmp_path: Path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ["a/1.png", "a/b/2.png", "c.png"]:
        Image.new("L", (8, 8)).save(tmp_path / p)
    found, problems = find_images_with_roots(
        [str(tmp_path / "a"), str(tmp_path / "a" / "*" / "*.png"), str(tmp_path / "c.png"), str(tmp_path / "zz.png")],
        keep_missing=True,
    )
    rel = [(p.relative_to(tmp_path).as_posix(), r.relative_to(tmp_path).as_posix()) for p, r in found]
    # two inputs found images (a/ and c.png): keys of a/ start with 'a/', a file's key is its name
    assert rel == [("a/1.png", "."), ("a/b/2.png", "."), ("c.png", "."), ("zz.png", ".")]
    assert problems == []
    only, _ = find_images_with_roots([str(tmp_path / "a"), str(tmp_path / "zz.png")], keep_missing=True)
    assert [r.relative_to(tmp_path).as_posix() for _, r in only] == ["a", "a", "."]  # a missing file does not count
    assert glob_root("parts/*/good/*.png") == Path("parts") and glob_root("*.png") == Path(".")


def test_atomic_writes_get_normal_permissions_and_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    old = os.umask(0o027)
    iapas_io._umask_cache.clear()
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        save_png(tmp_path / "m.png", np.zeros((8, 8), np.uint8))
    finally:
        os.umask(old)
        iapas_io._umask_cache.clear()
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o640
    assert iapas_io.current_umask() == old

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    save_png(tmp_path / "n.png", np.zeros((8, 8), np.uint8))
    assert any(".n.png." in s and s.endswith(".tmp.png") for s in synced), synced  # data synced before the rename


def test_clean_stale_temp_files(tmp_path: Path):
    stale = [".results.jsonl.k3j_x9ab.tmp.jsonl", ".run.json.abcdefgh.tmp.json", "maps/crack/.000.png.a1b2c3d4.tmp.png",
             "predictions/.bottle.npz.zzzzzzzz.tmp.npz"]
    keep = ["results.jsonl", "maps/crack/000.png", ".hidden.png", "maps/.notes.tmp.txt"]
    for name in stale + keep:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert clean_stale_temp_files(tmp_path) == len(stale)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)
