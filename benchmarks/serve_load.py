"""Bounded loopback load on `iapas serve` (the station's app on a real uvicorn, in this process).

1. steady load: CLIENTS threads x REQUESTS requests each (httpx, keep-alive), every 20th request
   malformed (alternately a truncated PNG -> 400 and an unknown category -> 404), run twice (the
   second time to show memory flat once the bounded result store is full);
2. a burst: BURST requests at once, more than the queue holds -> some 503 (only here).

Reports requests/s, p50/p95/p99 latency of the answered inspections, answers by status, resident
memory (VmRSS) after the warm-up, after each steady load and after the burst, and the served
images/s over ``Pipeline.run`` images/s on the same images, same models, same process and batch
size (target >= 0.9).

    .venv/bin/python benchmarks/serve_load.py            # tiny models, ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_images(n: int, size: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
        y, x = rng.integers(0, size - 40, 2)
        base[y:y + 30, x:x + 30] = rng.integers(0, 60, (30, 30, 3), dtype=np.uint8)  # a dark "defect"
        buffer = io.BytesIO()
        Image.fromarray(base).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import httpx

    from iapas.decision import Decision
    from iapas.io import read_image_bytes
    from iapas.pipeline import Pipeline, PipelineConfig
    from iapas.profile import Profile
    from iapas.serve import build_station
    from iapas.serve.server import BackgroundServer
    from iapas.testing import make_tiny_models

    tmp = Path(tempfile.mkdtemp(prefix="iapas-serve-load-"))
    models = make_tiny_models(tmp / "models", detector_shortest_edge=320)
    pipeline = Pipeline.from_config(PipelineConfig(detector=str(models["grounding-dino"]), segmenter=str(models["sam"]), device="cpu"))
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "stain"])
    profile.decision = Decision(threshold=0.3, score_min=0.0, score_max=0.5, n_calibration=20, target_rate=0.1)
    images = make_images(32, args.size, args.seed)
    rgbs = [read_image_bytes(b, "x.png").rgb for b in images]

    # the reference: Pipeline.run on the same images in batches of --batch-size, measured before
    # and after the load (a shared machine's speed drifts); the ratio is taken to the faster one
    warm = threading.Thread(target=lambda: [pipeline.run(rgbs[:n], profile) for n in range(1, args.batch_size + 1)])
    warm.start()  # warm-up: each batch size's first forward is slow
    warm.join()

    def reference() -> float:
        """Pipeline.run's images/s, called from a thread of its own as the worker calls it (on
        this 2-core box torch ran several times slower from the main thread than from another)."""
        n_ref = max(args.batch_size * 6, 48)
        rate: list[float] = []

        def run() -> None:
            started = time.perf_counter()
            for i in range(0, n_ref, args.batch_size):
                pipeline.run([rgbs[(i + j) % len(rgbs)] for j in range(args.batch_size)], profile)
            rate.append(n_ref / (time.perf_counter() - started))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return rate[0]

    ref_before = reference()

    app, worker = build_station(pipeline, {"tile": profile}, batch_size=args.batch_size,
                                max_wait_ms=args.max_wait_ms, queue_size=args.queue_size)
    broken = images[0][:300]
    rows: list[tuple[str, str]] = []
    try:
        with BackgroundServer(app) as url:
            def inspect(client: httpx.Client, n: int) -> tuple[int, float, str]:
                if n % 20 == 19:  # malformed: a truncated PNG, or an unknown category
                    data, category = (broken, "tile") if (n // 20) % 2 == 0 else (images[0], "tyre")
                else:
                    data, category = images[n % len(images)], "tile"
                t0 = time.perf_counter()
                r = client.post("/v1/inspect", files={"file": ("p.png", data)}, data={"category": category})
                return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after", "")

            with httpx.Client(base_url=url, timeout=120) as client:  # warm-up
                for n in range(4):
                    assert inspect(client, n)[0] == 200
            rss_warm = rss_mib()

            results: list[tuple[int, float, str]] = []
            lock = threading.Lock()

            def client_run(c: int) -> None:
                with httpx.Client(base_url=url, timeout=120) as client:
                    for k in range(args.requests):
                        answer = inspect(client, c * args.requests + k)
                        with lock:
                            results.append(answer)

            served_before = worker.images_served
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client_run, range(args.clients)))
            steady_s = time.perf_counter() - t0
            steady_served = worker.images_served - served_before
            rss_steady = rss_mib()
            # the same load again: memory must stay flat once the bounded result store is full
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client_run, range(args.clients)))
            again = results[len(results) // 2:]
            del results[len(results) // 2:]
            rss_again = rss_mib()

            barrier = threading.Barrier(args.burst)

            def burst_one(n: int) -> tuple[int, float, str]:
                with httpx.Client(base_url=url, timeout=120) as client:
                    barrier.wait()
                    return inspect(client, n * 20)  # never a malformed one

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.burst) as pool:
                burst = list(pool.map(burst_one, range(args.burst)))
            burst_s = time.perf_counter() - t0
            rss_burst = rss_mib()
            batches = worker.batches
    finally:
        worker.stop()
    ref_after = reference()
    ref_rate = max(ref_before, ref_after)

    def describe(name: str, answers: list[tuple[int, float, str]], seconds: float) -> None:
        ok = [s for code, s, _ in answers if code == 200]
        codes = Counter(code for code, _, _ in answers)
        rows.append((name, f"{len(answers)} requests in {seconds:.1f} s = {len(answers) / seconds:.1f} req/s; "
                           f"latency of the 200s p50 {1000 * percentile(ok, 50):.0f} ms, p95 {1000 * percentile(ok, 95):.0f} ms, "
                           f"p99 {1000 * percentile(ok, 99):.0f} ms; answers "
                           + ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))))

    describe(f"steady ({args.clients} clients x {args.requests})", results, steady_s)
    describe(f"burst ({args.burst} at once, queue {args.queue_size})", burst, burst_s)
    served_rate = steady_served / steady_s
    retry = {r for code, _, r in burst if code == 503}
    rows.append(("503 outside the burst", str(sum(code == 503 for code, _, _ in results + again))))
    rows.append(("Retry-After of the 503s", ", ".join(sorted(retry)) or "-"))
    rows.append(("images/s served (steady)", f"{served_rate:.2f} in {batches} batches in all"))
    rows.append((f"images/s Pipeline.run (batch {args.batch_size})", f"{ref_before:.2f} before, {ref_after:.2f} after the load"))
    rows.append(("ratio served / Pipeline.run", f"{served_rate / ref_rate:.2f} (to the faster; target >= 0.9)"))
    rows.append(("RSS MiB warm / steady / steady again / burst",
                 f"{rss_warm:.0f} / {rss_steady:.0f} / {rss_again:.0f} / {rss_burst:.0f} (results kept: at most 256)"))
    width = max(len(k) for k, _ in rows)
    print(f"iapas serve load: tiny models, {args.size}x{args.size} PNGs, batch {args.batch_size}, "
          f"max wait {args.max_wait_ms:g} ms, cpu, {os.cpu_count()} cores")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
