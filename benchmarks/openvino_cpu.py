"""``segment`` on the CPU: PyTorch eager against ``--runtime openvino``, on the same images, in one run.

Both pipelines are the one ``iapas segment`` builds (:meth:`iapas.pipeline.stage2.Pipeline.from_config`)
with the same real-size random presets (:mod:`iapas.testing.presets`; default grounding-dino-tiny +
sam-vit-base), at ``--threads`` threads (torch's and OpenVINO's), on a few real MTD / MVTec images from
``../shared/data``. It prints and writes as JSON: the date, the load (``uptime``), the CPU model, the
conversion time (first use of each image shape: convert + save + compile), images/s of each runtime
after that warm-up (openvino only; each image through each pipeline in turn, so that a changing load on a shared
machine hits both alike; the process CPU seconds too), and the exactness: whether each image's kept (phrase, box) set equals
eager's, the largest score and box differences, and the largest map difference.

    python benchmarks/openvino_cpu.py                              # 4 images, 2 threads
    python benchmarks/openvino_cpu.py --segmenter sam-vit-huge --int8 --out /tmp/ov.json

``--int8`` adds a third pipeline with ``--ov-int8`` (NNCF int8 weights for the detector) and prints
its effect on boxes and maps.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCORE_TOL, BOX_TOL = 1e-4, 1e-2  # "same set": phrase equal, score and box (px) within these
MATCH_SCORE, MATCH_BOX = 0.01, 0.5  # pairing the same box across runs (far looser than any difference found)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_now() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def pick_images(n: int, source: str = "both") -> list[Path]:
    """Half MVTec bottle (900x900: one resized shape), half MTD blowholes of one size (another);
    ``source`` mvtec or mtd: only those (one shape: one conversion)."""
    mvtec = sorted(glob.glob(str(DATA / "MVTecAD" / "bottle" / "test" / "*" / "*.png")))
    mtd = sorted(glob.glob(str(DATA / "MTD" / "MT_Blowhole" / "Imgs" / "*.jpg")))
    if not mvtec and not mtd:
        sys.exit(f"no images under {DATA}")
    from PIL import Image

    by_size: dict[tuple[int, int], list[str]] = {}
    for path in mtd:
        by_size.setdefault(Image.open(path).size, []).append(path)
    mtd_same = max(by_size.values(), key=len) if by_size else []
    half = {"both": n // 2, "mvtec": 0, "mtd": n}[source]
    return [Path(p) for p in mvtec[: n - half] + mtd_same[:half]]


def pairs(a, b) -> tuple[list[tuple[int, int]], int, int]:
    """Greedy pairs of the same (phrase, box) in two Detections, nearest box first, within
    :data:`MATCH_SCORE` / :data:`MATCH_BOX`; and how many of ``a``'s and of ``b``'s are unpaired."""
    candidates = sorted(
        (float(np.abs(b.boxes[j] - a.boxes[i]).max()), i, j)
        for i in range(len(a.boxes)) for j in range(len(b.boxes))
        if a.phrases[i] == b.phrases[j] and abs(float(a.scores[i] - b.scores[j])) <= MATCH_SCORE
        and float(np.abs(b.boxes[j] - a.boxes[i]).max()) <= MATCH_BOX
    )
    used_a, used_b, out = set(), set(), []
    for _, i, j in candidates:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((i, j))
    return out, len(a.boxes) - len(out), len(b.boxes) - len(out)


def pair_differences(a, b, matched: list[tuple[int, int]]) -> tuple[float, float]:
    """The largest score and box (px) differences of the paired Detections ``matched``."""
    ds = max((abs(float(a.scores[i] - b.scores[j])) for i, j in matched), default=0.0)
    db = max((float(np.abs(a.boxes[i] - b.boxes[j]).max()) for i, j in matched), default=0.0)
    return ds, db


def same_set(a, b) -> tuple[bool, float, float]:
    """Whether two Detections hold the same (phrase, box) set (every box paired, the pairs within
    :data:`SCORE_TOL` / :data:`BOX_TOL`), and the pairs' largest score / box differences."""
    matched, only_a, only_b = pairs(a, b)
    if only_a or only_b:
        return False, float("nan"), float("nan")
    ds, db = pair_differences(a, b, matched)
    return ds <= SCORE_TOL and db <= BOX_TOL, ds, db


def model_folder(name: str, models: Path, seeded: bool, score: tuple[float, float]) -> str:
    """``name`` itself, or for a preset its folder under ``models`` (written once): transformers'
    init, or with ``seeded`` :func:`iapas.testing.presets.seed_weights`' (``score``: the detector's)."""
    from iapas.testing.presets import get_preset, make_random_model, preset_names

    if name not in preset_names():
        return name
    detector = get_preset(name).kind in ("grounding-dino", "mm-grounding-dino")
    folder = models / (f"{name}-seeded-{score[0]:g}_{score[1]:g}" if seeded and detector else
                       f"{name}-seeded" if seeded else name)
    if not (folder / "config.json").is_file():
        make_random_model(name, folder, seeded=seeded, score=score if detector else None)
    return str(folder)


def build(detector: str, segmenter: str, runtime: str, int8: bool = False):
    """The pipeline ``iapas segment`` builds on the CPU with ``runtime`` (``int8``: ``--ov-int8``)."""
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    return Pipeline.from_config(PipelineConfig(detector=detector, segmenter=segmenter, device="cpu", runtime=runtime,
                                               ov_int8=int8))


