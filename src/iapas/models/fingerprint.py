"""What a model is: a fingerprint of its content, not the path that was typed.

A run folder, a profile's calibrated decision and a station's store record the models their
results were made with, and a resumed run compares them. Names and paths are informative only:
``models/gdino`` typed in another working directory may hold other weights, and the same
weights may be reached by an absolute path, a relative one or a copy. So every model is
identified by content (:func:`model_fingerprint`), computed from the name or path alone,
without loading the model (``evaluate`` checks its folder before loading anything):

- a local folder: ``sha256:<hex>``, the SHA-256 of the list of its files (name and SHA-256 of
  each top-level regular file: ``config.json``, the weights, the processor's and tokenizer's
  files; hidden files and documentation such as ``README.md``, ``LICENSE``, pictures left out);
- a hub id: ``hub:<id>@<commit>``, the revision ``main`` resolves to in the local Hugging Face
  cache (the snapshot folder's name: what ``from_pretrained`` loads);
- anything else (a hub id not in the local cache, a stand-in model of the tests):
  ``name:<name>``.

Hashing a 2.5 GB weight file takes seconds, so each file's SHA-256 is cached in
``$XDG_CACHE_HOME/iapas/fingerprints.json`` (``~/.cache/iapas/`` by default), keyed by its
real path, size, modification time, inode and change time: a file is hashed once, and again
only when it changed. The cache is written atomically; an unreadable one is rebuilt and an
unwritable one only costs the hashing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapas.core.files import atomic_write_text

logger = logging.getLogger(__name__)

CACHE_NAME = "fingerprints.json"
CACHE_ENTRIES = 2000  # at most this many files remembered (the most recently hashed)
_SKIPPED_SUFFIXES = (".md", ".rst", ".png", ".jpg", ".jpeg", ".gif", ".svg")
_SKIPPED_PREFIXES = ("readme", "license", "licence", "notice")
NO_SEGMENTER = "none"  # iapas.pipeline.stage2.NoSegmenter's name: a joint detector runs no segmenter
KINDS = ("detector", "segmenter")
OLDER = "made by an older iapas without model fingerprints"


def cache_file() -> Path:
    """Where file hashes are cached: ``$XDG_CACHE_HOME/iapas/fingerprints.json``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "iapas" / CACHE_NAME


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.debug("%s: ignoring an unreadable fingerprint cache: %s", path, exc)
        return {}
    entries = data.get("files") if isinstance(data, dict) else None
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    if len(entries) > CACHE_ENTRIES:
        newest = sorted(entries, key=lambda k: entries[k].get("hashed", 0))[-CACHE_ENTRIES:]
        entries = {k: entries[k] for k in newest}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"version": 1, "files": entries}, indent=1) + "\n")
    except OSError as exc:  # a read-only home: hashing again next time is all it costs
        logger.debug("%s: cannot write the fingerprint cache: %s", path, exc)


def _stamp(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ino": stat.st_ino, "ctime_ns": stat.st_ctime_ns}


def hash_file(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()  # in 1 MiB reads (hashlib.file_digest is Python 3.11+; we support 3.10)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path, cache: dict[str, Any] | None = None) -> str:
    """The SHA-256 of ``path``, from ``cache`` (see :func:`cache_file`) when the file has not
    changed since it was hashed; a new hash is put in ``cache``."""
    real = os.path.realpath(path)  # the hub cache's snapshot files are links to shared blobs
    stamp = _stamp(os.stat(real))
    entry = (cache or {}).get(real)
    if entry is not None and all(entry.get(k) == v for k, v in stamp.items()) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hash_file(Path(real))
    after = _stamp(os.stat(real))
    if cache is not None and after == stamp:  # not cached when it changed while being read
        cache[real] = {**stamp, "sha256": digest, "hashed": time.time_ns()}
    return digest


def model_files(folder: Path) -> list[Path]:
    """The files of a model folder its fingerprint covers (see the module docstring)."""
    files = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        name = entry.name.lower()
        if name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES) or name.startswith(_SKIPPED_PREFIXES):
            continue
        if entry.is_file():
            files.append(entry)
    return files


def folder_fingerprint(folder: str | Path) -> str:
    """``sha256:<hex>`` of a model folder's files (names and contents), with the file hashes cached."""
    folder = Path(folder).expanduser()
    where = cache_file()
    cache = _read_cache(where)
    before = dict(cache)
    manifest = hashlib.sha256()
    for path in model_files(folder):
        try:
            digest = file_sha256(path, cache)
        except OSError as exc:  # what the loader cannot read either: known by the error, not skipped
            digest = f"unreadable ({exc.strerror or type(exc).__name__})"
        manifest.update(f"{path.name}\t{digest}\n".encode())
    if cache != before:  # keep what another process cached meanwhile
        _write_cache(where, {**_read_cache(where), **{k: v for k, v in cache.items() if before.get(k) != v}})
    return f"sha256:{manifest.hexdigest()}"


def hub_cache_dir() -> str | None:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, as read now, else huggingface_hub's)."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return env
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    return str(constants.HF_HUB_CACHE)


def hub_revision(repo_id: str) -> str | None:
    """The commit ``main`` of hub model ``repo_id`` resolves to in the local cache, or None
    when it is not cached (or is no valid id)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_cache_dir())
    except Exception as exc:  # noqa: BLE001 - an invalid repo id, an unreadable cache: not resolved
        logger.debug("%s: no cached revision: %s", repo_id, exc)
        return None
    if not isinstance(found, str):
        return None
    return Path(found).parent.name  # .../models--org--name/snapshots/<commit>/config.json


def model_fingerprint(name_or_path: str, *, strict: bool = False, what: str = "model") -> str:
    """What the model ``name_or_path`` (a folder or a hub id, as given to the loader) is, by
    content (see the module docstring). A folder without ``config.json`` is not hashed (it is no
    model folder: loading it fails). ``strict``: a path that names no model folder raises
    :class:`~iapas.models.loading.ModelLoadError` (as loading it would) instead of being
    identified by its name."""
    from iapas.models.loading import ModelLoadError, looks_like_local_path

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        problem = None if (path / "config.json").is_file() else f"{path} has no config.json; expected a model folder"
        if problem is None:
            try:
                return folder_fingerprint(path)
            except OSError as exc:
                problem = f"cannot read the model folder {path}: {exc}"
        if strict:
            raise ModelLoadError(f"{what}: {problem}")
        return f"name:{os.path.abspath(path)}"
    if looks_like_local_path(name_or_path):
        if strict:
            raise ModelLoadError(f"{what}: model folder {name_or_path} does not exist")
        return f"name:{name_or_path}"
    revision = hub_revision(name_or_path)
    return f"hub:{name_or_path}@{revision}" if revision else f"name:{name_or_path}"


def model_identity(detector: str, segmenter: str, *, strict: bool = False) -> dict[str, str]:
    """The models of a signature: each one's name (informative) and fingerprint (compared).
    ``detector`` and ``segmenter`` are hub ids or folders (registry names resolved), or
    ``'none'`` for no segmenter; a folder's name is recorded as its absolute path (to say
    where the model of a refused run was). The one place a signature's model identity is made."""
    identity: dict[str, str] = {}
    for kind, name in zip(KINDS, (detector, segmenter)):
        folder = Path(name).expanduser()
        identity[kind] = os.path.abspath(folder) if name != NO_SEGMENTER and folder.is_dir() else name
        identity[f"{kind}_fingerprint"] = NO_SEGMENTER if kind == "segmenter" and name == NO_SEGMENTER else (
            model_fingerprint(name, strict=strict, what=kind)
        )
    return identity


