"""The reference side of ``benchmarks/reference_diff.py``: runs in its own environment with the
original packages (rf-groundingdino 0.3.0, segment-anything 1.0, transformers 4.42.4, numpy<2,
CPU torch; see reference_diff.py for the recipe), never in iapas's. It imports no iapas package:
it loads two torch-only files of ``iapas/testing`` by path (the tiny vocabulary, the seeded weights).

Commands (each writes one npz or json file that iapas's side reads):
  resize-table OUT.json            the original Grounding DINO transform's output size for a
                                   fixed list of image shapes (tests/data/gdino_original_resize.json)
  build DIR --seed S ...           small original-layout Grounding DINO and SAM whose weights are
                                   iapas.testing.reference_weights' seeded tensors (detector scores
                                   shifted to spread around 0.1): DIR/weights.json (the recipe and
                                   transformers' own key maps to the HF layout), DIR/bert/ and the
                                   HF configs DIR/hf/{grounding-dino,sam}
  run MANIFEST.json --build DIR --reference-code REF --out OUT.npz
                                   the reference's own stage-2 and evaluation functions on the
                                   manifest's images, every intermediate recorded
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("reference_side")


def install_cpu_nms() -> None:
    """torchvision's PyPI wheel links CUDA kernels; with CPU torch its ops do not exist and
    ``import torchvision`` fails. Define ``torchvision::nms`` (and the ``qnms`` it registers a
    fake kernel for) before the import, with a CPU kernel of the compiled one's algorithm: sort
    by score descending, float32 IoU, suppress a box whose IoU with a kept one is ``>`` the
    threshold."""
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", cpu_nms, "CPU")
    install_cpu_nms.lib = lib  # keep the registration alive
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True  # ops.nms checks this before dispatching


def cpu_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's CPU ``nms_kernel_impl`` written out: same order, same float arithmetic."""
    if dets.numel() == 0:
        return torch.empty((0,), dtype=torch.long)
    x1, y1, x2, y2 = (dets[:, i].contiguous() for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for a, i in enumerate(order.tolist()):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1 :].tolist():
            if suppressed[j]:
                continue
            w = torch.clamp(torch.minimum(x2[i], x2[j]) - torch.maximum(x1[i], x1[j]), min=0)
            h = torch.clamp(torch.minimum(y2[i], y2[j]) - torch.maximum(y1[i], y1[j]), min=0)
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > iou_threshold:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.long)


# image (height, width) shapes of the resize table: the datasets' capped and uncapped shapes,
# and a sweep of elongated ones (two thirds of capped shapes differ from transformers' helper)
RESIZE_SHAPES = [
    (250, 700), (500, 1257), (1257, 500), (232, 640), (640, 232), (1408, 512), (600, 800), (256, 256),
    (900, 900), (1024, 1024), (1000, 1600), (196, 1268), (400, 400), (512, 512), (768, 1024),
] + [(h, 1000) for h in range(300, 601, 7)] + [(1000, w) for w in range(301, 602, 11)]


def resize_table(out: Path) -> None:
    """The original transform applied to real PIL images of each shape (its own code path:
    ``RandomResize([size], max_size)``), at the hub's 800/1333 and the tiny models' 320/533."""
    from PIL import Image

    import groundingdino.datasets.transforms as T

    rows = []
    for size, max_size in ((800, 1333), (320, 533)):
        transform = T.RandomResize([size], max_size=max_size)
        for h, w in RESIZE_SHAPES:
            resized, _ = transform(Image.new("RGB", (w, h)), None)
            rows.append([size, max_size, h, w, resized.size[1], resized.size[0]])
    table = {"source": "rf-groundingdino 0.3.0 groundingdino.datasets.transforms.RandomResize",
             "columns": ["size", "max_size", "height", "width", "out_height", "out_width"], "rows": rows}
    out.write_text(json.dumps(table) + "\n")
    logger.info("wrote %d sizes to %s", len(rows), out)


REPO = Path(__file__).resolve().parents[1]

# The small configurations (the real architectures, fewer and narrower layers); both layouts.
# hidden_dim stays 256: the original hard-codes a 256-wide sine embedding of the text positions.
SWIN = {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": 7}
GDINO = {"hidden_dim": 256, "nheads": 8, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 256,
         "num_queries": 60, "enc_n_points": 2, "dec_n_points": 2}
BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 512}
SAM_VIT = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1]}
# the detector's per-query max logit after the shift: median and spread (sigmoid(-1.9) = 0.13,
# the 0.1 threshold is logit -2.2): about half the queries pass
LOGIT_MEDIAN, LOGIT_SPREAD = -1.9, 1.2


