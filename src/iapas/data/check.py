"""Checks of a dataset download beyond counting: masks that do not read or fit, empty masks, empty folders.

Used by ``iapas data summary --check``. Each check returns plain data (paths and one-line
messages) so the command decides what is a failure: an unreadable or misfit mask and an empty
folder are problems (the download is damaged or incomplete); an anomalous image with an empty
mask is a fact of some datasets (4 of MTD's MT_Uneven masks are empty) and is named, not failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from iapas.data.base import Sample, is_image
from iapas.data.masks import MaskError, load_mask


@dataclass
class MaskCheck:
    """What reading every mask of some samples found.

    ``problems``: one sentence per mask that is unreadable or does not fit its image.
    ``empty``: the anomalous samples whose mask file holds no defect pixel.
    """

    problems: list[str] = field(default_factory=list)
    empty: list[Sample] = field(default_factory=list)


def check_masks(samples: Iterable[Sample]) -> MaskCheck:
    """Open the mask of every sample that has one (each once) and sort out what is wrong."""
    found = MaskCheck()
    for sample in samples:
        if sample.mask_path is None:
            continue
        try:
            mask = load_mask(sample.mask_path, image_path=sample.path)
        except MaskError as exc:
            found.problems.append(str(exc))
            continue
        if sample.is_anomalous and not mask.any():
            found.empty.append(sample)
    return found


def empty_folders(root: str | Path) -> list[Path]:
    """The folders under ``root`` (``root`` included) with no image file anywhere below them.

    Only the topmost of them is named (an empty category folder, not also each empty folder in
    it); hidden folders and files are ignored, and a folder holding only non-image files (e.g. a
    lone ``Labels.txt``) counts as empty. Sorted by path.
    """
    root = Path(root)
    has_images: dict[Path, bool] = {}
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        folder = Path(dirpath)
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        here = any(is_image(folder / name) for name in filenames)
        has_images[folder] = here or any(has_images.get(folder / d, False) for d in dirnames)
    empty = [f for f, has in has_images.items() if not has]
    topmost = [f for f in empty if f == root or has_images.get(f.parent, True)]
    return sorted(topmost)
