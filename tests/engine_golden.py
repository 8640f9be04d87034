"""A fixed segment + evaluate scenario on real MTD images with the tiny models, and a digest of
everything it writes: the per-image files (PNG bytes, npz arrays) and the records without
timings. ``tests/data/engine_golden.json`` holds the digest the loops before the run engine
wrote (captured with ``python -m tests.engine_golden MODELS OUT``); test_engine.py checks that
the engine writes the same. Not a test module itself (no ``test_`` prefix).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN = Path(__file__).parent / "data" / "engine_golden.json"
PICKS = {"MT_Crack": 2, "MT_Blowhole": 2, "MT_Free": 2}
# mtime_ns: the data's file times differ from one checkout of shared/ to the next
VOLATILE = {"timings", "seconds", "metrics_seconds", "created", "iapas_version", "date", "mtime_ns"}


def versions() -> dict[str, str]:
    """The libraries whose arithmetic the digest depends on (tiny random models, PNG coding)."""
    import PIL
    import torch
    import transformers

    return {"numpy": np.__version__, "torch": torch.__version__, "transformers": transformers.__version__, "pillow": PIL.__version__}


def mtd_images(mtd: Path) -> list[Path]:
    out: list[Path] = []
    for folder, n in PICKS.items():
        out += sorted((mtd / folder / "Imgs").glob("*.jpg"))[:n]
    return out


def write_profile(folder: Path) -> Path:
    from iapas.product.profile import Profile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "magnetic_tile.yaml"
    Profile.from_prompts("magnetic_tile", "tile", ["crack", "blowhole", "fray"]).save(path)
    return path


def scenario_commands(models: dict[str, Path], mtd: Path, out: Path, extra: list[str] | None = None) -> dict[str, list[str]]:
    """name -> iapas argv of each run of the scenario (``extra`` appended to each: e.g. --engine ray)."""
    profile = write_profile(out / "profiles")
    common = ["--detector", str(models["grounding-dino"]), "--segmenter", str(models["sam"]), "--device", "cpu", "--quiet"]
    images = [str(p) for p in mtd_images(mtd)]
    more = list(extra or [])
    return {
        "segment": ["segment", *images, "--profile", str(profile), "--out", str(out / "segment"), *common, *more],
        "segment-decided": ["segment", *images, "--profile", str(profile), "--out", str(out / "segment-decided"),
                            "--threshold", "0.2", "--batch-size", "2", *common, *more],
        "evaluate": ["evaluate", "--dataset", "mtd", "--root", str(mtd), "--out", str(out / "evaluate"),
                     "--profiles", str(out / "profiles"), "--limit", "4", "--calibration-images", "2",
                     "--batch-size", "2", "--no-report", *common, *more],
    }


def run_scenario(models: dict[str, Path], mtd: Path, out: Path, extra: list[str] | None = None) -> None:
    from typer.testing import CliRunner

    from iapas.cli import app

    for name, argv in scenario_commands(models, mtd, out, extra).items():
        result = CliRunner().invoke(app, argv)
        if result.exit_code != 0:
            raise AssertionError(f"{name}: exit {result.exit_code}\n{result.output}\n{result.exception!r}")


def _clean(value: Any, roots: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _rle_digests(v) if k == "kept_masks" else _clean(v, roots) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v, roots) for v in value]
    if isinstance(value, str):
        for root, name in roots.items():
            value = value.replace(root, name)
    return value


def _rle_digests(rles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A record's instance masks with each RLE string as its sha256 (the tiny models' masks are
    noise: their strings would be most of the digest)."""
    return [{**rle, "counts": hashlib.sha256(str(rle["counts"]).encode()).hexdigest()} for rle in rles]


def digest(out: Path, mtd: Path, models: Path) -> dict[str, Any]:
    """Every file under ``out`` (but profiles): PNGs by sha256 of their bytes, npz by sha256 of
    their arrays' bytes (zip entries carry the time of writing), JSON lines and JSON files as
    data without timings; absolute paths of the data, the models' folder and ``out`` replaced by names."""
    roots = {str(mtd.resolve()): "<MTD>", str(mtd): "<MTD>", str(out.resolve()): "<OUT>", str(out): "<OUT>",
             str(models.resolve()): "<MODELS>", str(models): "<MODELS>"}
    files: dict[str, Any] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if rel.startswith("profiles/") or rel.endswith(".lock") or "/." in "/" + rel:
            continue
        if path.suffix == ".png":
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.suffix == ".npz":
            with np.load(path) as data:
                files[rel] = {k: hashlib.sha256(np.ascontiguousarray(data[k]).tobytes()).hexdigest() for k in sorted(data.files)}
        elif path.suffix == ".jsonl":
            files[rel] = [_clean(json.loads(line), roots) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif path.suffix == ".json":
            files[rel] = _clean(json.loads(path.read_text(encoding="utf-8")), roots)
        elif path.suffix in (".md", ".csv"):
            files[rel] = [line for line in _clean(path.read_text(encoding="utf-8"), roots).splitlines() if "run started" not in line]
        else:
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


if __name__ == "__main__":  # capture: python -m tests.engine_golden MODELS_DIR OUT_DIR [--digest-only]
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from iapas.testing import make_tiny_models

    models_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    models = make_tiny_models(models_dir, detector_shortest_edge=320)
    mtd = Path(__file__).resolve().parents[2] / "shared" / "data" / "MTD"
    if "--digest-only" not in sys.argv:
        run_scenario(models, mtd, out_dir)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps({"versions": versions(), "files": digest(out_dir, mtd, models_dir)}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
