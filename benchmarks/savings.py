"""Per-stage timing and the before/after of each exact saving (used by throughput.py --preset real).

Stages are timed with hooks on the real sub-modules (forwards) and wrappers on the adapters'
preprocessing and mask post-processing methods, in process CPU seconds and wall seconds.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any

SWITCHES = (
    ("share_backbone", "detector", "Swin backbone shared by the two captions", "swin"),
    ("cache_text_features", "detector", "BERT features cached per caption", "bert"),
    ("fast_preprocessing", "segmenter", "SAM preprocessing on the device", "sam prep"),
    ("batched_postprocess", "segmenter", "mask upsampling in one call per image", "sam post"),
)


class StageTimer:
    """Accumulates (CPU s, wall s, calls) per named stage; nested stages are not subtracted."""

    def __init__(self, sync: Any = None) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._sync = sync or (lambda: None)
        self._open: dict[int, tuple[float, float]] = {}
        self._undo: list[Any] = []

    def detach(self) -> None:
        """Remove every hook and wrapper this timer added."""
        while self._undo:
            self._undo.pop()()

    def reset(self) -> None:
        self.cpu.clear(), self.wall.clear(), self.calls.clear()

    def _start(self, key: int) -> None:
        self._sync()
        self._open[key] = (time.process_time(), time.perf_counter())

    def _stop(self, key: int, name: str) -> None:
        self._sync()
        cpu0, wall0 = self._open.pop(key)
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu0
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall0
        self.calls[name] = self.calls.get(name, 0) + 1

    def module(self, module: Any, name: str) -> None:
        self._undo.append(module.register_forward_pre_hook(lambda m, a: self._start(id(m))).remove)
        self._undo.append(module.register_forward_hook(lambda m, a, o: self._stop(id(m), name)).remove)

    def method(self, owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            key = id(timed)
            self._start(key)
            try:
                return original(*args, **kwargs)
            finally:
                self._stop(key, name)

        setattr(owner, attr, timed)
        self._undo.append(lambda: delattr(owner, attr))


def attach_stages(timer: StageTimer, pipe: Any) -> None:
    det, seg = pipe.detector, pipe.segmenter
    inner = det.model.model
    timer.module(det.model, "gdino total")
    timer.module(inner.backbone.conv_encoder, "swin")
    timer.module(inner.text_backbone, "bert")
    timer.module(inner.encoder, "gdino encoder")
    timer.module(inner.decoder, "gdino decoder")
    timer.method(det, "_pixels", "gdino prep")
    timer.module(seg.model.vision_encoder, "sam encoder")
    timer.module(seg.model.mask_decoder, "sam decoder")
    timer.method(seg, "_pixels", "sam prep")
    timer.method(seg, "_masks", "sam post")


FORWARD_STAGES = ("gdino total", "sam encoder", "sam decoder")


@contextmanager
def switched(pipe: Any, value: bool):
    owners = {"detector": pipe.detector, "segmenter": pipe.segmenter}
    saved = [(owners[o], s, getattr(owners[o], s)) for s, o, _, _ in SWITCHES]
    for owner, s, _ in saved:
        setattr(owner, s, value)
    try:
        yield
    finally:
        for owner, s, v in saved:
            setattr(owner, s, v)


def run_savings(pipe: Any, profile: Any, images: list[Any], repeats: int, log: Any = print) -> dict[str, Any]:
    """Each image run with every saving off and on, alternating which goes first; returns the
    per-image CPU/wall seconds per stage for 'off' and 'on' and the pipeline totals."""
    import resource

    timer = StageTimer()
    attach_stages(timer, pipe)
    totals = {"off": {"cpu": {}, "wall": {}, "pipe_cpu": 0.0, "pipe_wall": 0.0, "n": 0},
              "on": {"cpu": {}, "wall": {}, "pipe_cpu": 0.0, "pipe_wall": 0.0, "n": 0}}
    pipe.detector.text_memo.clear()
    max_diff, differing = 0.0, 0.0
    step = 0
    for _ in range(repeats):
        for image in images:
            order = ("off", "on") if step % 2 == 0 else ("on", "off")
            step += 1
            maps = {}
            for label in order:
                timer.reset()  # the BERT memo stays warm across images, as within a category
                with switched(pipe, label == "on"):
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    result = pipe.run([image], profile)[0]
                    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                t = totals[label]
                for k, v in timer.cpu.items():
                    t["cpu"][k] = t["cpu"].get(k, 0.0) + v
                for k, v in timer.wall.items():
                    t["wall"][k] = t["wall"].get(k, 0.0) + v
                t["pipe_cpu"] += cpu
                t["pipe_wall"] += wall
                t["n"] += 1
                maps[label] = result
                log(f"  image {step}, savings {label}: {wall:.1f} s wall, {cpu:.1f} CPU-s, {len(result.kept)} boxes")
            a, b = maps["off"], maps["on"]
            max_diff = max(max_diff, float(abs(a.anomaly_map - b.anomaly_map).max()))
            differing = max(differing, float((a.anomaly_map != b.anomaly_map).mean()))
    totals["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    totals["map_difference"] = (max_diff, differing)
    return totals


def report(totals: dict[str, Any]) -> list[str]:
    """The per-stage table (per image, CPU s and wall s, off / on / ratio) and the overheads."""
    off, on = totals["off"], totals["on"]
    n_off, n_on = max(off["n"], 1), max(on["n"], 1)
    stages = ["gdino prep", "swin", "bert", "gdino encoder", "gdino decoder", "gdino total",
              "sam prep", "sam encoder", "sam decoder", "sam post"]
    lines = [f"{'stage (per image)':<22} {'off CPU-s':>9} {'on CPU-s':>9} {'ratio':>6} {'off wall':>9} {'on wall':>9} {'ratio':>6}"]
    for s in stages:
        a, b = off["cpu"].get(s, 0.0) / n_off, on["cpu"].get(s, 0.0) / n_on
        c, d = off["wall"].get(s, 0.0) / n_off, on["wall"].get(s, 0.0) / n_on
        lines.append(f"{s:<22} {a:>9.3f} {b:>9.3f} {a / b if b else float('nan'):>6.2f} {c:>9.3f} {d:>9.3f} {c / d if d else float('nan'):>6.2f}")
    for label, t, n in (("off", off, n_off), ("on", on, n_on)):
        fwd_cpu = sum(t["cpu"].get(s, 0.0) for s in FORWARD_STAGES) / n
        fwd_wall = sum(t["wall"].get(s, 0.0) for s in FORWARD_STAGES) / n
        lines.append(f"pipeline, savings {label:<3}: {t['pipe_cpu'] / n:8.2f} CPU-s {t['pipe_wall'] / n:8.2f} s wall per image; "
                     f"overhead over the forwards {t['pipe_cpu'] / n / fwd_cpu:.3f} (CPU) {t['pipe_wall'] / n / fwd_wall:.3f} (wall)")
    lines.append(f"whole pipeline off/on: {off['pipe_cpu'] / n_off / (on['pipe_cpu'] / n_on):.2f}x CPU, "
                 f"{off['pipe_wall'] / n_off / (on['pipe_wall'] / n_on):.2f}x wall; peak RSS {totals['peak_rss_mib']:.0f} MiB")
    diff, frac = totals["map_difference"]
    lines.append(f"maps off vs on: largest difference {diff:.3g}, {100 * frac:.4f}% of pixels differ "
                 "(SAM's device preprocessing equals the processor to float32 rounding; the rest is bitwise)")
    return lines
