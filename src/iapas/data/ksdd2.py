"""KSDD2 (KolektorSDD2): ``train/N.png`` and ``test/N.png``, each with the mask ``N_GT.png`` beside it.

One category (``ksdd2``). There are no defect folders: an image is anomalous when its mask is
non-empty (every image has a mask file; the defect-free ones are all zeros), so the masks are read
once, at load time. The test set is ``test/``; the references are drawn from the defect-free
``train/`` images.

Paper protocol: the reference code scored every image of ``test/``, so it is the same as full. (It
drew its references from the defect-free ``test/`` images and tested them too; here they come from
``train/``.)
"""

from __future__ import annotations

from iapas.data.base import DatasetBase, Scan, has_child_dir, list_images
from iapas.data.ksdd import labelled_images

CATEGORY = "ksdd2"
GT_SUFFIX = "_GT"


class KSDD2(DatasetBase):
    """KolektorSDD2 (see the module docstring)."""

    name = "ksdd2"
    mask_suffixes = (GT_SUFFIX.lower(),)
    title = "KSDD2 (KolektorSDD2)"
    layout = "ROOT/{train,test}/N.png with the mask ROOT/{train,test}/N_GT.png (defective = non-empty mask)"
    expected_categories = (CATEGORY,)
    paper_keeps_normals = True

    def _discover(self) -> list[str]:
        if not has_child_dir(self.root, "test"):
            return []
        return [CATEGORY] if any(p.stem.endswith(GT_SUFFIX) for p in list_images(self.root / "test")) else []

    def _scan(self, category: str) -> Scan:
        notes: list[str] = []
        test, no_mask, unreadable = labelled_images(self.root / "test", category, GT_SUFFIX)
        train_split, train_no_mask, train_unreadable = labelled_images(self.root / "train", category, GT_SUFFIX)
        for split, missing, bad in (("test", no_mask, unreadable), ("train", train_no_mask, train_unreadable)):
            if missing:
                notes.append(f"{len(missing)} {split} images were left out because they have no <N>_GT.png (e.g. {missing[0]}).")
            if bad:
                notes.append(f"{len(bad)} {split} images were left out because their mask is unreadable ({bad[0]}).")
        train = [s.path for s in train_split if s.label == 0]
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            no_train = f"{train_dir} does not exist (this copy has no train split)"
        else:
            no_train = "" if train else f"{train_dir} has no defect-free images with a mask file (the train split is missing)"
        return Scan(test=test, train_normals=train, no_train=no_train, train_missing=not train, notes=notes)
