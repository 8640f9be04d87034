"""The inspection station: ``iapas serve`` (REST API, web page, micro-batching model worker).

Needs the optional extra ``iapas[serve]`` (fastapi, uvicorn, python-multipart). Modules:
``worker`` (one model thread, bounded queue, micro-batches), ``store`` (results in memory or as
``segment`` run folders), ``review`` (a finished run folder, read-only), ``auth`` (tokens, the
401/413 guard), ``policy`` (the Host, Origin and upload-type policy: 400/403/415), ``limits``
(upload bytes and image pixels in flight), ``feedback`` (dispositions, the audit draw, observed
rates and drift alarms), ``app`` (the FastAPI app), ``server`` (uvicorn), ``metrics``
(``GET /metrics``, Prometheus), ``sinks`` (verdicts queued to the plant's systems) and
``sink_targets`` (the webhook and MQTT sinks), ``static/`` (the page).
"""

from __future__ import annotations

from typing import Any

from iapas.product.profile import Profile


def build_station(
    pipeline: Any,
    profiles: dict[str, Profile],
    *,
    store_dir: Any = None,
    batch_size: int = 8,
    max_wait_ms: float = 10.0,
    queue_size: int = 64,
    keep: int = 256,
    settings: Any = None,
    show_dropped: bool = False,
    sinks: Any = None,
) -> tuple[Any, Any]:
    """``(app, worker)`` serving ``profiles`` (category -> profile) with ``pipeline``; the
    worker is started; stop it with ``worker.stop()``. ``show_dropped``: draw the dropped boxes
    on the overlays. ``sinks`` (:class:`iapas.serve.sinks.Sinks`): where each verdict is sent;
    start them first (``sinks.start()``) and stop them after the worker (``sinks.stop()``)."""
    from iapas.serve.app import create_app
    from iapas.serve.store import DiskStore, MemoryStore
    from iapas.serve.worker import ModelWorker

    for category, profile in profiles.items():  # a bad field refused now (ProfileError), not a 500 per request
        profile.validate(f"profile {category!r}")
        pipeline.check(profile)
    store = (DiskStore(store_dir, pipeline, profiles, show_dropped=show_dropped) if store_dir is not None
             else MemoryStore(profiles, keep, show_dropped=show_dropped))
    worker = ModelWorker(pipeline, dict(profiles),
                         batch_size=batch_size, max_wait_ms=max_wait_ms, queue_size=queue_size)
    worker.start()
    return create_app(store, profiles, worker, settings, sinks), worker


__all__ = ["build_station"]
