"""Finding the images of a run: folders, globs and lists, hidden files, broken links and the masks beside them."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path


from iapas.core.files import RESULTS_FILE, RUN_FILE, is_run_folder
from iapas.core.images import IMAGE_SUFFIXES, broken_link, show_path
from iapas.data.registry import mask_beside, mask_names

logger = logging.getLogger(__name__)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def mask_rule(path: Path, root: Path | None = None) -> str | None:
    """The naming rule by which ``path`` is a dataset's ground-truth mask (``'*_label.*'``,
    ``'ground_truth/'``, ...), or None: the rules the dataset loaders declare
    (:func:`iapas.data.registry.mask_names`, :func:`~iapas.data.registry.mask_beside`). An image
    search of a folder or a glob pattern never takes such files as inspection images; a file
    named by itself is taken. Folder names count from ``root`` (the folder searched, itself
    included) down to the file; without ``root``, the file's own folder only."""
    suffixes, mask_folders = mask_names()
    stem = path.stem.lower()
    for suffix in suffixes:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return f"*{suffix}.*"
    folder = Path(os.path.abspath(path)).parent
    folders = [folder.name]
    if root is not None:
        base = Path(os.path.abspath(root))
        with contextlib.suppress(ValueError):
            folders = [base.name, *folder.relative_to(base).parts]
    for name in folders:
        if name.lower() in mask_folders:
            return f"{name}/"
    return mask_beside(path)


def _images_in(folder: Path, search: "ImageSearch", mask_root: Path | None = None) -> list[Path]:
    """Image files under ``folder``, recursively, skipping hidden files and folders (such as
    macOS ``._name.png`` companions). Ground-truth masks (see :func:`mask_rule`, with folder
    names counted from ``mask_root``, by default ``folder``) go to ``search.masks``; links named as
    images that cannot be followed are kept (reading them fails with the reason), other such
    links are logged, one line each."""
    images: list[Path] = []
    runs = _RunFolders(folder, search)
    for q in sorted(folder.rglob("*")):
        if _is_hidden(q, folder):
            continue
        reason = broken_link(q)
        if q.suffix.lower() not in IMAGE_SUFFIXES:
            if reason:
                logger.warning("%s: %s; not searched", q, reason)
            continue
        if runs.holds(q):
            continue
        if not (reason or q.is_file()):
            continue
        rule = mask_rule(q, mask_root or folder)
        if rule:
            search.masks.append((q, rule))
        else:
            images.append(q)
    return images


