"""Images/s of ``segment``'s run with the local engine and with Ray Data (1 and 2 workers), on the
same images with the same models, and what starting Ray costs.

Each row runs :func:`iapas.engine.runner.run_segmentation` into a fresh folder (maps, masks, overlays,
results.jsonl). The local row uses models loaded before the clock starts; each Ray row's wall
time includes starting its actor pool, where every worker loads its own models once (the
per-actor load), which a long run pays once. ``first record s`` is the time to the first
finished image (for Ray: the pool's start and model load, then one batch). The local engine
runs first and again last, so that a change in the machine's load shows. Ray is started once before the Ray rows
(``ray.init`` with CPUs for the workers and decoding, no dashboard): its cost is its own row.

    python benchmarks/ray_scaling.py                     # tiny random models, 24 real MTD images
    python benchmarks/ray_scaling.py --images 16 --batch-size 2
    python benchmarks/ray_scaling.py --preset real --images 2   # random real-size models (slow on CPU)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "MTD"


def images(n: int, folder: Path) -> list[Path]:
    """``n`` real MTD images when the data is there (defective and free, alternately), else
    synthetic 256x256 grey tiles with a dark scratch."""
    if DATA.is_dir():
        pools = [sorted((DATA / d / "Imgs").glob("*.jpg")) for d in ("MT_Crack", "MT_Free", "MT_Blowhole", "MT_Uneven")]
        picked = [p for group in zip(*pools) for p in group][:n]
        if len(picked) == n:
            return picked
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        tile = rng.normal(128, 12, (256, 256)).clip(0, 255).astype(np.uint8)
        tile[100 + i % 50: 104 + i % 50, 40:200] = 30
        path = folder / f"tile_{i:03d}.png"
        Image.fromarray(tile).save(path)
        out.append(path)
    return out


def models(preset: str, folder: Path) -> tuple[str, str]:
    if preset == "tiny":
        from iapas.testing import make_tiny_grounding_dino, make_tiny_sam

        return str(make_tiny_grounding_dino(folder / "gd", shortest_edge=320)), str(make_tiny_sam(folder / "sam"))
    from iapas.testing.presets import make_random_model

    return str(make_random_model("grounding-dino-tiny", folder / "gd")), str(make_random_model("sam-vit-base", folder / "sam"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--preset", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run (comma separated)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="iapas-ray-scaling-"))
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> int:
    """The table, from runs into the folder ``work`` (its images, models and outputs)."""
    import ray
    from rich.console import Console
    from rich.table import Table

    from iapas.engine.ray_executor import RayExecutor, RayOptions
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile
    from iapas.engine.runner import run_segmentation

    paths = images(args.images, work / "images")
    detector, segmenter = models(args.preset, work / "models")
    profile = Profile.from_prompts("magnetic_tile", "tile", ["crack", "blowhole", "fray"])
    config = PipelineConfig(detector=detector, segmenter=segmenter, device="cpu")
    pipeline = Pipeline.from_config(config)
    rows: list[tuple[str, float, float, float]] = []  # name, wall s, images/s, first record s

    def timed(name: str, executor: object | None) -> None:
        done: list[float] = []
        started = time.perf_counter()
        summary = run_segmentation(paths, pipeline, profile, work / name.replace(" ", "-"), batch_size=args.batch_size,
                                   executor=executor, restart=True,
                                   on_image=lambda key, status: done.append(time.perf_counter()))
        wall = time.perf_counter() - started
        if summary.done != len(paths):
            raise SystemExit(f"{name}: {summary.done} of {len(paths)} images done ({summary.failed[:1]})")
        rows.append((name, wall, len(paths) / wall, done[0] - started))

    timed("local", None)
    counts = [int(w) for w in args.workers.split(",") if w]
    cpus = RayOptions(workers=max(counts), cpus_per_worker=args.cpus_per_worker).local_cpus()  # as the executor's
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.get(ray.remote(lambda: 0).remote())  # a first task: the worker processes are up
    startup = time.perf_counter() - started
    try:
        for n in counts:
            timed(f"ray {n} worker{'s' if n > 1 else ''}", RayExecutor(RayOptions(workers=n, cpus_per_worker=args.cpus_per_worker)))
    finally:
        ray.shutdown()
    timed("local (again)", None)

    header = f"{len(paths)} images, {args.preset} models, batch {args.batch_size}, {os.cpu_count()} CPUs; Ray start-up {startup:.1f} s"
    table = Table(title=header)
    columns = ("engine", "wall s", "images/s", "vs local", "first record s")
    for column in columns:
        table.add_column(column, justify="right" if column != "engine" else "left")
    local_rate = rows[0][2]
    cells = [(name, f"{wall:.1f}", f"{rate:.2f}", f"{rate / local_rate:.2f}x", f"{first:.1f}") for name, wall, rate, first in rows]
    for row in cells:
        table.add_row(*row)
    Console().print(table)
    print(f"\n{header}\n")
    print("| " + " | ".join(columns) + " |\n| --- |" + " ---: |" * (len(columns) - 1))
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print(f"| Ray start-up (`ray.init` + a first task) | {startup:.1f} |" + " |" * (len(columns) - 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
