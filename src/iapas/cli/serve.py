"""``iapas serve``: the inspection station (REST API and web page) on uvicorn
(its set-up: :mod:`iapas.serve.server`)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from iapas.cli.common import console, fail, hold_output_lock, load_pipeline, setup_logging
from iapas.cli.options import shared
from iapas.models.registry import help_table
from iapas.workflows.options import LOGGING, SINKS, STAGE2, Settings

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("serve", epilog=help_table())(serve_cmd)


@shared(*STAGE2, "batch_size", "max_pixels", "show_dropped", *SINKS, *LOGGING,
        batch_size={"default": 8, "help": "Most images per model batch."})
def serve_cmd(
    ctx: typer.Context,
    profile_paths: list[Path] = typer.Option(
        None, "--profile", "-p", help="A category profile (YAML/JSON); repeat for several products."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Any other than loopback needs a token."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: a free one)."),
    max_wait_ms: float = typer.Option(10.0, min=0.0, help="How long the worker waits for more images of the same product."),
    queue_size: int = typer.Option(64, min=1, help="Requests that may wait; beyond: 503."),
    store: Path = typer.Option(None, help="Write every inspection as a 'segment' run folder, STORE/<category>/."),
    keep: int = typer.Option(256, min=1, help="Results kept in memory without --store (and 512 MiB at most)."),
    max_upload_mb: float = typer.Option(50.0, min=0.0, help="Largest upload in MB; beyond: 413."),
    token_file: Path = typer.Option(None, help="File whose first line is the bearer token (else $IAPAS_TOKEN)."),
    cors: list[str] = typer.Option(None, help="Allow browser calls from this origin (repeatable)."),
    allowed_host: list[str] = typer.Option(
        None, help="Accept requests whose Host is this name, besides loopback and the bound address (repeatable)."
    ),
    body_timeout: float = typer.Option(30.0, min=0.1, help="Seconds an upload may send nothing before it is dropped (408)."),
    max_inflight_mb: float = typer.Option(256.0, min=1.0, help="Upload MB held by all requests in flight; beyond: 503."),
    pixel_budget_mpx: float = typer.Option(
        64.0, min=0.001, help="Megapixels of images in flight together; beyond: 503 (one image over it: 413)."
    ),
    review: Path = typer.Option(None, help="Serve a finished segment or evaluate folder read-only."),
    audit_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of parts drawn at random to audit (0: off)."),
    audit_seed: int = typer.Option(None, help="Seed of the audit draws (default: fresh each start)."),
    max_escape_rate: float = typer.Option(0.01, min=0.0, max=1.0, help="Escape rate found by audits that raises a drift alarm."),
    settings: Settings = None,  # type: ignore[assignment]
) -> None:
    """Serve the inspection station: a REST API and a web page.

    POST /v1/inspect (multipart 'file' + 'category', or the raw image with
    ?category=) answers OK/NG, scores, boxes, per-stage ms and PNG URLs. Also:
    GET /v1/results, /v1/results/ID/{map,mask,overlay}.png, /v1/profiles,
    /v1/health, /metrics (Prometheus), the page at / and the API docs at /docs.
    The models load once; one worker runs requests of the same product in
    micro-batches. Without --store the last --keep results stay in memory.
    --webhook and --mqtt send each verdict on, from a queue of their own.

    Example: iapas serve -p bottle.yaml -p screw.yaml --store station/
    """
    setup_logging(settings.verbose, settings.quiet)
    from iapas.serve.server import StationError, bind, check_hosts, missing_extras, serve_settings

    if missing := missing_extras():
        raise fail(f"iapas serve needs the 'serve' extra ({', '.join(missing)} missing): pip install 'iapas[serve]'")
    from iapas.serve.auth import TokenError, load_token
    from iapas.serve.sink_targets import open_sinks
    from iapas.serve.sinks import SinkError

    try:
        check_hosts(allowed_host or [], cors or [])
        token = load_token(token_file, host)
        sinks = open_sinks(settings.webhook, settings.webhook_secret_file, settings.mqtt)
    except (StationError, TokenError, SinkError) as exc:
        raise fail(str(exc)) from None
    serve = serve_settings(token, host, settings, cors=cors, allowed_host=allowed_host, max_upload_mb=max_upload_mb,
                           body_timeout=body_timeout, max_inflight_mb=max_inflight_mb, pixel_budget_mpx=pixel_budget_mpx,
                           audit_rate=audit_rate, audit_seed=audit_seed, max_escape_rate=max_escape_rate)
    if review is not None and (profile_paths or store is not None):
        raise fail("--review serves a finished folder as it is: leave out --profile and --store")
    try:  # before the models load (minutes): a taken port fails at once
        sock = bind(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    worker = None
    try:
        if review is not None:
            app = _review(review, serve)
        else:
            app, worker = _station(ctx, profile_paths, store, settings, max_wait_ms, queue_size, keep, serve,
                                   sinks and sinks.start())
        _run(app, sock, settings.verbose)
    finally:  # every way out, a failed load included, closes the socket
        if worker is not None:
            worker.stop()
        if sinks is not None:  # what is still queued is sent, for a few seconds at most
            sinks.stop()
        sock.close()


def _run(app, sock, verbose: bool) -> None:  # type: ignore[no-untyped-def]
    """Serve ``app`` on the bound ``sock`` until Ctrl+C."""
    from iapas.serve.server import uvicorn_server

    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    console.print(f"iapas serve: http://{shown}:{bound_port}/ (API docs at /docs); Ctrl+C stops",
                  soft_wrap=True, highlight=False)
    uvicorn_server(app, sock, log_level="info" if verbose else "warning").run(sockets=[sock])


def _review(folder: Path, serve):  # type: ignore[no-untyped-def]
    from iapas.serve.app import create_app
    from iapas.serve.review import ReviewError, ReviewStore

    try:
        return create_app(ReviewStore(folder), {}, None, serve)
    except ReviewError as exc:
        raise fail(str(exc)) from None


def _station(ctx, profile_paths, store, settings, max_wait_ms, queue_size, keep, serve, sinks):  # type: ignore[no-untyped-def]
    """Load the profiles and the models, as 'iapas segment' does, and build the station."""
    from iapas.engine.runfolder import RunConflictError
    from iapas.serve import build_station
    from iapas.serve.server import StationError, load_profiles, store_folders

    try:
        profiles = load_profiles(profile_paths, settings.detector)
        folders = store_folders(store, list(profiles)) if store is not None else []
    except StationError as exc:
        raise fail(str(exc)) from None
    for folder in folders:  # a 'segment' into the same folder is refused while we serve
        hold_output_lock(ctx, folder, "serve")
    pipeline = load_pipeline(settings.pipeline_config())
    try:
        app, worker = build_station(pipeline, profiles, store_dir=store, batch_size=settings.batch_size,
                                    max_wait_ms=max_wait_ms, queue_size=queue_size, keep=keep, settings=serve,
                                    show_dropped=settings.show_dropped, sinks=sinks)
    except (RunConflictError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    serve.device = str(pipeline.detector.device or settings.device)
    serve.dtype = str(getattr(pipeline.detector, "dtype", settings.dtype))
    return app, worker
