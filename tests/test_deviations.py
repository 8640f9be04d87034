"""The README's "Where iapas differs from the reference code" table, row by row (issue 19 part 4).

The reference code (sybeam27/IAP-ZSAS, no licence: never copied into the repository) is written
out plainly here where a row claims to reproduce it: ``clean_string``, ``process_anomaly_tags_2``'s
caption assembly, ``get_grounding_output``'s caption normalisation and ``process_single_image``'s
rewriting of RAM's tags. The one change made to it is named where it is made: its ``set`` of
phrases (an order that changes from run to run) is first-seen order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iapas.evaluation.settings import EvalSettings
from iapas.evaluation.variants import ablation_variants
from iapas.models import base
from iapas.models.detector import GroundingDinoDetector
from iapas.product.profile import Profile
from iapas.core.caption import build_caption
from iapas.prompts.reference_text import reference_caption, reference_clean_reply, reference_tag_caption
from iapas.prompts.resources import Stage1Models, Stage1Options
from iapas.prompts.stage1 import build_profile
from iapas.core.types import Detections

# --- the reference's code, written out ------------------------------------------------------------


def ref_clean_string(s: str | None, ordered: bool) -> str:
    """utils/function.py ``clean_string``; ``ordered``: ``dict.fromkeys`` instead of its ``set``."""
    if s is None:
        return ""
    s = s.strip(".,")
    s = s.replace("''", "").replace('""', "")
    s = s.replace("word", "").replace("Word", "")
    s = s.replace("none", "").replace("None", "")
    s = re.sub(r"\bof\b", "", s)
    s = re.sub(r"\bpart\b", "", s)
    s = s + "," + "abnormal, defect"
    parts = s.split(",")
    cleaned_parts = []
    for part in parts:
        words = part.split()
        unique_words = list(dict.fromkeys(words))
        cleaned_parts.append(" ".join(unique_words))
    cleaned_string = ", ".join(cleaned_parts)
    if cleaned_string.startswith(","):
        cleaned_string = cleaned_string[1:].strip()
    unique_tags = dict.fromkeys(cleaned_string.split(", ")) if ordered else set(cleaned_string.split(", "))
    cleaned_string = ", ".join(unique_tags)
    return cleaned_string.replace(".", "").strip(".,").replace(",", ".")


def ref_caption(reply: str, object_tag: str, ordered: bool = True) -> str:
    """``process_anomaly_tags_2`` (top_k = 1: one object tag) then ``get_grounding_output``'s
    normalisation of the caption it passes to Grounding DINO."""
    llama_tags = ""
    for tag in [object_tag]:
        clean_result = ref_clean_string(reply, ordered)
        llama_tags = llama_tags + " . " + clean_result + ", " + tag
    llama_tags = llama_tags + "."
    caption = llama_tags.lower().strip()
    if not caption.endswith("."):
        caption = caption + "."
    return caption


def ref_ram_caption(ram_line: str) -> str:
    """``process_single_image``'s rewriting of RAM's ``'a | b'`` line, then the detector call's."""
    img_tags = ram_line.strip(" ").replace("  ", " ").replace(" |", ".").replace("close-up", "").replace("number. ", "")
    caption = img_tags.lower().strip()
    return caption if caption.endswith(".") else caption + "."


def bert_words(caption: str) -> list[str]:
    """BERT's basic tokenisation (whitespace, then each punctuation mark its own token)."""
    return re.findall(r"[a-z0-9]+|[^a-z0-9\s]", caption.lower())


def phrases(caption: str) -> list[str]:
    return sorted(p.strip() for p in re.split(r"[.,]", caption) if p.strip())


REPLIES = [
    "Scratch, Dent, crack",
    "scratch, none, dent, defect",
    "crack, sword, part of chip, chip chip, Of, dust.",
    "Here are the nouns: scratches, cracks. holes",
    "discoloration, bottle, contamination",
    "1. Scratch\n2. crack\n3. dent",
    "Words: None",
    ",scratch,,crack,",
]


# --- caption: the reference option reproduces the reference's string -------------------------------


