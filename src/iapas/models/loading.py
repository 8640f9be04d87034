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
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device 'mps' asked for, but torch sees no Apple MPS device (torch {torch.__version__})")
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
    where = str(path) if path.exists() else repr(name_or_path)  # how the messages below name it
    model_loader = _is_model_loader(loader)
    if model_loader:
        kwargs = {**kwargs, "output_loading_info": True}
    try:
        loaded = loader(name_or_path, **kwargs)
    except OSError as exc:
        if path.exists():  # a local folder that is incomplete or unreadable: no hub advice
            raise ModelLoadError(f"{what}: cannot load {path}: {one_line(exc)}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = (
            "If this machine has no network, download the model elsewhere "
            f"(e.g. 'hf download {name_or_path} --local-dir DIR'), copy the folder here and pass "
            "its path instead of the hub id"
        )
        if offline:
            hint = "HF_HUB_OFFLINE is set and the model is not in the local cache. " + hint + "."
        else:
            hint += "; set HF_HUB_OFFLINE=1 to fail fast instead of retrying."
        if "/" in name_or_path:  # 'models/gdino' may be a mistyped local folder
            hint = f"(If {name_or_path} was meant as a local folder: it does not exist.) " + hint
        raise ModelLoadError(f"{what}: could not load {name_or_path!r}: {one_line(exc).rstrip('.')}. {hint}") from exc
    except Exception as exc:  # noqa: BLE001 - e.g. SafetensorError on a truncated file, a size mismatch
        damaged = "safetensor" in type(exc).__name__.lower() or "unpickl" in type(exc).__name__.lower()
        damaged = damaged or any(word in str(exc).lower() for word in ("header", "size mismatch", "truncated", "corrupt"))
        hint = "; its weight files may be incomplete or corrupt: copy or download them again" if damaged and path.exists() else ""
        raise ModelLoadError(f"{what}: {where} is not a usable model ({type(exc).__name__}: {one_line(exc)}){hint}") from exc
    if not model_loader:
        return loaded
    if not (isinstance(loaded, tuple) and len(loaded) == 2 and isinstance(loaded[1], dict)):
        return loaded  # type: ignore[return-value]  # a loader that ignored output_loading_info
    model, info = loaded
    missing = real_missing_keys(model, info.get("missing_keys") or [])
    if missing:
        kind = getattr(getattr(model, "config", None), "model_type", None) or " or ".join(expected_model_types)
        raise ModelLoadError(
            f"{what}: the weights in {where} do not match a {kind} checkpoint: {len(missing)} missing keys, "
            f"e.g. {', '.join(missing[:3])} (they would be random); check that the weight files belong to this config.json"
        )
    return model


def load_checked_model(
    loader: Callable[..., Any],
    name_or_path: str,
    *,
    what: str,
    model_classes: dict[str, str],
    device: str,
    dtype: Any,
) -> Any:
    """:func:`load_pretrained` of a model whose ``config.json`` model type is a key of
    ``model_classes`` and whose loaded class is that key's value (a hub id of another kind is
    refused by name), moved to ``device`` in eval mode."""
    types = tuple(model_classes)
    model = load_pretrained(loader, name_or_path, what=what, expected_model_types=types, dtype=dtype)
    model_type = getattr(model.config, "model_type", None)
    if model_classes.get(model_type) != type(model).__name__:
        raise ModelLoadError(
            f"{what}: {name_or_path!r} is a {model_type!r} model ({type(model).__name__}); expected {' or '.join(types)}"
        )
    logger.info("loaded %s (%s) from %s on %s (%s)", what, model_type, name_or_path, device, dtype)
    return model.to(device).eval()


def one_line(exc: BaseException | str) -> str:
    """An exception's text on one line (library messages often span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_model_loader(loader: Callable[..., Any]) -> bool:
    """Whether ``loader`` is a model class's ``from_pretrained`` (which can report missing
    weights), not a tokenizer's or processor's."""
    owner = getattr(loader, "__self__", None)
    if not isinstance(owner, type):
        return False
    try:
        from transformers import PreTrainedModel
        from transformers.models.auto.auto_factory import _BaseAutoModelClass
    except ImportError:  # pragma: no cover
        return False
    return issubclass(owner, (PreTrainedModel, _BaseAutoModelClass))


def real_missing_keys(model: Any, missing: Any) -> list[str]:
    """The missing keys that would leave random weights: parameters (not buffers, which are
    computed, such as position ids) that share memory with no loaded tensor (tied weights,
    reported as missing by some transformers versions, are loaded)."""
    missing = sorted(set(missing))
    if not missing:
        return []
    try:
        params = dict(model.named_parameters(remove_duplicate=False))
        tensors = dict(model.state_dict(keep_vars=True))
    except Exception:  # noqa: BLE001 - be strict rather than wrong when the model cannot say
        return missing
    absent = set(missing)
    loaded = {t.data_ptr() for k, t in tensors.items() if k not in absent and t.numel()}
    return [k for k in missing if k in params and params[k].numel() and params[k].data_ptr() not in loaded]


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
