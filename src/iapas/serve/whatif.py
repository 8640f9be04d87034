"""The engineer's threshold what-if (``GET /v1/whatif``): a product's stored scores judged again
at another threshold, with no model run.

A stored verdict is ``NG`` when the record's ``decision_score`` is above the threshold
(:meth:`iapas.product.decision.Decision.decide`), and the decision score does not depend on the
threshold (the map's maximum, or with ``min_defect_area`` the highest level whose largest region
is big enough), so judging the stored score again is what inspecting the part again would give.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse

from iapas.product.decision import ng_count, verdict_at

BINS = 24
MAX_CHANGED = 200


def judged(records: list[dict[str, Any]], category: str) -> list[dict[str, Any]]:
    """The product's records that carry a verdict and a finite decision score, oldest first."""
    def ok(r: dict[str, Any]) -> bool:
        s = r.get("decision_score")
        return (r.get("category") == category and r.get("decision") in ("OK", "NG")
                and isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s))
    return [r for r in records if ok(r)]


def what_if(records: list[dict[str, Any]], category: str, threshold: float | None) -> dict[str, Any]:
    """Counts at the stored threshold and at ``threshold`` (the stored one when None), the parts
    whose verdict changes (at most :data:`MAX_CHANGED` listed, all counted) and a histogram of the scores."""
    parts = judged(records, category)
    stored = parts[-1].get("threshold") if parts else None
    target = stored if threshold is None else threshold
    scores = np.array([float(r["decision_score"]) for r in parts], dtype=np.float64)
    changed = [r for r in parts if target is not None and verdict_at(float(r["decision_score"]), target) != r["decision"]]
    lo = float(min(scores.min(), *(t for t in (stored, target) if t is not None))) if len(scores) else 0.0
    hi = float(max(scores.max(), *(t for t in (stored, target) if t is not None))) if len(scores) else 1.0
    if hi - lo < max(1e-9, abs(lo) * 1e-9):  # equal, or a few ulps apart (numpy refuses that range)
        hi = lo + 1.0
    counts, edges = np.histogram(scores, bins=BINS, range=(lo, hi))
    ng_now = sum(r["decision"] == "NG" for r in parts)
    ng_then = ng_count(scores, target) if target is not None else ng_now
    return {
        "category": category, "n": len(parts), "threshold": stored, "what_if": target,
        "stored": {"OK": len(parts) - ng_now, "NG": ng_now},
        "counts": {"OK": len(parts) - ng_then, "NG": ng_then},
        "n_changed": len(changed),
        "changed": [{"id": r.get("id") or r["key"], "part_id": r.get("part_id"), "filename": r.get("filename"),
                     "decision_score": r["decision_score"], "from": r["decision"], "to": verdict_at(float(r["decision_score"]), target)}
                    for r in changed[-MAX_CHANGED:][::-1]],
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def add_whatif_route(app: Any, store: Any, bad_request: Any) -> None:
    """``GET /v1/whatif?category=C&threshold=T`` on ``app``; ``bad_request(status, detail)`` raises."""
    @app.get("/v1/whatif", summary="A product's stored scores judged again at another threshold")
    async def whatif(category: str, threshold: float | None = None) -> JSONResponse:
        """No model runs: each stored `decision_score` is NG above `threshold` (default: the stored
        one). Counts, the parts that change verdict (newest first) and a histogram of the scores."""
        if threshold is not None and not math.isfinite(threshold):
            raise bad_request(422, "threshold must be a finite number")
        result = what_if(store.records(), category, threshold)
        if result["n"] == 0:
            raise bad_request(404, f"no judged part of the product {category!r} is stored")
        return JSONResponse(result)
