"""The FastAPI application of the inspection station (:func:`create_app`).

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart). Nothing here blocks the event loop: the body is read with a cap, decoding and output encoding
run in the thread pool, and the models run in the :class:`~iapas.serve.worker.ModelWorker`'s
thread, awaited through futures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from iapas.core.images import DEFAULT_MAX_PIXELS, UPLOAD_FORMATS, ImageReadError, read_image_bytes
from iapas.core.names import BadNameError, check_name
from iapas.product.profile import Profile
from iapas.serve.auth import GuardMiddleware, upload_too_large
from iapas.serve.feedback import AuditDraw, FeedbackMonitor, add_feedback_routes, check_filter
from iapas.serve.limits import Budget, Held, header_pixels
from iapas.serve.metrics import add_metrics_routes
from iapas.serve.parts import after_problem, clean_filename, part_id_problem, select
from iapas.serve.policy import RequestPolicyMiddleware
from iapas.engine.outputs import KINDS
from iapas.serve.store import ResultStore, StoreError, valid_id
from iapas.serve.pictures import add_picture_routes, png_answer
from iapas.serve.thumbs import add_thumb_route
from iapas.serve.whatif import add_whatif_route
from iapas.serve.worker import ModelWorker, QueueFullError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1
MAX_LIST = 1000


@dataclass
class ServeSettings:
    max_upload: int = 50 * 2**20  # bytes
    max_pixels: int = DEFAULT_MAX_PIXELS
    token: str | None = None
    cors: list[str] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float32"
    allowed_hosts: list[str] = field(default_factory=list)  # Host names accepted besides loopback
    bound_host: str | None = None  # the address bound (accepted as Host unless a wildcard)
    body_timeout: float = 30.0  # seconds without upload data before the client is dropped (408)
    max_inflight_bytes: int = 256 * 2**20  # upload bytes held by all requests in flight
    pixel_budget: int = 64_000_000  # image pixels held by all requests in flight
    audit_rate: float = 0.0  # the share of inspections drawn for audit (serve --audit-rate)
    audit_seed: int | None = None  # the audit generator's seed (None: the OS's entropy)
    max_escape_rate: float | None = 0.01  # the escape rate that audits may find before a drift alarm


class ClientGone(Exception):
    """The client disconnected before its upload was complete."""


class BadRequest(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The JSON an API client gets for one inspection (from its results.jsonl-like record)."""
    result_id = record.get("id") or record["key"]
    return {
        "id": result_id,
        "category": record.get("category"),
        "key": record.get("key"),
        "filename": record.get("filename"),
        "part_id": record.get("part_id"),
        "decision": record.get("decision"),
        "normalized_score": record.get("normalized_score"),
        "decision_score": record.get("decision_score"),
        "threshold": record.get("threshold") if record.get("decision") is not None else None,
        "decision_rule": record.get("decision_rule"),
        "image_score": record.get("image_score"),
        "width": record.get("width"),
        "height": record.get("height"),
        "object": record.get("object"),
        "kept": record.get("kept", []),
        "dropped": record.get("dropped", []),
        "timings_ms": record.get("timings_ms")
        or {k: round(1000 * v, 2) for k, v in (record.get("timings") or {}).items()},
        "batch_size": record.get("batch_size"),
        "disposition": record.get("disposition"),
        "audit": record.get("audit") is True,
        "urls": {kind: f"/v1/results/{result_id}/{kind}.png"
                 for kind in (*KINDS, "thumb", "heat", "outline", *(("gt",) if "label" in record else ()))},
    }


def profile_info(profile: Profile) -> dict[str, Any]:
    d = profile.decision
    return {
        "category": profile.category,
        "object_tag": profile.object_tag,
        "caption": profile.caption,
        "size_threshold": profile.size_threshold,
        "decision": None if d is None else {
            "rule": d.rule, "threshold": d.threshold, "min_defect_area": d.min_defect_area,
            "target_rate": d.target_rate, "n_calibration": d.n_calibration,
        },
    }


