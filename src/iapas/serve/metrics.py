"""``GET /metrics``: the station in Prometheus' text format (prometheus_client).

Each app has its own :class:`~prometheus_client.CollectorRegistry` (no global state: two
stations in one process, as in the tests, count apart). Names follow Prometheus' conventions
(``iapas_`` prefix, ``_total`` counters, base units: seconds, bytes), as Triton and BentoML do:

- ``iapas_inspections_total{product, verdict}``: inspections answered (verdict OK, NG, or
  ``none`` for a product without a calibrated decision);
- ``iapas_requests_total{endpoint, code}`` and ``iapas_request_duration_seconds{endpoint}``
  (histogram): every HTTP request, from its arrival to its answer's last byte;
- ``iapas_refusals_total{reason, code}``: ``/v1/inspect`` requests answered with an error
  (``busy`` 503, ``too_large`` 413, ``store_full`` 507, ``upload_timeout`` 408,
  ``bad_request`` 400, ...);
- ``iapas_stage_duration_seconds{product, stage}`` (histogram): the answer's ``timings_ms``
  (decode, queue, detection, segmentation, fusion, outputs, ...);
- ``iapas_batch_size`` (histogram): the model batch each inspected image ran in;
- read when scraped: ``iapas_queue_depth``, ``iapas_queue_capacity``,
  ``iapas_inflight_requests``, ``iapas_inflight_upload_bytes``, ``iapas_inflight_pixels``,
  ``iapas_images_served_total``, ``iapas_batches_total``, ``iapas_store_free_bytes`` (a
  ``--store`` station), ``iapas_sink_deliveries_total{sink}``, ``iapas_sink_failures_total{sink}``,
  ``iapas_sink_dropped_total{sink}``, ``iapas_sink_retries_total{sink}``,
  ``iapas_sink_queue_depth{sink}``, and ``iapas_model_info`` (the models' names and
  fingerprints, the device, the dtype and iapas' version as labels).

The route sits behind the same bearer token as ``/v1/`` (:class:`iapas.serve.auth.GuardMiddleware`).
Without prometheus_client installed it answers 501 naming the extra.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

logger = logging.getLogger(__name__)

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
REASONS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "unknown_category", 405: "read_only",
           408: "upload_timeout", 413: "too_large", 415: "unsupported_type", 422: "invalid", 500: "error",
           503: "busy", 507: "store_full"}
ENDPOINTS = ("/v1/inspect", "/v1/results", "/v1/profiles", "/v1/health", "/v1/whatif", "/metrics", "/")


def endpoint_of(path: str) -> str:
    """A bounded label for ``path``: the route, never a result id."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/results/"):
        return "/v1/results/{id}/{picture}"
    return "/static" if path.startswith("/static/") else "other"


