"""The reference side of ``benchmarks/reference_diff.py``: runs in its own environment with the
original packages (rf-groundingdino 0.3.0, segment-anything 1.0, transformers 4.42.4, numpy<2,
CPU torch; see reference_diff.py for the recipe), never in iapas's. It imports nothing of iapas.

Commands (each writes one npz or json file that iapas's side reads):
  resize-table OUT.json            the original Grounding DINO transform's output size for a
                                   fixed list of image shapes (tests/data/gdino_original_resize.json)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("reference_side")


def install_cpu_nms() -> None:
    """torchvision's PyPI wheel links CUDA kernels; with CPU torch its ops do not exist and
    ``import torchvision`` fails. Define ``torchvision::nms`` (and the ``qnms`` it registers a
    fake kernel for) before the import, with a CPU kernel of the compiled one's algorithm: sort
    by score descending, float32 IoU, suppress a box whose IoU with a kept one is ``>`` the
    threshold."""
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", cpu_nms, "CPU")
    install_cpu_nms.lib = lib  # keep the registration alive
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True  # ops.nms checks this before dispatching


def cpu_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's CPU ``nms_kernel_impl`` written out: same order, same float arithmetic."""
    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.long)
    x1, y1, x2, y2 = (dets[:, i].contiguous() for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for a, i in enumerate(order.tolist()):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1 :].tolist():
            if suppressed[j]:
                continue
            w = torch.clamp(torch.minimum(x2[i], x2[j]) - torch.maximum(x1[i], x1[j]), min=0)
            h = torch.clamp(torch.minimum(y2[i], y2[j]) - torch.maximum(y1[i], y1[j]), min=0)
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > iou_threshold:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.long)


# image (height, width) shapes of the resize table: the datasets' capped and uncapped shapes,
# and a sweep of elongated ones (two thirds of capped shapes differ from transformers' helper)
RESIZE_SHAPES = [
    (250, 700), (500, 1257), (1257, 500), (232, 640), (640, 232), (1408, 512), (600, 800), (256, 256),
    (900, 900), (1024, 1024), (1000, 1600), (196, 1268), (400, 400), (512, 512), (768, 1024),
] + [(h, 1000) for h in range(300, 601, 7)] + [(1000, w) for w in range(301, 602, 11)]


def resize_table(out: Path) -> None:
    """The original transform applied to real PIL images of each shape (its own code path:
    ``RandomResize([size], max_size)``), at the hub's 800/1333 and the tiny models' 320/533."""
    from PIL import Image

    import groundingdino.datasets.transforms as T

    rows = []
    for size, max_size in ((800, 1333), (320, 533)):
        transform = T.RandomResize([size], max_size=max_size)
        for h, w in RESIZE_SHAPES:
            resized, _ = transform(Image.new("RGB", (w, h)), None)
            rows.append([size, max_size, h, w, resized.size[1], resized.size[0]])
    table = {"source": "rf-groundingdino 0.3.0 groundingdino.datasets.transforms.RandomResize",
             "columns": ["size", "max_size", "height", "width", "out_height", "out_width"], "rows": rows}
    out.write_text(json.dumps(table) + "\n")
    logger.info("wrote %d sizes to %s", len(rows), out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("resize-table")
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    install_cpu_nms()
    if args.command == "resize-table":
        resize_table(args.out)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=6)
    sys.exit(main())