class _RunFolders:
    """The iapas run folders below a searched folder (not the folder itself: a run folder named
    as an input is searched): their maps, masks, overlays and uploads are a run's outputs, not
    parts to inspect; what is left out is counted in ``search.runs``."""

    def __init__(self, top: Path, search: "ImageSearch") -> None:
        self.top = top
        self.search = search
        self.known: dict[Path, bool] = {}

    def holds(self, path: Path) -> bool:
        """Whether ``path`` (a file, or a folder a pattern matched) is, or is in, a run folder."""
        for folder in (path, *path.parents):
            if folder == self.top or self.top not in folder.parents:
                return False
            if folder not in self.known:
                self.known[folder] = is_run_folder(folder)
            if self.known[folder]:
                if folder == path:  # a run folder matched whole: count its images
                    found = sum(1 for q in path.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
                else:
                    found = int(path.suffix.lower() in IMAGE_SUFFIXES)
                self.search.runs[folder] = self.search.runs.get(folder, 0) + found
                return True
        return False


def glob_root(pattern: str) -> Path:
    """The folder a glob pattern searches: its leading components without wildcards
    (``parts/*/good/*.png`` -> ``parts``)."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed: list[str] = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


@dataclass
class ImageSearch:
    """What :func:`search_images` found: images, each with the folder its output key is relative
    to; messages for inputs that matched nothing; ground-truth masks left out (with the rule that
    matched); inputs whose images all lie inside the excluded folder."""

    found: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    masks: list[tuple[Path, str]] = field(default_factory=list)
    excluded_inputs: list[str] = field(default_factory=list)
    runs: dict[Path, int] = field(default_factory=dict)  # run folders found below a searched one: images left out

    @property
    def paths(self) -> list[Path]:
        return [q for q, _ in self.found]


def search_images(inputs: list[str], exclude: Path | None = None, *, keep_missing: bool = False) -> ImageSearch:
    """Expand files, folders (recursively) and glob patterns into image paths.

    Files named explicitly are kept whatever their suffix or name (so a bad one gets a clear
    error later, and a mask named by itself is taken). Folder and pattern searches leave out
    ground-truth masks (:func:`mask_rule`; one log line says how many and why) and hidden files,
    and keep links named as images that cannot be followed (reading them fails with the reason).
    Anything under ``exclude`` (e.g. the run's own output folder) is left out. With
    ``keep_missing``, files named explicitly that do not exist, and links that cannot be
    followed, are returned too (so that a run can record them as failed) instead of as problems.

    Each image comes with the folder its output key is relative to, which depends on its own
    input only: a folder given (or a pattern's fixed leading folders) when it is the only input
    that found images, else that folder's parent (so keys start with the folder's name); a file's
    own folder for a file named explicitly (its key is its name).
    """
    import glob

    search = ImageSearch()
    excluded = os.path.abspath(exclude) if exclude is not None else None
    per_input: list[tuple[str, Path, bool, list[Path]]] = []  # item, its root, searched (not a file), images
    for item in inputs:
        p = Path(item).expanduser()
        masks_before = len(search.masks)
        if p.is_dir():
            found = _images_in(p, search)
            if not found:
                masks = len(search.masks) - masks_before
                but = f"; only {masks} ground-truth mask(s), left out" if masks else ""
                search.problems.append(f"{show_path(p)}: directory has no images ({', '.join(IMAGE_SUFFIXES)}){but}")
            per_input.append((item, p, True, found))
        elif p.exists() or p.is_symlink():
            per_input.append((item, p.parent, False, [p]))
        elif any(ch in item for ch in "*?["):
            root = glob_root(item)
            found = []
            runs = _RunFolders(root, search)
            for match in sorted(glob.glob(os.path.expanduser(item), recursive=True)):
                q = Path(match)
                if runs.holds(q):
                    continue
                if q.is_dir():
                    found.extend(_images_in(q, search, root))
                elif q.is_file() or broken_link(q):
                    rule = mask_rule(q, root)
                    if rule:
                        search.masks.append((q, rule))
                    else:
                        found.append(q)
            if not found:
                search.problems.append(f"{show_path(item)}: pattern matched no files")
            per_input.append((item, root, True, found))
        elif keep_missing:
            per_input.append((item, p.parent, False, [p]))
        else:
            search.problems.append(f"{show_path(p)}: file not found")
    unique: dict[str, tuple[Path, int]] = {}
    for index, (item, _root, _searched, found) in enumerate(per_input):
        inside = 0
        for q in found:
            absolute = os.path.abspath(q)
            if excluded is not None and (absolute == excluded or absolute.startswith(excluded.rstrip(os.sep) + os.sep)):
                inside += 1
                continue
            reason = broken_link(q)
            if reason and not keep_missing:
                search.problems.append(f"{show_path(q)}: {reason}")
                continue
            unique.setdefault(os.path.realpath(q), (q, index))  # realpath: never raises, even on a loop
        if found and inside == len(found):
            search.excluded_inputs.append(item)
    several = len({index for q, index in unique.values() if q.exists()}) > 1
    for q, index in unique.values():
        _item, root, searched, _found = per_input[index]
        search.found.append((q, Path(os.path.abspath(root)).parent if searched and several else root))
    _log_masks(search)
    for folder, count in search.runs.items():
        logger.warning("left out %d image(s) under %s: it holds an iapas run (%s, %s), whose outputs are no parts; "
                       "name it as an input to take them", count, show_path(folder), RUN_FILE, RESULTS_FILE)
    return search


def _log_masks(search: ImageSearch) -> None:
    """One line on the masks a search left out: how many, by which rules, an example."""
    masks = {os.path.realpath(q): (q, rule) for q, rule in search.masks}
    if masks:
        counts: dict[str, int] = {}
        for _q, rule in masks.values():
            counts[rule] = counts.get(rule, 0) + 1
        rules = ", ".join(f"{rule} {n}" for rule, n in counts.items())
        example = next(iter(masks.values()))[0]
        logger.warning(
            "left out %d mask image(s), named as datasets name their ground-truth masks (%s; e.g. %s); "
            "name a file by itself to take it", len(masks), rules, example,
        )


def find_images_with_roots(
    inputs: list[str], exclude: Path | None = None, *, keep_missing: bool = False
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """:func:`search_images` as ``(found, problems)``: each image with the folder its output key
    is relative to (see :func:`iapas.engine.runner.assign_keys`)."""
    search = search_images(inputs, exclude, keep_missing=keep_missing)
    return search.found, search.problems


def find_images(inputs: list[str], exclude: Path | None = None) -> tuple[list[Path], list[str]]:
    """:func:`search_images` as ``(paths, problems)``: problems are messages for inputs that
    matched nothing."""
    search = search_images(inputs, exclude)
    return search.paths, search.problems


