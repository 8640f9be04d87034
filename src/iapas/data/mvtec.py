"""Datasets in the MVTec AD layout: MVTec AD, MPDD, BTAD, DTD-Synthetic and WFDD.

``<cat>/train/<normal>/*``, ``<cat>/test/<type>/*`` (the normal folder is ``good``, or ``ok`` for
BTAD), masks in ``<cat>/ground_truth/<type>/`` named ``<stem>_mask.<ext>`` or ``<stem>.<ext>``, matched
by stem whatever the extension (BTAD mixes .bmp and .png).

Paper protocol (the reference code's test images), as we read METHOD.md: MVTec AD keeps the whole
test split; BTAD only ``test/ko``; MPDD, DTD-Synthetic and WFDD skip the normal folders (defective images
only), since for every dataset but MVTec AD the reference code skipped the normal test folders.
"""

from __future__ import annotations

from pathlib import Path

from iapas.data.base import DatasetBase, Sample, Scan, has_child_dir, list_images, subdirs


def mask_index(folder: Path, suffixes: tuple[str, ...] = ("_mask", "")) -> dict[str, Path]:
    """Map image stem -> mask file for the images of ``folder``, trying each name suffix in order.

    With the default, ``000_mask.png`` and ``000.bmp`` both serve image ``000``; ``_mask`` wins when
    both exist.
    """
    index: dict[str, Path] = {}
    files = list_images(folder)
    for suffix in reversed(suffixes):
        for path in files:
            stem = path.stem
            if suffix and not stem.endswith(suffix):
                continue
            index[stem[: len(stem) - len(suffix)] if suffix else stem] = path
    return index


class MVTecStyleDataset(DatasetBase):
    """A dataset in the MVTec AD folder layout (see the module docstring)."""

    name = "mvtec"
    title = "MVTec AD"
    mask_suffixes = ("_mask",)
    mask_folders = ("ground_truth",)  # BTAD's masks there are named like their images
    normal_dirs: tuple[str, ...] = ("good",)
    layout = (
        "ROOT/<category>/test/<defect type>/*.png with normal images in test/good, normal training images in "
        "<category>/train/good/ and masks in <category>/ground_truth/<defect type>/<stem>_mask.png"
    )
    expected_categories = (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    )  # fmt: skip
    paper_keeps_normals = True

    def _discover(self) -> list[str]:
        return [d.name for d in subdirs(self.root) if has_child_dir(d, "test")]

    def _is_normal(self, folder_name: str) -> bool:
        return folder_name.lower() in self.normal_dirs

    def _scan(self, category: str) -> Scan:
        base = self.root / category
        test_dir = base / "test"
        gt_dir = base / "ground_truth"
        test: list[Sample] = []
        notes: list[str] = []
        missing_masks = 0
        for type_dir in subdirs(test_dir):
            images = list_images(type_dir)
            if self._is_normal(type_dir.name):
                test.extend(Sample(p, 0, None, type_dir.name, category) for p in images)
                continue
            masks = mask_index(gt_dir / type_dir.name)
            for p in images:
                mask = masks.get(p.stem)
                missing_masks += mask is None
                test.append(Sample(p, 1, mask, type_dir.name, category))
        if missing_masks:
            notes.append(
                f"{missing_masks} defective test images have no mask in {gt_dir}/<type>/ (expected <stem>_mask.png or <stem>.<ext>)."
            )
        train_dir = base / "train"
        train: list[Path] = []
        normal_names = [d for d in subdirs(train_dir) if self._is_normal(d.name)]
        for d in normal_names:
            train.extend(list_images(d))
        no_train = ""
        if not train_dir.is_dir():
            no_train = f"{train_dir} does not exist (this copy has no train split)"
        elif not train:
            no_train = f"{train_dir / self.normal_dirs[0]} has no images (the train split is missing)"
        return Scan(test=test, train_normals=train, no_train=no_train, train_missing=not train, notes=notes)


class MVTecAD(MVTecStyleDataset):
    """MVTec AD (15 categories). Paper protocol = the whole test split (the same as full)."""

    download_folders = ("mvtecad", "mvtec", "mvtecanomalydetection")


class MPDD(MVTecStyleDataset):
    """MPDD (6 metal-part categories), MVTec layout. Paper protocol = defective test images only."""

    name = "mpdd"
    download_folders = ("mpdd",)
    title = "MPDD"
    expected_categories = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
    paper_keeps_normals = False


class BTAD(MVTecStyleDataset):
    """BTAD (categories 01, 02, 03). Normal folders are ``ok``; paper protocol = ``test/ko`` only."""

    name = "btad"
    download_folders = ("btad", "beantechanomalydetection", "btechdatasettransformed", "btechdataset")
    title = "BTAD"
    normal_dirs = ("ok",)
    layout = (
        "ROOT/<01|02|03>/test/{ok,ko}/*.bmp|png, normal training images in <category>/train/ok/ and masks in "
        "<category>/ground_truth/ko/<stem>.<ext> (extensions differ per category: matched by stem)"
    )
    expected_categories = ("01", "02", "03")
    paper_keeps_normals = False


class DTDSynthetic(MVTecStyleDataset):
    """DTD-Synthetic (12 textures): ``test/{good,bad}``. Paper protocol = ``test/bad`` only."""

    name = "dtd"
    download_folders = ("dtdsynthetic", "dtd")
    title = "DTD-Synthetic"
    layout = (
        "ROOT/<texture>/test/{good,bad}/*.png, normal training images in <texture>/train/good/ and masks in "
        "<texture>/ground_truth/bad/<stem>_mask.png"
    )
    expected_categories = (
        "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
        "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
    )  # fmt: skip
    paper_keeps_normals = False


class WFDD(MVTecStyleDataset):
    """WFDD, the woven fabric defect dataset (4 fabrics), MVTec layout. Paper protocol = defective test images only.

    The reference code reads it exactly as MPDD: ``<fabric>/train/good`` for the references,
    ``<fabric>/test/<type>/*.png``, masks ``<fabric>/ground_truth/<type>/<stem>_mask.png``, and skips
    ``test/good``.
    """

    name = "wfdd"
    title = "WFDD"
    layout = (
        "ROOT/<fabric>/test/<defect type>/*.png with normal images in test/good, normal training images in "
        "<fabric>/train/good/ and masks in <fabric>/ground_truth/<defect type>/<stem>_mask.png"
    )
    expected_categories = ("grey_cloth", "grid_cloth", "pink_flower", "yellow_cloth")
    paper_keeps_normals = False
