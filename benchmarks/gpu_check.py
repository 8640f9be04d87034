"""GPU check at real model sizes, no download: images/s, per-stage ms, peak memory, map drift.

Builds the real-size random-weight presets (iapas.testing.presets) directly on the device, then
runs stage 2 for every combination of dtype (float32 / float16 / bfloat16), batch size (1, 8),
``--fuse-object-detection`` off/on and ``--compile`` off/on (compile only for --compile-dtypes),
and prints one row each: images/s, per-stage milliseconds per image, peak GPU memory, and the
largest anomaly-map difference against float32 (same fusion, same images). It also counts the
FLOPs per image of each model at its input size (torch.utils.flop_counter: matmuls, convolutions
and attention; the deformable attention's sampling is not counted, so this is a lower bound)
and prints the floor: the time per image the GPU's peak would need, and the measured images/s as
a fraction of that limit. Designed to finish in under 6 minutes on one H200 (a --budget-s guard
skips the remaining rows if it would not).

    python benchmarks/gpu_check.py                        # cuda, grounding-dino-tiny + sam-vit-huge
    python benchmarks/gpu_check.py --device cpu --quick   # tiny models, seconds (a test runs this)
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Dense peak TFLOPS by GPU name fragment: (bf16/fp16 tensor cores, fp32 without TF32).
PEAKS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L40S": (362.0, 91.6), "L4": (121.0, 30.3)}


def peak_tflops(device: str, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, (half, single) in PEAKS.items():
        if key in name:
            return single if dtype == "float32" else half
    return None


def build(args: argparse.Namespace, workdir: Path) -> tuple[Any, Any]:
    """The float32 detector and segmenter adapters on the device."""
    import torch

    from iapas.models.detector import GroundingDinoDetector
    from iapas.models.segmenter import SamSegmenter

    if args.quick:
        from iapas.testing import make_tiny_grounding_dino, make_tiny_sam

        det = GroundingDinoDetector.from_pretrained(str(make_tiny_grounding_dino(workdir / "gd", shortest_edge=320)), device=args.device, dtype="float32")
        seg = SamSegmenter.from_pretrained(str(make_tiny_sam(workdir / "sam")), device=args.device, dtype="float32")
        return det, seg
    from iapas.testing.presets import build_random_model, make_processor

    det = GroundingDinoDetector(build_random_model(args.detector, args.device), make_processor("grounding-dino"),
                                args.device, torch.float32, args.detector)
    seg = SamSegmenter(build_random_model(args.segmenter, args.device), make_processor("sam"), args.device, torch.float32, args.segmenter)
    return det, seg


def variant(det: Any, seg: Any, dtype: str, compiled: bool, made: dict[tuple[str, bool], Any]) -> tuple[Any, Any]:
    """The adapters in ``dtype``, compiled or not; made once per (dtype, compiled), so one
    compilation serves every row of that variant (new batch shapes may still recompile)."""
    key = (dtype, compiled)
    if key not in made:
        made.clear()  # keep one copy of the models besides the float32 ones
        made[key] = _make_variant(det, seg, dtype, compiled)
    return made[key]


def _make_variant(det: Any, seg: Any, dtype: str, compiled: bool) -> tuple[Any, Any]:
    import torch

    torch_dtype = getattr(torch, dtype)
    if dtype == "float32" and not compiled:
        return det, seg
    d, s = copy.copy(det), copy.copy(seg)
    d.model, s.model = copy.deepcopy(det.model).to(torch_dtype), copy.deepcopy(seg.model).to(torch_dtype)
    d.dtype = s.dtype = torch_dtype
    d.text_memo = type(det.text_memo)(det.text_memo.maxsize)
    d._text_cache = {}
    if compiled:
        d.compile()
        s.compile()
    return d, s


def count_flops(det: Any, seg: Any, image: Any, caption: str) -> dict[str, float]:
    """FLOPs of one detector forward (one caption), one SAM image encoding and one box decoding."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    pixels = det._pixels([image])
    det.share_backbone, det.cache_text_features = False, False
    try:
        with FlopCounterMode(display=False) as fc:
            det._forward(pixels, caption)
        out["detector forward"] = float(fc.get_total_flops())
    finally:
        det.share_backbone, det.cache_text_features = True, True
    values, original, reshaped = seg._pixels([image])
    with torch.inference_mode():
        with FlopCounterMode(display=False) as fc:
            emb = seg.model.get_image_embeddings(values)
        out["sam encoder"] = float(fc.get_total_flops())
        box = torch.tensor([[[10.0, 10.0, 100.0, 100.0]]], device=values.device)
        with FlopCounterMode(display=False) as fc:
            seg.model(image_embeddings=emb, input_boxes=box, multimask_output=False)
        out["sam decoder per box"] = float(fc.get_total_flops())
    return out


