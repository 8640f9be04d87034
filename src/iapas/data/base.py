"""What every dataset loader returns, and the shared logic: reference drawing and protocols.

A loader only scans its layout (:meth:`DatasetBase._scan`); :meth:`DatasetBase.load` then draws
the normal references, removes them from the test set when they had to come from it, and applies
the evaluation protocol. So every dataset follows exactly the same rules.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from iapas.core.images import IMAGE_SUFFIXES
from iapas.core.names import BadNameError, check_name

logger = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("full", "paper")
DEFAULT_PROTOCOL = "paper"  # what ``iapas evaluate`` and ``iapas data summary`` use unless told
DEFAULT_REFERENCES = 10
DEFAULT_SEED = 0


class DatasetError(ValueError):
    """A dataset root is missing, has an unexpected layout, or lacks a category; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One test image. ``label`` is 0 (normal) or 1 (anomalous).

    ``mask_path`` is the ground-truth mask file, or None: normal samples never carry one (their mask
    is all zeros), and an anomalous sample whose mask file is missing has None too (the category's
    notes say so). Read masks with :func:`iapas.data.masks.sample_mask`. ``part`` is the
    sub-folder the image comes from where a protocol scores those separately (KSDD1's ``kosNN``
    folders under the paper protocol), else ''.
    """

    path: Path
    label: int
    mask_path: Path | None
    defect_type: str
    category: str
    part: str = ""

    @property
    def is_anomalous(self) -> bool:
        return self.label == 1


@dataclass(frozen=True)
class Category:
    """One product category, ready for evaluation.

    ``references`` are the normal images stage 1 may look at; none of them is in ``test``.
    ``notes`` are user-facing sentences about how the category was assembled (put them in reports).
    ``split_parts``: the protocol scores each part (:attr:`Sample.part`) as its own category
    (:meth:`parts`), all with this category's references and stage-1 profile. ``product``: for
    such a part, the category it belongs to (whose profile it uses); '' otherwise.
    """

    name: str
    references: list[Path]
    test: list[Sample]
    notes: list[str] = field(default_factory=list)
    dataset: str = ""
    protocol: str = "full"
    split_parts: bool = False
    product: str = ""

    @property
    def anomalous(self) -> int:
        """Number of test samples that are defective (label 1)."""
        return sum(1 for s in self.test if s.label == 1)

    @property
    def normal(self) -> int:
        return sum(1 for s in self.test if s.label == 0)

    @property
    def with_mask(self) -> int:
        """Number of test samples that have a mask file (only defective samples carry one).

        A mask file may be empty (e.g. 4 MT_Uneven masks of MTD): it still counts here, and the
        sample is still anomalous because its folder or label file says so.
        """
        return sum(1 for s in self.test if s.mask_path is not None)

    @property
    def defect_types(self) -> list[str]:
        """The defect types of the anomalous test samples, sorted."""
        return sorted({s.defect_type for s in self.test if s.label == 1})

    def parts(self) -> list[Category]:
        """The categories an evaluation scores: ``[self]``, or with ``split_parts`` one per part.

        A part keeps the test samples of one ``Sample.part`` (in test order, parts in order of
        first appearance), the product's references (none of which is in any part's test set)
        and no notes (the product's notes hold for every part: report them once).
        """
        if not self.split_parts:
            return [self]
        groups: dict[str, list[Sample]] = {}
        for sample in self.test:
            groups.setdefault(sample.part, []).append(sample)
        return [
            Category(part, list(self.references), samples, [], self.dataset, self.protocol, product=self.name)
            for part, samples in groups.items()
        ]


@runtime_checkable
class Dataset(Protocol):
    """What the evaluation needs from a dataset."""

    name: str
    root: Path

    def categories(self) -> list[str]: ...

    def load(
        self,
        category: str,
        *,
        protocol: str = "full",
        n_references: int = DEFAULT_REFERENCES,
        seed: int = DEFAULT_SEED,
    ) -> Category: ...


@dataclass
class Scan:
    """What a loader found for one category, before references and protocol.

    ``train_normals`` is the normal training pool; empty when the dataset has none or it is
    missing, and then ``no_train`` says why in a sentence (``train_missing`` tells whether the
    split should have been there, which makes it a warning).
    """

    test: list[Sample]
    train_normals: list[Path] = field(default_factory=list)
    no_train: str = ""
    train_missing: bool = False
    notes: list[str] = field(default_factory=list)
    paper_extra: list[Sample] = field(default_factory=list)  # tested too under the paper protocol


def natural_key(text: str) -> list[object]:
    """Sort key that puts 'Class2' before 'Class10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name; [] if it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)


def subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def has_child_dir(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds a folder named exactly ``name`` (case-sensitive even where the filesystem is not).

    Layout detection relies on exact names: MVTec's ``test`` versus DAGM's ``Test``.
    """
    if not folder.is_dir():
        return False
    return any(child.name == name and child.is_dir() for child in folder.iterdir())


def draw_references(pool: Iterable[Path], k: int, seed: int, root: Path | None = None) -> list[Path]:
    """``k`` paths drawn from ``pool`` with a fixed seed, returned sorted.

    The pool is sorted first (by its path relative to ``root`` when given), so the draw depends
    only on (seed, k) and the set of files, never on filesystem listing order or on where the
    dataset lives. The draw is a prefix of one seeded permutation: the references for k=1 are among
    those for k=10.
    """
    if k < 0:
        raise ValueError(f"number of references must be >= 0, got {k}")

    def key(p: Path) -> str:
        if root is not None:
            try:
                return p.relative_to(root).as_posix()
            except ValueError:
                pass
        return p.as_posix()

    ordered = sorted(set(pool), key=key)
    order = list(range(len(ordered)))
    random.Random(seed).shuffle(order)
    chosen = [ordered[i] for i in order[: min(k, len(ordered))]]
    return sorted(chosen, key=key)


def references_from_test_count(n_normal: int, n_requested: int) -> int:
    """How many references to take when they must come from the normal TEST images.

    At most half of them (rounded down, but at least one when there is any), so that at least as
    many normal images stay in the test set as were used as references: image-level metrics need
    normal test images. E.g. 20 normal images and N=10 give 10; 8 normal images and N=10 give 4.
    """
    if n_requested <= 0 or n_normal <= 0:
        return 0
    return min(n_requested, max(1, n_normal // 2))


class DatasetBase:
    """Shared :meth:`categories` and :meth:`load`; subclasses implement :meth:`_discover` and :meth:`_scan`.

    Class attributes: ``name`` (registry name), ``title`` (human name), ``layout`` (one line on the
    expected folder layout, used in errors and ``--help``), ``expected_categories`` (the official
    list, to tell a user what a download lacks), ``paper_keeps_normals`` (whether the paper
    protocol keeps the normal test images), ``paper_scores_parts`` (whether the paper protocol
    scores each :attr:`Sample.part` as its own category, see :meth:`Category.parts`) and
    ``paper_note`` (a sentence for the notes of a paper-protocol category: how it differs from
    the reference code). ``mask_suffixes`` and ``mask_folders`` say how the layout names its
    ground-truth masks (file stems ending ``_mask``; folders such as ``ground_truth`` that hold
    only masks; lowercase, compared without case), :meth:`mask_beside` any other rule, so that an
    image search of a folder leaves the masks out (:func:`iapas.data.search.mask_rule`).
    ``download_folders``: the folder names ``iapas bench`` recognises the dataset by.
    """

    name: str = ""
    title: str = ""
    layout: str = ""
    expected_categories: tuple[str, ...] = ()
    paper_keeps_normals: bool = True
    paper_scores_parts: bool = False
    has_paper_protocol: bool = True  # False: 'paper' is the same as 'full' (a user's own folder dataset)
    paper_note: str = ""
    mask_suffixes: tuple[str, ...] = ()
    mask_folders: tuple[str, ...] = ()
    # The names a download of one of the paper's datasets comes as (lowercase, letters and digits
    # only), by which ``iapas bench`` finds it (iapas.evaluation.bench); empty: not a bench dataset.
    download_folders: tuple[str, ...] = ()

    @classmethod
    def mask_beside(cls, path: Path) -> str | None:
        """The rule (a few words) by which the file ``path``, in a folder of images, is this layout's
        ground-truth mask beyond its suffixes and folders, or None (the default: no such rule)."""
        return None

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DatasetError(f"{self.root}: {self.title} root folder does not exist")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder (expected the {self.title} root folder)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"

    # -- to implement -------------------------------------------------------------------------
    def _discover(self) -> list[str]:
        raise NotImplementedError

    def _scan(self, category: str) -> Scan:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def categories(self) -> list[str]:
        """The categories present under the root; DatasetError when none is recognisable."""
        found = self._discover()
        named: list[str] = []
        refused = ""
        for category in found:  # a category becomes folder and file names (iapas.core.names)
            try:
                named.append(check_name(category, f"{self.title} category"))
            except BadNameError as exc:
                refused = f"{self.root}: {exc}"
                logger.warning("%s; left out", refused)
        if not named:
            raise DatasetError(refused or f"{self.root}: no {self.title} categories found; expected {self.layout}")
        return named

    def data_dirs(self) -> list[Path]:
        """The folders that hold this dataset's files (checked for empty sub-folders): the root."""
        return [self.root]

    def missing_categories(self) -> list[str]:
        """Official categories of this dataset that are not under the root (an incomplete download)."""
        present = set(self._discover())
        return [c for c in self.expected_categories if c not in present]

    def load(
        self,
        category: str,
        *,
        protocol: str = "full",
        n_references: int = DEFAULT_REFERENCES,
        seed: int = DEFAULT_SEED,
    ) -> Category:
        """The references and test samples of one category.

        ``protocol='full'``: the whole test split, normal and defective. ``protocol='paper'``: the
        test images the paper's reference code used (see the dataset's docstring). References come
        from the normal training split when there is one; otherwise they are drawn (fixed ``seed``)
        from the normal test images and removed from the test set, and ``notes`` says so.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if n_references < 0:
            raise ValueError(f"n_references must be >= 0, got {n_references}")
        available = self.categories()
        if category not in available:
            raise DatasetError(f"{self.root}: no {self.title} category {category!r}; found: {', '.join(available)}")
        scan = self._scan(category)
        references, test, notes = self._references(category, scan, n_references, seed)
        split = protocol == "paper" and self.paper_scores_parts
        if protocol == "paper":
            test = self._paper_test(category, scan, references, test, notes)
        return Category(
            name=category,
            references=references,
            test=test,
            notes=notes,
            dataset=self.name,
            protocol=protocol,
            split_parts=split,
        )

    def _references(
        self, category: str, scan: Scan, n_references: int, seed: int
    ) -> tuple[list[Path], list[Sample], list[str]]:
        """The references of a scanned category, its test set without them and the notes so far:
        drawn from the normal training split, or else from the normal test images (which then
        leave the test set)."""
        notes = list(scan.notes)
        test = list(scan.test)
        if scan.train_normals:
            references = draw_references(scan.train_normals, n_references, seed, self.root)
            if len(references) < n_references:
                message = f"Only {len(references)} normal training images: all of them are the references (asked for {n_references})."
                notes.append(message)
                logger.warning("%s: %s", category, message)
            return references, test, notes
        pool = [s.path for s in test if s.label == 0]
        k = references_from_test_count(len(pool), n_references)
        references = draw_references(pool, k, seed, self.root)
        chosen = set(references)
        test = [s for s in test if s.path not in chosen]
        reason = scan.no_train or f"{self.title} has no normal training images"
        if n_references > 0 and not pool:
            message = f"{reason}, and there are no normal test images either: no reference images."
            notes.append(message)
            logger.warning("%s: %s", category, message)
        elif n_references > 0:
            message = (
                f"{reason}: the {k} normal reference images were drawn (seed {seed}) from the "
                f"{len(pool)} normal test images and excluded from the test set."
            )
            notes.append(message)
            if scan.train_missing:
                logger.warning("%s: %s", category, message)
            else:
                logger.info("%s: %s", category, message)
            if k < n_references:
                short = (
                    f"only {k} of the {n_references} requested references were drawn, so that "
                    f"{len(pool) - k} normal images stay in the test set."
                )
                notes.append(short[0].upper() + short[1:])
                logger.warning("%s: %s", category, short)
        return references, test, notes

    def _paper_test(
        self, category: str, scan: Scan, references: list[Path], test: list[Sample], notes: list[str]
    ) -> list[Sample]:
        """The test set under the paper protocol (the train split's defective images added, the
        normal ones dropped where the reference code did); its notes are appended to ``notes``."""
        if scan.paper_extra:
            chosen = set(references)
            extra = [s for s in scan.paper_extra if s.path not in chosen and (s.label == 1 or self.paper_keeps_normals)]
            test = test + extra
            notes.append(
                f"Paper protocol: {len(extra)} defective images of the train split are tested too, as the reference "
                "code did (the references are never among them)."
            )
        if not self.paper_keeps_normals:
            dropped = sum(1 for s in test if s.label == 0)
            test = [s for s in test if s.label == 1]
            notes.append(f"Paper protocol: defective test images only ({dropped} normal test images left out).")
        if self.paper_scores_parts:
            n_parts = len({s.part for s in test})
            notes.append(
                f"Paper protocol: each of the {n_parts} folders is scored as its own category and the metrics are "
                f"averaged over the folders, as the reference code does; stage 1 ran once for {category}, from "
                "references drawn over all folders and left out of every folder's test set (the reference code "
                "drew references per folder and tested them too)."
            )
        if self.paper_note:
            notes.append(self.paper_note)
        return test

    def part_names(self, category: str) -> list[str]:
        """The names of the parts the paper protocol scores ``category`` by (KSDD1's folders); []
        for a dataset that does not split its categories."""
        if not self.paper_scores_parts:
            return []
        return sorted({s.part for s in self._scan(category).test if s.part}, key=natural_key)

    def held_out_normals(
        self, category: Category, n: int, seed: int = DEFAULT_SEED, *, from_test: bool = True
    ) -> tuple[list[Path], Category, str]:
        """``n`` normal images of ``category`` that are neither references nor test images, drawn
        like the references (fixed ``seed``), to calibrate an OK/NG threshold on.

        From the normal training split when there is one (its images that are not references);
        otherwise, when ``from_test``, from the normal test images, at most half of them (as the
        references, :func:`references_from_test_count`), which are then removed from the test
        set; without ``from_test`` none (the test set stays whole). Returns the images, the
        category (its test set without them) and a sentence saying where they came from.
        """
        if n <= 0:
            return [], category, ""
        scan = self._scan(category.name)
        used = set(category.references) | {s.path for s in category.test}
        pool = [p for p in scan.train_normals if p not in used]
        if pool:
            drawn = draw_references(pool, n, seed, self.root)
            note = (
                f"Calibration: {len(drawn)} normal training images that are not references were drawn (seed {seed}) "
                f"to calibrate the OK/NG threshold (asked for {n})."
            )
            return drawn, category, note
        if not from_test:
            return [], category, (
                "Calibration: no OK/NG threshold: there are no normal training images beyond the references, and "
                "under --protocol paper calibration never takes test images (the reference tests them all); "
                "--calibration-from-test takes them from the normal test images instead."
            )
        in_test = [s.path for s in category.test if s.label == 0]
        drawn = draw_references(in_test, references_from_test_count(len(in_test), n), seed, self.root)
        chosen = set(drawn)
        test = [s for s in category.test if s.path not in chosen]
        note = (
            f"Calibration: no normal training images beyond the references, so {len(drawn)} of the {len(in_test)} "
            f"normal test images were drawn (seed {seed}, asked for {n}) to calibrate the OK/NG threshold and "
            f"excluded from the test set ({len(in_test) - len(drawn)} normal test images remain)."
        )
        return drawn, replace(category, test=test), note
