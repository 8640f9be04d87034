"""Dataset names and aliases -> loader classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iapas.data.base import DatasetBase, DatasetError
from iapas.data.dagm import DAGM
from iapas.data.folder import FolderDataset
from iapas.data.ksdd import KSDD1
from iapas.data.ksdd2 import KSDD2
from iapas.data.mtd import MTD
from iapas.data.mvtec import BTAD, MPDD, WFDD, DTDSynthetic, MVTecAD
from iapas.data.visa import VisA

DATASETS: dict[str, type[DatasetBase]] = {
    "mvtec": MVTecAD,
    "mpdd": MPDD,
    "btad": BTAD,
    "ksdd1": KSDD1,
    "mtd": MTD,
    "dtd": DTDSynthetic,
    "dagm": DAGM,
    "visa": VisA,
    "ksdd2": KSDD2,
    "wfdd": WFDD,
    "folder": FolderDataset,
}

ALIASES: dict[str, str] = {
    "mvtec_ad": "mvtec",
    "mvtecad": "mvtec",
    "ksdd": "ksdd1",
    "kolektor": "ksdd1",
    "kolektorsdd": "ksdd1",
    "magnetic_tile": "mtd",
    "dtd_synthetic": "dtd",
    "dagm2007": "dagm",
    "dagm_2007": "dagm",
    "kolektorsdd2": "ksdd2",
    "kolektor2": "ksdd2",
    "woven_fabric": "wfdd",
    "custom": "folder",
}


def dataset_names(*, folder: bool = True, bench: bool = False) -> list[str]:
    """The registry's dataset names, in its order (the paper's), for help texts and messages:
    ``folder``: with the user's own folder dataset; ``bench``: only the paper's datasets that
    ``iapas bench`` finds by their download's folder name (:attr:`DatasetBase.download_folders`)."""
    return [
        name for name, cls in DATASETS.items()
        if (folder or cls is not FolderDataset) and (not bench or cls.download_folders)
    ]


def aliases_text() -> str:
    """The aliases of each dataset, for help texts: ``'mvtec_ad, mvtecad (= mvtec); ...'``."""
    by_name: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        by_name.setdefault(name, []).append(alias)
    return "; ".join(f"{', '.join(aliases)} (= {name})" for name, aliases in by_name.items())


def loaders() -> list[type[DatasetBase]]:
    """Each registered loader class once."""
    return list(dict.fromkeys(DATASETS.values()))


def mask_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ground-truth mask stem suffixes and mask folder names that the loaders declare
    (:attr:`DatasetBase.mask_suffixes`, :attr:`DatasetBase.mask_folders`), lowercase, each once."""
    suffixes = dict.fromkeys(s.lower() for cls in loaders() for s in cls.mask_suffixes)
    folders = dict.fromkeys(f.lower() for cls in loaders() for f in cls.mask_folders)
    return tuple(suffixes), tuple(folders)


def mask_beside(path: Path) -> str | None:
    """The rule of the first loader whose own naming (:meth:`DatasetBase.mask_beside`) makes ``path``
    a ground-truth mask, or None."""
    for cls in loaders():
        rule = cls.mask_beside(path)
        if rule:
            return rule
    return None


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or an alias ('MVTec-AD' -> 'mvtec'); ValueError if unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(dataset_names())}")
    return key


def get_dataset(name: str, root: str | Path, **options: Any) -> DatasetBase:
    """The loader of dataset ``name`` (or an alias) reading ``root``.

    ``options`` go to the loader; only the folder dataset takes any (normal, anomalous, masks,
    mask_pattern, references, category). Raises DatasetError when ``root`` does not exist.
    """
    cls = DATASETS[canonical_name(name)]
    if options and cls is not FolderDataset:
        raise TypeError(f"dataset {cls.name!r} takes no options (got {', '.join(sorted(options))})")
    return cls(root, **options)


def _layout_matches(root: str | Path) -> dict[str, list[str]]:
    """``{name: categories found}`` for each dataset (folder excepted) whose layout ``root`` matches."""
    found: dict[str, list[str]] = {}
    for name, cls in DATASETS.items():
        if cls is FolderDataset:
            continue
        try:
            categories = cls(root)._discover()
        except (DatasetError, OSError):
            return {}
        if categories:
            found[name] = list(categories)
    return found


def guess_datasets(root: str | Path) -> list[str]:
    """Names of the datasets (folder excepted) whose layout ``root`` matches; [] when none or no folder."""
    return list(_layout_matches(root))


def guess_dataset(root: str | Path, names: Sequence[str] | None = None) -> tuple[str | None, list[str]]:
    """The one dataset (of ``names``, default all) that ``root`` holds, judged by layout, then categories.

    Several datasets share a layout (MVTec AD, MPDD, BTAD and DTD-Synthetic are all
    ``<category>/test/...``); among the matching ones the dataset whose official categories
    (``expected_categories``) the folder has the most of wins (``01/02/03`` -> btad). Returns
    ``(name or None, candidates)``: None when no layout matches, or when the categories do not
    settle it (no official category found, or a tie); ``candidates`` are the layouts that matched.
    """
    matches = {n: cats for n, cats in _layout_matches(root).items() if names is None or n in names}
    candidates = list(matches)
    if len(candidates) <= 1:
        return (candidates[0] if candidates else None), candidates
    overlap = {n: len(set(cats) & set(DATASETS[n].expected_categories)) for n, cats in matches.items()}
    best = max(overlap.values())
    winners = [n for n, k in overlap.items() if k == best]
    return (winners[0] if best > 0 and len(winners) == 1 else None), candidates
