"""The reference chain beside iapas's, stage by stage, on the same weights and images.

Two processes, two environments, exchanging files: ``benchmarks/reference_side.py`` runs in an
environment with the original packages and the reference code's own functions; this script runs
iapas's Pipeline in iapas's environment and compares.

The reference environment (once, about 5 minutes; never inside the repository):

    python3.11 -m venv /work/refenv
    /work/refenv/bin/pip install torch==2.13.0            # the CPU build
    /work/refenv/bin/pip install "numpy<2" transformers==4.42.4 segment-anything==1.0 \\
        scikit-learn==1.5.2 platformdirs addict yapf timm==1.0.9 pycocotools supervision==0.22.0 \\
        opencv-python-headless==4.10.0.84
    /work/refenv/bin/pip install --no-deps rf-groundingdino==0.3.0 torchvision==0.28.0
    # torchvision's wheel has CUDA kernels only: reference_side.py registers a CPU nms itself

The reference code (sybeam27/IAP-ZSAS, no licence: never commit it) checked out anywhere, e.g.
/work/ref. Then:

    python benchmarks/reference_diff.py --reference-code /work/ref [--write-golden]

writes its work under --work (default /tmp/iapas-reference-diff), prints the differences per
stage, and with --write-golden stores the recipe, configs and the reference's outputs in
tests/data/reference_golden/ (tests/test_reference_goldens.py checks iapas against them in CI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's iapas first

from iapas.testing.reference_weights import (  # noqa: E402
    NEAR_ZERO, SETTINGS, clamped, golden_inputs, golden_profile, map_flips, matched, run_pipeline, write_hf_folders,
)

GOLDEN = REPO / "tests" / "data" / "reference_golden"
logger = logging.getLogger("reference_diff")


def manifest(images: list[dict[str, Any]]) -> dict[str, Any]:
    """What the reference side runs: the same caption string iapas's detector reads."""
    from iapas.models.detector import GroundingDinoDetector

    caption = GroundingDinoDetector.normalize_caption(golden_profile().caption)
    return {**SETTINGS, "caption": caption, "images": images}


def reference(args: argparse.Namespace, work: Path, items: list[dict[str, Any]]) -> Path:
    """Build the recipe (once) and run the reference side; returns its npz."""
    build = work / "build"
    side = [str(args.reference_python), str(REPO / "benchmarks" / "reference_side.py")]
    if not (build / "weights.json").exists():
        subprocess.run([*side, "build", str(build), "--seed", str(args.seed), "--calibration-image",
                        items[0]["image"], "--caption", manifest(items)["caption"]], check=True)
    (work / "manifest.json").write_text(json.dumps(manifest(items), indent=1))
    out = work / "reference.npz"
    subprocess.run([*side, "run", str(work / "manifest.json"), "--build", str(build),
                    "--reference-code", str(args.reference_code), "--out", str(out)], check=True)
    return out


def compare_image(key: str, ref: Any, ours: dict[str, np.ndarray]) -> dict[str, Any]:
    """The stage-by-stage differences of one image."""
    row: dict[str, Any] = {"key": key}
    height, width = ref[f"{key}/raw_map"].shape
    p_ref, p_our = ref[f"{key}/pixels"], ours[f"{key}/pixels"]
    row["pixels_shape"] = f"{tuple(p_ref.shape)} vs {tuple(p_our.shape)}"
    if p_ref.shape == p_our.shape:
        row["pixels_max_diff"] = float(np.abs(p_ref - p_our).max())
        n = min(ref[f"{key}/probs"].shape[-1], ours[f"{key}/probs"].shape[-1])
        row["probs_max_diff"] = float(np.nan_to_num(np.abs(ref[f"{key}/probs"][:, :n] - ours[f"{key}/probs"][:, :n])).max())
        row["boxes_raw_max_diff"] = float(np.abs(ref[f"{key}/boxes_raw"] - ours[f"{key}/boxes_raw"]).max())
    for stage in ("nms", "kept"):
        rb, rs = ref[f"{key}/{stage}_boxes"], ref[f"{key}/{stage}_scores"]
        ob, os_ = ours[f"{key}/{stage}_boxes"], ours[f"{key}/{stage}_scores"]
        row[f"{stage}_count"] = f"{len(rs)} vs {len(os_)}"
        pick = matched(rb, ob, height, width)
        row[f"{stage}_same_set"] = pick is not None
        if pick is not None and len(pick):
            row[f"{stage}_box_max_diff_px"] = float(np.abs(clamped(rb, height, width) - ob[pick]).max())
            row[f"{stage}_score_max_diff"] = float(np.abs(rs - os_[pick]).max())
    row["object_size_diff"] = float(abs(float(ref[f"{key}/object_size"].reshape(-1)[0]) - float(ours[f"{key}/object_size"])))
    ref_map, our_map = ref[f"{key}/raw_map"], ours[f"{key}/raw_map"]
    differ = map_flips(ref_map, our_map)
    row["map_pixels_differing"] = int(differ.sum())
    logits = ref[f"{key}/mask_logits"]
    near = (np.abs(logits) < NEAR_ZERO).any(axis=0) if len(logits) else np.zeros(ref_map.shape, bool)
    row["map_differing_not_near_zero_logit"] = int((differ & ~near).sum())
    row["sam_pixels"] = int(logits.size)
    return row


