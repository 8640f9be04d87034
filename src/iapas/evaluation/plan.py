"""What an evaluation runs per category: its test images and its calibration images, decided in
one place so that ``iapas data summary`` counts exactly what ``iapas evaluate`` will run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from iapas.data import Category, DatasetBase, DatasetError, Sample
from iapas.evaluation.decisions import calibration_category
from iapas.evaluation.protocol import limit_samples
from iapas.evaluation.settings import EvalSettings


def select_categories(loader: DatasetBase, names: Sequence[str] | None, protocol: str) -> dict[str, list[str] | None]:
    """The categories ``names`` ask for, each with the parts chosen (None: all of it).

    A name is a category, or under the paper protocol a part of a product scored per part, by
    the name the tables show (KSDD1's ``kos01``): its product is evaluated with that part only.
    An unknown name raises :class:`~iapas.data.DatasetError` in one line listing the valid ones
    (before any model is loaded: the CLI calls this first). No names: every category.
    """
    available = loader.categories()
    if not names:
        return {c: None for c in available}
    parts = {p: c for c in available for p in loader.part_names(c)} if protocol == "paper" else {}
    chosen: dict[str, list[str] | None] = {}
    unknown: list[str] = []
    for name in names:
        if name in available:
            chosen[name] = None
        elif name in parts:
            product = parts[name]
            if product not in chosen or chosen[product] is not None:
                chosen[product] = [*(chosen.get(product) or []), name]
        else:
            unknown.append(name)
    if unknown:
        what = "category" if len(unknown) == 1 else "categories"
        raise DatasetError(f"{loader.root}: no {loader.title} {what} {', '.join(unknown)}; valid: {', '.join([*available, *parts])}")
    return chosen


def plan_category(
    loader: DatasetBase, name: str, settings: EvalSettings, parts: Sequence[str] | None = None
) -> tuple[Category, Category | None]:
    """Category ``name`` as ``settings`` evaluate it (references drawn, the test pool restricted,
    calibration images held out) and its calibration category (None without calibration).
    ``parts``: only the test images of these parts (:func:`select_categories`; the references
    stay the product's). ``--limit`` is applied later, per part (:func:`planned_tests`); the
    calibration images are already bounded by it (:attr:`EvalSettings.n_calibration`)."""
    category = loader.load(name, protocol=settings.protocol, n_references=settings.n_references, seed=settings.seed)
    category = restrict_to_pool(loader, category, settings)
    if parts:
        category = replace(category, test=[s for s in category.test if s.part in set(parts)])
    from_test = settings.calibration_takes_test or not loader.has_paper_protocol  # a folder dataset: as 'full'
    return calibration_category(loader, category, settings.n_calibration, settings.seed, from_test=from_test)


def planned_tests(part: Category, settings: EvalSettings) -> list[Sample]:
    """The test images of ``part`` that evaluate segments (``--limit``'s seeded draw)."""
    return limit_samples(part.test, settings.limit, settings.seed)


def restrict_to_pool(loader: DatasetBase, category: Category, settings: EvalSettings) -> Category:
    """``category`` with only the test images that drawing ``settings.test_pool_references``
    references (same seed) leaves; unchanged when that is unset or equals ``n_references``.

    The draws are prefixes of one seeded order (:func:`~iapas.data.base.draw_references`), so the
    larger draw's test set is inside the smaller one's: the images left out are exactly the
    extra references, and every reference count scores the same images.
    """
    k = settings.test_pool_references
    if k is None or k == settings.n_references:
        return category
    pool = loader.load(category.name, protocol=settings.protocol, n_references=k, seed=settings.seed)
    keep = {s.path for s in pool.test}
    test = [s for s in category.test if s.path in keep]
    dropped = len(category.test) - len(test)
    if not dropped:
        return category
    note = (
        f"{dropped} test image(s) left out: the test set is the one left after drawing {k} references (seed "
        f"{settings.seed}), so that every reference count is scored on the same images."
    )
    return replace(category, test=test, notes=[*category.notes, note])


def run_notes(settings: EvalSettings, notes: list[str], stopped: str | None) -> list[str]:
    """An evaluation's notes, with what a quick check (--limit) and an early stop mean."""
    if settings.limit is not None:
        calibration = (
            f" and at most {settings.limit} calibration images per product (asked for {settings.calibration_images})"
            if settings.calibration_images > settings.limit else ""
        )
        notes.append(
            f"Quick check: at most {settings.limit} test images per category (drawn with seed {settings.seed}, "
            f"anomalous and normal alternately while both last){calibration}; "
            "these are not full-benchmark numbers."
        )
    if stopped is not None:
        notes.append(f"The run stopped early ({stopped}); run the same command again, with room on the disk, to finish it.")
    return notes
