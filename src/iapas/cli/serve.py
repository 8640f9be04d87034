"""``iapas serve``: the inspection station (REST API and web page) on uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from iapas.cli.common import QuietOption, ShowDroppedOption, VerboseOption, console, fail, hold_output_lock, setup_logging
from iapas.core.images import DEFAULT_MAX_PIXELS
from iapas.models.detector import DEFAULT_DETECTOR
from iapas.models.segmenter import DEFAULT_SEGMENTER

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def serve_cmd(
    ctx: typer.Context,
    profile_paths: list[Path] = typer.Option(
        None, "--profile", "-p", help="A category profile (YAML/JSON); repeat for several products."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Any other than loopback needs a token."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: a free one)."),
    detector: str = typer.Option(DEFAULT_DETECTOR, help="Grounding DINO, MM-Grounding-DINO, OWLv2 or SAM 3: a model name, hub id or folder."),
    segmenter: str = typer.Option(DEFAULT_SEGMENTER, help="SAM, SAM-HQ or SAM 2.1: a model name, hub id or folder."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N, mps, or auto."),
    dtype: str = typer.Option("auto", help="float32, float16, bfloat16, or auto."),
    batch_size: int = typer.Option(8, min=1, help="Most images per model batch."),
    max_wait_ms: float = typer.Option(
        10.0, min=0.0, help="How long the worker waits for more images of the same product."
    ),
    queue_size: int = typer.Option(64, min=1, help="Requests that may wait; beyond: 503."),
    store: Path = typer.Option(
        None, help="Write every inspection as a 'segment' run folder, STORE/<category>/."
    ),
    keep: int = typer.Option(256, min=1, help="Results kept in memory without --store (and 512 MiB at most)."),
    max_upload_mb: float = typer.Option(50.0, min=0.0, help="Largest upload in MB; beyond: 413."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, min=1, help="Decompression-bomb guard."),
    token_file: Path = typer.Option(
        None, help="File whose first line is the bearer token (else $IAPAS_TOKEN)."
    ),
    cors: list[str] = typer.Option(None, help="Allow browser calls from this origin (repeatable)."),
    allowed_host: list[str] = typer.Option(
        None, help="Accept requests whose Host is this name, besides loopback and the bound address (repeatable)."
    ),
    body_timeout: float = typer.Option(30.0, min=0.1, help="Seconds an upload may send nothing before it is dropped (408)."),
    max_inflight_mb: float = typer.Option(256.0, min=1.0, help="Upload MB held by all requests in flight; beyond: 503."),
    pixel_budget_mpx: float = typer.Option(
        64.0, min=0.001, help="Megapixels of images in flight together; beyond: 503 (one image over it: 413)."
    ),
    review: Path = typer.Option(
        None, help="Serve a finished segment or evaluate folder read-only."
    ),
    show_dropped: bool = ShowDroppedOption,
    verbose: bool = VerboseOption,
    quiet: bool = QuietOption,
) -> None:
    """Serve the inspection station: a REST API and a web page.

    POST /v1/inspect (multipart 'file' + 'category', or the raw image with
    ?category=) answers OK/NG, scores, boxes, per-stage ms and PNG URLs. Also:
    GET /v1/results, /v1/results/ID/{map,mask,overlay}.png, /v1/profiles,
    /v1/health, the page at / and the API docs at /docs. The models load once;
    one worker runs requests of the same product in micro-batches. Without
    --store the last --keep results stay in memory.

    Example: iapas serve -p bottle.yaml -p screw.yaml --store station/
    """
    setup_logging(verbose, quiet)
    from importlib.util import find_spec

    missing = [name for name, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                          ("python-multipart", ["python_multipart", "multipart"]))
               if not any(find_spec(m) for m in modules)]
    if missing:
        raise fail(f"iapas serve needs the 'serve' extra ({', '.join(missing)} missing): pip install 'iapas[serve]'")
    from iapas.serve.app import ServeSettings, create_app
    from iapas.serve.auth import TokenError, load_token
    from iapas.serve.server import bind, uvicorn_server

    _check_hosts(allowed_host or [], cors or [])
    try:
        token = load_token(token_file, host)
    except TokenError as exc:
        raise fail(str(exc)) from None
    settings = ServeSettings(max_upload=int(max_upload_mb * 2**20), max_pixels=max_pixels, token=token,
                             cors=list(cors or []), device=device, dtype=dtype, allowed_hosts=list(allowed_host or []),
                             bound_host=host, body_timeout=body_timeout,
                             max_inflight_bytes=max(int(max_inflight_mb * 2**20), int(max_upload_mb * 2**20)),
                             pixel_budget=int(pixel_budget_mpx * 1e6))
    if review is not None and (profile_paths or store is not None):
        raise fail("--review serves a finished folder as it is: leave out --profile and --store")
    try:  # before the models load (minutes): a taken port fails at once
        sock = bind(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    worker = None
    try:
        if review is not None:
            from iapas.serve.review import ReviewError, ReviewStore

            try:
                app = create_app(ReviewStore(review), {}, None, settings)
            except ReviewError as exc:
                raise fail(str(exc)) from None
        else:
            app, worker = _station(ctx, profile_paths, store, detector, segmenter, device, dtype, batch_size,
                                   max_wait_ms, queue_size, keep, settings, show_dropped)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        console.print(f"iapas serve: http://{shown}:{bound_port}/ (API docs at /docs); Ctrl+C stops",
                      soft_wrap=True, highlight=False)
        uvicorn_server(app, sock, log_level="info" if verbose else "warning").run(sockets=[sock])
    finally:  # every way out, a failed load included, closes the socket
        if worker is not None:
            worker.stop()
        sock.close()


def _check_hosts(allowed_hosts: list[str], cors: list[str]) -> None:
    """Refuse an --allowed-host or --cors value that could never match a request."""
    from iapas.serve.policy import origin_of, split_host

    for name in allowed_hosts:
        parsed = split_host(name if not (":" in name and not name.startswith("[")) else f"[{name}]")
        if parsed is None or parsed[1] is not None:
            raise fail(f"--allowed-host {name!r}: give a host name or address, without a scheme or a port")
    for origin in cors:
        if origin_of(origin) is None:
            raise fail(f"--cors {origin!r}: give an origin such as http://host:port")


def _station(ctx, profile_paths, store, detector, segmenter, device, dtype, batch_size, max_wait_ms,  # type: ignore[no-untyped-def]
             queue_size, keep, settings, show_dropped=False):
    """Load the profiles and the models, as 'iapas segment' does, and build the station."""
    from iapas.models.detector import check_caption_length
    from iapas.models.loading import ModelLoadError
    from iapas.pipeline.stage2 import Pipeline, PipelineConfig
    from iapas.product.profile import Profile, ProfileError
    from iapas.engine.runner import RunConflictError
    from iapas.serve import build_station

    if not profile_paths:
        raise fail("give at least one --profile (or --review RUN_DIR)")
    profiles = {}
    for path in profile_paths:
        try:
            profile = Profile.load(path)
        except ProfileError as exc:
            raise fail(str(exc)) from None
        if profile.category in profiles:
            raise fail(f"{path}: a second profile of category {profile.category!r}")
        try:
            check_caption_length(profile.caption, detector)
        except ValueError as exc:
            raise fail(f"{path}: {exc}") from None
        profiles[profile.category] = profile
    if store is not None:
        if store.exists() and not store.is_dir():
            raise fail(f"--store {store} is a file; it must be a folder")
        from iapas.serve.store import category_folder

        for category in profiles:  # a 'segment' into the same folder is refused while we serve
            try:
                folder = category_folder(store, category)
            except ValueError as exc:
                raise fail(f"--store {store}: {exc}") from None
            hold_output_lock(ctx, folder, "serve")
    try:
        config = PipelineConfig(detector=detector, segmenter=segmenter, device=device, dtype=dtype)
        with console.status("loading models"):
            pipeline = Pipeline.from_config(config)
        app, worker = build_station(pipeline, profiles, store_dir=store, batch_size=batch_size,
                                    max_wait_ms=max_wait_ms, queue_size=queue_size, keep=keep, settings=settings,
                                    show_dropped=show_dropped)
    except (ModelLoadError, RunConflictError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    settings.device = str(getattr(pipeline.detector, "device", device))
    settings.dtype = str(getattr(pipeline.detector, "dtype", dtype))
    return app, worker
