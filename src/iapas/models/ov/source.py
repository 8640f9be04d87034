"""What an OpenVINO graph is converted from: the key of its IR cache entry's source.

A graph traced from a transformers model depends on the model's weights, on transformers'
modelling code (what is traced) and on the adapter's own conversion; :func:`source_fingerprint`
says all three, for :func:`iapas.models.ov.cache.load_or_convert` (which adds the openvino
version). The detector's and SAM's adapters both use it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from iapas.models.fingerprint import model_fingerprint


def weights_digest(model: Any) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and bytes), for a model known by name
    only (a fingerprint ``name:...``: built in memory, or a hub id not in the local cache)."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def source_fingerprint(name: str, model: Any, graph: str) -> str:
    """What a converted graph is made from, for :func:`~iapas.models.ov.cache.load_or_convert`:
    the model's fingerprint (:func:`iapas.models.fingerprint.model_fingerprint`; a name-only one
    completed with :func:`weights_digest`, so other weights under one name never reuse an entry),
    the transformers version (its modelling code is what is traced) and ``graph``, the version of
    the adapter's own conversion (e.g. ``sam-graph=2``: raised when that graph changes)."""
    import transformers

    fingerprint = model_fingerprint(name)
    if fingerprint.startswith("name:"):
        fingerprint += f";weights=sha256:{weights_digest(model)}"
    return f"{fingerprint};transformers={transformers.__version__};{graph}"