async def read_body(request: Any, settings: ServeSettings, held: Held) -> bytes:
    """The request body, refused as soon as it passes the upload limit (413) or would take the
    upload bytes in flight over their budget (503); a client that sends nothing for
    ``body_timeout`` seconds is answered 408 and its connection closed."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), settings.body_timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11 on
            raise BadRequest(408, f"the upload stalled: no data for {settings.body_timeout:g} s (--body-timeout)",
                             {"Connection": "close"}) from None
        if message["type"] == "http.disconnect":
            raise ClientGone(f"after {size} bytes")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > settings.max_upload:
            raise BadRequest(413, upload_too_large(settings.max_upload), {"Connection": "close"})
        if chunk and not held.take("bytes", len(chunk)):
            raise BadRequest(503, f"too many uploads in flight (at most {settings.max_inflight_bytes / 2**20:g} MB "
                                  "together, --max-inflight-mb); retry later",
                             {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"})
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def reserve_pixels(data: bytes, settings: ServeSettings, held: Held) -> None:
    """Reserve the image's pixels (read from its header, before decoding) from the budget of
    pixels in flight: 413 when the image alone is over it, 503 when others hold too much now.
    An image over --max-pixels or unreadable is left to the decoder, which says why."""
    pixels = header_pixels(data, UPLOAD_FORMATS, settings.max_pixels)
    if pixels is None or pixels > settings.max_pixels:
        return
    budget = held.budgets["pixels"]
    if pixels > budget.total:
        raise BadRequest(413, f"the image has {pixels:,} pixels, over the station's budget of {budget.total:,} pixels "
                              "in flight (--pixel-budget-mpx)")
    if not held.take("pixels", pixels):
        raise BadRequest(503, f"too many pixels in flight (at most {budget.total:,} together, --pixel-budget-mpx); "
                              "retry later", {"Retry-After": str(RETRY_AFTER_S)})


async def parse_upload(request: Any, body: bytes, limit: int) -> tuple[bytes, str, str | None, str | None]:
    """``(image bytes, file name, category, part id from the form)`` of a multipart or raw upload."""
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):  # media types are case-insensitive
        return body, request.query_params.get("filename") or "upload", None, None

    class InMemoryParser(MultiPartParser):
        spool_max_size = limit + 1  # the body is already in memory: never spill to a temporary file

    async def stream():  # type: ignore[no-untyped-def]
        yield body

    try:
        form = await InMemoryParser(Headers(raw=request.headers.raw), stream(), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise BadRequest(400, f"malformed multipart body: {exc.message}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest(400, "the multipart body has no 'file' part (send the image as the form field 'file')")
    data = await upload.read()
    category, part_id = form.get("category"), form.get("part_id")
    await form.close()
    return (data, upload.filename or "upload", category if isinstance(category, str) else None,
            part_id if isinstance(part_id, str) else None)


@dataclass
class Station:
    """What the routes of one app share."""

    store: ResultStore
    profiles: dict[str, Profile]
    worker: ModelWorker | None
    settings: ServeSettings
    budgets: dict[str, Budget]
    categories: list[str]
    in_flight: dict[str, int] = field(default_factory=lambda: {"n": 0})  # inspections received or run now
    audit: AuditDraw = field(default_factory=AuditDraw)
    feedback: Any = None  # the FeedbackMonitor
    observers: list[Any] = field(default_factory=list)  # called with each inspection's answer: metrics, sinks

    def known(self) -> str:
        return ", ".join(self.categories) or "none"

    def inspected(self, answer: dict[str, Any]) -> None:
        for observe in self.observers:  # none of them may fail the inspection
            try:
                observe(answer)
            except Exception as exc:  # noqa: BLE001
                logger.error("after inspection %s: %s: %s", answer.get("id"), type(exc).__name__, exc)


def create_app(
    store: ResultStore,
    profiles: dict[str, Profile],
    worker: ModelWorker | None,
    settings: ServeSettings | None = None,
    sinks: Any = None,
) -> Any:
    """The station's ASGI app; ``worker`` None serves ``store`` read-only (a review); ``sinks``
    (:class:`iapas.serve.sinks.Sinks`, started) get every verdict."""
    from iapas.core.version import __version__

    settings = settings or ServeSettings()
    app = FastAPI(
        title="iapas inspection station",
        version=__version__,
        description="Zero-shot anomaly segmentation (IAP-AS) as a service: POST an image, get OK/NG, "
        "the score, the boxes and the map, mask and overlay PNGs.",
    )
    app.state.worker, app.state.store, app.state.profiles = worker, store, profiles
    budgets = {"bytes": Budget(settings.max_inflight_bytes), "pixels": Budget(settings.pixel_budget)}
    app.state.budgets = budgets
    station = Station(store, profiles, worker, settings, budgets, sorted(profiles) or list(getattr(store, "categories", [])),
                      audit=AuditDraw(settings.audit_rate, settings.audit_seed))
    station.feedback = FeedbackMonitor(store, profiles, station.categories, settings.max_escape_rate)
    _add_error_handlers(app)
    _add_inspect_route(app, station)
    _add_results_route(app, station)
    add_thumb_route(app, store, BadRequest, valid_id)  # before the route below, which would take thumb.png
    add_picture_routes(app, store, BadRequest, valid_id)  # heat.png, outline.png: the same
    add_feedback_routes(app, station, summary, BadRequest, valid_id)
    _add_png_route(app, store)
    add_whatif_route(app, store, BadRequest)
    _add_info_routes(app, station)
    _add_page_and_guards(app, settings)
    station.observers += [sinks.publish] if sinks is not None else []
    add_metrics_routes(app, station, sinks)  # its middleware outermost: the guards' answers count too
    return app


def _add_error_handlers(app: Any) -> None:
    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        logger.info("%s %s: the client disconnected mid-upload (%s)", request.method, request.url.path, exc)
        return Response(status_code=400)

    @app.exception_handler(BadRequest)
    async def _bad(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def _add_inspect_route(app: Any, station: Station) -> None:
    @app.post(
        "/v1/inspect",
        summary="Inspect one image",
        openapi_extra={"requestBody": {"content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}, "category": {"type": "string"},
                "part_id": {"type": "string"}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        }}},
    )
    async def inspect(request: Request, category: str | None = None, filename: str | None = None,
                      part_id: str | None = None) -> JSONResponse:
        """One image as multipart (`file`, `category`, optional `part_id`) or as the raw body with
        `?category=` (`?part_id=`, `?filename=`).
        Answers the verdict, scores, boxes, per-stage milliseconds and the PNGs' URLs."""
        if station.worker is None:
            raise BadRequest(405, "this station is a read-only review: it inspects nothing")
        held = Held(station.budgets)
        station.in_flight["n"] += 1
        try:
            return await inspect_held(station, request, category, held, part_id)
        finally:
            station.in_flight["n"] -= 1
            held.release()


