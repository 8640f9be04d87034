"""The workflows the CLI calls, used from Python: profile building and reuse, evaluation set-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from iapas.workflows import evaluate as eval_flow
from iapas.workflows import profile as flow


def _job(said: list[str], errors: list[str], **kwargs: object) -> flow.ProfileJob:
    return flow.ProfileJob(say=said.append, error=errors.append, **kwargs)  # type: ignore[arg-type]


def test_a_hand_profile_is_written_then_kept_then_refused_for_other_inputs(tmp_path: Path) -> None:
    out, said, errors = tmp_path / "b.yaml", [], []
    opts = flow.profile_options(None, None, "knowledge", "dent, scratch", object_tag="bottle")
    assert flow.hand_profile("b", out, opts, _job(said, errors)) == "written"
    assert flow.hand_profile("b", out, opts, _job(said, errors)) == "cached"
    other = flow.profile_options(None, None, "knowledge", "dent", object_tag="bottle")
    assert flow.hand_profile("b", out, other, _job(said, errors)) == "conflict"
    assert flow.hand_profile("b", out, other, _job(said, errors, force=True)) == "written"
    assert said[0] == "wrote " + str(out) + ": object 'bottle', caption 'dent . scratch . abnormal . defect . bottle .'"
    assert "made from the same inputs; keeping it" in said[1]
    assert len(errors) == 1 and "was made from other inputs" in errors[0]


def test_profile_options_refuse_what_the_cli_refuses() -> None:
    with pytest.raises(flow.ProfileJobError, match="cannot go with --tagger clip"):
        flow.profile_options("clip", "leather", "knowledge", None)
    with pytest.raises(flow.ProfileJobError, match="unknown --llm 'gpt'"):
        flow.profile_options(None, None, "gpt", None)
    manual = flow.profile_options(None, "leather, fabric", "knowledge", None)  # --tags alone: the manual tagger
    assert manual.tagger == "manual" and [t.strip() for t in manual.tags] == ["leather", "fabric"]


def test_a_dataset_category_folder_is_not_taken_as_references(tmp_path: Path) -> None:
    category = tmp_path / "bottle"
    bad = category / "test" / "broken" / "000.png"
    good = category / "train" / "good" / "000.png"
    for path in (bad, good):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    message = flow.dataset_like([str(category)], [good, bad])
    assert message is not None and "test/broken/" in message and "--categories bottle" in message
    assert flow.dataset_like([str(category / "train" / "good")], [good]) is None


def test_evaluate_and_bench_options_give_one_setup() -> None:
    common = dict(
        protocol="paper", mode="iapas", size_threshold=None, references=5, seed=3, eval_size=400, limit=None,
        batch_size=1, max_pixels=10**8, image_norm=None, image_score=None, dtype=None, tags="widget", llm="knowledge",
        object_in_caption=True, tagger="clip", tagger_model=None, top_k=5, llm_model=None, llm_base_url=None,
        llm_timeout=60.0, llm_retries=2, llm_fallback="auto", knowledge_file=None, object_join="phrase",
        prompt_style="reference", text_processing="iapas", device="cpu",
    )
    bench = eval_flow.prepare(common)
    assert bench.dtype == eval_flow.EVAL_DTYPE and bench.stage1.dtype == "auto" and bench.stage1.tags == ["widget"]
    assert bench.settings.n_references == 5 and bench.stage1.size_threshold == 0.8
    evaluate = eval_flow.prepare({**common, "dtype": "bfloat16", "false_alarm_rate": 0.01, "calibration_images": None})
    assert evaluate.dtype == evaluate.stage1.dtype == "bfloat16"
    assert evaluate.settings.calibration_images == eval_flow.calibration_count(None, 0.01) == 99
    assert eval_flow.prepare({**common, "mode": "base"}).stage1 is None
