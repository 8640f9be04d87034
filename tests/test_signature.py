"""The one run signature (iapas.engine.signature): a new PipelineConfig field is compared on
resume by segment and evaluate alike, without anyone remembering to add it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from iapas.engine.runfolder import RunConflictError
from iapas.engine.signature import (
    DETECTOR_FIELDS, EVALUATION_FIELDS, MODEL_FIELDS, PRECISION_FIELDS, STAGE2_FIELDS, RunModels, models_signature,
    run_signature,
)
from iapas.evaluation import EvalSettings, evaluate_dataset
from iapas.engine.runner import run_segmentation
from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from tests.test_evaluation import BlobDetector, BoxSegmenter, make_mvtec, widget_profile
from tests.test_run_safety import make_images


@dataclass
class NewOptionConfig(PipelineConfig):
    """PipelineConfig with an option added after the signature was written."""

    sharpen: float = 0.0


def pipeline(sharpen: float = 0.0) -> Pipeline:
    return Pipeline(BlobDetector(), BoxSegmenter(), NewOptionConfig(sharpen=sharpen))


def test_a_new_config_field_enters_the_signature_only_when_set():
    profile = widget_profile("part")
    before = run_signature(pipeline(), profile)
    assert "sharpen" not in before  # at its default: the signatures of earlier runs still match
    assert run_signature(pipeline(0.5), profile) == {**before, "sharpen": 0.5}
    evaluated = models_signature(pipeline(0.5).config, RunModels.loaded(pipeline(0.5)), evaluation=True)
    assert evaluated["sharpen"] == 0.5
    assert run_signature(Pipeline(BlobDetector(), BoxSegmenter(), PipelineConfig(compile=True)), profile)["compile"] is True


def test_the_declared_rules_name_real_config_fields():
    """A renamed field must not fall out of its rule (the others are compared by value)."""
    declared = {*MODEL_FIELDS, *PRECISION_FIELDS, *DETECTOR_FIELDS, *STAGE2_FIELDS, *EVALUATION_FIELDS}
    assert declared <= {spec.name for spec in fields(PipelineConfig)}


def test_segment_refuses_to_resume_with_another_value_of_a_new_option(tmp_path: Path):
    paths = make_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert run_segmentation(paths, pipeline(), widget_profile("part"), out).ok
    with pytest.raises(RunConflictError, match=r"made with other settings \(sharpen\)"):
        run_segmentation(paths, pipeline(0.5), widget_profile("part"), out)
    again = run_segmentation(paths, pipeline(), widget_profile("part"), out)
    assert again.skipped == 2


def test_evaluate_refuses_to_resume_with_another_value_of_a_new_option(tmp_path: Path):
    data = make_mvtec(tmp_path / "data", categories=("alpha",), n_good=1, n_bad=1)
    out = tmp_path / "eval"
    settings = EvalSettings(protocol="full", mode="base")
    assert not evaluate_dataset("mvtec", data, out, pipeline(), settings, report=False).failed
    with pytest.raises(RunConflictError, match=r"made with other settings \(sharpen: None -> 0\.5\)"):
        evaluate_dataset("mvtec", data, out, pipeline(0.5), settings, report=False)