async def inspect_held(station: Station, request: Request, category: str | None, held: Held,
                       part_id: str | None) -> JSONResponse:
    """One inspection, its upload's bytes and pixels ``held`` against the station's budgets."""
    started = time.perf_counter()
    settings, store, known = station.settings, station.store, station.known
    body = await read_body(request, settings, held)
    data, name, form_category, form_part_id = await parse_upload(request, body, settings.max_upload)
    category, part_id, name = form_category or category, form_part_id or part_id, clean_filename(name)
    if part_id is not None and (problem := part_id_problem(part_id)):
        raise BadRequest(422, problem)
    if not category:
        raise BadRequest(400, f"no category: send the form field 'category' or ?category= (known: {known()})")
    try:  # the rule of every name that becomes a path (the store's folders)
        check_name(category, "category")
    except BadNameError as exc:
        raise BadRequest(400, f"{exc}; known: {known()}") from None
    profile = station.profiles.get(category)
    if profile is None:
        raise BadRequest(404, f"unknown category {category!r}; known: {known()}")
    await run_in_threadpool(reserve_pixels, data, settings, held)
    refusal = getattr(store, "refusal", None)
    if refusal is not None and (why := await run_in_threadpool(refusal, category, len(data), held.amounts.get("pixels", 0))):
        raise BadRequest(why[0], f"{why[1]}; nothing was inspected: retry when the store can be written")
    t0 = time.perf_counter()
    try:
        image = await run_in_threadpool(read_image_bytes, data, name, settings.max_pixels)
    except ImageReadError as exc:
        raise BadRequest(400, str(exc)) from None
    decode_s = time.perf_counter() - t0
    audit = station.audit.draw()  # before, and independent of, the part's score
    try:
        future = station.worker.submit(category, image)  # type: ignore[union-attr]
    except QueueFullError as exc:
        raise BadRequest(503, f"{exc}; retry later", {"Retry-After": str(RETRY_AFTER_S)}) from None
    try:
        outcome = await asyncio.wrap_future(future)
    except Exception as exc:  # noqa: BLE001 - a model failure answers 500, the service goes on
        raise BadRequest(500, f"model failure: {exc}") from None
    t0 = time.perf_counter()
    result = outcome.result

    def finish() -> dict[str, Any]:
        verdict = profile.judge(result)
        timings = {k: round(1000 * v, 2) for k, v in result.timings.items()}
        extra = {"filename": name, "part_id": part_id, "batch_size": outcome.batch_size, **audit,
                 "timings_ms": {"decode": round(1000 * decode_s, 2), "queue": round(1000 * outcome.queue_seconds, 2), **timings}}
        return store.add(category, image, data, result, verdict, extra)

    try:
        record = await run_in_threadpool(finish)
    except StoreError as exc:
        raise BadRequest(exc.status, exc.detail) from None
    record["timings_ms"]["outputs"] = round(1000 * (time.perf_counter() - t0), 2)
    record["timings_ms"]["total"] = round(1000 * (time.perf_counter() - started), 2)
    answer = summary(record)
    station.inspected(answer)
    return JSONResponse(answer)


