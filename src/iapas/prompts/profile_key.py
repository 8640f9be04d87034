"""The cache key of a stage-1 profile (``stage1.input_hash``): everything that decides it, digested."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from iapas.prompts.errors import Stage1Error
from iapas.prompts.llm import PROMPT_STYLES


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise Stage1Error(f"{path}: cannot read reference image: {exc.strerror or exc}") from None
    return h.hexdigest()


def _data_digest() -> str:
    h = hashlib.sha256()
    for name in ("tag_vocabulary.txt", "tag_stoplist.txt", "knowledge.yaml"):
        h.update(resources.files("iapas.prompts").joinpath(name).read_bytes())
    for style, (system, user) in PROMPT_STYLES.items():
        h.update(f"{style}\0{system}\0{user}\0".encode())
    return h.hexdigest()


def input_hash(category: str, references: Sequence[Path], settings: dict[str, Any]) -> str:
    """A digest of everything that decides a profile: the category, the reference files'
    contents, the settings (models, seed, options) and iapas's prompt data files."""
    payload = {
        "category": category,
        "references": [[Path(p).name, _file_digest(Path(p))] for p in references],
        "settings": settings,
        "data": _data_digest(),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
