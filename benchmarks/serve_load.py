"""Bounded loopback load on `iapas serve` (the station's app on a real uvicorn in this process,
the clients in a process of their own, as a line camera or a MES is another program).

1. steady load: CLIENTS threads x REQUESTS requests each (httpx, keep-alive), alternately the raw
   image with ``?category=`` and a multipart form; every 20th request malformed (alternately a
   truncated PNG -> 400 and an unknown category -> 404); run twice (the second time to show
   memory flat once the bounded result store is full);
2. a burst: BURST requests at once, more than the queue holds -> some 503 (only here);
3. the steady load once more with STALLED uploads in the mix (raw sockets in another process of
   the clients that each declare and send STALLED_MB of an upload, then go silent, as a
   slowloris client does): the station holds at most ``--max-inflight-mb`` of upload bytes
   (beyond: 503 with Retry-After) and drops each stalled client after ``--body-timeout`` (408),
   so its memory grows by that bound at most; reported next to the round without them.

Reports requests/s, p50/p95/p99 latency of the answered inspections, answers by status, the
station's resident memory (VmRSS) after the warm-up, after each steady load and after the
burst, and the served images/s over ``Pipeline.run`` images/s on the same images, same models,
same process and batch size (target >= 0.9). The clients are closed-loop (each waits for its
answer), so batches fill only with more clients than the batch size: the default is twice.

With ``--sinks``, instead: the steady load on two stations side by side, one without verdict
sinks and one with a webhook (a receiver in a process of its own) and an MQTT broker (Debian's
mosquitto, started here) attached, in alternating rounds; reports the served images/s of each
and their ratio (target: within 5%), and what each sink delivered.

    .venv/bin/python benchmarks/serve_load.py            # tiny models, ~1 minute on 2 cores
    .venv/bin/python benchmarks/serve_load.py --clients 8 --requests 50
    .venv/bin/python benchmarks/serve_load.py --sinks --rounds 3
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
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


Answer = tuple[int, float, str]  # status, seconds, Retry-After


def client_phase(url: str, mode: str, clients: int, requests: int, size: int, seed: int) -> tuple[list[Answer], float]:
    """One phase of the load, run in the clients' own process (a line camera or a MES is another
    program: its HTTP work must not share the station's interpreter). ``steady``/``warm``:
    ``clients`` threads x ``requests`` requests, every 20th malformed (steady only);
    ``burst``: ``clients`` requests at once, never malformed. Answers and the phase's seconds."""
    import httpx

    images = make_images(32, size, seed)
    broken = images[0][:300]

    def inspect(client: httpx.Client, n: int) -> Answer:
        if mode == "steady" and n % 20 == 19:  # malformed: a truncated PNG, or an unknown category
            data, category = (broken, "tile") if (n // 20) % 2 == 0 else (images[0], "tyre")
        else:
            data, category = images[n % len(images)], "tile"
        t0 = time.perf_counter()
        if n % 2:  # as a form: multipart 'file' and 'category'
            r = client.post("/v1/inspect", files={"file": ("p.png", data)}, data={"category": category})
        else:  # as a line camera may post: the raw bytes, the category in the query
            r = client.post("/v1/inspect", content=data, params={"category": category},
                            headers={"content-type": "application/octet-stream"})
        return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after", "")

    answers: list[Answer] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def run(c: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            if mode == "burst":
                barrier.wait()
                got = [inspect(client, c * 20)]
            else:
                got = [inspect(client, c * requests + k) for k in range(requests)]
        with lock:
            answers.extend(got)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return answers, time.perf_counter() - t0


def stalled_phase(url: str, n: int, megabytes: float) -> list[int]:
    """``n`` uploads that each declare and send ``megabytes`` (all but one byte), then stay
    silent until the station answers (408 after the body timeout, or 503 at once when the
    upload bytes in flight are over the station's bound). The statuses."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    size = int(megabytes * 2**20)
    chunk = b"\0" * 2**20

    def one(_: int) -> int:
        with socket.create_connection((host, int(port)), timeout=600) as sock:
            try:
                sock.sendall(b"POST /v1/inspect?category=tile HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: image/png\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n")
                left = size - 1
                while left > 0:
                    sent = sock.send(chunk[:min(left, len(chunk))])
                    left -= sent
            except OSError:  # refused mid-way: the station closed the connection
                pass
            answer = b""
            try:
                while part := sock.recv(65536):
                    answer += part
            except OSError:
                pass
        return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


class PeakRss:
    """The station's highest VmRSS while a phase runs (sampled every 50 ms in a thread)."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def mixed_round(args: argparse.Namespace, url: str, worker, clients, rss: dict, reference, refs: list[float]):  # type: ignore[no-untyped-def]
    """The steady load with ``--stalled`` stalled uploads started first, from a second client
    process: (answers, seconds, images served, the stalled uploads' statuses, peak and starting RSS)."""
    silent = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        silent.submit(time.sleep, 0).result()  # spawned before the round: its start-up is not timed
        before = rss_mib()
        served = worker.images_served
        with PeakRss() as peak:
            stalled = silent.submit(stalled_phase, url, args.stalled, args.stalled_mb)
            time.sleep(1.0)  # the stalled uploads are in before the steady clients start
            answers, seconds = clients.submit(client_phase, url, "steady", args.clients, args.requests,
                                              args.size, args.seed).result()
            images = worker.images_served - served
            codes = stalled.result()
        rss["stalled"] = rss_mib()
        refs.append(reference())
    finally:
        silent.shutdown()
    return answers, seconds, images, codes, peak.peak, before


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--clients", type=int, default=16,
                        help="closed-loop clients (each waits for its answer): twice the batch size keeps batches full")
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the steady load")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stalled", type=int, default=20, help="stalled uploads in the last round (0: no such round)")
    parser.add_argument("--stalled-mb", type=float, default=39.0, help="MB each stalled upload sends before going silent")
    parser.add_argument("--max-inflight-mb", type=float, default=256.0, help="the station's bound on upload bytes in flight")
    parser.add_argument("--body-timeout", type=float, default=10.0, help="the station's --body-timeout in seconds")
    parser.add_argument("--store", action="store_true",
                        help="a --store station (segment run folders in a temporary folder) instead of the memory store")
    parser.add_argument("--sinks", action="store_true",
                        help="compare the served rate without and with a webhook and an MQTT sink (rounds alternate)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="iapas-serve-load-"))
    try:
        return measure(args, tmp)
    finally:  # also when a phase fails or the run is interrupted
        shutil.rmtree(tmp, ignore_errors=True)  # the tiny models and a --store folder


def measure(args: argparse.Namespace, tmp: Path) -> int:
    """The whole measurement, its tiny models and any --store folder under ``tmp``."""
    from iapas.product.decision import Decision
    from iapas.core.images import read_image_bytes
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile
    from iapas.serve import build_station
    from iapas.serve.app import ServeSettings
    from iapas.serve.server import BackgroundServer
    from iapas.testing import make_tiny_models

    models = make_tiny_models(tmp / "models", detector_shortest_edge=320)
    pipeline = Pipeline.from_config(PipelineConfig(detector=str(models["grounding-dino"]), segmenter=str(models["sam"]), device="cpu"))
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "stain"])
    profile.decision = Decision(threshold=0.3, score_min=0.0, score_max=0.5, n_calibration=20, target_rate=0.1)
    images = make_images(32, args.size, args.seed)
    rgbs = [read_image_bytes(b, "x.png").rgb for b in images]

    # the reference: Pipeline.run on the same images in batches of --batch-size, in windows
    # between the load's rounds (a shared machine's speed drifts by tens of percent from one
    # minute to the next): each round's served rate is compared with the mean of the windows
    # just before and just after it. The worker is idle then, so the two never overlap.
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

    if args.sinks:
        return compare_sinks(args, tmp, pipeline, profile)
    settings = ServeSettings(max_inflight_bytes=int(args.max_inflight_mb * 2**20), body_timeout=args.body_timeout)
    app, worker = build_station(pipeline, {"tile": profile}, batch_size=args.batch_size,
                                max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                                store_dir=tmp / "station" if args.store else None, settings=settings)
    rows: list[tuple[str, str]] = []
    refs: list[float] = []
    rounds: list[tuple[list[Answer], float, int, int]] = []  # answers, seconds, images, batches
    try:
        with BackgroundServer(app) as url:
            clients = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            try:
                warm_answers, _ = clients.submit(client_phase, url, "warm", 1, 4, args.size, args.seed).result()
                assert all(code == 200 for code, _, _ in warm_answers), warm_answers
                rss = {"warm": rss_mib()}
                refs.append(reference())
                for k in range(args.rounds):  # after the first: memory must stay flat, the store is full
                    name = f"steady {k + 1}"
                    served, batches = worker.images_served, worker.batches
                    answers, seconds = clients.submit(client_phase, url, "steady", args.clients, args.requests,
                                                      args.size, args.seed).result()
                    rounds.append((answers, seconds, worker.images_served - served, worker.batches - batches))
                    rss[name] = rss_mib()
                    refs.append(reference())
                bursts = []
                for name in ("burst 1", "burst 2"):
                    bursts.append(clients.submit(client_phase, url, "burst", args.burst, 1, args.size, args.seed).result())
                    rss[name] = rss_mib()
                if args.stalled:
                    stalled = mixed_round(args, url, worker, clients, rss, reference, refs)
            finally:
                clients.shutdown()
    finally:
        worker.stop()

    def describe(name: str, answers: list[Answer], seconds: float) -> None:
        ok = [s for code, s, _ in answers if code == 200]
        codes = Counter(code for code, _, _ in answers)
        rows.append((name, f"{len(answers)} requests in {seconds:.1f} s = {len(answers) / seconds:.1f} req/s; "
                           f"latency of the 200s p50 {1000 * percentile(ok, 50):.0f} ms, p95 {1000 * percentile(ok, 95):.0f} ms, "
                           f"p99 {1000 * percentile(ok, 99):.0f} ms; answers "
                           + ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))))

    ratios = []
    for k, (answers, seconds, images_served, batches) in enumerate(rounds):
        describe(f"steady {k + 1} ({args.clients} clients x {args.requests})", answers, seconds)
        served_rate = images_served / seconds
        ref = (refs[k] + refs[k + 1]) / 2
        ratios.append(served_rate / ref)
        rows.append(("  images/s served", f"{served_rate:.2f} in {batches} batches of "
                     f"{images_served / max(batches, 1):.1f} on average; Pipeline.run (batch {args.batch_size}) "
                     f"{refs[k]:.2f} before, {refs[k + 1]:.2f} after; ratio {ratios[-1]:.2f}"))
    for k, (answers, seconds) in enumerate(bursts):
        describe(f"burst {k + 1} ({args.burst} at once, queue {args.queue_size})", answers, seconds)
    if args.stalled:
        answers, seconds, images_served, stalled_codes, peak, before = stalled
        describe(f"steady + {args.stalled} stalled ({args.stalled_mb:g} MB each)", answers, seconds)
        served_rate = images_served / seconds
        rows.append(("  images/s served", f"{served_rate:.2f} (without stalled uploads: "
                     f"{rounds[-1][2] / rounds[-1][1]:.2f}); Pipeline.run {refs[-2]:.2f} before, {refs[-1]:.2f} after; "
                     f"ratio {served_rate / ((refs[-2] + refs[-1]) / 2):.2f}"))
        rows.append(("  stalled uploads answered", ", ".join(f"{code}: {count}" for code, count in sorted(Counter(stalled_codes).items()))))
        rows.append(("  station RSS MiB", f"before {before:.0f}, peak {peak:.0f} (+{peak - before:.0f}; bound: "
                     f"--max-inflight-mb {args.max_inflight_mb:g} of upload bytes; without it, +{args.stalled * args.stalled_mb:.0f} MB), "
                     f"after {rss['stalled']:.0f}"))
    steady_answers = [a for answers, *_ in rounds for a in answers]
    burst_answers = [a for answers, _ in bursts for a in answers]
    rows.append(("503 outside the bursts", str(sum(code == 503 for code, _, _ in steady_answers))))
    rows.append(("Retry-After of the 503s", ", ".join(sorted({r for code, _, r in burst_answers if code == 503})) or "-"))
    rows.append(("ratio served / Pipeline.run", f"{np.mean(ratios):.2f} (mean of the rounds; target >= 0.9)"))
    rows.append(("station RSS MiB", ", ".join(f"{name} {v:.0f}" for name, v in rss.items())
                 + ("" if args.store else " (results kept: at most 256)")))
    width = max(len(k) for k, _ in rows)
    print(f"iapas serve load: tiny models, {args.size}x{args.size} PNGs, batch {args.batch_size}, "
          f"max wait {args.max_wait_ms:g} ms, {'--store' if args.store else 'memory'} store, cpu, {os.cpu_count()} cores")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def run_receiver(urls, stop) -> None:  # type: ignore[no-untyped-def]
    """A webhook receiver in a process of its own (a MES is another program): its URL to
    ``urls``, then, once ``stop`` is set, how many POSTs it got."""
    from iapas.testing.plant import WebhookReceiver

    with WebhookReceiver() as hook:
        urls.put(hook.url)
        stop.wait()
        urls.put(len(hook.received))


