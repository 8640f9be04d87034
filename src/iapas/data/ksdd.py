"""KSDD1 (KolektorSDD): ``kosNN/PartK.jpg`` with the mask ``kosNN/PartK_label.bmp``.

One category (``kolektor``) made of all ``kosNN`` folders. There are no defect folders: an image is
anomalous when its mask is non-empty (the masks are read once, at load time; they are palette BMPs
whose raw values are 0/1, see :mod:`iapas.data.masks`). There is no train split: the references are
drawn from the defect-free images and excluded from the test set.

Paper protocol: the reference code treated each ``kosNN`` folder as a category, computed the metrics
per folder and averaged them over the folders; so does the paper protocol here (each sample's
``part`` is its folder, :meth:`~iapas.data.base.Category.parts` splits them). Stage 1 still runs
once for the product: the references are drawn over all folders and excluded from every folder's
test set (the reference code drew them per folder and tested them too). Full protocol: one pooled
category.
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
    mask_suffixes = (LABEL_SUFFIX,)
    download_folders = ("ksdd1", "ksdd", "kolektorsdd", "kolektorsdd1", "kolektor")
    title = "KSDD1 (KolektorSDD)"
    layout = "ROOT/kosNN/PartK.jpg with the mask ROOT/kosNN/PartK_label.bmp (defective = non-empty mask)"
    expected_categories = (CATEGORY,)
    paper_keeps_normals = True
    paper_scores_parts = True

    def _part_dirs(self) -> list[Path]:
        return [d for d in subdirs(self.root) if any(p.stem.endswith(LABEL_SUFFIX) for p in list_images(d))]

    def part_names(self, category: str) -> list[str]:
        """The ``kosNN`` folders (the paper protocol's categories), without reading any mask."""
        return [d.name for d in self._part_dirs()] if category == CATEGORY else []

    def _discover(self) -> list[str]:
        return [CATEGORY] if self._part_dirs() else []

    def _scan(self, category: str) -> Scan:
        test: list[Sample] = []
        no_mask: list[str] = []
        unreadable: list[str] = []
        for folder in self._part_dirs():
            samples, missing, bad = labelled_images(folder, category, LABEL_SUFFIX, part=folder.name)
            test += samples
            no_mask += missing
            unreadable += bad
        notes: list[str] = []
        if no_mask:
            notes.append(f"{len(no_mask)} images were left out because they have no <stem>_label.bmp (e.g. {no_mask[0]}).")
        if unreadable:
            notes.append(f"{len(unreadable)} images were left out because their mask is unreadable ({unreadable[0]}).")
        return Scan(test=test, no_train="KSDD1 has no train split", train_missing=False, notes=notes)


def labelled_images(folder: Path, category: str, suffix: str, part: str = "") -> tuple[list[Sample], list[str], list[str]]:
    """The images of ``folder`` labelled by the mask ``<stem><suffix>.<ext>`` beside each (KSDD1, KSDD2).

    Defective = a non-empty mask (only defective samples keep their mask path). Returns the
    samples (natural order) and the images left out: those without a mask file, and the messages
    of unreadable masks.
    """
    files = list_images(folder)
    masks = {p.stem[: -len(suffix)]: p for p in files if p.stem.endswith(suffix)}
    images = sorted((p for p in files if not p.stem.endswith(suffix)), key=lambda p: natural_key(p.name))
    samples: list[Sample] = []
    no_mask: list[str] = []
    unreadable: list[str] = []
    for image in images:
        mask = masks.get(image.stem)
        if mask is None:
            no_mask.append(str(image))
            continue
        try:
            defective = bool(load_mask(mask).any())
        except MaskError as exc:
            unreadable.append(str(exc))
            continue
        samples.append(Sample(image, int(defective), mask if defective else None, "defect" if defective else "good", category, part))
    return samples, no_mask, unreadable