def _add_results_route(app: Any, station: Station) -> None:
    @app.get("/v1/results", summary="Recent inspections")
    async def results(decision: str | None = None, category: str | None = None, limit: int = 50, sort: str = "time",
                      part_id: str | None = None, after: str | None = None, before: str | None = None,
                      disposition: str | None = None, audit: bool | None = None) -> JSONResponse:
        """Newest first (`sort=time`) or highest image score first (`sort=score`); `decision=NG`
        or `OK`, `category=` and `part_id=` filter. `after=ID` (a result id or its first hex
        digits): the results stored after it, oldest first, for a page that polls; `before=ID`: the
        ones stored before it (a page of older ones). `disposition=` (`none`: not yet given) and
        `audit=true` filter too. `in_flight`: inspections under way now."""
        if decision is not None and decision not in ("OK", "NG"):
            raise BadRequest(422, "decision must be OK or NG")
        if sort not in ("time", "score"):
            raise BadRequest(422, "sort must be time or score")
        if not 1 <= limit <= MAX_LIST:
            raise BadRequest(422, f"limit must be in 1..{MAX_LIST}")
        for name, value in (("after", after), ("before", before)):
            if value is not None and (problem := after_problem(value, name)):
                raise BadRequest(422, problem)
        if disposition is not None and (problem := check_filter(disposition)):
            raise BadRequest(422, problem)
        records = select(station.store.records(), decision=decision, category=category, part_id=part_id, after=after,
                         before=before, disposition=disposition, audit=audit)
        if after is not None:
            records.sort(key=lambda r: r.get("id") or r["key"])
        elif sort == "score":
            records.sort(key=lambda r: -float(r.get("image_score") or 0.0))
        else:
            records.reverse()
        return JSONResponse({"total": len(records), "results": [summary(r) for r in records[:limit]],
                             "in_flight": station.in_flight["n"]})


