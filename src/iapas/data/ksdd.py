"""KSDD1 (KolektorSDD): ``kosNN/PartK.jpg`` with the mask ``kosNN/PartK_label.bmp``.

One category (``kolektor``) made of all ``kosNN`` folders. There are no defect folders: an image is
anomalous when its mask is non-empty (the masks are read once, at load time; they are palette BMPs
whose raw values are 0/1, see :mod:`iapas.data.masks`). There is no train split: the references are
drawn from the defect-free images and excluded from the test set.

Paper protocol: the reference code used every image, so it is the same as full.
"""

from __future__ import annotations

from pathlib import Path

from iapas.data.base import DatasetBase, Sample, Scan, list_images, natural_key, subdirs
from iapas.data.masks import MaskError, load_mask

CATEGORY = "kolektor"
LABEL_SUFFIX = "_label"


class KSDD1(DatasetBase):
    """KolektorSDD (see the module docstring)."""

    name = "ksdd1"
    title = "KSDD1 (KolektorSDD)"
    layout = "ROOT/kosNN/PartK.jpg with the mask ROOT/kosNN/PartK_label.bmp (defective = non-empty mask)"
    expected_categories = (CATEGORY,)
    paper_keeps_normals = True

    def _part_dirs(self) -> list[Path]:
        return [d for d in subdirs(self.root) if any(p.stem.endswith(LABEL_SUFFIX) for p in list_images(d))]

    def _discover(self) -> list[str]:
        return [CATEGORY] if self._part_dirs() else []

    def _scan(self, category: str) -> Scan:
        test: list[Sample] = []
        no_mask: list[str] = []
        unreadable: list[str] = []
        for folder in self._part_dirs():
            files = list_images(folder)
            labels = {p.stem[: -len(LABEL_SUFFIX)]: p for p in files if p.stem.endswith(LABEL_SUFFIX)}
            images = sorted((p for p in files if not p.stem.endswith(LABEL_SUFFIX)), key=lambda p: natural_key(p.name))
            for image in images:
                label = labels.get(image.stem)
                if label is None:
                    no_mask.append(str(image))
                    continue
                try:
                    defective = bool(load_mask(label).any())
                except MaskError as exc:
                    unreadable.append(str(exc))
                    continue
                test.append(Sample(image, int(defective), label if defective else None, "defect" if defective else "good", category))
        notes: list[str] = []
        if no_mask:
            notes.append(f"{len(no_mask)} images were left out because they have no <stem>_label.bmp (e.g. {no_mask[0]}).")
        if unreadable:
            notes.append(f"{len(unreadable)} images were left out because their mask is unreadable ({unreadable[0]}).")
        return Scan(test=test, no_train="KSDD1 has no train split", train_missing=False, notes=notes)