def iapas_module(name: str):
    """A module of iapas's ``testing`` package loaded by path (``tiny``: the tiny vocabulary
    with bert-base's delimiter ids; ``reference_weights``: the seeded weights and key maps);
    neither imports iapas, so both sides use one definition."""
    spec = importlib.util.spec_from_file_location(f"iapas_{name}", REPO / "src" / "iapas" / "testing" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_bert(folder: Path) -> None:
    """A BERT folder the original loads as ``text_encoder_type`` (its weights are replaced)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    tiny = iapas_module("tiny")
    vocab = tiny.bert_base_shaped_vocab(tiny.TINY_WORDS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), **BERT)).save_pretrained(folder)


def gdino_args(bert: Path):
    from groundingdino.util.slconfig import SLConfig

    import groundingdino

    args = SLConfig.fromfile(str(Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"))
    for key, value in GDINO.items():
        setattr(args, key, value)
    args.text_encoder_type = str(bert)
    args.use_checkpoint = args.use_transformer_ckpt = False
    args.device = "cpu"
    return args


def build_original_gdino(bert: Path):
    """The original GroundingDINO with :data:`SWIN` instead of Swin-T's widths (its builder
    takes the keywords over its table)."""
    from groundingdino.models import build_model
    from groundingdino.models.GroundingDINO.backbone import backbone as bb

    original = bb.build_swin_transformer
    bb.build_swin_transformer = lambda name, pretrain_img_size, **kw: original(name, pretrain_img_size, **{**kw, **SWIN})
    try:
        model = build_model(gdino_args(bert))
    finally:
        bb.build_swin_transformer = original
    return model.eval()


def float_spec(model, skip: tuple[str, ...] = ()) -> list[list]:
    """``[name, shape]`` of every floating-point tensor of ``model``'s state dict, and for a
    tensor shared under several names (the decoder's box heads) ``[name, shape, first name]``,
    so that the seeded weights are shared as well."""
    spec, first = [], {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point() or k.endswith(skip):
            continue
        owner = first.setdefault((v.data_ptr(), tuple(v.shape)), k)
        spec.append([k, list(v.shape)] + ([owner] if owner != k else []))
    return spec


def load_seeded(model, spec: list[list], seed: int, shift: tuple[float, float] | None = None) -> dict:
    """Load :func:`seeded_state` into ``model`` (with the score shift ``(scale, shift)``)."""
    rw = iapas_module("reference_weights")
    state = rw.seeded_state(spec, seed)
    if shift is not None:
        rw.apply_score_shift(state, GDINO["enc_layers"], *shift)
    full = model.state_dict()
    full.update(state)
    model.load_state_dict(full)
    return state


def measure_shift(model, spec: list[list], seed: int, image: torch.Tensor, caption: str) -> tuple[float, float]:
    """(scale, shift), float32 values, that give the per-query max logit the median
    :data:`LOGIT_MEDIAN` and standard deviation :data:`LOGIT_SPREAD` on ``image``."""
    load_seeded(model, spec, seed, (1.0, 0.0))
    with torch.no_grad():
        logits = model(image[None], captions=[caption])["pred_logits"][0]
    best = logits.max(dim=-1).values
    scale = np.float32(LOGIT_SPREAD / float(best.std()))
    shift = np.float32(LOGIT_MEDIAN - float(scale) * float(best.median()))
    logger.info("detector logits: raw median %.3f std %.3f -> scale %.6f shift %.6f",
                float(best.median()), float(best.std()), scale, shift)
    return float(scale), float(shift)


def hf_gdino_config(bert: Path):
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    backbone = SwinConfig(window_size=SWIN["window_size"], image_size=224, embed_dim=SWIN["embed_dim"],
                          depths=SWIN["depths"], num_heads=SWIN["num_heads"], out_indices=[2, 3, 4])
    return GroundingDinoConfig(
        backbone_config=backbone, text_config=BertConfig.from_pretrained(bert), d_model=GDINO["hidden_dim"],
        encoder_layers=GDINO["enc_layers"], decoder_layers=GDINO["dec_layers"],
        encoder_ffn_dim=GDINO["dim_feedforward"], decoder_ffn_dim=GDINO["dim_feedforward"],
        encoder_attention_heads=GDINO["nheads"], decoder_attention_heads=GDINO["nheads"],
        num_queries=GDINO["num_queries"], encoder_n_points=GDINO["enc_n_points"],
        decoder_n_points=GDINO["dec_n_points"], max_text_len=256,
    )


def convert_gdino(config):
    """transformers 4.42.4's own Grounding DINO conversion (``convert_grounding_dino_to_hf``'s
    key renames and q/k/v splits), as a function of the original state dict."""
    from transformers.models.grounding_dino import convert_grounding_dino_to_hf as conv

    def convert(state: dict) -> dict:
        new = dict(state)
        for src, dest in conv.create_rename_keys(state, config):
            conv.rename_key(new, src, dest)
        conv.read_in_q_k_v_encoder(new, config)
        conv.read_in_q_k_v_text_enhancer(new, config)
        conv.read_in_q_k_v_decoder(new, config)
        # BERT's pooler is unused by both implementations (HF's model has none)
        return {k: v for k, v in new.items() if ".pooler." not in k}

    return convert


def convert_sam(state: dict) -> dict:
    from transformers.models.sam import convert_sam_to_hf as conv

    return conv.replace_keys(dict(state))


def save_hf(model, state: dict, processor, out: Path) -> None:
    """Load the converted ``state`` into the HF ``model`` (every key but the buffers it computes
    itself must match), save config and processor to ``out`` (the weights are regenerated from
    the recipe, not stored)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "relative_position_index" not in k]
    if missing or unexpected:
        raise RuntimeError(f"{type(model).__name__}: missing {missing[:6]}, unexpected {unexpected[:6]}")
    model.config.save_pretrained(out)
    processor.save_pretrained(out)


