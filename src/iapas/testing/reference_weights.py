"""The reference-chain goldens (``benchmarks/reference_diff.py``, ``tests/test_reference_goldens.py``):
seeded random weights, the inputs, and iapas's side of the comparison.

The small original-layout Grounding DINO and SAM of the goldens get every floating-point tensor
from :func:`seeded_tensor` (its name, shape and the seed alone), so the weights are regenerated
bit for bit from a small JSON (names, shapes, seed, the score shift) instead of being stored.
The HF layout is reached with a key map recorded once from transformers' own conversion
(``to_hf``): each HF tensor is a contiguous range of one original tensor. Only torch is needed:
``benchmarks/reference_side.py`` loads this file by path in the reference environment.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# The two layer norms whose coordinate 0 carries the logit shift (see apply_score_shift).
DECODER_NORM = "transformer.decoder.norm"
TEXT_NORM = "transformer.encoder.text_layers.{last}.norm2"
CONSTANT = ("pixel_mean", "pixel_std")  # SAM's normalisation constants, not weights


def seeded_tensor(name: str, shape: Sequence[int], seed: int) -> torch.Tensor:
    """A float32 tensor for parameter ``name``: 1-D ``*.weight`` (norm scales) ``1 + 0.1 z``,
    biases and other 1-D tensors ``0.02 z``, the rest ``z / sqrt(fan_in)``; ``z`` standard normal
    from a CPU generator seeded by ``seed`` and the name."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    z = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if len(shape) == 1:
        return 1 + 0.1 * z if name.endswith(".weight") else 0.02 * z
    fan_in = math.prod(shape[1:])
    return z / math.sqrt(fan_in)


def seeded_state(spec: Sequence[Sequence[Any]], seed: int) -> dict[str, torch.Tensor]:
    """``{name: seeded_tensor(...)}`` for ``spec``: ``[name, shape]`` or, for a tensor the model
    shares under several names, ``[name, shape, first_name]`` (seeded by the first name)."""
    return {entry[0]: seeded_tensor(entry[-1] if len(entry) > 2 else entry[0], entry[1], seed) for entry in spec}


def apply_score_shift(state: dict[str, torch.Tensor], enc_layers: int, scale: float, shift: float,
                      text_norm: str = TEXT_NORM, decoder_norm: str = DECODER_NORM) -> None:
    """Make the detector's logits ``scale * (random dot product) + shift``: coordinate 0 of the
    encoder's last text norm is the constant 1 and of the decoder's output norm the constant
    ``shift`` (weight 0), the decoder norm's other coordinates are scaled by ``scale``. With
    ``scale`` 1 and ``shift`` 0 the unshifted logits are measured. The norms' names are the
    original layout's unless given (``text_norm`` with ``{last}`` for the last encoder layer)."""
    text = text_norm.format(last=enc_layers - 1)
    state[f"{text}.weight"][0], state[f"{text}.bias"][0] = 0.0, 1.0
    weight, bias = state[f"{decoder_norm}.weight"], state[f"{decoder_norm}.bias"]
    weight[0] = 0.0
    weight[1:] *= torch.tensor(scale, dtype=torch.float32)
    bias[1:] *= torch.tensor(scale, dtype=torch.float32)
    bias[0] = torch.tensor(shift, dtype=torch.float32)


def to_hf(state: Mapping[str, torch.Tensor], key_map: Mapping[str, Sequence[Any]]) -> dict[str, torch.Tensor]:
    """The HF-layout state dict: ``key_map[hf_key] = [original_key, start, stop, shape]``, the
    flat range ``start:stop`` of the original tensor reshaped to ``shape``."""
    out = {}
    for hf_key, (original, start, stop, shape) in key_map.items():
        out[hf_key] = state[original].reshape(-1)[start:stop].reshape(shape).clone()
    return out


