"""VisA: the split file ``split_csv/1cls.csv`` (columns object, split, label, image, mask).

``split`` is train/test, ``label`` normal/anomaly, ``image`` and ``mask`` are paths relative to the
root (``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, ``<cat>/Data/Masks/Anomaly/*.png``). References
come from the normal images of the train split. Masks are 0/255 or small label maps (0 = background),
both read by :func:`iapas.data.masks.load_mask`.

Paper protocol: the reference code tests the ``Normal`` images too (its label rule is ``0 if
sub_name in ['good', 'Normal', 'MT_Free'] else 1``), so both classes of the test split are used.
"""

from __future__ import annotations

import csv
from pathlib import Path

from iapas.data.base import DatasetBase, DatasetError, Sample, Scan

SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


class VisA(DatasetBase):
    """VisA (see the module docstring)."""

    name = "visa"
    mask_folders = ("masks",)  # <category>/Data/Masks/
    title = "VisA"
    layout = (
        "ROOT/split_csv/1cls.csv (object, split, label, image, mask; paths relative to ROOT) with "
        "ROOT/<category>/Data/Images/{Normal,Anomaly}/ and ROOT/<category>/Data/Masks/Anomaly/"
    )
    expected_categories = (
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
        "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    )  # fmt: skip
    paper_keeps_normals = True  # the reference tests the Normal images too

    def _rows(self) -> list[dict[str, str]]:
        path = self.root / SPLIT_FILE
        if not path.is_file():
            return []
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:  # a BOM would glue to "object"
                reader = csv.DictReader(fh)
                header = [c.strip().lower() for c in reader.fieldnames or []]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise DatasetError(f"{path}: missing columns {', '.join(missing)} (expected {', '.join(COLUMNS)})")
                return [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the VisA split file: {exc.strerror or exc}") from None

    def _discover(self) -> list[str]:
        return sorted({row["object"] for row in self._rows() if row["object"]})

    def _scan(self, category: str) -> Scan:
        test: list[Sample] = []
        train: list[Path] = []
        missing: list[str] = []
        missing_masks = 0
        for row in self._rows():
            if row["object"] != category:
                continue
            image = self.root / row["image"]
            if not image.is_file():
                missing.append(row["image"])
                continue
            anomalous = row["label"].lower() == "anomaly"
            split = row["split"].lower()
            if split == "train":
                if not anomalous:
                    train.append(image)
                continue
            if split != "test":
                continue
            mask = self.root / row["mask"] if anomalous and row["mask"] else None
            if anomalous and (mask is None or not mask.is_file()):
                mask = None
                missing_masks += 1
            test.append(Sample(image, int(anomalous), mask, "anomaly" if anomalous else "normal", category))
        test.sort(key=lambda s: str(s.path))
        notes: list[str] = []
        if missing:
            notes.append(f"{len(missing)} images listed in {SPLIT_FILE} are missing (e.g. {missing[0]}).")
        if missing_masks:
            notes.append(f"{missing_masks} anomalous test images have no mask file.")
        no_train = "" if train else f"{SPLIT_FILE} lists no normal train images for {category}"
        return Scan(test=test, train_normals=train, no_train=no_train, train_missing=not train, notes=notes)