def named_identity(detector: str, segmenter: str, *, strict: bool = False) -> dict[str, str]:
    """:func:`model_identity` of the models a command line names, before loading them: registry
    names resolved, and a joint detector's segmenter ``'none'`` (SAM 3 segments itself; a
    detector whose config cannot be read counts as not joint: loading it reports why)."""
    from iapas.models import registry
    from iapas.models.factory import returns_masks
    from iapas.models.loading import ModelLoadError

    try:
        joint = returns_masks(detector)
    except (ModelLoadError, OSError, ValueError):
        joint = False
    return model_identity(
        registry.resolve("detector", detector), NO_SEGMENTER if joint else registry.resolve("segmenter", segmenter), strict=strict
    )


def pipeline_identity(pipeline: Any) -> dict[str, str]:
    """:func:`model_identity` of a pipeline's loaded models (by the names they were loaded from)."""
    names = [getattr(model, "name", type(model).__name__) for model in (pipeline.detector, pipeline.segmenter)]
    return model_identity(str(names[0]), str(names[1]))


def short(fingerprint: Any) -> str:
    """A fingerprint for messages: a hash shortened to 12 digits."""
    text = str(fingerprint)
    return text[: len("sha256:") + 12] if text.startswith("sha256:") else text


@dataclass
class SignatureDiff:
    """How a recorded signature differs from this run's: model names are informative, their
    fingerprints decide (:func:`signature_diff`)."""

    older: bool = False  # recorded before model fingerprints existed
    models: list[str] = field(default_factory=list)  # one sentence per model that differs
    changed: list[str] = field(default_factory=list)  # other keys that differ

    def __bool__(self) -> bool:
        return self.older or bool(self.models or self.changed)

    def describe(self, changed: list[str] | None = None) -> str:
        """``made with another detector: ...; made with other settings (a, b)``; ``changed``
        replaces the plain key list (e.g. with ``key: old -> new`` items)."""
        if self.older:
            return OLDER
        parts = [f"made with another {m}" for m in self.models]
        if self.changed:
            parts.append(f"made with other settings ({', '.join(changed if changed is not None else self.changed)})")
        return "; ".join(parts)


def signature_diff(previous: Mapping[str, Any], current: Mapping[str, Any]) -> SignatureDiff:
    """Compare a recorded signature with this run's. A model differs when its fingerprint
    does, whatever its name or path; a record without fingerprints is ``older``."""
    fingerprints = [f"{kind}_fingerprint" for kind in KINDS if f"{kind}_fingerprint" in current]
    if fingerprints and not any(key in previous for key in fingerprints):
        return SignatureDiff(older=True)
    diff = SignatureDiff()
    for kind in KINDS:
        key = f"{kind}_fingerprint"
        if key in current and previous.get(key) != current[key]:
            diff.models.append(
                f"{kind}: {current.get(kind)} ({short(current[key])}) is not the model its results were made with "
                f"({previous.get(kind)}, {short(previous.get(key))})"
            )
    informative = set(KINDS) | {f"{kind}_fingerprint" for kind in KINDS}
    diff.changed = sorted(k for k in set(previous) | set(current) if k not in informative and previous.get(k) != current.get(k))
    return diff