def compare_sinks(args: argparse.Namespace, tmp: Path, pipeline, profile) -> int:  # type: ignore[no-untyped-def]
    """The steady load on a station without sinks and one with a webhook and an MQTT sink, in
    alternating rounds (a shared machine's speed drifts: each pair of rounds is compared)."""
    from iapas.serve import build_station
    from iapas.serve.server import BackgroundServer
    from iapas.serve.sink_targets import open_sinks
    from iapas.testing.plant import Mosquitto

    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    receiver = context.Process(target=run_receiver, args=(urls, stop), daemon=True)
    receiver.start()
    (tmp / "secret").write_text("benchmark-key\n")
    stations, rates = {}, {"without sinks": [], "webhook + MQTT": []}
    with Mosquitto() as broker:
        sinks = open_sinks([urls.get(timeout=60)], tmp / "secret", [f"mqtt://127.0.0.1:{broker.port}/iapas"]).start()
        try:
            for name, attached in zip(rates, (None, sinks)):
                stations[name] = build_station(pipeline, {"tile": profile}, batch_size=args.batch_size,
                                               max_wait_ms=args.max_wait_ms, queue_size=args.queue_size, sinks=attached)
            with BackgroundServer(stations["without sinks"][0]) as plain, \
                    BackgroundServer(stations["webhook + MQTT"][0]) as sinked, \
                    ProcessPoolExecutor(1, mp_context=context) as clients:
                for url in (plain, sinked):
                    clients.submit(client_phase, url, "warm", 1, 4, args.size, args.seed).result()
                for k in range(args.rounds):
                    for name, url in (zip(rates, (plain, sinked)) if k % 2 == 0 else zip(reversed(rates), (sinked, plain))):
                        worker = stations[name][1]
                        served = worker.images_served
                        _, seconds = clients.submit(client_phase, url, "steady", args.clients, args.requests,
                                                    args.size, args.seed).result()
                        rates[name].append((worker.images_served - served) / seconds)
        finally:
            for _, worker in stations.values():
                worker.stop()
            sinks.stop(timeout=30)
            stop.set()
    received = urls.get(timeout=30)
    receiver.join(10)
    print(f"iapas serve with verdict sinks: tiny models, {args.size}x{args.size} PNGs, batch {args.batch_size}, "
          f"{args.clients} clients x {args.requests} requests per round, {args.rounds} rounds each (alternating), "
          f"cpu, {os.cpu_count()} cores")
    for name, values in rates.items():
        print(f"{name:<15}  images/s served {np.mean(values):.2f} (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    ratio = np.mean(rates["webhook + MQTT"]) / np.mean(rates["without sinks"])
    pairs = np.asarray(rates["webhook + MQTT"]) / np.asarray(rates["without sinks"])
    print(f"{'ratio':<15}  {ratio:.3f} of the means, {np.median(pairs):.3f} the median of the {len(pairs)} pairs' "
          f"(with / without; target within 5%: >= 0.95)")
    for label, stats in sinks.stats().items():
        print(f"{label:<15}  delivered {stats.delivered}, failed {stats.failed}, dropped {stats.dropped}, "
              f"retries {stats.retries}")
    print(f"{'receiver':<15}  {received} POSTs received")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
