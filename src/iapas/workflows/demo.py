"""The demo: stage 2 once on generated tile images with a hand-made 'tile' profile, with the
real models when the hub is reachable and tiny random ones otherwise (``iapas demo``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iapas.product.profile import Profile, ProfileError

DEMO_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEMO_SEGMENTER = "facebook/sam-vit-base"  # a small download (375 MB); --full: the paper's ViT-H
FULL_SEGMENTER = "facebook/sam-vit-huge"
TINY = "tiny"  # stands for a tiny random model built on the spot


@dataclass(frozen=True)
class DemoModels:
    """The models the demo runs: hub ids, folders, or :data:`TINY` (random, built on the spot)."""

    detector: str
    segmenter: str
    reason: str  # why these, in words

    @property
    def noise(self) -> bool:
        """Whether a tiny random model is among them: then the maps are noise."""
        return TINY in (self.detector, self.segmenter)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds (HF_ENDPOINT honoured)."""
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/{DEMO_DETECTOR}", timeout=timeout) as reply:
            return 200 <= reply.status < 400
    except (OSError, ValueError):
        return False


def choose_demo_models(
    detector: str | None = None,
    segmenter: str | None = None,
    *,
    tiny: bool = False,
    full: bool = False,
    env: dict[str, str] | None = None,
    reachable: Callable[[], bool] = hub_reachable,
) -> DemoModels:
    """What the demo runs. Models given run as given; for the others: --tiny, HF_HUB_OFFLINE
    set, or a hub that does not answer give :data:`TINY`; else the real Grounding DINO tiny and
    SAM ViT-B (ViT-H with ``full``). ``reachable`` is only asked when a real model is wanted."""
    env = dict(os.environ) if env is None else env
    if detector is not None and segmenter is not None:
        return DemoModels(detector, segmenter, "the models given")
    if tiny:
        reason = "--tiny"
    elif env.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        reason = "HF_HUB_OFFLINE is set"
    elif not reachable():
        reason = "the Hugging Face hub is not reachable"
    else:
        return DemoModels(
            detector or DEMO_DETECTOR, segmenter or (FULL_SEGMENTER if full else DEMO_SEGMENTER),
            "the hub is reachable" + (" (--full: the paper's SAM ViT-H)" if full else ""),
        )
    return DemoModels(detector or TINY, segmenter or TINY, reason)


def make_example_images(folder: Path, count: int = 4, seed: int = 0) -> list[Path]:
    """Grey tiles with a few dark scratches and spots: a stand-in product, written as PNGs."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        noise = rng.normal(150, 12, (240, 320)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.5)).convert("RGB")
        draw = ImageDraw.Draw(image)
        draw.rectangle([20, 20, 300, 220], outline=(90, 90, 90), width=3)  # the part's edge
        if i % 2 == 1:  # every other tile is defective
            x, y = (int(v) for v in rng.integers(60, 200, size=2))
            draw.line([x, y, x + 60, y + 25], fill=(40, 40, 40), width=3)
            draw.ellipse([x - 30, y + 30, x - 18, y + 42], fill=(30, 30, 30))
        path = folder / f"tile_{i:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def demo_models_line(chosen: DemoModels, detector: str, segmenter: str) -> str:
    """The demo's last line: which models ran, why, and whether the maps mean anything."""
    def name(given: str, used: str) -> str:
        return f"a tiny random model ({used})" if given == TINY else used

    line = f"models: detector {name(chosen.detector, detector)}, segmenter {name(chosen.segmenter, segmenter)} ({chosen.reason})"
    if chosen.noise:
        line += (
            ". The maps are NOISE: random weights show that the installation works, not what the method finds. "
            "With a network, run 'iapas demo' without --tiny and HF_HUB_OFFLINE for the real models"
        )
    return line


def check_demo_out(out: Path) -> None:
    """A ``ValueError`` (one line) unless ``out`` is missing, empty or an earlier demo's folder
    (its ``tile.yaml`` is the demo's): the demo writes tile.yaml, images/ and results/ (redone
    from scratch) there, over whatever they were."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out}: is a file; give the demo a new or empty folder")
    if not any(out.iterdir()):
        return
    try:
        mine = Profile.load(out / "tile.yaml").stage1.get("source") == "demo"
    except ProfileError:
        mine = False
    if not mine:
        raise ValueError(f"--out {out}: holds files of its own, not an earlier demo's; give the demo a new or empty "
                         "folder (it writes tile.yaml, images/ and results/ there)")


def demo_profile(out: Path) -> Profile:
    """The demo's hand-made 'tile' profile, saved as OUT/tile.yaml."""
    profile = Profile.from_prompts("tile", "tile", ["scratch", "crack", "spot"], stage1={"source": "demo"})
    profile.save(out / "tile.yaml")
    return profile

