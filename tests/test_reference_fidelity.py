"""Where the paper protocol follows the reference code (issue 9): the baseline's caption and
normalisation, the LLM prompt styles and stop tokens, and the caption's object join."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from iapas.evaluation.core import EvalSettings, category_signature, stage2_pipeline
from iapas.models.base import Detector
from iapas.models.detector import GroundingDinoDetector
from iapas.pipeline.stage2 import Pipeline, PipelineConfig
from iapas.core.caption import BASE_CAPTION, REFERENCE_BASE_CAPTION
from iapas.core.types import Detections


class RecordingDetector(Detector):
    name = "recording"

    def __init__(self) -> None:
        self.captions: list[str] = []

    def detect(self, images: Sequence[np.ndarray], caption: str, *, box_threshold: float, text_threshold: float) -> list[Detections]:
        self.captions.append(caption)
        return [Detections.empty() for _ in images]


class NoSegmenter:
    name = "none"

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.zeros((len(b), *im.shape[:2]), bool) for im, b in zip(images, boxes)]


# --- item 8: the baseline ----------------------------------------------------------------------------


def test_base_mode_under_the_paper_protocol_sends_the_reference_caption():
    det = RecordingDetector()
    pipe = Pipeline(det, NoSegmenter(), PipelineConfig())
    image = np.zeros((8, 8, 3), np.uint8)
    stage2_pipeline(pipe, EvalSettings(mode="base", protocol="paper"))(image)
    stage2_pipeline(pipe, EvalSettings(mode="base", protocol="full"))(image)
    assert det.captions == ["defect, abnormal.", "defect . abnormal ."]
    assert REFERENCE_BASE_CAPTION == "defect, abnormal." and BASE_CAPTION == "defect . abnormal ."
    # the run's resume signature names the caption used
    assert category_signature(pipe, None, EvalSettings(mode="base"))["caption"] == "defect, abnormal."
    # the detector passes it on as written: one phrase, final '.' already there
    assert GroundingDinoDetector.normalize_caption(REFERENCE_BASE_CAPTION) == "defect, abnormal."


def test_base_mode_under_the_paper_protocol_skips_the_per_image_normalisation():
    assert EvalSettings(mode="base", protocol="paper").image_norm is False
    assert EvalSettings(mode="base", protocol="full").image_norm is True
    assert EvalSettings(mode="iapas", protocol="paper").image_norm is True
    assert EvalSettings(mode="base", protocol="paper", image_norm=True).image_norm is True  # asked for: kept


# --- item 1: the LLM's messages and stop tokens ---------------------------------------------------------

# The reference code's messages for the object tag 'bottle', written out by hand (its
# triple-quoted user message holds a line break and 20 spaces of indentation).
REFERENCE_MESSAGES = [
    {
        "role": "system",
        "content": "The assistant should always answer only by listing lowercase words in the following format: 'word, word'",
    },
    {
        "role": "user",
        "content": "I would like to extract words to enter into the object detection model to find abnormal parts of "
        "bottle. \n" + " " * 20 + "Please write down non-redundant anomalous nouns that can appear in bottle images.",
    },
]


class RecordingLLM:
    name = "fake"
    model_id = "fake-model"

    def __init__(self) -> None:
        self.messages: list[list[dict[str, str]]] = []

    def complete(self, messages, *, seed: int) -> str:
        self.messages.append([dict(m) for m in messages])
        return "scratch, crack"


def test_reference_style_is_the_default_and_sends_the_reference_code_s_messages():
    from iapas.prompts.knowledge import Knowledge
    from iapas.prompts.llm import build_messages
    from iapas.prompts.stage1 import generate_nouns

    assert build_messages("bottle") == REFERENCE_MESSAGES
    llm = RecordingLLM()
    result = generate_nouns("bottle", llm, seed=0, knowledge=Knowledge.load())
    assert llm.messages == [REFERENCE_MESSAGES] and result.prompt_style == "reference"
    generate_nouns("bottle", llm, seed=0, knowledge=Knowledge.load(), prompt_style="inspector")
    system, user = llm.messages[1]
    assert "industrial visual inspection" in system["content"] and "fray, stain, scratch, hole, burn" in user["content"]
    with pytest.raises(ValueError, match="unknown prompt style 'x'; choose one of reference, inspector"):
        build_messages("bottle", "x")


class ChatTokenizer:
    """A Llama-3-like tokenizer stand-in: eos <|end_of_text|> (128001), <|eot_id|> (128009)."""

    pad_token_id = None
    eos_token_id = 128001

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self.templated: list[list[dict[str, str]]] = []

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def apply_chat_template(self, messages, **kwargs):
        import torch

        self.templated.append(messages)
        return {"input_ids": torch.tensor([[1, 2]]), "attention_mask": torch.ones(1, 2, dtype=torch.long)}

    def decode(self, tokens, skip_special_tokens=False):
        return "scratch, dent"


class GenerateRecorder:
    def __init__(self) -> None:
        self.kwargs: list[dict] = []

    def generate(self, **kwargs):
        import torch

        self.kwargs.append(kwargs)
        return torch.cat([kwargs["input_ids"], torch.tensor([[7, 8]])], dim=1)


def test_generation_stops_at_eos_and_eot_where_the_tokenizer_has_them():
    from iapas.prompts.llm import TransformersLLM, stop_token_ids

    llama = ChatTokenizer({"<|end_of_text|>": 128001, "<|eot_id|>": 128009})
    model = GenerateRecorder()
    llm = TransformersLLM(model, llama, device="cpu", model_id="llama")
    assert llm.complete(REFERENCE_MESSAGES, seed=0) == "scratch, dent"
    assert llama.templated == [REFERENCE_MESSAGES]
    assert model.kwargs[0]["eos_token_id"] == [128001, 128009] and model.kwargs[0]["pad_token_id"] == 128001
    # a tokenizer without <|eot_id|>: only its eos, no made-up id
    other = ChatTokenizer({"</s>": 128001})
    assert stop_token_ids(other) == [128001]
    TransformersLLM(model, other, device="cpu", model_id="other").complete(REFERENCE_MESSAGES, seed=0)
    assert model.kwargs[1]["eos_token_id"] == [128001]


def test_tiny_llm_stops_at_its_eot_token(tiny_models):
    from iapas.prompts.llm import TransformersLLM, stop_token_ids

    llm = TransformersLLM.from_pretrained(str(tiny_models["llm"]), device="cpu", max_new_tokens=8)
    eot = llm.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert stop_token_ids(llm.tokenizer) == [eot]  # its eos is <|eot_id|> itself: one id


def test_the_prompt_style_is_in_the_profile_and_its_cache_key(tmp_path):
    from iapas.prompts.resources import Stage1Models, Stage1Options
    from iapas.prompts.stage1 import build_profile

    def key(**options):
        return Stage1Models(Stage1Options(tagger="manual", tags=["bottle"], **options)).input_hash("bottle", [])

    assert key(llm="transformers", llm_model="m") != key(llm="transformers", llm_model="m", prompt_style="inspector")
    assert key(llm="transformers", llm_model="m") == key(llm="transformers", llm_model="m", prompt_style="reference")
    assert key(llm="openai", llm_model="m", llm_base_url="http://x/v1") != key(
        llm="openai", llm_model="m", llm_base_url="http://x/v1", prompt_style="inspector"
    )
    # no messages are sent to the knowledge vocabulary or with nouns by hand: the style changes nothing
    assert key(llm="knowledge") == key(llm="knowledge", prompt_style="inspector")
    assert key(nouns=["dent"]) == key(nouns=["dent"], prompt_style="inspector")
    with pytest.raises(ValueError, match="unknown prompt style"):
        Stage1Options(prompt_style="mine")

    llm = RecordingLLM()
    profile = build_profile("bottle", [], object_tag="bottle", llm=llm, prompt_style="inspector")
    assert profile.stage1["llm"]["prompt_style"] == "inspector"
    assert profile.stage1["llm"]["messages"] == llm.messages[0] != REFERENCE_MESSAGES
    assert build_profile("bottle", [], object_tag="bottle", llm=llm).stage1["llm"]["messages"] == REFERENCE_MESSAGES


def test_bench_prompt_style_ablation_is_declared_like_the_others():
    from iapas.evaluation.bench import ABLATIONS, ablation_variants

    assert "prompt-style" in ABLATIONS
    default, other = ablation_variants(["prompt-style"], EvalSettings())
    assert (default.name, other.name, other.label, other.prompt_style) == ("default", "prompt-inspector", "inspector prompt", "inspector")
    assert other.profiles_dir_name() == "profiles-prompt-inspector"
    _, back = ablation_variants(["prompt-style"], EvalSettings(), prompt_style="inspector")
    assert (back.name, back.profiles_dir_name()) == ("prompt-reference", "profiles-prompt-reference")


# --- item 10: the object tag's join --------------------------------------------------------------------


def test_object_join_phrase_and_comma_captions():
    from iapas.core.caption import build_caption, fit_caption
    from iapas.product.profile import Profile

    nouns = ["scratch", "crack"]
    assert build_caption(nouns, "bottle") == "scratch . crack . abnormal . defect . bottle ."
    assert build_caption(nouns, "bottle", object_join="comma") == "scratch . crack . abnormal . defect, bottle ."
    assert build_caption(nouns, "bottle", include_object_tag=False, object_join="comma") == "scratch . crack . abnormal . defect ."
    assert fit_caption(nouns, "bottle", object_join="comma") == ("scratch . crack . abnormal . defect, bottle .", [])
    by_hand = Profile.from_prompts("b", "bottle", nouns, object_join="comma")
    assert by_hand.caption == "scratch . crack . abnormal . defect, bottle ." and by_hand.anomaly_nouns == nouns
    # Grounding DINO reads it as written: 'defect, bottle' is one phrase
    assert GroundingDinoDetector.normalize_caption(by_hand.caption) == by_hand.caption
    with pytest.raises(ValueError, match="unknown object join 'dot'; choose one of phrase, comma"):
        build_caption(nouns, "bottle", object_join="dot")


def test_object_join_is_in_the_profile_and_its_cache_key():
    from iapas.prompts.resources import Stage1Models, Stage1Options
    from iapas.prompts.stage1 import build_profile

    def key(**options):
        return Stage1Models(Stage1Options(tagger="manual", tags=["bottle"], llm="knowledge", **options)).input_hash("b", [])

    assert key() != key(object_join="comma") and key() == key(object_join="phrase")
    profile = build_profile("bottle", [], object_tag="bottle", nouns=["dent"], object_join="comma")
    assert profile.caption == "dent . abnormal . defect, bottle ."
    assert profile.stage1["caption"]["object_join"] == "comma"


def test_bench_prompt_style_runs_stage1_with_each_style_on_the_tiny_llm(tmp_path, tiny_models):
    from iapas.evaluation import Stage1Options
    from iapas.evaluation.bench import run_bench
    from tests.test_evaluation import OBJECT, fake_pipeline, make_mvtec

    make_mvtec(tmp_path / "datasets" / "MVTecAD", ("alpha",), n_good=2, n_bad=1)
    stage1 = Stage1Options(tagger="manual", tags=[OBJECT], llm="transformers", llm_model=str(tiny_models["llm"]), device="cpu")
    out = tmp_path / "bench"
    bench = run_bench(
        tmp_path / "datasets", out, fake_pipeline(), EvalSettings(protocol="full"), stage1=stage1,
        ablations=["prompt-style"], report=False,
    )
    assert [v.name for v in bench.variants] == ["default", "prompt-inspector"] and not bench.errors
    assert set(bench.results["mvtec"]) == {"default", "prompt-inspector"}
    from iapas.product.profile import Profile

    ref = Profile.load(out / "mvtec" / "profiles" / "alpha.yaml").stage1["llm"]
    insp = Profile.load(out / "mvtec" / "profiles-prompt-inspector" / "alpha.yaml").stage1["llm"]
    assert (ref["prompt_style"], insp["prompt_style"]) == ("reference", "inspector")
    assert ref["messages"][0]["content"] == REFERENCE_MESSAGES[0]["content"] != insp["messages"][0]["content"]
    assert "| inspector prompt AP |" in (out / "bench.md").read_text()


def test_cli_prompt_style_and_object_join_options(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import iapas.cli.bench as cli_bench
    import iapas.evaluation.bench as bench_module
    from iapas.cli import app
    from iapas.data import DatasetError
    from iapas.product.profile import Profile

    out = tmp_path / "b.yaml"
    made = CliRunner().invoke(app, ["profile", "-c", "b", "--object", "bottle", "--prompts", "dent", "--object-join", "comma", "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert Profile.load(out).caption == "dent . abnormal . defect, bottle ."
    bad = CliRunner().invoke(app, ["profile", "-c", "b", "--object", "bottle", "--prompts", "dent", "--prompt-style", "mine", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown prompt style 'mine'" in bad.output

    seen = []

    def fake_run_bench(root_dir, out, pipeline, settings, *, stage1, ablations, **kwargs):
        seen.append((stage1.prompt_style, stage1.object_join, ablations))
        raise DatasetError("stop here")

    monkeypatch.setattr(cli_bench, "_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    args = ["bench", "--root-dir", str(tmp_path), "--out", str(tmp_path / "bench"), "--quiet", "--llm", "knowledge"]
    CliRunner().invoke(app, args)
    CliRunner().invoke(app, [*args, "--prompt-style", "inspector", "--object-join", "comma", "--ablation", "prompt-style"])
    assert seen == [("reference", "phrase", []), ("inspector", "comma", ["prompt-style"])]


def test_an_evaluation_warns_when_a_stage1_profile_was_made_with_another_object_join(tmp_path, caplog):
    from iapas.data import get_dataset
    from iapas.evaluation import Stage1Options
    from iapas.evaluation.profiles import get_profile
    from tests.test_evaluation import OBJECT, BlobDetector, make_mvtec

    category = get_dataset("mvtec", make_mvtec(tmp_path / "data", ("alpha",), n_good=2, n_bad=1)).load("alpha", n_references=2)
    made = get_profile(category, tmp_path / "p", Stage1Options(object_tag=OBJECT, llm="knowledge"), detector=BlobDetector())
    with caplog.at_level("WARNING", logger="iapas.evaluation.profiles"):
        same = get_profile(category, tmp_path / "p", Stage1Options(object_tag=OBJECT, llm="knowledge"), detector=BlobDetector())
        assert not caplog.records
        other = get_profile(
            category, tmp_path / "p", Stage1Options(object_tag=OBJECT, llm="knowledge", object_join="comma"), detector=BlobDetector()
        )
    assert made.caption == same.caption == other.caption  # the file is used as written
    assert len(caplog.records) == 1 and "made from other stage-1 inputs" in caplog.records[0].getMessage()
