"""The options several commands share, each written once: flag, type, default, help and, for a
stage-2 setting, the :class:`~iapas.pipeline.stage2.PipelineConfig` field it sets.

The command line adds them to a command with ``iapas.cli.options.shared`` and gets them back as one
:class:`Settings`; :meth:`Settings.pipeline_config` builds the stage-2 configuration from every
row that names a ``config`` field. A new stage-2 knob is a new ``PipelineConfig`` field plus, here,
one row (``config="field"``) and its name in :data:`STAGE2`: every command that loads stage 2
then has the option and passes it on (two files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from iapas.core.images import DEFAULT_MAX_PIXELS
from iapas.models.ov.cache import RUNTIMES
from iapas.models.registry import DEFAULT_DETECTOR, DEFAULT_SEGMENTER, family_list


@dataclass(frozen=True)
class Opt:
    """One shared option. ``name`` is the Python parameter (and :class:`Settings` attribute)."""

    name: str
    flags: tuple[str, ...]
    type: Any
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    show_default: bool = True
    config: str | None = None  # the PipelineConfig field it sets, if any
    choices: tuple[str, ...] | None = None  # the values it takes, when a fixed few

    def but(self, **changes: Any) -> "Opt":
        """This option with another default or help (a command whose meaning differs)."""
        return replace(self, **changes)


MODEL_HELP = "a model name (table below), a hub id or a local folder"
_ROWS = [
    Opt("detector", ("--detector",), str, DEFAULT_DETECTOR,
        f"{family_list('detector')} (which segments too): {MODEL_HELP}.", config="detector"),
    Opt("segmenter", ("--segmenter",), str, DEFAULT_SEGMENTER,
        f"{family_list('segmenter')}: {MODEL_HELP} (unused with --detector sam3).", config="segmenter"),
    Opt("device", ("--device",), str, "auto", "cpu, cuda, cuda:N, mps, or auto (GPU when there is one).",
        config="device"),
    Opt("dtype", ("--dtype",), str, "auto", "float32, float16, bfloat16, or auto (float16 on GPU, float32 on CPU).",
        config="dtype"),
    Opt("box_threshold", ("--box-threshold",), float, 0.1, "Detector box threshold (the paper's 0.1).",
        config="box_threshold"),
    Opt("text_threshold", ("--text-threshold",), float, 0.1, "Detector text threshold (the paper's 0.1).",
        config="text_threshold"),
    Opt("size_threshold", ("--size-threshold",), float, None,
        "Override the profile's size threshold (drop boxes >= this fraction of the object's area).",
        config="size_threshold"),
    Opt("batch_size", ("--batch-size",), int, 1, "Images per model forward. Larger batches use the GPU better.", min=1),
    Opt("fuse_object_detection", ("--fuse-object-detection",), bool, False,
        "Take the object box from the caption's forward (the caption ends with the object tag) and save one "
        "detector forward per image. Not the paper's method: object scores come from the object tag's tokens "
        "inside the longer caption.", config="fuse_object_detection"),
    Opt("compile_models", ("--compile",), bool, False,
        "torch.compile both models: each new image size first pays a compilation (tens of seconds to minutes), "
        "then forwards run faster, mostly on a GPU. Outputs equal the uncompiled ones to float rounding, not "
        "bitwise.", config="compile"),
    Opt("runtime", ("--runtime",), str, "torch",
        "torch, or openvino: the detector's and SAM's forwards as OpenVINO IR on the CPU (needs iapas[openvino]; "
        "Grounding DINO / MM-Grounding-DINO / LLMDet and SAM / SAM-HQ only), converted once per model and image "
        "shape into $IAPAS_OPENVINO_CACHE (default ~/.cache/iapas/openvino). Outputs equal torch's to float "
        "rounding; a run is not resumed across runtimes.", config="runtime", choices=RUNTIMES),
    Opt("ov_int8", ("--ov-int8",), bool, False,
        "With --runtime openvino: compress the detector's weights to int8 (NNCF). Faster and smaller, but boxes "
        "and scores change: measure it first (benchmarks/openvino_cpu.py --int8).", config="ov_int8"),
    Opt("max_pixels", ("--max-pixels",), int, DEFAULT_MAX_PIXELS,
        "Refuse images with more pixels than this (decompression-bomb guard).", min=1),
    Opt("show_dropped", ("--show-dropped",), bool, False,
        "Draw the boxes the size filter dropped (grey) on the overlays; off: only the kept boxes."),
    Opt("restart", ("--restart",), bool, False, "Discard the results already in --out instead of resuming."),
    # where the images run (segment, evaluate)
    Opt("engine", ("--engine",), str, "local",
        "local: this machine (threads for reading, the models, writing); ray: a Ray Data pool of workers, "
        "each loading the models once (needs iapas[ray])."),
    Opt("ray_address", ("--ray-address",), str, None,
        "With --engine ray: a running Ray cluster ('auto' or HOST:PORT); inputs, models and an absolute --out "
        "must be on storage every node sees. Without: a local Ray on this machine."),
    Opt("workers", ("--workers",), int, 1, "With --engine ray: workers (actors), each with its own models.", min=1),
    Opt("gpus_per_worker", ("--gpus-per-worker",), float, None,
        "With --engine ray: GPUs per worker (default: 1 when --device is cuda, else 0).", min=0.0, show_default=False),
    Opt("cpus_per_worker", ("--cpus-per-worker",), float, 1.0, "With --engine ray: CPUs per worker.", min=0.0),
    # stage 1 (profile, evaluate, bench)
    Opt("references", ("--references", "-n"), int, 10, "Normal reference images per category for stage 1.", min=0),
    Opt("seed", ("--seed",), int, 0, "Seed for drawing the references (and --limit's subset, and LLM sampling)."),
    Opt("tagger", ("--tagger",), str, "clip",
        "Stage 1 tagger: clip, ram (--tagger-model CHECKPOINT) or manual (--tags)."),
    Opt("tagger_model", ("--tagger-model",), str, None, "CLIP hub id or folder; for ram, the checkpoint file."),
    Opt("top_k", ("--top-k",), int, 5, "CLIP tagger: tags kept per reference image.", min=1),
    Opt("tags", ("--tags",), str, None,
        "Tags by hand for every category, comma separated (implies --tagger manual)."),
    Opt("llm", ("--llm",), str, "transformers",
        "Anomaly nouns from: transformers (local chat model), openai (compatible endpoint) or knowledge (offline)."),
    Opt("llm_model", ("--llm-model",), str, None,
        "transformers: hub id or folder (default Meta-Llama-3-8B-Instruct); openai: model name."),
    Opt("llm_base_url", ("--llm-base-url",), str, None,
        "openai: server URL (or IAPAS_LLM_BASE_URL / OPENAI_BASE_URL)."),
    Opt("llm_timeout", ("--llm-timeout",), float, 60.0, "openai: seconds per request.", min=0.001),
    Opt("llm_retries", ("--llm-retries",), int, 2, "openai: retries after errors and time-outs.", min=0),
    Opt("llm_fallback", ("--llm-fallback",), str, "auto",
        "auto: when the LLM fails, a profile's nouns come from the knowledge vocabulary; never: stop with an error."),
    Opt("knowledge_file", ("--knowledge",), Path, None, "A knowledge YAML instead of the built-in vocabulary."),
    Opt("object_in_caption", ("--object-in-caption/--no-object-in-caption",), bool, True,
        "Append the object tag to the caption (as the reference code does)."),
    # the benchmark protocol (evaluate, bench)
    Opt("protocol", ("--protocol",), str, "paper",
        "paper: the test images the paper's reference code used; full: the whole test split (normal and defective)."),
    Opt("mode", ("--mode",), str, "iapas",
        "iapas: profile caption + size filter; base: the paper's baseline, no size filter, caption 'defect, abnormal.' "
        "and no per-image normalisation under --protocol paper (as the reference code), else 'defect . abnormal .'."),
    Opt("limit", ("--limit",), int, None,
        "Quick check: at most N test images per category (seeded draw, anomalous and normal images taken in turn so "
        "both classes appear; reported as such).", min=1),
    Opt("eval_size", ("--eval-size",), int, 400, "Side of the square evaluation maps (the paper's 400).", min=8),
    Opt("image_norm", ("--image-norm/--no-image-norm",), Optional[bool], None,
        "Min-max normalise each image's map (by its raw range) before the stack normalisation, as the paper's "
        "reference code does (default: on, except --mode base --protocol paper, where the reference skips it). "
        "Applied when the metrics are computed: switching it on a finished folder re-computes the metrics only.",
        show_default=False),
    Opt("image_score", ("--image-score",), str, None,
        "Image score of the image metrics: paper (each image's maximum of the normalised 400x400 stack, the "
        "reference code's; the default under --protocol paper) or raw (the raw full-resolution map's maximum; the "
        "default under --protocol full). Applied when the metrics are computed.", show_default=False),
    Opt("object_join", ("--object-join",), str, "phrase",
        "Stage 1: the object tag joins the caption as its own phrase (phrase) or, as in the reference code, "
        "with a comma to the last word (comma)."),
    Opt("prompt_style", ("--prompt-style",), str, "reference",
        "Stage 1: the LLM's messages, reference (the paper's reference code's) or inspector (iapas's own wording)."),
    Opt("text_processing", ("--text-processing",), str, "iapas",
        "Stage 1: iapas (aggregated tags with a stoplist, mapped object tag, parsed base-form nouns) or reference "
        "(the reference code's: per-image tags, the raw detector phrase, its reply cleaning and exact caption string)."),
    Opt("report", ("--report/--no-report",), bool, True, "Write report.html (images inlined)."),
    # logging (every command)
    # where the station sends each verdict (serve)
    Opt("webhook", ("--webhook",), list[str], None,
        "POST each verdict as JSON to this http(s) URL, signed (header X-Iapas-Signature: sha256=HMAC of the "
        "body); repeatable. Needs --webhook-secret-file."),
    Opt("webhook_secret_file", ("--webhook-secret-file",), Path, None, "File whose first line is the webhooks' HMAC key."),
    Opt("mqtt", ("--mqtt",), list[str], None,
        "Publish each verdict (JSON, QoS 1) to mqtt://HOST:PORT/TOPIC, on TOPIC/<category>; repeatable. "
        "Needs iapas[mqtt]."),
    Opt("verbose", ("--verbose", "-v"), bool, False, "Log debug details."),
    Opt("quiet", ("--quiet", "-q"), bool, False, "Only warnings and errors."),
]
#: Every shared option by name.
OPTIONS: dict[str, Opt] = {row.name: row for row in _ROWS}

#: The options every command that loads stage 2 takes (segment, calibrate, evaluate, bench, serve):
#: a new stage-2 knob is a row with ``config=`` and its name here.
STAGE2 = ("detector", "segmenter", "device", "dtype", "runtime", "ov_int8")
ENGINE = ("engine", "ray_address", "workers", "gpus_per_worker", "cpus_per_worker")
LOGGING = ("verbose", "quiet")
SINKS = ("webhook", "webhook_secret_file", "mqtt")
#: The benchmark protocol's options (evaluate, bench).
PROTOCOL = ("protocol", "mode", "limit", "eval_size", "image_norm", "image_score", "object_join", "prompt_style",
            "text_processing", "report")


@dataclass
class Settings:
    """The shared options a command was given, by name (``settings.device``)."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def pipeline_config(self, **given: Any) -> Any:
        """The stage-2 configuration: every given option with a ``config`` field, then ``given``."""
        from iapas.pipeline.stage2 import PipelineConfig

        fields = {OPTIONS[name].config: value for name, value in self.values.items()
                  if name in OPTIONS and OPTIONS[name].config}
        return PipelineConfig(**{**fields, **given})

    def executor(self, out: Path) -> Any:
        """The executor the :data:`ENGINE` options ask for (None: the local one); a ``ValueError``
        with one line when they cannot be met (Ray missing, a relative ``out`` for a cluster)."""
        engine, address, workers, gpus, cpus = (self.values.get(name, OPTIONS[name].default) for name in ENGINE)
        if engine == "local":
            ignored = [name for name, used in (("--ray-address", address is not None), ("--workers", workers != 1),
                                               ("--gpus-per-worker", gpus is not None),
                                               ("--cpus-per-worker", cpus != 1.0)) if used]
            if ignored:
                logging.getLogger(__name__).warning("%s: for --engine ray only; ignored", ", ".join(ignored))
            return None
        if engine != "ray":
            raise ValueError(f"--engine must be local or ray, got {engine!r}")
        from iapas.engine.ray_executor import RayExecutor, RayMissingError, RayOptions, require_ray

        try:
            require_ray()
        except RayMissingError as exc:
            raise ValueError(str(exc)) from None
        if address is not None and not out.is_absolute():
            raise ValueError(f"--out {out} is relative: on a Ray cluster (--ray-address) give an absolute path on "
                             "storage every node sees")
        return RayExecutor(RayOptions(address=address, workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus))
