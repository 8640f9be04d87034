"""Stage 2 throughput: images/s, time inside model forwards vs the whole pipeline, peak memory.

The work per image is one Grounding DINO forward for the object, one for the caption, one SAM
image encoding and one batched mask decoding. This script times those forwards with hooks on the
real modules and compares them with the pipeline's wall time: ``overhead = pipeline / forwards``
(target <= 1.15). It also times the end-to-end CLI path (reading files, writing the map, mask
and overlay PNGs and results.jsonl) for the same images.

    python benchmarks/throughput.py                      # tiny random models, CPU
    python benchmarks/throughput.py --preset real --images 2   # real-size random models:
        per-stage time, overhead, peak memory, each exact saving off/on (benchmarks/savings.py)
    python benchmarks/throughput.py --device cuda \\
        --detector IDEA-Research/grounding-dino-tiny --segmenter facebook/sam-vit-huge
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402


class ForwardTimer:
    """Accumulates wall time spent inside the hooked modules' forwards."""

    def __init__(self, device: str) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._start: dict[int, float] = {}
        self._sync = device.startswith("cuda")

    def _now(self) -> float:
        if self._sync:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def attach(self, module) -> None:
        module.register_forward_pre_hook(lambda m, args: self._start.__setitem__(id(m), self._now()))
        module.register_forward_hook(lambda m, args, out: self._stop(m))

    def _stop(self, module) -> None:
        self.seconds += self._now() - self._start.pop(id(module))
        self.calls += 1


def make_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Textured grey parts with dark scratches, ``size`` x ``size``."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        img = rng.normal(140, 15, (size, size)).clip(0, 255)
        x, y = rng.integers(size // 8, size * 3 // 4, size=2)
        img[y : y + 4, x : x + size // 6] = 30
        images.append(np.repeat(img.astype(np.uint8)[..., None], 3, axis=2))
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", help="Grounding DINO id/folder (default: tiny random model, 800 px short side)")
    parser.add_argument("--segmenter", help="SAM id/folder (default: tiny random model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", default="1,8,64", help="comma-separated image counts")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--size", type=int, default=512, help="generated image side in pixels")
    parser.add_argument("--fuse-object-detection", action="store_true")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the file-to-file timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=["tiny", "real"], default="tiny",
                        help="real: random-weight models of the hub architectures (iapas testing make-random-models)")
    parser.add_argument("--detector-preset", default="grounding-dino-tiny")
    parser.add_argument("--segmenter-preset", default="sam-vit-base")
    parser.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "iapas-random-models"),
                        help="where --preset real writes (and reuses) its model folders")
    parser.add_argument("--repeats", type=int, default=1, help="--preset real: passes over the images")
    args = parser.parse_args()
    if args.preset == "real":
        return main_real(args)

    import torch

    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile
    from iapas.engine.runner import run_segmentation

    torch.manual_seed(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="iapas-throughput-"))
    detector, segmenter = args.detector, args.segmenter
    if detector is None or segmenter is None:
        from iapas.testing import make_tiny_models

        tiny = make_tiny_models(workdir / "models")
        detector = detector or str(tiny["grounding-dino"])
        segmenter = segmenter or str(tiny["sam"])
    config = PipelineConfig(
        detector=detector, segmenter=segmenter, device=args.device, dtype=args.dtype,
        fuse_object_detection=args.fuse_object_detection,
    )
    pipe = Pipeline.from_config(config)
    timer = ForwardTimer(pipe.detector.device)
    timer.attach(pipe.detector.model)
    timer.attach(pipe.segmenter.model.vision_encoder)
    timer.attach(pipe.segmenter.model)  # prompt encoder + mask decoder (the encoder is called directly)
    profile = Profile.from_prompts("part", "object", ["scratch", "crack", "hole", "stain", "dent"])
    profile.size_threshold = 1.0  # keep typical boxes so SAM decoding is exercised

    counts = [int(v) for v in args.images.split(",")]
    batches = [int(v) for v in args.batch_sizes.split(",")]
    all_images = make_images(max(counts), args.size, args.seed)
    pipe.run(all_images[:1], profile)  # warm-up

    print(f"device {pipe.detector.device}, dtype {pipe.detector.dtype}, images {args.size}x{args.size}, "
          f"detector {detector}, segmenter {segmenter}, torch threads {torch.get_num_threads()}")
    header = f"{'images':>6} {'batch':>5} {'img/s':>7} {'fwd s':>7} {'pipe s':>7} {'overhead':>8} {'e2e s':>7} {'e2e/fwd':>7} {'boxes/img':>9} {'peak RSS MiB':>12}"
    print(header)
    print("-" * len(header))
    for n in counts:
        images = all_images[:n]
        for bs in batches:
            if bs > n:
                continue
            timer.seconds, timer.calls = 0.0, 0
            if pipe.detector.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            boxes = 0
            for i in range(0, n, bs):
                results = pipe.run(images[i : i + bs], profile)
                boxes += sum(len(r.kept) for r in results)
            if pipe.detector.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            forwards = timer.seconds
            e2e = float("nan")
            if not args.no_end_to_end:
                folder = workdir / f"in-{n}"
                if not folder.exists():
                    from PIL import Image

                    folder.mkdir()
                    for j, im in enumerate(images):
                        Image.fromarray(im).save(folder / f"{j:03d}.png")
                paths = sorted(folder.glob("*.png"))
                timer.seconds = 0.0
                t0 = time.perf_counter()
                run_segmentation(paths, pipe, profile, workdir / f"out-{n}-{bs}", batch_size=bs, restart=True)
                e2e = time.perf_counter() - t0
                e2e_ratio = e2e / timer.seconds
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{n:>6} {bs:>5} {n / wall:>7.2f} {forwards:>7.2f} {wall:>7.2f} {wall / forwards:>8.3f} "
                  f"{e2e:>7.2f} {e2e_ratio if not args.no_end_to_end else float('nan'):>7.3f} {boxes / n:>9.1f} {rss:>12.0f}")
    if pipe.detector.device.startswith("cuda"):
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 0


def main_real(args: argparse.Namespace) -> int:
    """Real-size random models: per-stage time and each exact saving off/on, same images alternating."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from savings import report, run_savings

    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile
    from iapas.testing.presets import make_random_model

    torch.manual_seed(args.seed)
    folders = {}
    for role, name in (("detector", args.detector_preset), ("segmenter", args.segmenter_preset)):
        folder = Path(args.models_dir) / name
        if not (folder / "config.json").exists():
            print(f"writing random-weight {name} to {folder} (outputs are noise)")
            make_random_model(name, folder, seed=args.seed)
        folders[role] = str(folder)
    pipe = Pipeline.from_config(PipelineConfig(detector=folders["detector"], segmenter=folders["segmenter"],
                                               device=args.device, dtype=args.dtype))
    profile = Profile.from_prompts("part", "object", ["scratch", "crack", "hole", "stain", "dent"])
    profile.size_threshold = 1.0
    n = int(args.images.split(",")[0])
    images = make_images(n, args.size, args.seed)
    print(f"device {pipe.detector.device}, dtype {pipe.detector.dtype}, {n} images {args.size}x{args.size}, "
          f"{args.repeats} repeat(s), detector {args.detector_preset}, segmenter {args.segmenter_preset} "
          f"(random weights), torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    totals = run_savings(pipe, profile, images, args.repeats)
    for line in report(totals):
        print(line)
    print(f"total {time.perf_counter() - t0:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