@pytest.mark.parametrize("reply", REPLIES)
def test_reference_text_processing_builds_the_reference_code_s_caption(reply: str) -> None:
    ours = reference_caption(reference_clean_reply(reply), "glass bottle")
    assert ours == ref_caption(reply, "glass bottle")
    # the leading empty phrase is the reference's: ' . ' before the first word
    assert ours.startswith(". ") and ours.endswith(", glass bottle.")
    # the only change, the order: the verbatim code (a set) gives the same non-empty phrases
    verbatim = ref_caption(reply, "glass bottle", ordered=False)
    assert phrases(ours) == phrases(verbatim)
    # and our detector sends it as the reference's detector call does (the same BERT tokens)
    assert bert_words(GroundingDinoDetector.normalize_caption(ours)) == bert_words(ours)


def test_reference_cleaning_keeps_what_iapas_cleans_away() -> None:
    # no parsing, no base forms, the object tag kept, 'word' removed inside words ('sword' -> 's')
    assert ref_caption("scratches, bottle, sword", "bottle") == ". scratches. bottle. s. abnormal. defect, bottle."
    assert reference_caption(reference_clean_reply("scratches, bottle, sword"), "bottle") == (
        ". scratches. bottle. s. abnormal. defect, bottle."
    )
    # an empty phrase between two commas stays an empty phrase
    assert reference_caption(reference_clean_reply("scratch, none, dent"), "tile") == ". scratch. . dent. abnormal. defect, tile."


def test_object_join_comma_is_not_the_reference_caption() -> None:
    """The README row: --object-join comma gives the reference's last phrase ('defect, bottle')
    but neither its leading empty phrase nor its reply cleaning."""
    ours = build_caption(["scratch", "dent"], "bottle", object_join="comma")
    reference = ref_caption("scratch, dent", "bottle")
    assert ours == "scratch . dent . abnormal . defect, bottle ."
    assert reference == ". scratch. dent. abnormal. defect, bottle."
    assert ours != reference and bert_words(ours) == bert_words(reference)[1:]  # all but the leading '.'
    # iapas cleans the reply first (base forms, the object tag removed): the phrases differ too
    assert build_caption(["scratch"], "bottle", object_join="comma") != ref_caption("scratches, bottle", "bottle")


@pytest.mark.parametrize(
    "tags",
    [["bottle", "close-up", "glass"], ["metal", "number", "screw"], ["tile", "close-up"], ["floor"]],
)
def test_reference_tag_caption_is_ram_s_line_rewritten_as_the_reference_does(tags: list[str]) -> None:
    ours = GroundingDinoDetector.normalize_caption(reference_tag_caption(tags))
    assert bert_words(ours) == bert_words(ref_ram_caption(" | ".join(tags)))


# --- stage 1 under --text-processing reference ------------------------------------------------------


def index_of(rgb: np.ndarray) -> int:
    return int(rgb[0, 0, 0]) // 40


def dets(*rows: tuple[list[float], float, str]) -> Detections:
    return Detections(
        np.array([r[0] for r in rows], np.float32).reshape(-1, 4), np.array([r[1] for r in rows], np.float32),
        tuple(r[2] for r in rows),
    )


class Tagger:
    name, model_id = "fake", "fake-tagger"
    TAGS = [[("bottle", 0.5), ("close-up", 0.4), ("glass", 0.1)], [("white", 0.9), ("glass", 0.6)]]

    def tag(self, images):
        return [self.TAGS[index_of(im)] for im in images]


class Detector(base.Detector):
    """Image 0: a phrase spanning two tags ('bottle glass', iapas maps it to a tag); image 1:
    'glass', and a 'white' box below it."""

    name = "fake-detector"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def detect(self, images, caption, *, box_threshold, text_threshold):
        self.calls.append(caption)
        i = index_of(images[0])
        if caption in ("bottle", "bottle glass", "glass"):  # the object size
            return [dets(([0, 0, 50, 50], 0.9, caption))]
        table = [
            dets(([0, 0, 60, 60], 0.8, "bottle glass")),
            dets(([0, 0, 40, 40], 0.6, "glass"), ([0, 0, 100, 100], 0.55, "white")),
        ]
        return [table[i]]


