"""A user's own data: a folder of normal images, a folder of anomalous ones, a folder of masks.

Layout under ROOT (names are options)::

    ROOT/good/*.png                 normal images
    ROOT/defect/*.png               anomalous images; subfolders become defect types
    ROOT/masks/{stem}_mask.png      masks, beside the same subfolder as the image when it has one
    ROOT/train/*.png                optional normal references (otherwise drawn from good/)

One category, named after ROOT (or ``category=``). The paper protocol means nothing here: it is
the same as full.
"""

from __future__ import annotations

from pathlib import Path

from iapas.data.base import DatasetBase, DatasetError, Sample, Scan, is_image, list_images
from iapas.core.names import name_from


class FolderDataset(DatasetBase):
    """Normal / anomalous / mask folders (see the module docstring)."""

    name = "folder"
    mask_suffixes = ("_mask",)  # the defaults: ROOT/masks/{stem}_mask.png
    mask_folders = ("masks",)
    title = "folder dataset"
    layout = (
        "ROOT/<normal>/ (normal images), ROOT/<anomalous>/ (anomalous images, subfolders = defect types), "
        "ROOT/<masks>/ named by --mask-pattern, e.g. {stem}_mask.png; optional ROOT/<references>/"
    )
    paper_keeps_normals = True
    has_paper_protocol = False  # no reference test set to keep whole: calibration may hold out normal test images

    def __init__(
        self,
        root: str | Path,
        *,
        normal: str = "good",
        anomalous: str = "defect",
        masks: str = "masks",
        mask_pattern: str = "{stem}_mask.png",
        references: str | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(root)
        if "{stem}" not in mask_pattern:
            raise ValueError(f"mask pattern {mask_pattern!r} must contain '{{stem}}', e.g. '{{stem}}_mask.png'")
        self.normal = normal
        self.anomalous = anomalous
        self.masks = masks
        self.mask_pattern = mask_pattern
        self.references = references
        self.category = category or name_from(self.root.resolve().name)  # "My Parts" -> "My_Parts": it names folders
        self.layout = (
            f"ROOT/{normal}/ (normal images), ROOT/{anomalous}/ (anomalous images, subfolders = defect types), "
            f"masks ROOT/{masks}/{mask_pattern}" + (f", references ROOT/{references}/" if references else "")
        )

    def data_dirs(self) -> list[Path]:
        """The normal, anomalous, masks and references folders that exist (ROOT may hold other things)."""
        names = [self.normal, self.anomalous, self.masks] + ([self.references] if self.references else [])
        return [self.root / n for n in names if (self.root / n).is_dir()]

    def _discover(self) -> list[str]:
        if (self.root / self.normal).is_dir() or (self.root / self.anomalous).is_dir():
            return [self.category]
        return []

    def _mask_for(self, image: Path, anomalous_dir: Path) -> Path | None:
        name = self.mask_pattern.format(stem=image.stem)
        relative = image.parent.relative_to(anomalous_dir)
        for candidate in (self.root / self.masks / relative / name, self.root / self.masks / name):
            if candidate.is_file():
                return candidate
        return None

    def _scan(self, category: str) -> Scan:
        normal_dir = self.root / self.normal
        anomalous_dir = self.root / self.anomalous
        test = [Sample(p, 0, None, self.normal, category) for p in list_images(normal_dir)]
        missing_masks = 0
        if anomalous_dir.is_dir():
            images = sorted((p for p in anomalous_dir.rglob("*") if is_image(p)), key=lambda p: p.relative_to(anomalous_dir).as_posix())
            for image in images:
                defect = image.parent.relative_to(anomalous_dir).as_posix()
                mask = self._mask_for(image, anomalous_dir)
                missing_masks += mask is None
                test.append(Sample(image, 1, mask, self.anomalous if defect == "." else defect, category))
        notes = []
        if missing_masks:
            notes.append(f"{missing_masks} anomalous images have no mask {self.masks}/{self.mask_pattern}.")
        train: list[Path] = []
        no_train = "there is no separate reference folder"
        if self.references:
            ref_dir = self.root / self.references
            if not ref_dir.is_dir():
                raise DatasetError(f"{ref_dir}: reference folder does not exist")
            train = list_images(ref_dir)
            no_train = f"{ref_dir} has no images"
        return Scan(test=test, train_normals=train, no_train=no_train, train_missing=bool(self.references), notes=notes)