def paper_stack(maps: list[np.ndarray], gts: list[np.ndarray], labels: list[int]) -> dict[str, Any]:
    """The reference's evaluation arithmetic (test_zsas.py: per-image normalisation, cv2 cubic
    resize to 400x400, stack normalisation, scikit-learn AP) on iapas's maps."""
    import cv2
    from sklearn.metrics import average_precision_score

    def normalize(x: np.ndarray) -> np.ndarray:
        lo, hi = np.min(x), np.max(x)
        return np.zeros_like(x) if lo == hi else (x - lo) / (hi - lo)

    stack = normalize(np.array([cv2.resize(normalize(m.astype(np.float64)), (400, 400), interpolation=cv2.INTER_CUBIC) for m in maps]))
    gt = np.array([cv2.resize(g, (400, 400), interpolation=cv2.INTER_NEAREST) for g in gts])
    return {"stack": stack, "pixel_ap": 100 * average_precision_score(gt.ravel(), stack.ravel()),
            "image_ap": 100 * average_precision_score(np.asarray(labels), stack.reshape(len(maps), -1).max(axis=1))}


def clamp_effect(folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The effect of transformers' inverse-sigmoid clamp in box refinement (eps 1e-5; the
    original's 1e-3): the HF detector run both ways on every image (``torch.special.logit``
    patched for the second run: a benchmark may, the adapter does not)."""
    import torch

    from iapas.models.detector import GroundingDinoDetector
    from iapas.pipeline.stage2 import as_rgb

    det = GroundingDinoDetector.from_pretrained(str(folder), device="cpu", dtype="float32")
    caption = golden_profile().caption
    logit = torch.special.logit
    boxes = {}
    for eps in (None, 1e-3):
        torch.special.logit = logit if eps is None else (lambda x, eps=None: logit(x, eps=1e-3))
        try:
            boxes[eps] = [det._forward(det._pixels([as_rgb(i["image"])]), caption)[1][0] for i in items]
        finally:
            torch.special.logit = logit
    diffs = [np.abs(a - b).max(axis=-1) for a, b in zip(boxes[None], boxes[1e-3])]
    return {"queries": int(sum(len(d) for d in diffs)), "queries_moved_over_1e-6": int(sum((d > 1e-6).sum() for d in diffs)),
            "max_box_diff_normalised": float(max(d.max() for d in diffs))}


def write_golden(build: Path, ref: Any, items: list[dict[str, Any]]) -> None:
    """Recipe, configs and the reference's outputs (no dataset image, no weights)."""
    shutil.rmtree(GOLDEN, ignore_errors=True)
    (GOLDEN / "hf").mkdir(parents=True)
    shutil.copy(build / "weights.json", GOLDEN / "weights.json")
    for name in ("grounding-dino", "sam"):
        shutil.copytree(build / "hf" / name, GOLDEN / "hf" / name)
    arrays = {}
    for item in items:
        key = item["key"]
        for name in ("nms_boxes", "nms_scores", "kept_boxes", "kept_scores", "object_size", "raw_map"):
            arrays[f"{key}/{name}"] = ref[f"{key}/{name}"]
        logits = ref[f"{key}/mask_logits"]
        near = (np.abs(logits) < NEAR_ZERO).any(axis=0) if len(logits) else np.zeros(ref[f"{key}/raw_map"].shape, bool)
        arrays[f"{key}/near_zero_logit"] = near
    arrays["metrics"] = ref["metrics"]
    np.savez_compressed(GOLDEN / "reference_outputs.npz", **arrays)
    (GOLDEN / "manifest.json").write_text(json.dumps({**SETTINGS, "keys": [i["key"] for i in items]}, indent=1) + "\n")
    logger.info("wrote %s", GOLDEN)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-code", type=Path, required=True, help="a checkout of sybeam27/IAP-ZSAS")
    parser.add_argument("--reference-python", type=Path, default=Path("/work/refenv/bin/python"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/iapas-reference-diff"))
    parser.add_argument("--mtd", type=Path, default=REPO.parent / "shared" / "data" / "MTD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-golden", action="store_true")
    parser.add_argument("--reuse-reference", action="store_true", help="keep --work's reference.npz (iapas side only)")
    args = parser.parse_args(argv)
    if not (args.reference_code / "utils" / "function.py").is_file():
        parser.error(f"--reference-code {args.reference_code}: no utils/function.py (a checkout of sybeam27/IAP-ZSAS?)")
    args.work.mkdir(parents=True, exist_ok=True)
    items = golden_inputs(args.mtd, args.work / "inputs")
    done = args.work / "reference.npz"
    ref = np.load(done if args.reuse_reference and done.exists() else reference(args, args.work, items))
    ours = run_pipeline(write_hf_folders(args.work / "build", args.work / "hf"), items)
    rows = [compare_image(item["key"], ref, ours) for item in items]
    for row in rows:
        print(json.dumps(row))
    from PIL import Image

    gts = [np.asarray(Image.open(i["gt"]).convert("L")) for i in items]
    gts = [np.where(g > 128, 1, 0) for g in gts]
    ev = paper_stack([ours[f"{i['key']}/raw_map"] for i in items], gts, [i["label"] for i in items])
    pixel_ap, _, image_ap, _ = (float(v) for v in ref["metrics"])
    print(json.dumps({"stack_max_diff": float(np.abs(ev["stack"] - ref["stack"]).max()),
                      "stack_pixels_over_1e-6": int((np.abs(ev["stack"] - ref["stack"]) > 1e-6).sum()),
                      "pixel_ap": [pixel_ap, ev["pixel_ap"]], "image_ap": [image_ap, ev["image_ap"]]}))
    print(json.dumps({"inverse_sigmoid_clamp_1e-3_vs_1e-5": clamp_effect(args.work / "hf" / "grounding-dino", items)}))
    if args.write_golden:
        write_golden(args.work / "build", ref, items)
    return 0


if __name__ == "__main__":
    sys.exit(main())
