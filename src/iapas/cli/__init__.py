"""The ``iapas`` command line. Each command group lives in its own module of this package."""

from __future__ import annotations

import typer

from iapas.cli import calibrate, demo, export, export_openvino, profile, segment, testing
from iapas.cli.common import version_callback

app = typer.Typer(
    name="iapas",
    help=(
        "Zero-shot industrial anomaly segmentation with image-aware prompts (IAP-AS).\n\n"
        "Typical use: 'iapas profile' once per product, 'iapas calibrate' on normal images for an "
        "OK/NG threshold, then 'iapas segment' on its images."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: whole option names and defaults at 80 columns
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """iapas command line."""


profile.register(app)
segment.register(app)
calibrate.register(app)
demo.register(app)
export.register(app)
export_openvino.register(export.export_app)
app.add_typer(testing.app, name="testing")

# Optional command groups added by other modules (data, evaluation) register themselves here.
for _name in ("data", "evaluate", "bench", "serve"):
    try:
        _module = __import__(f"iapas.cli.{_name}", fromlist=["register"])
    except ModuleNotFoundError as _exc:  # pragma: no cover - the module is not there yet
        if _exc.name != f"iapas.cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()
