"""Shared model loading: device and dtype choice, and errors that say what to do."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")

T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and what to do."""


def resolve_device(device: str = "auto") -> str:
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` is float16 on CUDA/MPS and float32 on CPU."""
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, dtype)


def looks_like_local_path(name: str) -> bool:
    """True for what cannot be a hub id ('org/name' or 'name'), or names a folder inside an
    existing local folder (a mistyped 'models/gdino'), so must be a local path."""
    if name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name:
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()


def load_pretrained(
    loader: Callable[..., T],
    name_or_path: str,
    *,
    what: str,
    expected_model_types: tuple[str, ...],
    **kwargs: Any,
) -> T:
    """Call ``loader(name_or_path, **kwargs)`` (a ``from_pretrained``) with clear failures.

    ``what`` is the human name ("Grounding DINO detector"); ``expected_model_types`` are the
    ``model_type`` values of ``config.json`` this adapter accepts.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{what}: {path} is a file; expected a model folder with config.json")
        config = path / "config.json"
        if not config.exists():
            raise ModelLoadError(
                f"{what}: {path} has no config.json; expected a folder written by save_pretrained "
                f"(e.g. made by 'iapas testing make-tiny-models' or downloaded from the hub)"
            )
        import json

        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{what}: cannot read {config}: {exc}") from exc
        if model_type not in expected_model_types:
            raise ModelLoadError(
                f"{what}: {path} holds a {model_type!r} model; expected {' or '.join(expected_model_types)}"
            )
        name_or_path = str(path)
    elif looks_like_local_path(name_or_path):
        raise ModelLoadError(f"{what}: model folder {name_or_path} does not exist")
    try:
        return loader(name_or_path, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = (
            "If this machine has no network, download the model elsewhere "
            f"(e.g. 'hf download {name_or_path} --local-dir DIR'), copy the folder here and pass "
            "its path instead of the hub id; set HF_HUB_OFFLINE=1 to fail fast instead of retrying."
        )
        if offline:
            hint = "HF_HUB_OFFLINE is set and the model is not in the local cache. " + hint
        raise ModelLoadError(f"{what}: could not load {name_or_path!r}: {exc}. {hint}") from exc
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"{what}: {name_or_path!r} is not a usable model: {exc}") from exc


def pil_processor_loader(auto_processor: Any) -> Callable[..., Any]:
    """``auto_processor.from_pretrained`` with the PIL image backend (no torchvision needed, no
    warning about it), for :func:`load_pretrained`; falls back to the default backend on a
    transformers that cannot choose one."""

    def load(name_or_path: str, **kwargs: Any) -> Any:
        try:
            return auto_processor.from_pretrained(name_or_path, backend="pil", **kwargs)
        except TypeError:  # older transformers without backend selection
            return auto_processor.from_pretrained(name_or_path, **kwargs)

    return load