def build(out: Path, seed: int, calibration_image: Path, caption: str) -> None:
    """The recipe (``weights.json``: spec, seed, shift, key maps) and the HF configs under
    ``out``; the original models are rebuilt from it by :func:`original_models`."""
    from PIL import Image
    from segment_anything.build_sam import _build_sam
    from transformers import (BertTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessor,
                              GroundingDinoProcessor, SamConfig, SamImageProcessor, SamModel, SamProcessor)
    from transformers.models.sam.configuration_sam import SamVisionConfig

    rw = iapas_module("reference_weights")
    bert = out / "bert"
    write_bert(bert)
    gdino = build_original_gdino(bert)
    gdino_spec = float_spec(gdino)
    image, _ = gdino_transform()(Image.open(calibration_image).convert("RGB"), None)
    scale, shift = measure_shift(gdino, gdino_spec, seed, image, caption)
    config = hf_gdino_config(bert)
    gdino_map = rw.record_key_map(gdino_spec, convert_gdino(config))
    state = load_seeded(gdino, gdino_spec, seed, (scale, shift))
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=BertTokenizer.from_pretrained(bert))
    save_hf(GroundingDinoForObjectDetection(config).eval(), rw.to_hf(state, gdino_map), processor, out / "hf" / "grounding-dino")

    sam = _build_sam(checkpoint=None, **SAM_VIT).eval()
    sam_spec = float_spec(sam, skip=rw.CONSTANT)
    sam_map = rw.record_key_map(sam_spec, convert_sam)
    vision = SamVisionConfig(hidden_size=SAM_VIT["encoder_embed_dim"], num_hidden_layers=SAM_VIT["encoder_depth"],
                             num_attention_heads=SAM_VIT["encoder_num_heads"],
                             global_attn_indexes=SAM_VIT["encoder_global_attn_indexes"],
                             mlp_dim=4 * SAM_VIT["encoder_embed_dim"])
    state = load_seeded(sam, sam_spec, seed)
    save_hf(SamModel(SamConfig(vision_config=vision)).eval(), rw.to_hf(state, sam_map),
            SamProcessor(image_processor=SamImageProcessor()), out / "hf" / "sam")
    recipe = {"seed": seed, "scale": scale, "shift": shift, "enc_layers": GDINO["enc_layers"],
              "calibration_caption": caption, "sizes": {"swin": SWIN, "gdino": GDINO, "bert": BERT, "sam": SAM_VIT},
              "grounding-dino": {"spec": gdino_spec, "hf_map": gdino_map},
              "sam": {"spec": sam_spec, "hf_map": sam_map}}
    (out / "weights.json").write_text(json.dumps(recipe) + "\n")
    logger.info("wrote %s", out)


