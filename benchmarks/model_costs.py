"""Per-image cost of each detector and segmenter preset on this machine, through iapas' adapters.

Each preset (``iapas.testing.presets``: the hub model's architecture, random weights, built in
memory, nothing written) does one stage-2 image's work on a 512x512 image, twice; the second
(warm) time is the cost. A detector runs the object tag and a 7-phrase caption together
(``detect_many``, as the pipeline does); a segmenter runs 5 boxes (one encoding, one batched
decoding). The outputs are noise: this measures time only.

    python benchmarks/model_costs.py sam2.1-tiny owlv2-base       # some presets
    python benchmarks/model_costs.py                               # all of them (slow on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

CAPTION = "scratch . crack . hole . stain . dent . abnormal . defect . magnetic tile ."
BOXES = np.array(
    [[10, 10, 100, 100], [50, 60, 200, 220], [300, 300, 400, 380], [0, 0, 512, 512], [200, 100, 260, 150]], np.float32
)


def adapter_for(name: str, model, device: str):  # noqa: ANN001, ANN201 - a script
    """The iapas adapter around preset ``name``'s model, and one image's work as a callable."""
    import torch

    from iapas.testing.presets import PRESETS, make_processor

    kind = PRESETS[name].kind
    dtype = torch.float32
    if kind == "owlv2":
        from iapas.models.owlv2 import Owlv2Detector

        processor = make_processor("owlv2", image_size=int(model.config.vision_config.image_size))
        adapter = Owlv2Detector(model, processor, device, dtype, name)
    elif kind in ("grounding-dino", "mm-grounding-dino"):
        from iapas.models.detector import GroundingDinoDetector

        adapter = GroundingDinoDetector(model, make_processor(kind), device, dtype, name)
    elif kind == "sam2":
        from iapas.models.sam2 import _DEFAULT_PREPROCESSING, Sam2Segmenter

        return Sam2Segmenter(model, dict(_DEFAULT_PREPROCESSING), device, dtype, name), "segmenter"
    elif kind in ("sam", "sam_hq"):
        from iapas.models.segmenter import SamHQSegmenter, SamSegmenter

        adapter_class = SamHQSegmenter if kind == "sam_hq" else SamSegmenter
        return adapter_class(model, make_processor(kind), device, dtype, name), "segmenter"
    else:  # sam3: a detector that segments, measured on MTD images (the README's SAM 3 paragraph)
        raise SystemExit(f"model_costs.py has no adapter for preset {name!r} (kind {kind})")
    return adapter, "detector"


def main() -> None:
    import torch

    from iapas.testing.presets import PRESETS, build_random_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    measurable = [n for n, p in PRESETS.items() if p.kind != "sam3"]
    parser.add_argument("presets", nargs="*", default=measurable, help="preset names (default: all but sam3)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    results = {}
    for name in args.presets:
        model = build_random_model(name, device=args.device)
        adapter, kind = adapter_for(name, model, args.device)
        if kind == "detector":
            def run() -> None:
                adapter.detect_many([image], ["magnetic tile", CAPTION], box_threshold=0.1, text_threshold=0.1)
        else:
            def run() -> None:
                adapter.segment([image], [BOXES])
        times = []
        for _ in range(2):
            start = time.perf_counter()
            run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        results[name] = {"first_s": round(times[0], 2), "warm_s": round(times[1], 2)}
        print(f"{name:>20}: {times[1]:.2f} s per image (first {times[0]:.2f} s)", flush=True)
        del model, adapter
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "load_1min": round(load, 1), **results}))


if __name__ == "__main__":
    main()
