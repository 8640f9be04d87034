"""SAM's forwards on the OpenVINO runtime against PyTorch eager, on one CPU, at the same outputs.

A real-size preset (``iapas.testing.presets``: the hub architecture, built in memory) gets
unit-scale seeded weights (:func:`iapas.testing.reference_weights.seeded_tensor`; a fresh
transformers SAM's ~1e-10 weights give ~1e-20 embeddings, useless for comparing outputs), is
converted once into a fresh IR cache (the conversion time is printed) and then measured with
``--threads`` threads on both runtimes, in one process, on MTD images when the shared data is
there (else a synthetic texture):

- the image encoder on one image (1024x1024 input): the median of ``--repeats`` timed calls
  after a warm-up, and the embeddings' max abs difference relative to their max magnitude;
- the prompt encoder + mask decoder for N boxes: eager (one call), OpenVINO with the dynamic
  box count (one call) and OpenVINO one box per call (the loop alternative), and the logits'
  relative difference;
- ``segment`` end to end (shared pre/post-processing): the binary masks' differing pixels.

The load average (``uptime``) is printed next to each timing: the machine is shared.

    python benchmarks/openvino_sam.py                      # sam-vit-base, 2 threads
    python benchmarks/openvino_sam.py --threads 1 --cache /tmp/ir   # IR of an earlier run reused
    python benchmarks/openvino_sam.py --preset sam-vit-huge --repeats 1 --boxes 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
from openvino_cpu import DATA, cpu_model  # noqa: E402  (the sibling script: benchmarks/ is on sys.path)

MTD = Path(os.environ.get("IAPAS_SHARED_DATA", DATA)) / "MTD"  # ../shared/data beside the checkout


def load() -> str:
    """The 1-minute load average, as ``uptime`` prints it."""
    return f"{os.getloadavg()[0]:.1f}"


def images(count: int = 2) -> list[np.ndarray]:
    """``count`` MTD images (RGB), or synthetic 512x512 textures without the shared data."""
    from PIL import Image

    found = sorted(MTD.glob("MT_*/Imgs/*.jpg"))[:count] if MTD.is_dir() else []
    if found:
        return [np.asarray(Image.open(p).convert("RGB")) for p in found]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for _ in range(count)]


def boxes_for(image: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, w * 0.7, n), rng.uniform(0, h * 0.7, n)
    return np.stack([x0, y0, x0 + rng.uniform(8, w * 0.3, n), y0 + rng.uniform(8, h * 0.3, n)], 1).astype(np.float32)


def timed(call: Any, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def relative(ref: Any, out: Any) -> float:
    return float((ref - out).abs().max() / ref.abs().max())


def seeded_preset(name: str, seed: int = 0) -> Any:
    """Preset ``name`` in memory with :func:`seeded_tensor` weights (float32, CPU, eval)."""
    from iapas.testing.presets import build_random_model
    from iapas.testing.reference_weights import seeded_tensor

    model = build_random_model(name, device="cpu", seed=seed).float().eval()
    model.load_state_dict({k: seeded_tensor(k, v.shape, seed) for k, v in model.state_dict().items()})
    return model


def measure_sam(name: str = "sam-vit-base", threads: int = 2, repeats: int = 3, box_counts: tuple[int, ...] = (1, 5, 20),
                cache_dir: Path | None = None) -> dict[str, Any]:
    """Eager and OpenVINO timings and output differences of preset ``name`` (see the module
    docstring); ``cache_dir``: the IR cache (a fresh temporary one by default, so the
    conversion is measured). Returns the rows the table prints."""
    import torch

    from iapas.models.segmenter import SamHQSegmenter, SamSegmenter
    from iapas.testing.presets import get_preset, make_processor

    torch.set_num_threads(threads)
    kind = get_preset(name).kind
    adapter = SamHQSegmenter if kind == "sam_hq" else SamSegmenter
    model, processor = seeded_preset(name), make_processor(kind)
    eager = adapter(model, processor, "cpu", torch.float32, name)
    cache_dir = cache_dir or Path(tempfile.mkdtemp(prefix="iapas_ov_sam_"))
    started = time.perf_counter()
    ov = adapter(model, processor, "cpu", torch.float32, name, runtime="openvino", ov_cache=cache_dir, ov_threads=threads)
    rows: dict[str, Any] = {"preset": name, "threads": threads, "conversion_s": time.perf_counter() - started, "load_conversion": load()}
    pictures = images()
    with torch.inference_mode():
        pixels = eager._pixels(pictures[:1])[0]
        rows["encoder"] = {"eager_s": timed(lambda: eager._embed(pixels), repeats), "load_eager": load(),
                           "ov_s": timed(lambda: ov._embed(pixels), repeats), "load_ov": load()}
        ref, out = eager._embed(pixels), ov._embed(pixels)
        rows["encoder"]["rel_diff"] = relative(ref[0], out[0]) if isinstance(ref, tuple) else relative(ref, out)
        rows["decoder"] = []
        for n in box_counts:
            input_boxes = torch.from_numpy(boxes_for(pictures[0], n) * (1024 / max(pictures[0].shape[:2])))[None]
            one = [input_boxes[:, i : i + 1] for i in range(n)]
            row = {"boxes": n, "eager_s": timed(lambda: eager._decode_boxes(ref, 0, input_boxes), repeats),
                   "ov_batch_s": timed(lambda: ov._decode_boxes(ref, 0, input_boxes), repeats),
                   "ov_loop_s": timed(lambda: [ov._decode_boxes(ref, 0, b) for b in one], repeats), "load": load()}
            row["rel_diff"] = relative(eager._decode_boxes(ref, 0, input_boxes).pred_masks, ov._decode_boxes(ref, 0, input_boxes).pred_masks)
            rows["decoder"].append(row)
    boxes = [boxes_for(p, 5, seed=i) for i, p in enumerate(pictures)]
    expected, got = eager.segment(pictures, boxes), ov.segment(pictures, boxes)
    rows["masks"] = {"pixels": int(sum(e.size for e in expected)), "differing": int(sum((e != g).sum() for e, g in zip(expected, got))),
                     "true": int(sum(e.sum() for e in expected))}
    return rows


def print_table(rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{rows['preset']} on {rows['threads']} threads: eager vs OpenVINO "
                        f"(conversion {rows['conversion_s']:.0f} s at load {rows['load_conversion']})")
    for column in ("forward", "eager s", "openvino s", "speed-up", "rel. diff", "load"):
        table.add_column(column, justify="right")
    enc = rows["encoder"]
    table.add_row("image encoder", f"{enc['eager_s']:.2f}", f"{enc['ov_s']:.2f}", f"{enc['eager_s'] / enc['ov_s']:.2f}x",
                  f"{enc['rel_diff']:.1e}", f"{enc['load_eager']}/{enc['load_ov']}")
    for row in rows["decoder"]:
        table.add_row(f"decoder, {row['boxes']} boxes (loop: {row['ov_loop_s']:.3f} s)", f"{row['eager_s']:.3f}",
                      f"{row['ov_batch_s']:.3f}", f"{row['eager_s'] / row['ov_batch_s']:.2f}x", f"{row['rel_diff']:.1e}", row["load"])
    Console(width=120).print(table)
    masks = rows["masks"]
    print(f"segment, 2 images x 5 boxes: {masks['differing']} of {masks['pixels']} mask pixels differ ({masks['true']} set)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam-vit-base", help="a SAM or SAM-HQ preset of iapas.testing.presets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per forward (after a warm-up)")
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 5, 20], help="box counts of the decoder rows")
    parser.add_argument("--cache", type=Path, help="IR cache to reuse (default: a fresh one: the conversion is timed)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    rows = measure_sam(args.preset, args.threads, args.repeats, tuple(args.boxes), args.cache)
    print_table(rows)
    print(f"CPU: {cpu_model()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
