"""Image tagging (METHOD.md stage 1 step 2): what is in the reference images.

Every tagger is behind :class:`Tagger`: ``tag(images)`` gives, per image, ``(tag, score)``
pairs best first. Backends:

* :class:`ClipTagger` (default): CLIP zero-shot over a vocabulary of industrial objects, parts
  and materials that ships with iapas (``tag_vocabulary.txt``), top-k per image.
* :class:`RamTagger`: the paper's RAM / RAM++ through the ``recognize-anything`` package, when it
  and a checkpoint are installed.
* :class:`ManualTagger`: tags given by hand (``--tags``).

:func:`aggregate_tags` merges the per-image tags; :func:`drop_stop_tags` removes tags that name
no object ('close-up', colours, ...; ``tag_stoplist.txt``) before they become a caption.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

ScoredTags = list[tuple[str, float]]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_TEMPLATE = "a photo of a {tag}."
DEFAULT_TOP_K = 5
RAM_INSTALL_HINT = "pip install git+https://github.com/xinyu1205/recognize-anything.git"


class TaggerError(RuntimeError):
    """A tagger cannot be built or run; the message says what is missing and what to do."""


@runtime_checkable
class Tagger(Protocol):
    """Tags for each image, best first, as ``(tag, score)``; tags lowercase."""

    name: str  # backend name: 'clip', 'ram', 'manual'
    model_id: str | None  # what was loaded (hub id, folder or checkpoint), None for manual

    def tag(self, images: Sequence[np.ndarray]) -> list[ScoredTags]: ...


def normalize_tag(tag: str) -> str:
    return " ".join(str(tag).lower().replace("_", " ").split()).strip(" .,;:")


def _read_list(name_or_path: str | Path | None, builtin: str) -> list[str]:
    if name_or_path is None:
        text = resources.files("iapas.prompts").joinpath(builtin).read_text(encoding="utf-8")
    else:
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TaggerError(f"{path}: cannot read word list: {exc}") from None
    out: list[str] = []
    for line in text.splitlines():
        tag = normalize_tag(line.split("#", 1)[0])
        if tag and tag not in out:
            out.append(tag)
    return out


def load_vocabulary(path: str | Path | None = None) -> list[str]:
    """The CLIP tagger's vocabulary: the built-in ``tag_vocabulary.txt`` or one tag per line."""
    vocab = _read_list(path, "tag_vocabulary.txt")
    if not vocab:
        raise TaggerError(f"{path or 'tag_vocabulary.txt'}: the tag vocabulary is empty")
    return vocab


def load_stoplist(path: str | Path | None = None) -> frozenset[str]:
    """Tags that name no object (built-in ``tag_stoplist.txt`` or one per line)."""
    return frozenset(_read_list(path, "tag_stoplist.txt"))


def drop_stop_tags(tags: Iterable[str], stoplist: frozenset[str]) -> tuple[list[str], list[str]]:
    """``(kept, dropped)``: normalised tags without duplicates, stoplisted ones set aside."""
    kept: list[str] = []
    dropped: list[str] = []
    for raw in tags:
        tag = normalize_tag(raw)
        if not tag or tag in kept or tag in dropped:
            continue
        (dropped if tag in stoplist else kept).append(tag)
    return kept, dropped


def aggregate_tags(per_image: Sequence[ScoredTags], max_tags: int | None = None) -> list[str]:
    """Merge per-image tags into one ranked list.

    Rank: in how many images the tag appears (more first), then its summed score (higher
    first), then where it first appeared (image order, then rank within the image).
    """
    stats: dict[str, list[float]] = {}  # tag -> [images, score sum, first position]
    position = 0
    for tags in per_image:
        seen: set[str] = set()
        for tag, score in tags:
            tag = normalize_tag(tag)
            if not tag or tag in seen:
                continue
            seen.add(tag)
            entry = stats.setdefault(tag, [0.0, 0.0, float(position)])
            entry[0] += 1
            entry[1] += float(score)
            position += 1
    ranked = sorted(stats, key=lambda t: (-stats[t][0], -stats[t][1], stats[t][2]))
    return ranked[:max_tags] if max_tags is not None else ranked


class ManualTagger:
    """The same hand-given tags for every image (score 1.0)."""

    name = "manual"
    model_id = None

    def __init__(self, tags: Iterable[str]) -> None:
        self.tags = [t for t in dict.fromkeys(normalize_tag(t) for t in tags) if t]
        if not self.tags:
            raise TaggerError("no tags given: pass --tags 'leather, fabric' with at least one tag")

    def tag(self, images: Sequence[np.ndarray]) -> list[ScoredTags]:
        return [[(t, 1.0) for t in self.tags] for _ in images]