def record_key_map(names_shapes: Sequence[Sequence[Any]], convert: Any) -> dict[str, list[Any]]:
    """Run ``convert`` (original state dict -> HF state dict, transformers' own code) on tensors
    whose values are ``key_index * 2**32 + flat_index`` (float64, exact) and read back where
    every HF tensor came from; raise if one is not a contiguous range of one original tensor."""
    tagged = {
        name: (i * 2.0**32 + torch.arange(math.prod(shape), dtype=torch.float64)).reshape(shape)
        for i, (name, shape, *_) in enumerate(names_shapes)
    }
    names = [entry[0] for entry in names_shapes]
    key_map: dict[str, list[Any]] = {}
    for hf_key, tensor in convert(tagged).items():
        flat = tensor.reshape(-1).to(torch.float64)
        index = int(flat[0].item() // 2**32)
        start = int(flat[0].item() - index * 2.0**32)
        expected = index * 2.0**32 + torch.arange(start, start + flat.numel(), dtype=torch.float64)
        if not torch.equal(flat, expected):
            raise ValueError(f"{hf_key}: not a contiguous range of one original tensor")
        key_map[hf_key] = [names[index], start, start + flat.numel(), list(tensor.shape)]
    return key_map


# The goldens' inputs: real MTD images (the first of each folder, sorted) and elongated images
# resized from the first crack image, so the detector's 1333 px cap applies (KSDD2-like shapes).
GOLDEN_MTD = ("MT_Crack", "MT_Blowhole", "MT_Free")
GOLDEN_ELONGATED = {"crack_250x700": (250, 700), "crack_640x232": (640, 232)}


def golden_inputs(mtd: Path, out: Path) -> list[dict[str, Any]]:
    """Write the goldens' images and ground-truth masks (PNG) under ``out``; returns the
    manifest's ``images`` entries (``key``, ``image``, ``gt``, ``label``)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    items = []
    for folder in GOLDEN_MTD:
        image = sorted((mtd / folder / "Imgs").glob("*.jpg"))[0]
        items.append({"key": folder, "image": str(image), "gt": str(image.with_suffix(".png")),
                      "label": int(folder != "MT_Free")})
    crack = Path(items[0]["image"])
    for key, (h, w) in GOLDEN_ELONGATED.items():
        Image.open(crack).convert("RGB").resize((w, h), Image.Resampling.BILINEAR).save(out / f"{key}.png")
        Image.open(crack.with_suffix(".png")).convert("L").resize((w, h), Image.Resampling.NEAREST).save(out / f"{key}_gt.png")
        items.append({"key": key, "image": str(out / f"{key}.png"), "gt": str(out / f"{key}_gt.png"), "label": 1})
    return items


def write_hf_folders(build: Path, out: Path) -> dict[str, Path]:
    """The HF folders of the recipe ``build/weights.json`` with the configs of ``build/hf``:
    weights regenerated and mapped (:func:`to_hf`), saved as ``model.safetensors``."""
    import json
    import shutil

    from safetensors.torch import save_file

    recipe = json.loads((build / "weights.json").read_text())
    folders = {}
    for name in ("grounding-dino", "sam"):
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(build / "hf" / name, folder)
        state = seeded_state(recipe[name]["spec"], recipe["seed"])
        if name == "grounding-dino":
            apply_score_shift(state, recipe["enc_layers"], recipe["scale"], recipe["shift"])
        save_file(to_hf(state, recipe[name]["hf_map"]), str(folder / "model.safetensors"))
        folders[name] = folder
    return folders


# The stage-2 settings of the goldens (the paper's) and the profile they run.
SETTINGS: dict[str, Any] = {"object_tag": "tile", "nouns": ["crack", "hole", "stain"], "box_threshold": 0.1,
                            "text_threshold": 0.1, "iou_threshold": 0.5, "size_threshold": 0.8}
NEAR_ZERO = 1e-3  # a SAM logit this close to 0 may round to either side between implementations
MAP_TOLERANCE = 1e-5  # box scores agree to ~5e-6: a larger map difference is a mask pixel flip


def golden_profile() -> Any:
    from iapas.product.profile import Profile

    return Profile.from_prompts("tile", SETTINGS["object_tag"], SETTINGS["nouns"], size_threshold=SETTINGS["size_threshold"])


def run_pipeline(folders: Mapping[str, Path], items: Sequence[Mapping[str, Any]], raw: bool = True) -> dict[str, Any]:
    """iapas's Pipeline (float32, CPU) on each image of ``items``, with (``raw``) the detector's
    pixels and raw outputs: ``{key/name: array}`` (``nms_*``: kept and size-dropped boxes,
    clamped)."""
    import numpy as np

    from iapas.pipeline.stage2 import Pipeline, PipelineConfig, as_rgb

    pipe = Pipeline.from_config(PipelineConfig(
        detector=str(folders["grounding-dino"]), segmenter=str(folders["sam"]), device="cpu", dtype="float32",
        box_threshold=SETTINGS["box_threshold"], text_threshold=SETTINGS["text_threshold"],
        nms_iou=SETTINGS["iou_threshold"]))
    det, profile = pipe.detector, golden_profile()
    out: dict[str, Any] = {}
    for item in items:
        key, rgb = item["key"], as_rgb(item["image"])
        if raw:  # one more caption forward
            pixels = det._pixels([rgb])
            probs, boxes, _ = det._forward(pixels, profile.caption)
            out.update({f"{key}/pixels": pixels["pixel_values"][0].numpy(), f"{key}/probs": probs[0],
                        f"{key}/boxes_raw": boxes[0]})
        result = pipe.run([rgb], profile)[0]
        out.update({
            f"{key}/nms_boxes": np.concatenate([result.kept.boxes, result.dropped.boxes]).reshape(-1, 4),
            f"{key}/nms_scores": np.concatenate([result.kept.scores, result.dropped.scores]),
            f"{key}/kept_boxes": result.kept.boxes, f"{key}/kept_scores": result.kept.scores,
            f"{key}/object_size": np.float64(result.object_size), f"{key}/masks": result.masks,
            f"{key}/raw_map": result.anomaly_map,
        })
    return out


def matched(ref_boxes: Any, our_boxes: Any, height: int, width: int) -> Any:
    """For each reference box (clamped to the image, as iapas records boxes) the index of
    iapas's nearest box (max coordinate difference); None when the counts differ or two
    reference boxes take the same one."""
    import numpy as np

    if len(ref_boxes) != len(our_boxes):
        return None
    if not len(ref_boxes):
        return np.zeros(0, int)
    ref = clamped(ref_boxes, height, width)
    dist = np.abs(ref[:, None, :] - np.asarray(our_boxes, np.float64)[None, :, :]).max(axis=-1)
    pick = dist.argmin(axis=1)
    return pick if len(set(pick.tolist())) == len(pick) else None


def clamped(boxes: Any, height: int, width: int) -> Any:
    """``boxes`` (N, 4) xyxy as float64, clamped to a ``height`` x ``width`` image."""
    import numpy as np

    out = np.asarray(boxes, np.float64).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def map_flips(ref_map: Any, our_map: Any) -> Any:
    """Pixels where the fused maps differ by more than score rounding (a mask pixel flipped)."""
    import numpy as np

    return np.abs(np.asarray(ref_map, np.float64) - np.asarray(our_map, np.float64)) > MAP_TOLERANCE