def _add_png_route(app: Any, store: ResultStore) -> None:
    @app.get("/v1/results/{result_id}/{name}", summary="A result's map, mask or overlay PNG",
             responses={200: {"content": {"image/png": {}}}})
    async def result_png(result_id: str, name: str) -> Response:
        """`name`: map.png (16-bit, value / 10000 = score), mask.png or overlay.png."""
        kind = name[: -len(".png")] if name.endswith(".png") else ""
        if kind not in KINDS:
            raise BadRequest(404, f"no such picture {name!r}: use map.png, mask.png or overlay.png")
        return await png_answer(result_id, lambda: store.png(result_id, kind), BadRequest, valid_id)


def _add_info_routes(app: Any, station: Station) -> None:
    @app.get("/v1/profiles", summary="The categories served")
    async def list_profiles() -> JSONResponse:
        profiles, categories = station.profiles, station.categories
        if not profiles:  # a review: the folder's categories, no profiles loaded
            thresholds = getattr(station.store, "thresholds", {})  # what the folder's records were judged against
            return JSONResponse({"profiles": [{"category": c, "decision": None if c not in thresholds else
                                               {"threshold": thresholds[c]}} for c in categories]})
        return JSONResponse({"profiles": [profile_info(p) for _, p in sorted(profiles.items())]})

    @app.get("/v1/health", summary="Models, device, queue depth, images served")
    async def health() -> JSONResponse:
        from iapas.core.version import __version__

        worker, store, settings, budgets, categories = (station.worker, station.store, station.settings, station.budgets,
                                                        station.categories)
        pipeline = worker.pipeline if worker is not None else None
        probe = getattr(store, "refusal", None)
        if probe is not None and categories:  # space may have gone or returned since the last upload
            await run_in_threadpool(probe, categories[0], 0)
        degraded = getattr(store, "degraded", None)
        feedback, drift = await run_in_threadpool(station.feedback.report)
        return JSONResponse({
            "status": "degraded" if degraded else "ok",
            "degraded": degraded,
            "version": __version__,
            "review": worker is None,
            "models": None if pipeline is None else {
                "detector": pipeline.detector.name,
                "segmenter": pipeline.segmenter.name,
            },
            "device": None if pipeline is None else settings.device,
            "dtype": None if pipeline is None else settings.dtype,
            "queue_depth": worker.depth if worker else 0,
            "queue_size": worker.queue_size if worker else 0,
            "batch_size": worker.batch_size if worker else 0,
            "max_wait_ms": worker.max_wait * 1000 if worker else 0,
            "images_served": worker.images_served if worker else 0,
            "batches": worker.batches if worker else 0,
            "results_kept": len(store),
            "records_skipped": getattr(store, "skipped", 0),
            "limits": {
                "max_upload_bytes": settings.max_upload, "body_timeout_s": settings.body_timeout,
                "max_pixels": settings.max_pixels, "max_inflight_bytes": budgets["bytes"].total,
                "inflight_bytes": budgets["bytes"].used, "pixel_budget": budgets["pixels"].total,
                "pixels_in_flight": budgets["pixels"].used,
            },
            "categories": categories,
            "feedback": feedback,
            "drift": drift,
        })


def _add_page_and_guards(app: Any, settings: ServeSettings) -> None:
    static = resources.files("iapas.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    if settings.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(GuardMiddleware, token=settings.token, max_upload=settings.max_upload)
    app.add_middleware(RequestPolicyMiddleware, allowed_hosts=settings.allowed_hosts, bound_host=settings.bound_host,
                       cors=settings.cors)
