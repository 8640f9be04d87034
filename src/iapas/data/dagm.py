"""DAGM 2007: ``ClassN/{Train,Test}/*.PNG`` with ``Label/Labels.txt`` and ``Label/<stem>_label.PNG``.

``Labels.txt`` starts with a count line, then one row per image, tab separated:
``id  defective(0/1)  image  0  label_file`` (the label file is absent or ``0`` for normal rows).
When an image is not listed (or there is no Labels.txt), the presence of ``Label/<stem>_label.PNG``
decides. Downloads that nest ``ClassN/ClassN/Train`` are accepted. References come from the normal
``Train`` images.

Paper protocol: the images with a label (the defective ones) of both ``Train`` and ``Test``, as the
reference code scored them. The references stay normal (label 0) ``Train`` images, so none of them
is tested (the reference code took its references among the defective images).
"""

from __future__ import annotations

from pathlib import Path

from iapas.data.base import DatasetBase, DatasetError, Sample, Scan, has_child_dir, list_images, subdirs

LABEL_DIR = "Label"
LABEL_SUFFIX = "_label"  # Label/<stem>_label.PNG
LABELS_FILE = "Labels.txt"


def read_labels_file(path: Path) -> dict[str, tuple[int, str | None]]:
    """Parse a DAGM ``Labels.txt``: image name -> (defective 0/1, label file name or None)."""
    rows: dict[str, tuple[int, str | None]] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the DAGM label list: {exc.strerror or exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if len(parts) < 3:  # the first line is a count; blank lines
            continue
        if parts[1] not in ("0", "1"):
            raise DatasetError(f"{path}:{number}: expected 'id defective(0/1) image 0 label_file', got {line.strip()!r}")
        label = parts[4] if len(parts) >= 5 and parts[4] != "0" else None
        rows[parts[2]] = (int(parts[1]), label)
    return rows


class DAGM(DatasetBase):
    """DAGM 2007 (see the module docstring)."""

    name = "dagm"
    mask_suffixes = (LABEL_SUFFIX,)
    mask_folders = (LABEL_DIR.lower(),)
    download_folders = ("dagm2007", "dagm")
    title = "DAGM 2007"
    layout = (
        "ROOT/ClassN/{Train,Test}/*.PNG with ClassN/{Train,Test}/Label/Labels.txt "
        "(id, defective 0/1, image, 0, label file) and masks Label/<stem>_label.PNG"
    )
    expected_categories = tuple(f"Class{i}" for i in range(1, 11))
    paper_keeps_normals = False
    paper_note = "References: normal (label 0) Train images; the reference code took defective ones."

    def _class_dir(self, folder: Path) -> Path | None:
        for candidate in (folder, folder / folder.name):
            if has_child_dir(candidate, "Test") or has_child_dir(candidate, "Train"):
                return candidate
        return None

    def _discover(self) -> list[str]:
        return [d.name for d in subdirs(self.root) if self._class_dir(d) is not None]

    def _split(self, folder: Path, category: str, notes: list[str]) -> list[Sample]:
        label_dir = folder / LABEL_DIR
        labels_path = label_dir / LABELS_FILE
        listed = read_labels_file(labels_path) if labels_path.is_file() else {}
        if not listed and folder.is_dir():
            notes.append(f"{labels_path} is missing: defective = a Label/<stem>_label.PNG exists.")
        label_files = {p.name.lower(): p for p in list_images(label_dir)}
        samples: list[Sample] = []
        missing_masks = 0
        for image in list_images(folder):
            entry = listed.get(image.name)
            guess = f"{image.stem}{LABEL_SUFFIX}{image.suffix}".lower()
            if entry is None:
                mask = label_files.get(guess)
                defective = mask is not None
            else:
                defective = entry[0] == 1
                mask = label_files.get((entry[1] or guess).lower()) if defective else None
                if defective and mask is None:
                    missing_masks += 1
            samples.append(Sample(image, int(defective), mask, "defect" if defective else "good", category))
        if missing_masks:
            notes.append(f"{missing_masks} images of {folder} are marked defective but their label file is missing.")
        return samples

    def _scan(self, category: str) -> Scan:
        base = self._class_dir(self.root / category)
        assert base is not None  # categories() checked it
        notes: list[str] = []
        test = self._split(base / "Test", category, notes)
        train_split = self._split(base / "Train", category, notes)
        train = [s.path for s in train_split if s.label == 0]
        no_train = "" if train else f"{base / 'Train'} has no normal images (the train split is missing)"
        defective_train = [s for s in train_split if s.label == 1]
        return Scan(
            test=test, train_normals=train, no_train=no_train, train_missing=not train, notes=notes, paper_extra=defective_train
        )
