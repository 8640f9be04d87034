"""Time and memory of iapas.metrics on a synthetic MVTec-sized stack, next to scikit-learn.

The stack mimics one MVTec AD run at the paper's resolution: ``--maps`` float32 maps of
``--size`` x ``--size`` pixels (default 1,725 x 400 x 400 = 276 million pixels) with smooth
background noise, and bool masks with 1-3 elliptic defects on ``--anomalous`` of the images;
the map is raised inside defects and on some decoy blobs. Scores are continuous float32 (nearly
every pixel a distinct threshold: the hard case for an exact sweep) unless ``--levels`` quantises
them.

Measured, on the whole stack: ``iapas.metrics.ranking_metrics`` (pixel AP + F1-max + AUROC in
one sort) and ``iapas.metrics.category_metrics`` (the paper's full set, AUPRO on the whole
stack). scikit-learn's ``average_precision_score`` and ``precision_recall_curve`` (F1-max) need
float64 copies, an int64 argsort and several full-size temporaries, so they run on the first
``--sklearn-maps`` maps only, next to iapas on the same subset, and the two must agree to 1e-6.

Peak memory is what numpy allocated above the stack during each step (numpy reports its
buffers to tracemalloc), plus the process's ru_maxrss high-water mark after each step.

    .venv/bin/python benchmarks/metrics_benchmark.py            # full size, ~2 minutes
    .venv/bin/python benchmarks/metrics_benchmark.py --maps 100 --sklearn-maps 50   # quick
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from iapas import metrics


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation from ``n_in`` grid points to ``n_out`` pixels, as a matrix."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.floor(pos).astype(int).clip(0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _ellipses(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """A bool image with ``count`` random filled ellipses (drawn inside their bounding boxes)."""
    out = np.zeros((size, size), dtype=bool)
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(0.02, 0.12, 2) * size
        y0, y1 = max(0, int(cy - ry)), min(size, int(cy + ry) + 1)
        x0, x1 = max(0, int(cx - rx)), min(size, int(cx + rx) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return out


def build_stack(
    n_maps: int, size: int, anomalous: float, levels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Maps and masks filled image by image (no full-size float64 temporary)."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n_maps, size, size), dtype=np.float32)
    masks = np.zeros((n_maps, size, size), dtype=bool)
    grid = max(2, size // 16)
    interp = _interp_matrix(size, grid)
    for i in range(n_maps):
        base = interp @ rng.random((grid, grid), dtype=np.float32) @ interp.T
        m = base * 0.35 + rng.random((size, size), dtype=np.float32) * 0.1
        if rng.random() < anomalous:
            masks[i] = _ellipses(rng, size, int(rng.integers(1, 4)))
            m[masks[i]] += rng.uniform(0.05, 0.5)
        if rng.random() < 0.3:  # decoys: high scores on normal pixels
            m[_ellipses(rng, size, 1)] += rng.uniform(0.1, 0.5)
        if levels:
            m = np.round(m * (levels - 1)) / (levels - 1)
        maps[i] = m
    return maps, masks


def measure(label: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    row = {"step": label, "s": seconds, "peak_gib": (peak - before) / 2**30, "maxrss_gib": rss}
    print(f"  done: {label} in {seconds:.1f} s", file=sys.stderr, flush=True)
    return result, row


def sklearn_ap_f1(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = masks.reshape(-1), maps.reshape(-1)
    ap = float(average_precision_score(y, s))
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return ap, float(f1.max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=int, default=1725, help="number of maps (MVTec AD test)")
    parser.add_argument("--size", type=int, default=400, help="map side in pixels")
    parser.add_argument("--anomalous", type=float, default=0.73, help="fraction with defects")
    parser.add_argument("--levels", type=int, default=0, help="quantise scores (0: continuous)")
    parser.add_argument("--sklearn-maps", type=int, default=345, help="subset for scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    maps, masks = build_stack(args.maps, args.size, args.anomalous, args.levels, args.seed)
    n_px = maps.size
    print(
        f"stack: {args.maps} maps x {args.size}x{args.size} = {n_px / 1e6:.1f} M pixels, "
        f"{masks.mean() * 100:.2f}% anomalous pixels, "
        f"{int(masks.reshape(args.maps, -1).any(1).sum())} anomalous maps, "
        f"{maps.nbytes / 2**30:.2f} GiB maps + {masks.nbytes / 2**30:.2f} GiB masks, "
        f"built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    tracemalloc.start()
    rows = []
    full, row = measure(
        "iapas ranking_metrics (AP+F1+AUROC), full",
        lambda: metrics.ranking_metrics(maps, masks),
    )
    rows.append(row)
    cat, row = measure(
        "iapas category_metrics (all 8, AUPRO full), full",
        lambda: metrics.category_metrics(maps, masks),
    )
    rows.append(row)

    k = min(args.sklearn_maps, args.maps)
    sub_maps, sub_masks = maps[:k], masks[:k]
    sub, row = measure(
        f"iapas ranking_metrics, first {k} maps",
        lambda: metrics.ranking_metrics(sub_maps, sub_masks),
    )
    rows.append(row)
    (sk_ap, sk_f1), row = measure(
        f"sklearn AP + precision_recall_curve, first {k} maps",
        lambda: sklearn_ap_f1(sub_masks, sub_maps),
    )
    rows.append(row)
    tracemalloc.stop()

    print(f"\n{'step':<52} {'time s':>8} {'peak GiB':>9} {'maxrss GiB':>11}")
    for r in rows:
        print(f"{r['step']:<52} {r['s']:>8.1f} {r['peak_gib']:>9.2f} {r['maxrss_gib']:>11.2f}")
    print(
        f"\nfull stack: pixel AP {full.average_precision:.6f}, F1-max {full.f1_max:.6f}, "
        f"AUROC {full.auroc:.6f}"
    )
    print("category_metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in cat.to_dict().items()))
    d_ap = abs(sub.average_precision - sk_ap)
    d_f1 = abs(sub.f1_max - sk_f1)
    print(
        f"subset agreement ({k} maps, {sub_maps.size / 1e6:.1f} M px): "
        f"AP iapas {sub.average_precision:.9f} sklearn {sk_ap:.9f} (|d| {d_ap:.1e}); "
        f"F1-max iapas {sub.f1_max:.9f} sklearn {sk_f1:.9f} (|d| {d_f1:.1e})"
    )
    ok = d_ap <= 1e-6 and d_f1 <= 1e-6
    print("agreement to 1e-6:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