class LLM:
    name, model_id = "fake", "fake-llm"
    REPLY = "Scratches, crack, bottle glass, none"

    def complete(self, messages, *, seed):
        return self.REPLY


@pytest.fixture
def refs(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(2):
        p = tmp_path / f"ref{i}.png"
        Image.fromarray(np.full((100, 100, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


def test_reference_text_processing_in_stage1(refs: list[Path], tmp_path: Path) -> None:
    det = Detector()
    profile = build_profile("bottle", refs, tagger=Tagger(), detector=det, llm=LLM(), text_processing="reference")
    # per-image tag captions, no stoplist ('white' stays, 'close-up' removed as the reference does)
    assert det.calls[:2] == ["bottle. . glass", "white. glass"]
    # the raw detector phrase is the object tag
    assert profile.object_tag == "bottle glass"
    assert profile.caption == ref_caption(LLM.REPLY, "bottle glass")
    assert profile.caption == ". scratches. crack. bottle glass. . abnormal. defect, bottle glass."
    s1 = profile.stage1
    assert s1["caption"]["text_processing"] == "reference" and s1["caption"]["object_join"] == "comma"
    assert [v["phrase"] for v in s1["object"]["per_image"]] == ["bottle glass", "glass"]
    assert Profile.load(profile.save(tmp_path / "p.yaml")).caption == profile.caption


def test_iapas_text_processing_is_what_the_table_says(refs: list[Path]) -> None:
    det = Detector()
    profile = build_profile("bottle", refs, tagger=Tagger(), detector=det, llm=LLM())
    # one aggregated tag caption for every image, stoplisted tags ('close-up', 'white') dropped
    assert det.calls[:2] == ["glass . bottle ."] * 2
    # the phrase mapped to a tag (a tie: the caption's first); the reply parsed, base forms
    assert profile.object_tag == "glass"
    assert profile.caption == "scratch . crack . bottle glass . abnormal . defect . glass ."


def test_text_processing_is_checked_recorded_and_in_the_cache_key() -> None:
    with pytest.raises(ValueError, match="text processing 'ram'.*iapas, reference"):
        Stage1Options(text_processing="ram")
    default = Stage1Models(Stage1Options(llm="knowledge")).settings()
    reference = Stage1Models(Stage1Options(llm="knowledge", text_processing="reference")).settings()
    assert "text_processing" not in default  # profiles made before the option keep their key
    assert reference == {**default, "text_processing": "reference"}


def test_cli_profile_by_hand_with_the_reference_caption(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from iapas.cli import app

    out = tmp_path / "tile.yaml"
    args = ["profile", "-c", "tile", "--object", "tile", "--prompts", "Crack, none, blowhole", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--text-processing", "reference"])
    assert result.exit_code == 0, result.output
    profile = Profile.load(out)
    assert profile.caption == ref_caption("Crack, none, blowhole", "tile") == ". crack. . blowhole. abnormal. defect, tile."
    assert profile.stage1["text_processing"] == "reference"
    bad = CliRunner().invoke(app, [*args, "--force", "--text-processing", "ram"])
    assert bad.exit_code == 2 and "unknown text processing 'ram'" in bad.output


# --- bench's fixed prompt ------------------------------------------------------------------------------


def test_bench_fixed_prompt_is_the_reference_s_one_phrase_under_the_paper_protocol() -> None:
    paper = {v.name: v for v in ablation_variants(["prompt"], EvalSettings(protocol="paper"))}
    full = {v.name: v for v in ablation_variants(["prompt"], EvalSettings(protocol="full"))}
    assert paper["prompt-fixed"].caption == "defect, abnormal."  # test_ablation.py's 'defect, abnormal'
    assert full["prompt-fixed"].caption == "defect . abnormal ."
    assert paper["prompt-fixed"].settings(EvalSettings(protocol="paper")).caption == "defect, abnormal."


# --- which images are references, per dataset and protocol ---------------------------------------------


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_mtd_references_are_mt_free_images_left_out_of_the_test_set(protocol: str) -> None:
    """The reference drew 10 MT_Free images and tested every MT_Free image, its references too;
    iapas tests every MT_Free image but its references, under both protocols."""
    from iapas.data import get_dataset
    from tests.conftest import shared_data

    root = shared_data("MTD")
    ds = get_dataset("mtd", root)
    cat = ds.load(ds.categories()[0], protocol=protocol, n_references=10, seed=0)
    free = {p.resolve() for p in (root / "MT_Free" / "Imgs").glob("*.jpg")}
    refs = {Path(p).resolve() for p in cat.references}
    assert len(refs) == 10 and refs <= free
    assert {Path(s.path).resolve() for s in cat.test if s.label == 0} == free - refs


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_visa_references_are_train_normals_never_tested(tmp_path: Path, protocol: str) -> None:
    """The reference drew from every Normal image (both splits) and tested them; iapas draws from
    the train split's normal images, which no protocol tests."""
    from iapas.data import get_dataset
    from tests.test_data import visa_candle

    root = tmp_path / "VisA"
    visa_candle(root, 5)
    cat = get_dataset("visa", root).load("candle", protocol=protocol, n_references=2, seed=0)
    assert len(cat.references) == 2 and {Path(p).name for p in cat.references} <= {"0000.JPG", "0001.JPG", "0002.JPG"}
    assert not {Path(p).name for p in cat.references} & {Path(s.path).name for s in cat.test}


def test_the_reference_s_reassigned_ksdd_labels_break_its_results_table() -> None:
    """The README's KSDD1/KSDD2 label row: test_zsas.py reassigns ``gt_list = [...]`` per image
    (KSDD and KSDD2) while every other list grows, so its ``pd.DataFrame`` of the results raises."""
    pd = pytest.importorskip("pandas")
    names: list[str] = []
    gt_list: list[int] = []
    for sub_name, anomalous in [("Part0", False), ("Part1", True), ("Part2", False)]:
        gt_list = [1 if anomalous else 0]
        names += [f"kos01_{sub_name}_0"]
    with pytest.raises(ValueError, match="same length"):
        pd.DataFrame({"names": names, "gt_list": gt_list})


def test_cli_profile_with_reference_text_processing_on_the_tiny_models(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The tiny Grounding DINO: each reference image detected with its own tag caption, the raw
    phrase as the object tag, the reference's caption string within the text window."""
    from typer.testing import CliRunner

    from iapas.cli import app

    refs = tmp_path / "refs"
    for i in range(1):  # one small image: the tiny detector's forwards are what the test pays for
        refs.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(refs / f"{i}.png")
    out = tmp_path / "bottle.yaml"
    result = CliRunner().invoke(app, [
        "profile", "-c", "bottle", "-r", str(refs), "-n", "1", "--tags", "glass bottle, close-up, cork",
        "--detector", str(tiny_models["grounding-dino"]), "--device", "cpu", "--llm", "knowledge",
        "--text-processing", "reference", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    profile = Profile.load(out)
    s1 = profile.stage1
    per_image = s1["tags"]["per_image"]
    assert [e["caption"] for e in per_image] == ["glass bottle. . cork"]  # 'close-up' removed, no stoplist
    assert [e["caption"] for e in per_image] == [e["caption"] for e in s1["object"]["per_image"]]
    assert all(e["caption"] == reference_tag_caption(e["tags"][: e["caption"].count(".") + 1]) for e in per_image)
    # the best score wins, ties to the alphabetically first phrase (pandas' groupby, then nlargest)
    assert profile.object_tag == min(s1["object"]["per_image"], key=lambda v: (-v["score"], v["phrase"]))["phrase"]
    nouns = s1["caption"]["nouns"]  # the knowledge vocabulary's, trimmed at the tail to the tiny window
    assert profile.caption == ref_caption(", ".join(nouns), profile.object_tag)
    assert s1["caption"]["token_count"] <= s1["caption"]["max_tokens"] and s1["caption"]["text_processing"] == "reference"
    # the detector's tokens for it are those of the reference's detector call (lower, strip, final '.')
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["grounding-dino"])
    sent = tokenizer(GroundingDinoDetector.normalize_caption(profile.caption))["input_ids"]
    assert sent == tokenizer(profile.caption.lower().strip())["input_ids"]
    assert tokenizer.convert_ids_to_tokens(sent)[:2] == ["[CLS]", "."]  # the leading empty phrase


def test_an_evaluation_makes_its_profiles_with_the_reference_text_processing(tmp_path: Path) -> None:
    """``--text-processing`` reaches evaluate's and bench's stage 1 (Stage1Options -> get_profile)."""
    from iapas.data import get_dataset
    from iapas.evaluation.profiles import get_profile
    from tests.test_evaluation import OBJECT, BlobDetector, make_mvtec

    category = get_dataset("mvtec", make_mvtec(tmp_path / "data", ("alpha",), n_good=2, n_bad=1)).load("alpha", n_references=2)
    options = Stage1Options(tagger="manual", tags=[OBJECT], llm="knowledge", text_processing="reference")
    profile = get_profile(category, tmp_path / "p", options, detector=BlobDetector())
    assert profile.object_tag == OBJECT  # the detector's phrase with the image's own tag caption
    assert profile.caption == ref_caption(", ".join(profile.anomaly_nouns), OBJECT)
    assert profile.stage1["caption"]["text_processing"] == "reference"


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_the_report_names_the_fixed_caption_and_the_text_processing_used(tmp_path: Path, protocol: str) -> None:
    from iapas.evaluation.results import DatasetResult
    from iapas.evaluation.tables import header_lines

    def header(mode: str, stage1: dict | None) -> str:
        settings = EvalSettings(mode=mode, protocol=protocol)
        return "\n".join(header_lines(DatasetResult("mtd", "MTD", "root", tmp_path, settings, [], models={"stage1": stage1})))

    fixed = "defect, abnormal." if protocol == "paper" else "defect . abnormal ."
    assert f"Mode: base ('{fixed}', no size filter)" in header("base", None)
    reference = Stage1Options(llm="knowledge", text_processing="reference").settings("tiny")
    assert "the reference code's text processing." in header("iapas", reference)
    assert "text processing" not in header("iapas", Stage1Options(llm="knowledge").settings("tiny"))


@pytest.mark.parametrize("protocol", ["paper", "full"])
def test_ksdd2_references_are_defect_free_train_images(tmp_path: Path, protocol: str) -> None:
    """The reference drew defect-free test/ images and tested them; iapas draws train/ ones."""
    from iapas.data import get_dataset
    from tests.test_data_paper import ksdd2_tree

    cat = get_dataset("ksdd2", ksdd2_tree(tmp_path / "KolektorSDD2")).load("ksdd2", protocol=protocol, n_references=3, seed=0)
    assert len(cat.references) == 3
    assert all(p.parent.name == "train" and p.stem not in ("10001", "10004") for p in cat.references)
    assert all(Path(s.path).parent.name == "test" for s in cat.test)


def test_the_reference_vote_breaks_ties_as_pandas_groupby_nlargest() -> None:
    from iapas.prompts.reference_text import reference_object_vote

    class Tied:
        def detect(self, images, caption, *, box_threshold, text_threshold):
            phrase = {0: "zinc plate", 1: "apple", 2: ""}[index_of(images[0])]
            return [dets(([0, 0, 10, 10], 0.5, phrase), ([0, 0, 9, 9], 0.4, "other"))]  # the second is NMS'd

    images = [np.full((20, 20, 3), 40 * i, np.uint8) for i in range(3)]
    vote = reference_object_vote(Tied(), images, ["a", "b", "c"], ["i0", "i1", "i2"], box_threshold=0.1, text_threshold=0.1, nms_iou=0.5)
    assert vote.object_tag == "apple" and vote.image == "i1"
    assert len(vote.per_image) == 3  # the empty phrase is recorded but cannot win
    pd = pytest.importorskip("pandas")  # the reference's own rule, where pandas is installed
    frame = pd.DataFrame({"Phrase": [v["phrase"] for v in vote.per_image if v["phrase"]], "Score": [0.5, 0.5]})
    assert frame.groupby("Phrase")["Score"].max().nlargest(1).reset_index()["Phrase"].tolist() == ["apple"]
