"""What an evaluation runs per category: its test images and its calibration images, decided in
one place so that ``iapas data summary`` counts exactly what ``iapas evaluate`` will run."""

from __future__ import annotations

from dataclasses import replace

from iapas.data import Category, DatasetBase, Sample
from iapas.evaluation.decisions import calibration_category
from iapas.evaluation.protocol import limit_samples
from iapas.evaluation.settings import EvalSettings


def plan_category(loader: DatasetBase, name: str, settings: EvalSettings) -> tuple[Category, Category | None]:
    """Category ``name`` as ``settings`` evaluate it (references drawn, the test pool restricted,
    calibration images held out) and its calibration category (None without calibration).
    ``--limit`` is applied later, per part (:func:`planned_tests`); the calibration images are
    already bounded by it (:attr:`EvalSettings.n_calibration`)."""
    category = loader.load(name, protocol=settings.protocol, n_references=settings.n_references, seed=settings.seed)
    category = restrict_to_pool(loader, category, settings)
    return calibration_category(
        loader, category, settings.n_calibration, settings.seed, from_test=settings.calibration_takes_test
    )


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