def row(args: argparse.Namespace, det: Any, seg: Any, dtype: str, compiled: bool, fused: bool, bs: int, images: list[Any],
        profile: Any, flops: dict[str, float], reference: dict[bool, Any], batches: list[int], sync: Any,
        made: dict[tuple[str, bool], Any]) -> None:
    """Run and print one row of the table."""
    import numpy as np
    import torch

    from savings import StageTimer, attach_stages

    from iapas.pipeline.stage2 import Pipeline, PipelineConfig

    cuda = args.device.startswith("cuda")
    n_images = len(images)
    d, s = variant(det, seg, dtype, compiled, made)
    pipe = Pipeline(d, s, PipelineConfig(device=args.device, dtype=dtype, fuse_object_detection=fused))
    t0 = time.perf_counter()
    pipe.run(images[:bs], profile)  # warm-up (and compilation)
    sync()
    warm = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = [r for i in range(0, n_images, bs) for r in pipe.run(images[i : i + bs], profile)]
    sync()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    maps = [r.anomaly_map for r in results]
    boxes = sum(len(r.kept) for r in results) / n_images
    if dtype == "float32" and not compiled and bs == batches[0]:
        reference[fused] = maps
    diff = max(float(np.abs(a - b).max()) for a, b in zip(maps, reference[fused]))
    timer = StageTimer(sync)  # stage times on a second, short pass (the syncs would slow the first)
    attach_stages(timer, pipe)
    pipe.run(images[:bs], profile)
    timer.detach()
    det_ms = 1000 * timer.wall.get("gdino total", 0.0) / bs
    enc_ms = 1000 * timer.wall.get("sam encoder", 0.0) / bs
    dec_ms = 1000 * timer.wall.get("sam decoder", 0.0) / bs
    peak_tf = peak_tflops(args.device, dtype, args.peak_tflops)
    per_image = flops["detector forward"] * (1 if fused else 2) + flops["sam encoder"] + flops["sam decoder per box"] * boxes
    floor = f"{100 * (n_images / wall) * per_image / (peak_tf * 1e12):>9.1f}%" if peak_tf else f"{'n/a':>10}"
    print(f"{dtype:<9} {bs:>5} {str(fused):>5} {str(compiled):>7} {n_images / wall:>7.2f} {det_ms:>7.1f} {enc_ms:>7.1f} {dec_ms:>7.1f} "
          f"{boxes:>5.1f} {peak:>8.2f} {diff:>11.3g} {floor} {warm if compiled else float('nan'):>9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 dtypes, batch 1 and 2, few images (seconds on CPU)")
    parser.add_argument("--detector", default="grounding-dino-tiny", help="detector preset")
    parser.add_argument("--segmenter", default="sam-vit-huge", help="segmenter preset")
    parser.add_argument("--dtypes", default=None, help="default float32,float16,bfloat16 (quick: float32,bfloat16)")
    parser.add_argument("--batch-sizes", default=None, help="default 1,8 (quick: 1,2)")
    parser.add_argument("--images", type=int, default=None, help="images per row (default 16, quick 2)")
    parser.add_argument("--size", type=int, default=1024, help="generated image side (quick: 96)")
    parser.add_argument("--compile", dest="compile_dtypes", default=None,
                        help="dtypes also run with --compile (default bfloat16; quick: none; '' for none)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak, if not known by name")
    parser.add_argument("--budget-s", type=float, default=330.0, help="skip remaining rows after this many seconds")
    args = parser.parse_args()
    q = args.quick
    dtypes = (args.dtypes or ("float32,bfloat16" if q else "float32,float16,bfloat16")).split(",")
    batches = [int(b) for b in (args.batch_sizes or ("1,2" if q else "1,8")).split(",")]
    n_images = args.images or (2 if q else 16)
    size = 96 if q and args.size == 1024 else args.size
    compile_dtypes = [d for d in (args.compile_dtypes if args.compile_dtypes is not None else ("" if q else "bfloat16")).split(",") if d]
    if "float32" not in dtypes:
        dtypes.insert(0, "float32")  # the reference

    import numpy as np
    import torch

    from savings import StageTimer, attach_stages
    from throughput import make_images

    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile

    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    workdir = Path(tempfile.mkdtemp(prefix="iapas-gpu-check-"))
    det, seg = build(args, workdir)
    where = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    print(f"{time.strftime('%Y-%m-%d')} {where}, torch {torch.__version__}, detector {det.name}, segmenter {seg.name} "
          f"(random weights), {n_images} images {size}x{size}; built in {time.perf_counter() - started:.1f} s")
    profile = Profile.from_prompts("part", "part", ["scratch", "crack", "hole", "stain", "dent"])
    profile.caption = profile.caption + " part ."  # the object tag in the caption, so rows can fuse
    images = make_images(n_images, size, 0)

    flops = count_flops(det, seg, images[0], profile.caption)
    print("FLOPs (counted: matmul/conv/attention): " + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in flops.items()))

    header = (f"{'dtype':<9} {'batch':>5} {'fused':>5} {'compile':>7} {'img/s':>7} {'det ms':>7} {'enc ms':>7} {'dec ms':>7} "
              f"{'boxes':>5} {'peak GiB':>8} {'max |d map|':>11} {'% of floor':>10} {'compile s':>9}")
    print(header)
    print("-" * len(header))
    reference: dict[bool, list[np.ndarray]] = {}
    made: dict[tuple[str, bool], Any] = {}
    for dtype, compiled, fused, bs in itertools.product(dtypes, [False, True], [False, True], batches):
        if compiled and dtype not in compile_dtypes:
            continue
        if time.perf_counter() - started > args.budget_s:
            print(f"{dtype:<9} {bs:>5} {str(fused):>5} {str(compiled):>7}  skipped: time budget ({args.budget_s:.0f} s) spent")
            continue
        try:
            row(args, det, seg, dtype, compiled, fused, bs, images, profile, flops, reference, batches, sync, made)
        except RuntimeError as exc:  # e.g. NaN in half precision (ModelOutputError), out of memory
            print(f"{dtype:<9} {bs:>5} {str(fused):>5} {str(compiled):>7}  failed: {' '.join(str(exc).split())[:150]}")
        if cuda:
            torch.cuda.empty_cache()
    for dtype in dtypes:
        peak_tf = peak_tflops(args.device, dtype, args.peak_tflops)
        if peak_tf:
            per_image = 2 * flops["detector forward"] + flops["sam encoder"]
            print(f"floor {dtype}: {per_image / 1e9:.0f} GFLOP per image (two detector forwards + SAM encoder) at "
                  f"{peak_tf:.0f} TFLOPS = {1000 * per_image / (peak_tf * 1e12):.2f} ms, {peak_tf * 1e12 / per_image:.0f} images/s")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
