"""MTD, the Magnetic Tile Defect dataset: ``MT_<Class>/Imgs/<name>.jpg`` with the mask ``<name>.png`` beside it.

One category (``magnetic_tile``). ``MT_Free`` holds the defect-free images; every other ``MT_<Class>``
folder is a defect type (Blowhole, Break, Crack, Fray, Uneven), and its images are anomalous because
the folder says so, even when the mask is empty (4 MT_Uneven masks are). There is no train split: the
references are drawn from MT_Free and excluded from the test set.

Paper protocol: the reference code kept MT_Free, so it is the same as full (all images but the
references). Normal samples carry no mask path (the MT_Free masks are all empty).
"""

from __future__ import annotations

import os
from pathlib import Path

from iapas.core.images import IMAGE_SUFFIXES
from iapas.data.base import DatasetBase, Sample, Scan, is_image, subdirs

NORMAL_CLASS = "Free"
IMAGES_DIR = "Imgs"  # MT_<Class>/Imgs/: the images and their masks
CATEGORY = "magnetic_tile"


class MTD(DatasetBase):
    """Magnetic Tile Defect (see the module docstring)."""

    name = "mtd"
    download_folders = ("mtd", "magnetictiledefect", "magnetictile", "magnetictilesurfacedefects")
    title = "MTD"
    layout = "ROOT/MT_<Class>/Imgs/<name>.jpg with the mask <name>.png beside it; MT_Free = defect-free"
    expected_categories = (CATEGORY,)
    paper_keeps_normals = True

    @classmethod
    def mask_beside(cls, path: Path) -> str | None:
        """An ``Imgs/<name>.png`` beside an image ``<name>.jpg`` (or another image suffix) is its mask."""
        folder = Path(os.path.abspath(path)).parent
        if folder.name.lower() == IMAGES_DIR.lower() and path.suffix.lower() == ".png":
            others = [s for s in IMAGE_SUFFIXES if s != ".png"]
            if any(path.with_suffix(s).is_file() for s in others + [s.upper() for s in others]):
                return f"{folder.name}/<name>.png beside <name>.jpg"
        return None

    def _class_dirs(self) -> list[Path]:
        return [d for d in subdirs(self.root) if d.name.startswith("MT_") and (d / IMAGES_DIR).is_dir()]

    def _discover(self) -> list[str]:
        return [CATEGORY] if self._class_dirs() else []

    def _scan(self, category: str) -> Scan:
        test: list[Sample] = []
        missing = 0
        for class_dir in self._class_dirs():
            defect = class_dir.name[len("MT_") :]
            normal = defect.lower() == NORMAL_CLASS.lower()
            by_stem: dict[str, list[Path]] = {}
            for p in (class_dir / IMAGES_DIR).iterdir():
                if is_image(p):
                    by_stem.setdefault(p.stem, []).append(p)
            for stem in sorted(by_stem):
                files = by_stem[stem]
                masks = [p for p in files if p.suffix.lower() == ".png"]
                images = [p for p in files if p.suffix.lower() != ".png"]
                if not images:  # a lone PNG is an image without a mask
                    images, masks = masks, []
                image = sorted(images)[0]
                mask = None if normal or not masks else masks[0]
                if not normal and mask is None:
                    missing += 1
                test.append(Sample(image, 0 if normal else 1, mask, defect, category))
        notes = [f"{missing} defective images have no mask <name>.png beside them."] if missing else []
        return Scan(test=test, no_train="MTD has no train split", train_missing=False, notes=notes)