def gdino_transform():
    import groundingdino.datasets.transforms as T

    return T.Compose([T.RandomResize([800], max_size=1333), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

# the reference's stage-2 and evaluation functions (utils/function.py), run as published
REFERENCE_FUNCTIONS = (
    "normalize", "load_image", "get_grounding_output", "process_object_output", "process_box_output",
    "process_size_output", "process_anomaly_segmentation", "process_specify_resolution",
    "calculate_max_f1", "eval_zsas_last_2", "compute_pro_with_padding",
)


def reference_functions(ref_dir: Path) -> dict:
    """The functions of :data:`REFERENCE_FUNCTIONS`, compiled from the reference checkout's own
    ``utils/function.py`` (its module imports diffusers, spacy, RAM...: only these functions'
    names are provided, from the original packages)."""
    import ast

    import cv2
    import torchvision
    import torchvision.transforms as TS
    from PIL import Image
    from sklearn.metrics import average_precision_score

    import groundingdino.datasets.transforms as T
    from groundingdino.util.utils import get_phrases_from_posmap

    path = ref_dir / "utils" / "function.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in REFERENCE_FUNCTIONS]
    missing = set(REFERENCE_FUNCTIONS) - {n.name for n in body}
    if missing:
        raise SystemExit(f"{path}: functions not found: {sorted(missing)}")
    namespace = {"cv2": cv2, "np": np, "torch": torch, "torchvision": torchvision, "TS": TS, "Image": Image, "T": T,
                 "get_phrases_from_posmap": get_phrases_from_posmap, "average_precision_score": average_precision_score}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


class Recorder:
    """Wraps ``obj.name`` and keeps what each call returned."""

    def __init__(self, obj, name: str) -> None:
        self.calls: list = []
        original = getattr(obj, name)

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            self.calls.append(out)
            return out

        setattr(obj, name, wrapped)


def original_models(build_dir: Path):
    """The original Grounding DINO and SAM (SamPredictor) with the recipe's weights."""
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam

    recipe = json.loads((build_dir / "weights.json").read_text())
    gdino = build_original_gdino(build_dir / "bert")
    load_seeded(gdino, recipe["grounding-dino"]["spec"], recipe["seed"], (recipe["scale"], recipe["shift"]))
    sam = _build_sam(checkpoint=None, **SAM_VIT).eval()
    load_seeded(sam, recipe["sam"]["spec"], recipe["seed"])
    return gdino.eval(), SamPredictor(sam)


def run(manifest_path: Path, build_dir: Path, ref_dir: Path, out: Path) -> None:
    """The reference's per-image loop of ``test_zsas.py`` (model ``iap_zsas``: object output,
    box output, size output, segmentation, fusion, per-image normalisation) on each image of
    the manifest, then its evaluation (400x400 resize, stack normalisation, AP, F1-max), with
    every intermediate recorded to ``out`` (npz)."""
    manifest = json.loads(manifest_path.read_text())
    f = reference_functions(ref_dir)
    gdino, sam_model = original_models(build_dir)
    detector_calls = Recorder(gdino, "forward")
    sam_logits = Recorder(sam_model.model, "postprocess_masks")
    box_threshold, text_threshold = manifest["box_threshold"], manifest["text_threshold"]
    iou_threshold, threshold = manifest["iou_threshold"], manifest["size_threshold"]
    object_tag, anomaly_tags = manifest["object_tag"], manifest["caption"]
    arrays: dict[str, np.ndarray] = {}
    test_scores, gt_mask_list, gt_list, test_masks, test_imgs = [], [], [], [], []
    for item in manifest["images"]:
        key = item["key"]
        detector_calls.calls.clear()
        sam_logits.calls.clear()
        img, src_img, raw_img, ram_img, gt_img, gt_bn, gt_mask = f["load_image"](item["image"], item["gt"])
        test_imgs += [np.array(src_img)]
        gt_list += [item["label"]]
        gt_mask_list += [(gt_bn == 255).astype(int)]
        # test_zsas.py, model 'iap_zsas', as published
        object_boxes_filt, _, _, object_size = f["process_object_output"](
            gdino, img, object_tag, box_threshold, text_threshold, raw_img, iou_threshold, device="cpu")
        boxes_filt, pred_phrases, boxes_score = f["process_box_output"](
            gdino, img, anomaly_tags, box_threshold, text_threshold, "cpu", raw_img, iou_threshold)
        nms_boxes, nms_scores = boxes_filt.clone().numpy(), np.array([float(v) for v in boxes_score], np.float32)
        boxes_filt, pred_phrases, boxes_score = f["process_size_output"](
            raw_img, object_size, boxes_filt, pred_phrases, boxes_score, threshold)
        kept_boxes = np.zeros((0, 4), np.float32) if boxes_filt is None else boxes_filt.clone().numpy()
        kept_scores = np.array([] if boxes_score is None else [float(v) for v in boxes_score], np.float32)
        anomaly_masks, masks_score, boxes_score = f["process_anomaly_segmentation"](
            raw_img, src_img, sam_model, boxes_filt, boxes_score, "cpu")
        scores = [anomaly_masks[i].cpu().numpy() * boxes_score[i].item() for i in range(len(anomaly_masks))]
        score = np.sum(scores, axis=0)[0]
        raw_map = np.array(score)
        score = f["normalize"](score)
        test_scores += [np.array(score)]
        masks = sum(anomaly_masks[i][0] for i in range(len(anomaly_masks)))
        mask = masks.cpu().numpy()
        mask[mask > 0] = 1
        test_masks += [mask]
        (obj_out, obj_in), (cap_out, cap_in) = [(c["pred_logits"], c["pred_boxes"]) for c in detector_calls.calls]
        arrays.update({
            f"{key}/pixels": img.numpy(),
            f"{key}/object_probs": obj_out[0].sigmoid().numpy(), f"{key}/object_boxes_raw": obj_in[0].numpy(),
            f"{key}/probs": cap_out[0].sigmoid().numpy(), f"{key}/boxes_raw": cap_in[0].numpy(),
            f"{key}/object_box": object_boxes_filt.numpy(), f"{key}/object_size": object_size.numpy(),
            f"{key}/nms_boxes": nms_boxes, f"{key}/nms_scores": nms_scores,
            f"{key}/kept_boxes": kept_boxes, f"{key}/kept_scores": kept_scores,
            f"{key}/masks": anomaly_masks[:, 0].numpy() if boxes_filt is not None else np.zeros((0,) + raw_map.shape, bool),
            f"{key}/mask_logits": sam_logits.calls[0][:, 0].detach().numpy() if sam_logits.calls else np.zeros((0,) + raw_map.shape, np.float32),
            f"{key}/raw_map": raw_map, f"{key}/map": np.asarray(score, dtype=np.float64),
        })
        logger.info("%s: %d boxes after NMS, %d kept, object size %.5f", key, len(nms_boxes), len(kept_boxes), float(object_size))
    # the evaluation of test_zsas.py, as published
    test_imgs, test_scores, test_masks, gt_mask_list = f["process_specify_resolution"](
        test_imgs, test_scores, test_masks, gt_mask_list, resolution=(400, 400))
    n_test_scores = f["normalize"](test_scores)
    np_scores = np.array(n_test_scores)
    img_scores = np_scores.reshape(np_scores.shape[0], -1).max(axis=1)
    gt_masks = np.asarray(gt_mask_list, dtype=int)
    is_ap, is_f1m, _ = f["eval_zsas_last_2"](np.asarray(gt_list, dtype=int), img_scores)
    ps_ap, ps_f1m, _ = f["eval_zsas_last_2"](gt_masks.flatten(), np_scores.flatten())
    arrays.update({"stack": np_scores, "gt_stack": gt_masks, "image_scores": img_scores,
                   "metrics": np.array([ps_ap, ps_f1m, is_ap, is_f1m])})
    np.savez_compressed(out, **arrays)
    logger.info("pixel AP %.4f F1-max %.4f, image AP %.4f F1-max %.4f -> %s", ps_ap, ps_f1m, is_ap, is_f1m, out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("resize-table")
    p.add_argument("out", type=Path)
    p = sub.add_parser("build")
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-image", type=Path, required=True)
    p.add_argument("--caption", required=True)
    p = sub.add_parser("run")
    p.add_argument("manifest", type=Path)
    p.add_argument("--build", type=Path, required=True)
    p.add_argument("--reference-code", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    install_cpu_nms()
    if args.command == "resize-table":
        resize_table(args.out)
    elif args.command == "build":
        build(args.out, args.seed, args.calibration_image, args.caption)
    elif args.command == "run":
        run(args.manifest, args.build, args.reference_code, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