class ClipTagger:
    """CLIP zero-shot tagging: each image against ``template.format(tag=...)`` for every tag.

    Scores are the softmax over the vocabulary of CLIP's scaled cosine similarities; the
    ``top_k`` best tags of each image are returned (ties keep vocabulary order). The text
    embeddings of the vocabulary are computed once, on first use.
    """

    name = "clip"

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        device: str,
        dtype: Any,
        model_id: str,
        vocabulary: Sequence[str] | None = None,
        template: str = DEFAULT_TEMPLATE,
        top_k: int = DEFAULT_TOP_K,
        batch_size: int = 64,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if "{tag}" not in template:
            raise ValueError(f"the prompt template must contain '{{tag}}', got {template!r}")
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.model_id = model_id
        self.vocabulary = list(vocabulary) if vocabulary is not None else load_vocabulary()
        self.template = template
        self.top_k = top_k
        self.batch_size = batch_size
        self._text: Any = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_CLIP,
        device: str = "auto",
        dtype: str = "auto",
        **kwargs: Any,
    ) -> ClipTagger:
        from transformers import AutoProcessor, CLIPModel

        from iapas.models.loading import load_pretrained, pil_processor_loader, resolve_device, resolve_dtype

        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        what = "CLIP tagger"
        processor = load_pretrained(pil_processor_loader(AutoProcessor), name_or_path, what=what, expected_model_types=("clip",))
        model = load_pretrained(CLIPModel.from_pretrained, name_or_path, what=what, expected_model_types=("clip",), dtype=torch_dtype)
        model = model.to(dev).eval()
        logger.info("loaded %s from %s on %s (%s)", what, name_or_path, dev, torch_dtype)
        return cls(model, processor, device=dev, dtype=torch_dtype, model_id=name_or_path, **kwargs)

    @staticmethod
    def _features(output: Any) -> Any:
        # transformers 5 returns an output object whose pooler_output is the projection.
        return getattr(output, "pooler_output", output)

    def _text_embeddings(self) -> Any:
        import torch

        if self._text is None:
            tokenizer = self.processor.tokenizer
            max_len = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
            prompts = [self.template.format(tag=t) for t in self.vocabulary]
            chunks = []
            with torch.inference_mode():
                for start in range(0, len(prompts), self.batch_size):
                    enc = tokenizer(
                        prompts[start : start + self.batch_size],
                        padding=True,
                        truncation=True,
                        max_length=max_len,
                        return_tensors="pt",
                    )
                    enc = {k: v.to(self.device) for k, v in enc.items()}
                    chunks.append(self._features(self.model.get_text_features(**enc)).float())
            text = torch.cat(chunks)
            self._text = text / text.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self._text

    def scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(len(images), len(vocabulary))`` softmax scores."""
        import torch

        if not images:
            return np.zeros((0, len(self.vocabulary)), dtype=np.float32)
        text = self._text_embeddings()
        pixel = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            image = self._features(self.model.get_image_features(pixel_values=pixel.to(self.device, self.dtype))).float()
            image = image / image.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            logits = self.model.logit_scale.exp().float() * image @ text.T
            return logits.softmax(dim=-1).cpu().numpy()

    def tag(self, images: Sequence[np.ndarray]) -> list[ScoredTags]:
        out: list[ScoredTags] = []
        for row in self.scores(images):
            order = np.argsort(-row, kind="stable")[: self.top_k]
            out.append([(self.vocabulary[i], float(row[i])) for i in order])
        return out


def _import_ram() -> Any:
    try:
        import ram.models as ram_models
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "ram":
            raise TaggerError(
                f"the RAM tagger needs the 'recognize-anything' package (import name 'ram'), which is not "
                f"installed: {RAM_INSTALL_HINT}; or use --tagger clip"
            ) from None
        raise TaggerError(
            f"the 'recognize-anything' package is installed but its dependency {exc.name!r} is missing: "
            f"pip install {exc.name}"
        ) from None
    return ram_models


def load_state_dict_safely(path: Path) -> dict[str, Any]:
    """Tensors of a checkpoint without running pickled code: safetensors, or ``torch.load``
    with ``weights_only=True``; a ``{'model': ...}`` wrapper is unwrapped."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError/OSError
        raise TaggerError(
            f"{path}: cannot load as a weights-only checkpoint ({type(exc).__name__}: {exc}). iapas never "
            "unpickles arbitrary objects; convert the checkpoint once with a trusted script to a "
            "plain state dict (torch.save(ckpt['model'], ...)) or to .safetensors"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise TaggerError(f"{path}: expected a state dict (a mapping of tensors), got {type(data).__name__}")
    return data


class RamTagger:
    """RAM / RAM++ (the paper's tagger, Swin-L at 384x384) through ``recognize-anything``.

    The model is built without weights by the package's own factory and the checkpoint is read
    by :func:`load_state_dict_safely`; key fix-ups follow the package's Swin-L loader (drop
    relative-position indices and attention masks, ``vision_multi`` -> ``tagging_head``).
    Preprocessing is the package's: RGB resized to ``image_size`` square, ImageNet mean/std.
    RAM decides tags by per-class thresholds and gives no scores: each tag scores 1.0.
    Note: building the model loads ``bert-base-uncased``'s tokenizer from the Hugging Face hub
    or its cache.
    """

    name = "ram"

    def __init__(self, model: Any, *, device: str, model_id: str, image_size: int = 384) -> None:
        self.model = model
        self.device = device
        self.model_id = model_id
        self.image_size = image_size

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | None,
        *,
        variant: str = "auto",
        device: str = "auto",
        image_size: int = 384,
        vit: str = "swin_l",
    ) -> RamTagger:
        if not checkpoint:
            raise TaggerError(
                "the RAM tagger needs a checkpoint: pass --tagger-model PATH to ram_plus_swin_large_14m.pth "
                "or ram_swin_large_14m.pth (from the recognize-anything releases on the Hugging Face hub)"
            )
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise TaggerError(f"RAM checkpoint {path} not found (pass the .pth or .safetensors file with --tagger-model)")
        if variant == "auto":
            variant = "ram_plus" if "plus" in path.name.lower() else "ram"
        if variant not in ("ram", "ram_plus"):
            raise TaggerError(f"unknown RAM variant {variant!r}; choose ram or ram_plus")
        ram_models = _import_ram()
        factory = getattr(ram_models, variant, None)
        if factory is None:
            raise TaggerError(f"the installed recognize-anything has no ram.models.{variant}; upgrade it: {RAM_INSTALL_HINT}")
        from iapas.models.loading import resolve_device

        dev = resolve_device(device)
        model = factory(pretrained="", image_size=image_size, vit=vit)
        state = load_state_dict_safely(path)
        fixed: dict[str, Any] = {}
        for key, value in state.items():
            if "relative_position_index" in key or "attn_mask" in key:
                continue
            fixed[key.replace("vision_multi", "tagging_head")] = value
        own = model.state_dict()
        for key, value in list(fixed.items()):
            if "relative_position_bias_table" in key and key in own and own[key].shape != value.shape:
                from ram.models.swin_transformer import interpolate_relative_pos_embed

                fixed[key] = interpolate_relative_pos_embed(value, own[key].shape[0], param_name=key)
        try:
            result = model.load_state_dict(fixed, strict=False)
        except RuntimeError as exc:
            raise TaggerError(f"{path}: does not fit the {variant} {vit} model at {image_size}px: {exc}") from None
        missing = [k for k in result.missing_keys if "relative_position_index" not in k and "attn_mask" not in k]
        if missing:
            raise TaggerError(
                f"{path}: {len(missing)} weights of the {variant} model are missing from the checkpoint "
                f"(e.g. {', '.join(missing[:3])}); is it a {variant} {vit} checkpoint?"
            )
        model = model.to(dev).eval()
        logger.info("loaded RAM tagger (%s) from %s on %s", variant, path, dev)
        return cls(model, device=dev, model_id=str(path), image_size=image_size)

    def _preprocess(self, images: Sequence[np.ndarray]) -> Any:
        import torch
        from PIL import Image

        mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
        std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
        batch = []
        for rgb in images:
            im = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("RGB")
            im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
            arr = (np.asarray(im, dtype=np.float32) / 255.0 - mean) / std
            batch.append(arr.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(batch)).to(self.device)

    def tag(self, images: Sequence[np.ndarray]) -> list[ScoredTags]:
        import torch

        if not images:
            return []
        with torch.inference_mode():
            result = self.model.generate_tag(self._preprocess(images))
        return [[(t, 1.0) for t in line] for line in ram_tag_lines(result, len(images))]


def ram_tag_lines(result: Any, batch: int) -> list[list[str]]:
    """Tags per image from ``generate_tag``'s output: ``(english, chinese)`` lists of
    ``'tag | tag'`` strings (RAM and RAM++), or just the English list."""
    english = result[0] if isinstance(result, tuple) and len(result) == 2 else result
    if not isinstance(english, (list, tuple)) or len(english) != batch or not all(isinstance(x, str) for x in english):
        raise TaggerError(
            f"the installed recognize-anything returned tags as {type(result).__name__} of an unexpected form "
            f"(expected {batch} 'tag | tag' strings); install the released version: {RAM_INSTALL_HINT}"
        )
    return [[t for t in (normalize_tag(x) for x in line.split("|")) if t] for line in english]
