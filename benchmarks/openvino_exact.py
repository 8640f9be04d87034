"""How exact ``--runtime openvino`` is at real size: eager float32 and OpenVINO float32 against a float64 oracle.

Both float32 runtimes approximate the same arithmetic; which differences are "float rounding" is
measured, not assumed: the ``segment`` pipeline runs the same real MVTec / MTD images on torch
float64 (the oracle: the same models and inputs, the detector and SAM cast to float64), torch
float32 (eager, what ``--runtime torch`` runs) and OpenVINO float32, one pipeline at a time (one
in memory), and each float32 run is compared with the oracle and with the other: the kept (phrase,
box) sets (boxes one side keeps and the other not), the largest score and box differences of the
boxes both keep, and the map differences. Where eager float32 already differs from float64 as
much as OpenVINO does, OpenVINO's differences are float rounding.

The models are the real-size presets with :func:`iapas.testing.presets.seed_weights`' weights
(``--seeded``, the default here): with transformers' init the detector's scores saturate at 1.0
and tie, so the kept sets hang on tie order, not on arithmetic.

    python benchmarks/openvino_exact.py --images 4 --int8 --out /tmp/exact.json

``--int8`` adds ``--ov-int8`` (NNCF int8 detector weights), compared the same way.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from openvino_cpu import (  # noqa: E402  (the sibling script)
    DATA,
    build,
    cpu_model,
    load_now,
    model_folder,
    pair_differences,
    pairs,
    pick_images,
)


def run(label: str, detector: str, segmenter: str, images: list[np.ndarray], profile: Any) -> list[Any]:
    """Each image through one pipeline (``float64``, ``torch``, ``openvino`` or ``openvino-int8``); the
    results without masks."""
    import torch

    pipe = build(detector, segmenter, "openvino" if label.startswith("openvino") else "torch",
                 int8=label == "openvino-int8")
    if label == "float64":
        for adapter in (pipe.detector, pipe.segmenter):
            adapter.model.double()
            adapter.dtype = torch.float64
    out = []
    for image in images:
        result = pipe.run([image], profile)[0]
        print(f"  {label}: {len(result.kept.boxes)} boxes kept", flush=True)
        out.append(result.without_masks())
    del pipe
    gc.collect()
    return out


def compare(want: list[Any], got: list[Any]) -> dict[str, Any]:
    """``got`` against ``want``, image by image and in all."""
    rows = []
    for w, g in zip(want, got):
        matched, only_w, only_g = pairs(w.kept, g.kept)
        ds, db = pair_differences(w.kept, g.kept, matched)
        diff = np.abs(w.anomaly_map.astype(np.float64) - g.anomaly_map)
        rows.append({"kept": len(w.kept.boxes), "only_reference": only_w, "only_this": only_g,
                     "max_score_diff": ds, "max_box_diff_px": db, "max_map_diff": float(diff.max()),
                     "map_pixels_off_1e-5": float((diff > 1e-5).mean())})
    total = {key: max(r[key] for r in rows) for key in ("max_score_diff", "max_box_diff_px", "max_map_diff",
                                                        "map_pixels_off_1e-5")}
    total.update({key: sum(r[key] for r in rows) for key in ("kept", "only_reference", "only_this")})
    return {"all": total, "images": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="grounding-dino-tiny", help="a preset name or a model folder")
    parser.add_argument("--segmenter", default="sam-vit-base", help="a preset name or a model folder")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--source", choices=("both", "mvtec", "mtd"), default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--transformers-init", action="store_true", help="the presets with transformers' init instead of seeded")
    parser.add_argument("--score", type=float, nargs=2, default=(0.35, -4.5), metavar=("SCALE", "SHIFT"),
                        help="the seeded detector's class logits SCALE * dot + SHIFT")
    parser.add_argument("--size-threshold", type=float, default=1.5, help="the profile's size_threshold")
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "iapas-presets")
    parser.add_argument("--cache", type=Path, default=None, help="the OpenVINO IR cache (default: a fresh folder)")
    parser.add_argument("--int8", action="store_true", help="also run --ov-int8 and compare it the same way")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from iapas.models.ov.cache import ENV_CACHE
    from iapas.product.profile import Profile

    torch.set_num_threads(args.threads)
    os.environ[ENV_CACHE] = str(args.cache or tempfile.mkdtemp(prefix="iapas-ov-exact-"))
    seeded = not args.transformers_init
    folders = [model_folder(name, args.models, seeded, tuple(args.score)) for name in (args.detector, args.segmenter)]
    paths = pick_images(args.images, args.source)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    profile = Profile.from_prompts("bottle", "bottle", ["scratch", "crack", "hole"])
    profile.size_threshold = args.size_threshold
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "load_before": load_now(),
        "cpu": cpu_model(), "threads": args.threads, "detector": args.detector, "segmenter": args.segmenter,
        "weights": f"seeded, detector score {tuple(args.score)}" if seeded else "transformers init",
        "size_threshold": args.size_threshold, "images": [str(p.relative_to(DATA)) for p in paths]}
    labels = ("float64", "torch", "openvino") + (("openvino-int8",) if args.int8 else ())
    results = {label: run(label, *folders, images, profile) for label in labels}
    keys = []
    for label, reference in [("torch", "float64"), ("openvino", "float64"), ("openvino", "torch"),
                             ("openvino-int8", "float64"), ("openvino-int8", "torch")]:
        if label in results:
            keys.append(f"{label}_vs_{reference}")
            report[keys[-1]] = compare(results[reference], results[label])
    report["load_after"] = load_now()
    for key in keys:
        print(key, json.dumps(report[key]["all"]), flush=True)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