def warm_up(pipe, images, profile) -> float:
    """Seconds to run one image of each shape (on openvino: the conversion of each shape's graph)."""
    started, seen = time.perf_counter(), set()
    for image in images:
        if image.shape[:2] not in seen:
            seen.add(image.shape[:2])
            pipe.run([image], profile)
    return time.perf_counter() - started


def interleaved(pipes: dict, images, profile) -> tuple[dict, dict, dict]:
    """Each image through each pipeline in turn (so a changing machine load hits all alike):
    results, wall seconds and process CPU seconds per pipeline."""
    results = {k: [] for k in pipes}
    wall = dict.fromkeys(pipes, 0.0)
    cpu = dict.fromkeys(pipes, 0.0)
    for image in images:
        for label, pipe in pipes.items():
            w, c = time.perf_counter(), time.process_time()
            result = pipe.run([image], profile)[0]
            wall[label] += time.perf_counter() - w
            cpu[label] += time.process_time() - c
            results[label].append(result.without_masks())  # the (N, H, W) masks as RLE: memory
            print(f"  {label}: {len(result.kept.boxes)} boxes kept", flush=True)
    return results, wall, cpu


def compare(want, got) -> dict:
    sets, ds, db, dmap = True, 0.0, 0.0, 0.0
    for w, g in zip(want, got):
        ok, s, b = same_set(w.kept, g.kept)
        sets = sets and ok
        if ok:
            ds, db = max(ds, s), max(db, b)
        dmap = max(dmap, float(np.abs(w.anomaly_map.astype(np.float64) - g.anomaly_map).max()))
    return {"same_sets": sets, "max_score_diff": ds, "max_box_diff_px": db, "max_map_diff": dmap,
            "kept_boxes": [len(r.kept.boxes) for r in got]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="grounding-dino-tiny", help="a preset name or a model folder")
    parser.add_argument("--segmenter", default="sam-vit-base", help="a preset name or a model folder")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--source", choices=("both", "mvtec", "mtd"), default="both",
                        help="the images: MVTec bottle, MTD blowholes of one size, or half each (two shapes)")
    parser.add_argument("--int8", action="store_true", help="also run --ov-int8 and print its effect")
    parser.add_argument("--seeded", action="store_true",
                        help="presets with seed_weights' unit-scale weights and tamed detector scores (the exactness check)")
    parser.add_argument("--score", type=float, nargs=2, default=(0.35, -4.0), metavar=("SCALE", "SHIFT"),
                        help="with --seeded: the detector's class logits SCALE * dot + SHIFT")
    parser.add_argument("--size-threshold", type=float, default=None,
                        help="the profile's size_threshold (default: the profile default)")
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "iapas-presets",
                        help="where the random presets are written (reused)")
    parser.add_argument("--cache", type=Path, default=None, help="the OpenVINO IR cache (default: a fresh folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from iapas.models.ov.cache import ENV_CACHE
    from iapas.product.profile import Profile
    
    torch.set_num_threads(args.threads)
    os.environ[ENV_CACHE] = str(args.cache or tempfile.mkdtemp(prefix="iapas-ov-bench-"))
    folders = [model_folder(name, args.models, args.seeded, tuple(args.score)) for name in (args.detector, args.segmenter)]
    paths = pick_images(args.images, args.source)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    profile = Profile.from_prompts("bottle", "bottle", ["scratch", "crack", "hole"])
    if args.size_threshold is not None:
        profile.size_threshold = args.size_threshold
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load_before": load_now(), "cpu": cpu_model(), "threads": args.threads,
              "detector": args.detector, "segmenter": args.segmenter,
              "weights": f"seeded, detector score {tuple(args.score)}" if args.seeded else "transformers init",
              "size_threshold": profile.size_threshold,
              "images": [str(p.relative_to(DATA)) for p in paths]}
    pipes, warm = {}, {}
    for label, runtime, int8 in [("torch", "torch", False), ("openvino", "openvino", False)] + (
            [("openvino-int8", "openvino", True)] if args.int8 else []):
        pipes[label] = build(folders[0], folders[1], runtime, int8)
        # eager has nothing to convert or compile: no warm-up (it would cost minutes per image here)
        warm[label] = warm_up(pipes[label], images, profile) if runtime == "openvino" else 0.0
        report[label] = {"first_use_s": round(warm[label], 1)}
        print(f"{label}: first use of each image shape {warm[label]:.1f} s", flush=True)
    runs, wall, cpu = interleaved(pipes, images, profile)
    for label in pipes:
        n = len(images)
        stages = {stage: round(sum(r.timings.get(stage, 0.0) for r in runs[label]) / n, 2)
                  for stage in ("detection", "segmentation")}
        report[label].update({"s_per_image": round(wall[label] / n, 2), "images_per_s": round(n / wall[label], 4),
                              "cpu_s_per_image": round(cpu[label] / n, 2), "stage_s_per_image": stages})
        print(f"{label}: {wall[label] / n:.2f} s/image wall, {cpu[label] / n:.2f} CPU s/image", flush=True)
    report["speedup_wall"] = round(wall["torch"] / wall["openvino"], 2)
    report["speedup_cpu"] = round(cpu["torch"] / cpu["openvino"], 2)
    report["exactness"] = compare(runs["torch"], runs["openvino"])
    if args.int8:
        report["int8_effect"] = compare(runs["torch"], runs["openvino-int8"])
    report["load_after"] = load_now()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
