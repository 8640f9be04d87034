"""Which adapter loads a model: chosen by the ``model_type`` of its ``config.json``.

A new detector or segmenter family is one adapter class (a :class:`iapas.models.base.Detector`
or :class:`~iapas.models.base.Segmenter` with a ``from_pretrained`` that takes ``name_or_path,
device, dtype``) plus its rows in the model table (:mod:`iapas.models.registry`). Every command
loads its models through :func:`load_detector` and :func:`load_segmenter`, so a name, hub id or
folder works the same everywhere.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from iapas.models import registry
from iapas.models.loading import ModelLoadError, load_pretrained
from iapas.models.ov.cache import DEFAULT_RUNTIME, check_runtime


def _adapters(kind: str) -> dict[str, str]:
    """``model_type -> "module:Class"`` (imported only when used), from the model table."""
    return registry.adapters(kind)


def model_type_of(kind: str, name_or_path: str) -> str:
    """The ``model_type`` of a folder's or hub id's config; a model of another kind is refused
    with the folder named (through :func:`iapas.models.loading.load_pretrained`)."""
    adapters = _adapters(kind)
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{kind}: cannot read {path / 'config.json'}: {exc}") from exc
        if model_type not in adapters:
            raise ModelLoadError(f"{kind}: {path} holds a {model_type!r} model; expected {' or '.join(adapters)}")
        return str(model_type)
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig.from_pretrained, name_or_path, what=kind, expected_model_types=tuple(adapters))
    model_type = getattr(config, "model_type", None)
    if model_type not in adapters:
        raise ModelLoadError(f"{kind}: {name_or_path!r} is a {model_type!r} model; expected {' or '.join(adapters)}")
    return str(model_type)


def adapter_class(kind: str, name_or_path: str) -> Any:
    """The adapter class for ``name_or_path`` (a name from :mod:`iapas.models.registry`, a hub
    id or a folder)."""
    name_or_path = registry.resolve(kind, name_or_path)
    module, _, cls = _adapters(kind)[model_type_of(kind, name_or_path)].partition(":")
    return getattr(importlib.import_module(module), cls)


def runtime_options(
    kind: str, name_or_path: str, runtime: str, device: str, dtype: str = "auto", ov_cache: Path | None = None
) -> dict[str, Any]:
    """The keyword arguments that select ``runtime`` for the adapter of ``name_or_path`` (none for
    torch); a ``ValueError`` with one line when the adapter cannot run it (the model table's
    ``openvino`` flag says which can), the device is not the CPU or the dtype not float32."""
    if runtime == DEFAULT_RUNTIME:
        return {}
    check_runtime(runtime)
    model_type = model_type_of(kind, registry.resolve(kind, name_or_path))
    if not registry.runs_openvino(model_type):
        families = " / ".join(registry.openvino_families())
        raise ValueError(f"--runtime openvino supports {families}; {kind} {name_or_path} ({model_type}) runs on "
                         "torch only")
    if device not in ("auto", "cpu"):
        raise ValueError(f"--runtime openvino runs on the CPU; got --device {device} (use --device cpu or auto)")
    if dtype not in ("auto", "float32"):
        raise ValueError(f"--runtime openvino runs float32 models; got --dtype {dtype} (use --dtype float32 or auto)")
    return {"runtime": runtime, "ov_cache": ov_cache}


def load_detector(
    name_or_path: str, device: str = "auto", dtype: str = "auto", *, runtime: str = DEFAULT_RUNTIME,
    ov_cache: Path | None = None, ov_int8: bool = False,
) -> Any:
    """The detector adapter for ``name_or_path``, loaded on ``device`` in ``dtype``; ``runtime``
    ``openvino``: its forward runs as OpenVINO IR (cached in ``ov_cache``; ``ov_int8``: int8 weights)."""
    name_or_path = registry.resolve("detector", name_or_path)
    extra = runtime_options("detector", name_or_path, runtime, device, dtype, ov_cache)
    if ov_int8:
        if not extra:
            raise ValueError("--ov-int8 needs --runtime openvino")
        extra["ov_int8"] = True
    return adapter_class("detector", name_or_path).from_pretrained(name_or_path, device=device, dtype=dtype, **extra)


def load_segmenter(
    name_or_path: str, device: str = "auto", dtype: str = "auto", *, runtime: str = DEFAULT_RUNTIME,
    ov_cache: Path | None = None,
) -> Any:
    """The segmenter adapter for ``name_or_path``, loaded on ``device`` in ``dtype`` (``runtime``:
    as :func:`load_detector`'s)."""
    name_or_path = registry.resolve("segmenter", name_or_path)
    extra = runtime_options("segmenter", name_or_path, runtime, device, dtype, ov_cache)
    return adapter_class("segmenter", name_or_path).from_pretrained(name_or_path, device=device, dtype=dtype, **extra)


def returns_masks(name_or_path: str) -> bool:
    """Whether the detector ``name_or_path`` is a joint model whose detections bring their masks
    (SAM 3: no segmenter is loaded and runs record the segmenter as ``none``), from its config
    alone (a command line can ask before loading the model)."""
    return bool(adapter_class("detector", name_or_path).returns_masks)
