"""Dataset names and aliases -> loader classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iapas.data.base import DatasetBase, DatasetError
from iapas.data.dagm import DAGM
from iapas.data.folder import FolderDataset
from iapas.data.ksdd import KSDD1
from iapas.data.mtd import MTD
from iapas.data.mvtec import BTAD, MPDD, DTDSynthetic, MVTecAD
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
    "custom": "folder",
}


def canonical_name(name: str) -> str:
    """The registry name for ``name`` or an alias ('MVTec-AD' -> 'mvtec'); ValueError if unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
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


def guess_datasets(root: str | Path) -> list[str]:
    """Names of the datasets (folder excepted) whose layout ``root`` matches; [] when none or no folder."""
    names: list[str] = []
    for name, cls in DATASETS.items():
        if cls is FolderDataset:
            continue
        try:
            if cls(root)._discover():
                names.append(name)
        except (DatasetError, OSError):
            return []
    return names