class StationMetrics:
    """The station's metrics: what the routes count, and what is read when scraped."""

    def __init__(self, station: Any, sinks: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry = CollectorRegistry()
        self.inspections = Counter("iapas_inspections", "Inspections answered, by product and verdict "
                                   "(none: the product has no calibrated decision)", ["product", "verdict"], registry=registry)
        self.requests = Counter("iapas_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=registry)
        self.latency = Histogram("iapas_request_duration_seconds", "Seconds from a request's arrival to its "
                                 "answer's last byte, by endpoint", ["endpoint"], buckets=SECONDS_BUCKETS, registry=registry)
        self.refusals = Counter("iapas_refusals", "/v1/inspect requests answered with an error, by reason and "
                                "status code", ["reason", "code"], registry=registry)
        self.stages = Histogram("iapas_stage_duration_seconds", "Seconds of each stage of an inspection (its "
                                "timings_ms)", ["product", "stage"], buckets=SECONDS_BUCKETS, registry=registry)
        self.batch = Histogram("iapas_batch_size", "Images in the model batch each inspected image ran in",
                               buckets=BATCH_BUCKETS, registry=registry)
        registry.register(LiveCollector(station, sinks))

    def inspected(self, answer: dict[str, Any]) -> None:
        """Count one inspection from its ``/v1/inspect`` answer."""
        product = str(answer.get("category"))
        self.inspections.labels(product, answer.get("decision") or "none").inc()
        for stage, ms in (answer.get("timings_ms") or {}).items():
            if stage != "total" and isinstance(ms, (int, float)):
                self.stages.labels(product, stage).observe(ms / 1000.0)
        if isinstance(answer.get("batch_size"), int):
            self.batch.observe(answer["batch_size"])

    def answered(self, path: str, status: int, seconds: float) -> None:
        endpoint = endpoint_of(path)
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if endpoint == "/v1/inspect" and status >= 400:
            self.refusals.labels(REASONS.get(status, str(status)), str(status)).inc()


class LiveCollector:
    """The values read when scraped: queue, requests in flight, the store's free space, the
    sinks' counts and the models' identity."""

    def __init__(self, station: Any, sinks: Any) -> None:
        self.station, self.sinks = station, sinks
        self._models: dict[str, str] | None = None

    def describe(self) -> list[Any]:
        return []  # collected at scrape only: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        station, worker = self.station, self.station.worker

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("iapas_queue_depth", "Inspections waiting for the model worker", worker.depth if worker else 0)
        yield gauge("iapas_queue_capacity", "Inspections that may wait (--queue-size); beyond: 503",
                    worker.queue_size if worker else 0)
        yield gauge("iapas_inflight_requests", "Inspections received or running now", station.in_flight["n"])
        yield gauge("iapas_inflight_upload_bytes", "Upload bytes held by requests in flight", station.budgets["bytes"].used)
        yield gauge("iapas_inflight_pixels", "Image pixels held by requests in flight", station.budgets["pixels"].used)
        yield CounterMetricFamily("iapas_images_served", "Images run through the models", worker.images_served if worker else 0)
        yield CounterMetricFamily("iapas_batches", "Model batches run", worker.batches if worker else 0)
        root = getattr(station.store, "root", None)
        if root is not None:
            try:
                stat = os.statvfs(root)
                yield gauge("iapas_store_free_bytes", "Free bytes on the store's file system (--store)",
                            stat.f_bavail * stat.f_frsize)
            except OSError as exc:
                logger.debug("cannot read the store's free space: %s", exc)
        yield from self._sink_metrics()
        models = self.models()
        if models:
            info = InfoMetricFamily("iapas_model", "The models served (names, fingerprints), device, dtype, version")
            info.add_metric([], models)
            yield info

    def _sink_metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.sinks.stats() if self.sinks is not None else {}
        families = [CounterMetricFamily(f"iapas_sink_{name}", doc, labels=["sink"]) for name, doc in (
            ("deliveries", "Verdicts delivered, by sink"),
            ("failures", "Verdicts not delivered after the retries (or queued at shutdown), by sink"),
            ("dropped", "Verdicts dropped because the sink's queue was full, by sink"),
            ("retries", "Delivery attempts repeated after a failure, by sink"))]
        depth = GaugeMetricFamily("iapas_sink_queue_depth", "Verdicts waiting to be sent, by sink", labels=["sink"])
        for label, s in stats.items():
            for family, value in zip(families, (s.delivered, s.failed, s.dropped, s.retries)):
                family.add_metric([label], value)
            depth.add_metric([label], s.queued)
        yield from (*families, depth)

    def models(self) -> dict[str, str]:
        """The models' names and fingerprints (hashed once, at the first scrape)."""
        if self._models is None:
            from iapas.core.version import __version__
            from iapas.models.fingerprint import pipeline_identity

            worker, settings = self.station.worker, self.station.settings
            identity: dict[str, str] = {}
            if worker is not None:
                try:
                    identity = pipeline_identity(worker.pipeline)
                except Exception as exc:  # noqa: BLE001 - a stand-in pipeline: names only
                    logger.debug("no model fingerprints: %s", exc)
                identity.update(device=str(settings.device), dtype=str(settings.dtype))
            self._models = {**identity, "version": __version__}
        return self._models


class MetricsMiddleware:
    """Counts every HTTP request by endpoint and status and times it (the outermost middleware,
    so that the 401/413/400/403 of the guards count too)."""

    def __init__(self, app: Any, metrics: StationMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.answered(scope["path"], status[0], time.perf_counter() - started)


def add_metrics_routes(app: Any, station: Any, sinks: Any = None) -> StationMetrics | None:
    """``GET /metrics`` on ``app``, the request counting middleware, and the station's
    observer that counts each inspection; None (and a 501 route) without prometheus_client."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    except ImportError:
        @app.get("/metrics", include_in_schema=False)
        async def no_metrics() -> JSONResponse:
            return JSONResponse({"detail": "GET /metrics needs prometheus_client: pip install 'iapas[serve]'"},
                                status_code=501)
        return None
    metrics = StationMetrics(station, sinks)
    station.observers.append(metrics.inspected)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def scrape() -> Response:
        """The station's counters, histograms and gauges in Prometheus' text format."""
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
